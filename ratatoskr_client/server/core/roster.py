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

The latest Presence state of each present peer (the admin API's "state", the
dashboard's cursors) is not kept here: the relay keeps it once, for joiners
too (:mod:`.states`), and :meth:`~.relay.RelayCore.peer_states` reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from .connection import Connection

__all__ = [
    "ANONYMOUS_USER_PREFIX",
    "MembershipEvent",
    "Roster",
    "user_key",
]

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


class Roster:
    """Joins and users per document (see the module docstring).

    ``on_event``, when set, is called with every :class:`MembershipEvent` as
    it happens (synchronously: it must only record it).
    """

    __slots__ = ("_clock", "_since", "_users", "active", "on_event")

    def __init__(self, clock: Callable[[], float], *, active: bool = True) -> None:
        self._clock = clock
        #: False: it keeps nothing (a relay without the admin API and webhooks
        #: pays no memory for them); every query answers empty
        self.active = active
        #: document -> peer id -> when it joined (the core's clock)
        self._since: dict[str, dict[str, float]] = {}
        #: document -> user key -> its connections present
        self._users: dict[str, dict[str, int]] = {}
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

    # ------------------------------------------------------------------ queries

    def since(self, document_id: str) -> Mapping[str, float]:
        """Peer id -> when it joined ``document_id`` (the core's clock)."""
        return self._since.get(document_id, {})

    def users(self, document_id: str) -> Mapping[str, int]:
        """User key -> how many of its connections are present in ``document_id``."""
        return self._users.get(document_id, {})

    def documents(self) -> int:
        """Documents with someone present."""
        return len(self._since)
