"""Per-peer state, speaking automerge-repo's ``Presence`` protocol. No I/O.

*Membership* says who is in a document (:mod:`ratatoskr_client.core.membership`,
the public ``presence(doc)``); *state* says what each of them is doing: a
cursor, a selection, a status, the name they chose. automerge-repo (2.5.3+)
calls the latter ``Presence``; browser apps use its ``Presence`` class for it.
It rides on ordinary ephemeral messages whose payload is ``{"__presence": message}``:

=============  ==============================  =====================================
type           fields                          receiver does
=============  ==============================  =====================================
``snapshot``   ``state`` (a map)               merge ``state`` into the sender's state
``update``     ``channel``, ``value``          set one key of the sender's state
``heartbeat``  —                               refresh the sender (ignored if unknown)
``goodbye``    —                               forget the sender
=============  ==============================  =====================================

Any of these from a sender we do not know yet makes us re-send our own
snapshot (automerge-repo waits 500 ms, ``REANNOUNCE_DELAY`` in
:mod:`~ratatoskr_client.protocol.constants`), which is how a newcomer learns
everyone's state. A peer with no message for the TTL (45 s in automerge-repo,
``STATE_TTL``) is forgotten.

:class:`PeerStates` holds what peers told us and our own local state, and
:class:`Coalescer` decides when a busy channel may be sent again. Both are pure
state machines driven by the client's core (:mod:`ratatoskr_client.core.client`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias, cast

from ..errors import ProtocolError
from ..protocol.constants import PRESENCE_MARKER, STATE_INTERVAL, STATE_TTL

__all__ = [
    "EMPTY",
    "Coalescer",
    "PeerStates",
    "ReadOnlyMap",
    "StateMessage",
    "StateOutcome",
    "chosen_name_of",
    "goodbye_payload",
    "heartbeat_payload",
    "parse_state_payload",
    "snapshot_payload",
    "update_payload",
]

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
    """The payload of a snapshot: the whole state."""
    return {PRESENCE_MARKER: {"type": "snapshot", "state": dict(state)}}


def update_payload(channel: str, value: Any) -> dict[str, Any]:
    """The payload of an update: one channel's new value."""
    return {PRESENCE_MARKER: {"type": "update", "channel": channel, "value": value}}


def heartbeat_payload() -> dict[str, Any]:
    """The payload of a heartbeat: "still here"."""
    return {PRESENCE_MARKER: {"type": "heartbeat"}}


def goodbye_payload() -> dict[str, Any]:
    """The payload of a goodbye: "forget me"."""
    return {PRESENCE_MARKER: {"type": "goodbye"}}


class ReadOnlyMap(Mapping[str, Any]):
    """A read-only view of a dict that prints like one (``{'name': 'Ada'}``,
    not ``mappingproxy({...})``). It shows later changes of the dict it wraps;
    what the client hands out wraps a copy, so it is a snapshot."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def copy_dict(self) -> dict[str, Any]:
        """A shallow copy of the wrapped dict (a new snapshot's content)."""
        return self._data.copy()

    def __repr__(self) -> str:
        return repr(self._data)


#: The empty state (a forgotten peer's), shared.
EMPTY: Final[Mapping[str, Any]] = ReadOnlyMap({})


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


_NOTHING: Final = StateOutcome()
_UNKNOWN: Final = StateOutcome(unknown_sender=True)


class _Entry:
    """One session's state in one document.

    ``state`` may be the decoded snapshot itself, which the other clients of
    the process that received the same message hold too (see
    :func:`~ratatoskr_client.protocol.fastpaths.decode_state`): nothing
    changes it, :meth:`writable` copies it first. An idle peer's state is then
    one dict in the process, not one per client (a Locust user holds nine).
    """

    __slots__ = ("hidden", "last_seen", "owned", "owner", "state")

    def __init__(
        self, owner: str, state: dict[str, Any], now: float, hidden: bool, *, owned: bool
    ) -> None:
        self.owner = owner
        self.state = state
        #: ``state`` is this entry's own (else it is shared: copy before a change)
        self.owned = owned
        self.last_seen = now
        #: whose session it is is not known for sure yet: kept, not shown
        self.hidden = hidden

    @property
    def view(self) -> ReadOnlyMap:
        """A read-only view of the state as it is now (made when asked: it is
        used at once, and one kept per entry was 0.4 KiB of every client
        holding nine peers' states)."""
        return ReadOnlyMap(self.state)

    def writable(self) -> dict[str, Any]:
        """The state, this entry's own (copied if it was shared)."""
        if not self.owned:
            self.state = dict(self.state)
            self.owned = True
        return self.state


class PeerStates:
    """Every peer's state per document, plus this client's own local state.

    State is kept per **session** (the ``sessionId`` of the messages that built
    it) and shown under the session's *owner*, the peer id it is attributed to.
    Usually a peer has one session and the two are the same thing; the
    distinction matters when a session changes owner (:meth:`reassign`): behind
    a server that relabels gossip copies, a client may first attribute a
    session to a forwarder, and the state built from it must move to the real
    sender, without taking anything the forwarder said itself (its own
    session). Without an explicit ``session``, a message's session is its
    sender (one session per peer).

    A message received with ``hidden=True`` (its sender is not certain yet:
    see :mod:`.peer_to_peer`, "the first moments") builds its session's state
    without showing it: a hidden session is in none of the queries and makes
    no change, until a message received without ``hidden`` on the same
    session reveals it, under the owner it has then.
    """

    __slots__ = ("_local", "_peers", "ttl")

    def __init__(self, ttl: float = STATE_TTL) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be > 0, got {ttl}")
        self.ttl = ttl
        #: document -> session -> entry, in order of first message
        self._peers: dict[str, dict[str, _Entry]] = {}
        self._local: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ local

    def local(self, document_id: str) -> Mapping[str, Any]:
        """This client's state in a document (read-only view)."""
        return ReadOnlyMap(self._local.setdefault(document_id, {}))

    def local_snapshot(self, document_id: str) -> Mapping[str, Any]:
        """This client's state in a document, as it is now (later changes do
        not show in it)."""
        return ReadOnlyMap(dict(self._local.get(document_id, {})))

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
        self,
        document_id: str,
        sender: str,
        message: StateMessage,
        now: float,
        session: str | None = None,
        *,
        hidden: bool = False,
    ) -> StateOutcome:
        """Apply a Presence message from ``sender`` (on ``session``), with
        automerge-repo's rules. ``hidden``: the sender is not certain (see
        the class docstring). A snapshot's ``dict`` is kept as it is, not
        copied, until a later message changes the state: the caller must not
        change it (a decoded message's is shared by the process's clients)."""
        key = sender if session is None else session
        entries = self._peers.get(document_id)
        if entries is None:
            entries = self._peers[document_id] = {}
        entry = entries.get(key)
        kind = message.type
        if entry is not None and entry.owner != sender:
            entry.owner = sender  # the server says who sends on this session now
        revealed = entry is not None and entry.hidden and not hidden
        if revealed:
            assert entry is not None
            entry.hidden = False  # a message we can trust: the session is its sender's
        if kind == "heartbeat":
            if entry is None:
                # Heartbeats from unknown peers are ignored: they will send a snapshot.
                return _UNKNOWN
            entry.last_seen = now
            return StateOutcome(changed=True, appeared=True) if revealed else _NOTHING
        if kind == "goodbye":
            if entry is None:
                return _UNKNOWN
            del entries[key]
            shown = not entry.hidden or revealed
            return StateOutcome(removed=True, changed=shown)
        if kind == "snapshot":
            snapshot = message.state or {}
            # The decoded message's dict is kept as it is and never changed.
            own = type(snapshot) is not dict
            incoming: dict[str, Any] = dict(snapshot) if own else snapshot  # type: ignore[assignment]
        else:
            assert message.channel is not None
            incoming = {message.channel: message.value}
            own = True
        if entry is None:
            entries[key] = _Entry(sender, incoming, now, hidden, owned=own)
            return StateOutcome(changed=not hidden, appeared=True, unknown_sender=True)
        entry.last_seen = now
        # Like automerge-repo, a snapshot merges: keys it lacks are kept.
        state = entry.state
        changed = any(k not in state or state[k] != v for k, v in incoming.items())
        if changed:
            entry.writable().update(incoming)
        if revealed:
            return StateOutcome(changed=True, appeared=True)
        if entry.hidden:
            return _NOTHING
        return StateOutcome(changed=changed) if changed else _NOTHING

    def reassign(self, session: str, owner: str) -> list[tuple[str, str]]:
        """Show what ``session`` said under ``owner`` from now on; returns
        (document, previous owner) wherever that changed something."""
        changed = []
        for doc_id, entries in self._peers.items():
            entry = entries.get(session)
            if entry is not None and entry.owner != owner:
                if not entry.hidden:
                    changed.append((doc_id, entry.owner))
                entry.owner = owner
        return changed

    def state(self, document_id: str) -> Mapping[str, Mapping[str, Any]]:
        """Peer id → that peer's state, in order of first message: a read-only
        snapshot (later messages do not change it)."""
        entries = self._peers.get(document_id)
        if not entries:
            return EMPTY
        shown = self._shown(entries)
        return ReadOnlyMap({owner: ReadOnlyMap(dict(e.state)) for owner, e in shown.items()})

    @staticmethod
    def _shown(entries: dict[str, _Entry]) -> dict[str, _Entry]:
        # A peer with several sessions shows its most recently active one: a
        # session wrongly credited to a forwarder (a relabelled copy seen first)
        # goes quiet, while the forwarder's own keeps talking.
        shown: dict[str, _Entry] = {}
        for entry in entries.values():
            if entry.hidden:
                continue
            current = shown.get(entry.owner)
            if current is None or entry.last_seen >= current.last_seen:
                shown[entry.owner] = entry
        return shown

    def peer_state(self, document_id: str, peer_id: str) -> Mapping[str, Any] | None:
        """``peer_id``'s state in a document (its most recently active session's), or None."""
        shown: _Entry | None = None
        for entry in self._peers.get(document_id, {}).values():  # _shown's rule, for one peer
            if entry.hidden:
                continue
            if entry.owner == peer_id and (shown is None or entry.last_seen >= shown.last_seen):
                shown = entry
        return shown.view if shown is not None else None

    def views(self, document_id: str) -> dict[str, Mapping[str, Any]]:
        """Peer id → the state shown for that peer in a document (a live view),
        in order of first message: :meth:`peer_state` for every peer at once."""
        entries = self._peers.get(document_id)
        return {owner: e.view for owner, e in self._shown(entries).items()} if entries else {}

    def documents(self) -> tuple[str, ...]:
        """Documents in which some peer has state."""
        return tuple(
            doc
            for doc, entries in self._peers.items()
            if any(not e.hidden for e in entries.values())
        )

    def peers(self, document_id: str) -> tuple[str, ...]:
        """Peer ids with state in a document, in order of first message."""
        return tuple(
            dict.fromkeys(
                e.owner for e in self._peers.get(document_id, {}).values() if not e.hidden
            )
        )

    def has_peer(self, peer_id: str) -> bool:
        """True if ``peer_id`` has state in any document."""
        return any(
            e.owner == peer_id and not e.hidden
            for entries in self._peers.values()
            for e in entries.values()
        )

    def deadline(self) -> float:
        """The earliest time a peer may have gone silent for the TTL (inf:
        nobody has state). Peers heard from since move it later, never earlier."""
        earliest = math.inf
        for entries in self._peers.values():
            for entry in entries.values():
                if entry.last_seen < earliest:
                    earliest = entry.last_seen
        return earliest + self.ttl

    def __len__(self) -> int:
        """How many (document, session) states are held."""
        return sum(len(entries) for entries in self._peers.values())

    def forget_peer(self, document_id: str, peer_id: str) -> bool:
        """Drop one peer's state (it left the document). True if it had state."""
        entries = self._peers.get(document_id)
        if not entries:
            return False
        gone = [key for key, e in entries.items() if e.owner == peer_id]
        shown = any(not entries[key].hidden for key in gone)
        for key in gone:
            del entries[key]
        return shown

    def prune(self, now: float) -> list[tuple[str, str]]:
        """Forget sessions silent for longer than the TTL; returns (document,
        peer id) for each peer that has no state left there."""
        threshold = now - self.ttl
        pruned: list[tuple[str, str]] = []
        for doc_id, entries in self._peers.items():
            stale = [key for key, e in entries.items() if e.last_seen <= threshold]
            for key in stale:
                entry = entries.pop(key)
                owner = entry.owner
                if entry.hidden:
                    continue  # never shown: nothing to say
                if all(e.owner != owner or e.hidden for e in entries.values()):
                    pruned.append((doc_id, owner))
        return pruned

    def forget(self, document_id: str) -> None:
        """Drop everything about a document (we left it)."""
        self._peers.pop(document_id, None)
        self._local.pop(document_id, None)

    def clear_peers(self) -> None:
        """Drop every peer's state but keep local state (connection lost)."""
        self._peers.clear()

    def clear(self) -> None:
        """Drop everything, local state included (the client is closed)."""
        self._peers.clear()
        self._local.clear()


class Coalescer:
    """Latest value per channel, sent at most once per ``interval`` per document.

    ``offer()`` records a value and says when a flush is due; ``take_one()``
    hands out the pending values, one per message. A cursor moved 200 times a
    second thus costs at most ``1 / interval`` messages a second, and the last
    value is always sent.
    """

    __slots__ = ("_last_sent", "_pending", "_scheduled", "interval")

    def __init__(self, interval: float = STATE_INTERVAL) -> None:
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

    def take_one(self, document_id: str, now: float) -> tuple[str, Any] | None:
        """The oldest pending (channel, value) pair, to send now (one message at
        a time, when each message needs its own pacing token). The flush is done
        when nothing is pending any more; None then."""
        pending = self._pending.get(document_id)
        if not pending:
            self._pending.pop(document_id, None)
            self._scheduled.discard(document_id)
            return None
        channel = next(iter(pending))
        value = pending.pop(channel)
        self._last_sent[document_id] = now
        if not pending:
            del self._pending[document_id]
            self._scheduled.discard(document_id)
        return channel, value

    def scheduled(self, document_id: str) -> bool:
        """True while a flush of ``document_id`` is due or in progress."""
        return document_id in self._scheduled

    def forget(self, document_id: str) -> None:
        """Drop a document's pending values and history (we left it)."""
        self._pending.pop(document_id, None)
        self._last_sent.pop(document_id, None)
        self._scheduled.discard(document_id)

    def clear(self) -> None:
        """Drop everything (the connection is gone)."""
        self._pending.clear()
        self._last_sent.clear()
        self._scheduled.clear()


def chosen_name_of(state: Mapping[str, Any] | None) -> str | None:
    """The name a peer chose for itself: its state's ``name``, if a non-empty
    string (what automerge-repo peers and our clients share)."""
    name = state.get("name") if state is not None else None
    return name if type(name) is str and name else None
