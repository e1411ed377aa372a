"""Per-peer presence state, speaking automerge-repo's ``Presence`` protocol. No I/O.

Membership says *who* is in a document; state says what each of them is doing
(cursor, selection, status, display name). automerge-repo (2.5.3+) ships a
``Presence`` class that browser apps use for this. It rides on ordinary
ephemeral messages whose payload is ``{"__presence": message}``:

=============  ==============================  =====================================
type           fields                          receiver does
=============  ==============================  =====================================
``snapshot``   ``state`` (a map)               merge ``state`` into the sender's state
``update``     ``channel``, ``value``          set one key of the sender's state
``heartbeat``  —                               refresh the sender (ignored if unknown)
``goodbye``    —                               forget the sender
=============  ==============================  =====================================

Any of these from a sender we do not know yet makes us re-send our own
snapshot (automerge-repo waits 500 ms, :data:`REANNOUNCE_DELAY`), which is how
a newcomer learns everyone's state. A peer with no message for the TTL (45 s
in automerge-repo, :data:`DEFAULT_STATE_TTL`) is forgotten.

:class:`PeerStates` holds what peers told us and our own local state, and
:class:`Coalescer` decides when a busy channel may be sent again. Both are pure
state machines driven by :class:`~ratatoskr_client.RatatoskrClient`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, TypeAlias, cast

from .errors import ProtocolError

__all__ = [
    "DEFAULT_STATE_HEARTBEAT",
    "DEFAULT_STATE_INTERVAL",
    "DEFAULT_STATE_TTL",
    "PRESENCE_MARKER",
    "REANNOUNCE_DELAY",
    "Coalescer",
    "PeerStates",
    "StateMessage",
    "StateOutcome",
    "goodbye_payload",
    "heartbeat_payload",
    "parse_state_payload",
    "snapshot_payload",
    "update_payload",
]

PRESENCE_MARKER: Final = "__presence"
#: automerge-repo's DEFAULT_HEARTBEAT_INTERVAL_MS: a heartbeat 15 s after the last message.
DEFAULT_STATE_HEARTBEAT: Final = 15.0
#: automerge-repo's DEFAULT_PEER_TTL_MS: peers silent this long are forgotten.
DEFAULT_STATE_TTL: Final = 45.0
#: Minimum seconds between two sends of the same document's state updates.
DEFAULT_STATE_INTERVAL: Final = 0.05
#: automerge-repo re-announces its snapshot this long after hearing an unknown peer.
REANNOUNCE_DELAY: Final = 0.5

StateMessageType: TypeAlias = Literal["snapshot", "update", "heartbeat", "goodbye"]
_TYPES: Final = frozenset(("snapshot", "update", "heartbeat", "goodbye"))


@dataclass(frozen=True, slots=True)
class StateMessage:
    """One decoded Presence message."""

    type: StateMessageType
    state: Mapping[str, Any] | None = None  # snapshot
    channel: str | None = None  # update
    value: Any = None  # update


def parse_state_payload(payload: object) -> StateMessage | None:
    """The Presence message inside an ephemeral payload, or None if the payload
    is not one (no ``__presence`` key).

    Raises:
        ProtocolError: it has the ``__presence`` marker but is malformed.
    """
    if type(payload) is not dict or PRESENCE_MARKER not in payload:
        return None
    message = payload[PRESENCE_MARKER]
    if type(message) is not dict:
        raise ProtocolError("__presence message must be a map")
    kind = message.get("type")
    # Type first: `in` hashes, and a CBOR array or map is unhashable (TypeError).
    if type(kind) is not str or kind not in _TYPES:
        raise ProtocolError(f"__presence message has unknown type {kind!r}")
    if kind == "snapshot":
        state = message.get("state")
        if type(state) is not dict or not all(type(k) is str for k in state):
            raise ProtocolError("__presence snapshot needs a 'state' map with string keys")
        return StateMessage("snapshot", state=state)
    if kind == "update":
        channel = message.get("channel")
        if type(channel) is not str:
            raise ProtocolError("__presence update needs a string 'channel'")
        return StateMessage("update", channel=channel, value=message.get("value"))
    return StateMessage(cast(StateMessageType, kind))


def snapshot_payload(state: Mapping[str, Any]) -> dict[str, Any]:
    return {PRESENCE_MARKER: {"type": "snapshot", "state": dict(state)}}


def update_payload(channel: str, value: Any) -> dict[str, Any]:
    return {PRESENCE_MARKER: {"type": "update", "channel": channel, "value": value}}


def heartbeat_payload() -> dict[str, Any]:
    return {PRESENCE_MARKER: {"type": "heartbeat"}}


def goodbye_payload() -> dict[str, Any]:
    return {PRESENCE_MARKER: {"type": "goodbye"}}


@dataclass(frozen=True, slots=True)
class StateOutcome:
    """What one received Presence message did.

    Attributes:
        changed: the sender's state has a new value.
        appeared: the sender was not known before and now is (it has state).
        removed: the sender was forgotten (goodbye).
        unknown_sender: the sender was not known when the message arrived: the
            receiver should re-announce its snapshot (after REANNOUNCE_DELAY).
    """

    changed: bool = False
    appeared: bool = False
    removed: bool = False
    unknown_sender: bool = False


@dataclass
class _PeerEntry:
    state: dict[str, Any]
    last_seen: float
    view: Mapping[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.view = MappingProxyType(self.state)


class PeerStates:
    """Every peer's state per document, plus this client's own local state."""

    def __init__(self, ttl: float = DEFAULT_STATE_TTL) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be > 0, got {ttl}")
        self.ttl = ttl
        #: document -> peer id -> entry, in order of first message
        self._peers: dict[str, dict[str, _PeerEntry]] = {}
        self._local: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ local

    def local(self, document_id: str) -> Mapping[str, Any]:
        """This client's state in a document (read-only view)."""
        return MappingProxyType(self._local.setdefault(document_id, {}))

    def set_local(self, document_id: str, channel: str, value: Any) -> bool:
        """Merge one channel into the local state. True if the value changed."""
        local = self._local.setdefault(document_id, {})
        if channel in local and local[channel] == value:
            return False
        local[channel] = value
        return True

    def init_local(self, document_id: str, defaults: Mapping[str, Any]) -> None:
        """Set keys the application has not set yet (e.g. the display name)."""
        local = self._local.setdefault(document_id, {})
        for key, value in defaults.items():
            local.setdefault(key, value)

    # ------------------------------------------------------------------ remote

    def receive(
        self, document_id: str, peer_id: str, message: StateMessage, now: float
    ) -> StateOutcome:
        """Apply a Presence message from ``peer_id``, with automerge-repo's rules."""
        peers = self._peers.setdefault(document_id, {})
        entry = peers.get(peer_id)
        unknown = entry is None
        if message.type == "goodbye":
            removed = peers.pop(peer_id, None) is not None
            return StateOutcome(removed=removed, changed=removed, unknown_sender=unknown)
        if message.type == "heartbeat":
            if entry is not None:
                entry.last_seen = now
            # Heartbeats from unknown peers are ignored: they will send a snapshot.
            return StateOutcome(unknown_sender=unknown)
        if message.type == "snapshot":
            incoming: Mapping[str, Any] = message.state or {}
        else:
            assert message.channel is not None
            incoming = {message.channel: message.value}
        if entry is None:
            entry = peers[peer_id] = _PeerEntry(dict(incoming), now)
            return StateOutcome(changed=True, appeared=True, unknown_sender=True)
        entry.last_seen = now
        # Like automerge-repo, a snapshot merges: keys it lacks are kept.
        changed = any(k not in entry.state or entry.state[k] != v for k, v in incoming.items())
        entry.state.update(incoming)
        return StateOutcome(changed=changed)

    def state(self, document_id: str) -> Mapping[str, Mapping[str, Any]]:
        """Peer id → that peer's state (read-only), in order of first message."""
        peers = self._peers.get(document_id)
        if not peers:
            return MappingProxyType({})
        return MappingProxyType({pid: e.view for pid, e in peers.items()})

    def peer_state(self, document_id: str, peer_id: str) -> Mapping[str, Any] | None:
        entry = self._peers.get(document_id, {}).get(peer_id)
        return entry.view if entry is not None else None

    def documents(self) -> tuple[str, ...]:
        """Documents in which some peer has state."""
        return tuple(doc for doc, peers in self._peers.items() if peers)

    def peers(self, document_id: str) -> tuple[str, ...]:
        """Peer ids with state in a document, in order of first message."""
        return tuple(self._peers.get(document_id, ()))

    def forget_peer(self, document_id: str, peer_id: str) -> bool:
        """Drop one peer's state (it left the document). True if it had state."""
        peers = self._peers.get(document_id)
        return peers is not None and peers.pop(peer_id, None) is not None

    def prune(self, now: float) -> list[tuple[str, str]]:
        """Forget peers silent for longer than the TTL; returns (document, peer id)."""
        threshold = now - self.ttl
        pruned: list[tuple[str, str]] = []
        for doc_id, peers in self._peers.items():
            for pid in [p for p, e in peers.items() if e.last_seen < threshold]:
                del peers[pid]
                pruned.append((doc_id, pid))
        return pruned

    def forget(self, document_id: str) -> None:
        """Drop everything about a document (we left it)."""
        self._peers.pop(document_id, None)
        self._local.pop(document_id, None)

    def clear_peers(self) -> None:
        """Drop every peer's state but keep local state (connection lost)."""
        self._peers.clear()


class Coalescer:
    """Latest value per channel, sent at most once per ``interval`` per document.

    ``offer()`` records a value and says when a flush is due; ``take()`` hands
    out the pending values. A cursor moved 200 times a second thus costs at most
    ``1 / interval`` messages a second, and the last value is always sent.
    """

    def __init__(self, interval: float = DEFAULT_STATE_INTERVAL) -> None:
        if interval < 0:
            raise ValueError(f"interval must be >= 0, got {interval}")
        self.interval = interval
        self._pending: dict[str, dict[str, Any]] = {}
        self._last_sent: dict[str, float] = {}
        self._scheduled: set[str] = set()

    def offer(self, document_id: str, channel: str, value: Any, now: float) -> float | None:
        """Record ``value`` as the latest for ``channel``.

        Returns the delay after which the caller should flush this document
        (0.0: now), or None when a flush is already scheduled and will pick the
        value up.
        """
        self._pending.setdefault(document_id, {})[channel] = value
        if document_id in self._scheduled:
            return None
        self._scheduled.add(document_id)
        last = self._last_sent.get(document_id)
        return 0.0 if last is None else max(0.0, last + self.interval - now)

    def take(self, document_id: str, now: float) -> list[tuple[str, Any]]:
        """The pending (channel, value) pairs to send now; the flush is done."""
        self._scheduled.discard(document_id)
        pending = self._pending.pop(document_id, {})
        if pending:
            self._last_sent[document_id] = now
        return list(pending.items())

    def forget(self, document_id: str) -> None:
        self._pending.pop(document_id, None)
        self._last_sent.pop(document_id, None)
        self._scheduled.discard(document_id)

    def clear(self) -> None:
        self._pending.clear()
        self._last_sent.clear()
        self._scheduled.clear()
