"""Who is where, since when, as which user, sharing what: the operator's view
of a relay's memberships. Part of :class:`~.relay.RelayCore`. No I/O.

:class:`Roster` follows the memberships exactly as the core applies them
(:class:`~.documents.Documents` tells it every join and every leave, whatever
caused it: a leave, an expiry, a closed connection), so whatever rule decides
when a peer is present or gone (a grace period before a dropped peer is seen
to leave, for example) is followed here without change. From them it keeps:

* when each peer joined each document (the admin API's and the dashboard's
  "since");
* how many connections of each *user* are present in each document, and from
  that the **membership events** the webhooks send: a document *occupied*
  (its first peer joined) or *vacated* (its last peer left), a user *joined*
  (their first connection entered) or *left* (their last connection left).
  Anonymous peers are each their own user (``anon:<peer id>``). On a relay of
  a cluster these are this relay's own transitions; the webhook sender turns
  them into the cluster's (see :mod:`ratatoskr_client.server.asyncio.webhooks`);
* the latest Presence state (automerge-repo's ``{"__presence": ...}``
  protocol: snapshot, update, heartbeat, goodbye) each present peer shared in
  each document, bounded in bytes (:data:`MAX_STATE_BYTES` per peer and
  document), for the admin API's "state" and the dashboard's cursors.
  :meth:`Roster.peer_states` is the one query the I/O layer asks; a fuller
  cache of peer states can replace this part behind it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from ...protocol import PRESENCE_MARKER
from .connection import Connection

__all__ = [
    "ANONYMOUS_USER_PREFIX",
    "MAX_STATE_BYTES",
    "MAX_STATE_CHANNELS",
    "MembershipEvent",
    "Roster",
    "user_key",
]

#: The most bytes of Presence messages the roster keeps per peer and
#: document: each channel is charged the size of the message that set it
#: last (a snapshot's whole size to each of its keys, an over-estimate, so
#: the bound holds). A message that would pass it is relayed but not kept.
MAX_STATE_BYTES: Final = 8192
#: The most channels kept per peer and document.
MAX_STATE_CHANNELS: Final = 32
#: How an anonymous peer's user key starts: each anonymous peer is its own user.
ANONYMOUS_USER_PREFIX: Final = "anon:"

EventKind: TypeAlias = Literal["document.occupied", "document.vacated", "user.joined", "user.left"]


@dataclass(frozen=True, slots=True)
class MembershipEvent:
    """A change of who is present, as a webhook reports it.

    Attributes:
        kind: ``document.occupied``, ``document.vacated``, ``user.joined``
            or ``user.left``.
        document_id: the document.
        user: the user key (``user.*`` only): the account id, or
            ``anon:<peer id>`` for an anonymous peer.
        peer_id: the connection whose join or leave caused it.
        name: that connection's display name.
        at: the core's clock when it happened.
    """

    kind: EventKind
    document_id: str
    user: str | None
    peer_id: str
    name: str
    at: float

    def to_json(self) -> dict[str, Any]:
        """The event as the webhook's JSON has it (``at`` is added by the sender)."""
        body: dict[str, Any] = {"type": self.kind, "documentId": self.document_id}
        if self.user is not None:
            body["user"] = self.user
        body["peerId"] = self.peer_id
        body["name"] = self.name
        return body


def user_key(conn: Connection) -> str:
    """Who ``conn`` is as a user: its account id, or for an anonymous peer
    ``anon:<peer id>`` (each anonymous connection is its own user)."""
    if conn.user_id is None or conn.is_anonymous:
        return ANONYMOUS_USER_PREFIX + conn.peer_id
    return conn.user_id


class _State:
    """One peer's shared state in one document, with the bytes charged to it."""

    __slots__ = ("sizes", "values")

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.sizes: dict[str, int] = {}


class Roster:
    """Joins, users and shared state per document (see the module docstring).

    ``on_event``, when set, is called with every :class:`MembershipEvent` as
    it happens (synchronously: it must only record it).
    """

    __slots__ = ("_clock", "_since", "_states", "_users", "active", "on_event")

    def __init__(self, clock: Callable[[], float], *, active: bool = True) -> None:
        self._clock = clock
        #: False: it keeps nothing (a relay without the admin API and webhooks
        #: pays no memory for them); every query answers empty
        self.active = active
        #: document -> peer id -> when it joined (the core's clock)
        self._since: dict[str, dict[str, float]] = {}
        #: document -> user key -> its connections present
        self._users: dict[str, dict[str, int]] = {}
        #: document -> peer id -> its state
        self._states: dict[str, dict[str, _State]] = {}
        self.on_event: Callable[[MembershipEvent], None] | None = None

    # ------------------------------------------------------------------ membership

    def joined(self, document_id: str, conn: Connection) -> None:
        """``conn`` became present in ``document_id`` (not a refresh)."""
        if not self.active:
            return
        now = self._clock()
        peers = self._since.get(document_id)
        if peers is None:
            peers = self._since[document_id] = {}
            self._emit("document.occupied", document_id, None, conn, now)
        peers[conn.peer_id] = now
        users = self._users.setdefault(document_id, {})
        key = user_key(conn)
        count = users.get(key, 0)
        users[key] = count + 1
        if count == 0:
            self._emit("user.joined", document_id, key, conn, now)

    def left(self, document_id: str, conn: Connection) -> None:
        """``conn`` is no longer present in ``document_id``."""
        if not self.active:
            return
        peers = self._since.get(document_id)
        if peers is None or peers.pop(conn.peer_id, None) is None:
            return
        now = self._clock()
        states = self._states.get(document_id)
        if states is not None:
            states.pop(conn.peer_id, None)
            if not states:
                del self._states[document_id]
        users = self._users[document_id]
        key = user_key(conn)
        count = users[key] - 1
        if count:
            users[key] = count
        else:
            del users[key]
            self._emit("user.left", document_id, key, conn, now)
        if not peers:
            del self._since[document_id]
            del self._users[document_id]
            self._emit("document.vacated", document_id, None, conn, now)

    def _emit(
        self, kind: EventKind, document_id: str, user: str | None, conn: Connection, now: float
    ) -> None:
        if self.on_event is not None:
            self.on_event(MembershipEvent(kind, document_id, user, conn.peer_id, conn.name, now))

    # ------------------------------------------------------------------ state

    def state_message(self, document_id: str, peer_id: str, payload: Any, size: int) -> None:
        """A present peer relayed the ephemeral ``payload`` of ``size`` bytes
        in ``document_id``: if it is a Presence message, keep what it says.
        Malformed Presence messages are ignored here (they were relayed as
        they are: the relay does not judge them)."""
        message = payload.get(PRESENCE_MARKER) if type(payload) is dict else None
        if type(message) is not dict:
            return
        peers = self._since.get(document_id)
        if peers is None or peer_id not in peers:
            return
        kind = message.get("type")
        if kind == "goodbye":
            self._forget_state(document_id, peer_id)
            return
        if kind == "snapshot":
            state = message.get("state")
            if type(state) is not dict or not all(type(k) is str for k in state):
                return
            changes: Mapping[str, Any] = state
        elif kind == "update":
            channel = message.get("channel")
            if type(channel) is not str:
                return
            changes = {channel: message.get("value")}
        else:
            return  # heartbeat, or unknown: nothing to keep
        states = self._states.setdefault(document_id, {})
        entry = states.get(peer_id)
        if entry is None:
            entry = states[peer_id] = _State()
        sizes = entry.sizes
        total = sum(s for k, s in sizes.items() if k not in changes) + size * len(changes)
        keys = len(sizes.keys() | changes.keys())
        if total > MAX_STATE_BYTES or keys > MAX_STATE_CHANNELS:
            return  # relayed, not kept: the bound holds
        for key, value in changes.items():
            entry.values[key] = value
            sizes[key] = size

    def _forget_state(self, document_id: str, peer_id: str) -> None:
        states = self._states.get(document_id)
        if states is not None and states.pop(peer_id, None) is not None and not states:
            del self._states[document_id]

    # ------------------------------------------------------------------ queries

    def since(self, document_id: str) -> Mapping[str, float]:
        """Peer id -> when it joined ``document_id`` (the core's clock)."""
        return self._since.get(document_id, {})

    def users(self, document_id: str) -> Mapping[str, int]:
        """User key -> how many of its connections are present in ``document_id``."""
        return self._users.get(document_id, {})

    def peer_states(self, document_id: str) -> dict[str, dict[str, Any]]:
        """Peer id -> a copy of the latest state it shared in ``document_id``
        (peers that shared none are absent)."""
        states = self._states.get(document_id)
        if not states:
            return {}
        return {peer: dict(entry.values) for peer, entry in states.items()}

    def state_bytes(self) -> int:
        """The bytes charged to every kept state (at most :data:`MAX_STATE_BYTES`
        per membership)."""
        return sum(sum(e.sizes.values()) for s in self._states.values() for e in s.values())

    def documents(self) -> int:
        """Documents with someone present."""
        return len(self._since)
