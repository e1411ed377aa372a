"""Membership: who is connected (identities) and who is in each document. No I/O.

This is what the public API calls *presence* (``presence(doc)``,
``presence-changed``): the set of peers in a document. It is not per-peer
*state* (a cursor, a name a peer shares), which automerge-repo also calls
"Presence" and which lives in :mod:`ratatoskr_client.peer_state`.

:class:`MembershipStore` takes the server's identity and presence frames (or,
without server-side presence, what the client derives from peers' messages) and
returns a list of :data:`Change` values describing what changed; it never calls
back, sleeps or touches a socket. The client's core feeds it and turns the
changes into events, so every rule about "who is where" can be tested here
without a network.

Contracts:

* ``presence(doc)`` is the tuple of peers present in ``doc``, this client
  included, in the order they joined; it is empty for documents not tracked.
* A :class:`PresenceChanged` is returned exactly when ``presence(doc)`` changes
  value (never for a no-op such as a duplicate join).
* Only *tracked* documents (those the application entered, see :meth:`track`)
  are kept; frames about other documents are ignored.
* :meth:`reset` (connection lost) empties every document and every identity,
  returning one :class:`PresenceChanged` per document that had peers.
* Bounded: at most ``max_identities`` identities and ``max_peers`` peers per
  document (:data:`~ratatoskr_client.protocol.constants.MAX_IDENTITIES`,
  :data:`~ratatoskr_client.protocol.constants.MAX_PRESENCE_PEERS`). A frame
  that would go beyond changes nothing and returns one :class:`Refused`, found
  before any per-entry work (a ``doc_presence_state`` is refused on its length).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, TypeAlias

from ._peer_tables import PeerTable
from .errors import ProtocolError
from .protocol import (
    AuthOkFrame,
    DocPresenceStateFrame,
    Frame,
    PeerDisconnectedFrame,
    PeerIdentityFrame,
    PeerJoinedDocFrame,
    PeerLeftDocFrame,
    UserInfo,
)
from .protocol.constants import MAX_IDENTITIES, MAX_PRESENCE_PEERS

__all__ = [
    "Change",
    "IdentityAdded",
    "IdentityRemoved",
    "MembershipStore",
    "Peer",
    "PeerJoined",
    "PeerLeft",
    "PresenceChanged",
    "Refused",
    "SelfRemoved",
    "intern_peer",
]


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Peer:
    """One connection's identity, as the server verified it, and the name it
    chose for itself.

    Which name is which:

    * ``name`` is the name the **server** gives the connection: the account's
      name for a token user, an "Adjective Animal" for an anonymous one. A
      server without names (the upstream server today) gives none; then
      ``name`` is the peer's chosen name, or its ``user_id``, or its peer id.
    * ``chosen_name`` is the name the **peer** chose for itself: the ``"name"``
      in the state it shares (automerge-repo ``Presence`` convention, and what
      ``RatatoskrClient(name=...)`` puts there). None until it shares one. For
      :attr:`~ratatoskr_client.RatatoskrClient.me` it is the ``name=`` argument.

    ``chosen_name`` is not part of the identity: two ``Peer`` values are equal
    when their server-given fields are, whatever they call themselves.

    Attributes:
        peer_id: the server-assigned id of the connection (new on every connect).
        user_id: the account id, or None for anonymous peers (and for every
            peer on a server that verifies nothing, like upstream).
        name: the server-given display name (see above).
        is_anonymous: True when the peer authenticated without a token.
        chosen_name: the name the peer shares for itself, or None.
    """

    peer_id: str
    user_id: str | None
    name: str
    is_anonymous: bool
    chosen_name: str | None = field(default=None, compare=False)

    @staticmethod
    def from_user(peer_id: str, user: UserInfo | None, chosen_name: str | None = None) -> Peer:
        """The Peer for a wire ``user`` map (tolerating a missing name or user):
        without a server-given name, the chosen name, the user id or the peer id."""
        if user is None:
            return intern_peer(peer_id, None, chosen_name or peer_id, True, chosen_name)
        name = user.name or chosen_name or user.id or peer_id
        return intern_peer(peer_id, user.id, name, user.is_anonymous, chosen_name)

    @staticmethod
    def unknown(peer_id: str) -> Peer:
        """A placeholder for a peer whose identity has not arrived (yet)."""
        return intern_peer(peer_id, None, peer_id, True)


# Every client in a process sees the same peers; sharing one Peer object per
# identity keeps 500 clients in one process from holding 500 copies of each.
_INTERNED: Final[weakref.WeakValueDictionary[str, Peer]] = weakref.WeakValueDictionary()


def intern_peer(
    peer_id: str,
    user_id: str | None,
    name: str,
    is_anonymous: bool,
    chosen_name: str | None = None,
) -> Peer:
    """The shared :class:`Peer` with these fields (created on first use)."""
    peer = _INTERNED.get(peer_id)
    if (
        peer is None
        or peer.name != name
        or peer.user_id != user_id
        or peer.is_anonymous != is_anonymous
        or peer.chosen_name != chosen_name
    ):
        peer = Peer(peer_id, user_id, name, is_anonymous, chosen_name)
        _INTERNED[peer_id] = peer
    return peer


# --------------------------------------------------------------------------- changes


@dataclass(frozen=True, slots=True)
class IdentityAdded:
    """The server announced (or updated) a peer's identity."""

    peer: Peer


@dataclass(frozen=True, slots=True)
class IdentityRemoved:
    """A peer disconnected from the server."""

    peer: Peer


@dataclass(frozen=True, slots=True)
class PeerJoined:
    """Another peer entered a tracked document."""

    document_id: str
    peer: Peer


@dataclass(frozen=True, slots=True)
class PeerLeft:
    """Another peer left a tracked document (or timed out, or disconnected)."""

    document_id: str
    peer: Peer


@dataclass(frozen=True, slots=True)
class PresenceChanged:
    """``presence(document_id)`` has a new value; read it from the store."""

    document_id: str


@dataclass(frozen=True, slots=True)
class SelfRemoved:
    """The server removed *this* client from a tracked document (presence TTL
    expired, e.g. after a stall). The driver should join again."""

    document_id: str


@dataclass(frozen=True, slots=True)
class Refused:
    """A frame would have taken a table beyond its bound: nothing of it was
    applied. ``error`` says which frame and which bound (an ``error`` event)."""

    error: ProtocolError


def _refused(problem: str) -> list[Change]:
    return [Refused(ProtocolError(problem))]


Change: TypeAlias = (
    IdentityAdded
    | IdentityRemoved
    | PeerJoined
    | PeerLeft
    | PresenceChanged
    | SelfRemoved
    | Refused
)


# --------------------------------------------------------------------------- store

#: Seconds the tables must stay unchanged before they are shared with the other
#: clients of the process that hold the same (:mod:`ratatoskr_client._peer_tables`):
#: long enough for a burst of joins to be over, short enough that an idle fleet
#: of bots shares its tables within a second.
SHARE_AFTER: Final = 0.5


class MembershipStore:
    """Identities and membership for one client connection. See the module docstring."""

    __slots__ = (
        "_docs",
        "_identities",
        "_me",
        "changed",
        "max_identities",
        "max_peers",
        "share_at",
    )

    def __init__(
        self, *, max_identities: int = MAX_IDENTITIES, max_peers: int = MAX_PRESENCE_PEERS
    ) -> None:
        #: the most identities held at once
        self.max_identities = max_identities
        #: the most peers held present in one document
        self.max_peers = max_peers
        #: the tables changed since :meth:`touched` was last told
        self.changed = False
        #: when to :meth:`share` the tables (they have been quiet since)
        self.share_at = math.inf
        self._me: Peer | None = None
        self._identities: PeerTable[Peer] = PeerTable(ordered=False)
        #: tracked document -> present peers by peer id, in join order
        self._docs: dict[str, PeerTable[Peer]] = {}

    # ------------------------------------------------------------------ queries

    @property
    def me(self) -> Peer | None:
        """This connection's identity (the last one, after a disconnect)."""
        return self._me

    @property
    def identities(self) -> Mapping[str, Peer]:
        """Every identity the server announced on this connection, self included
        (a read-only live view)."""
        return MappingProxyType(self._identities)

    def touched(self, now: float) -> float:
        """The tables changed at ``now``: they are to be shared once they have
        been quiet for :data:`SHARE_AFTER`. Returns that time."""
        self.changed = False
        self.share_at = now + SHARE_AFTER
        return self.share_at

    def share(self) -> None:
        """Share the tables with the other clients of the process that hold the
        same (see :mod:`ratatoskr_client._peer_tables`). Changes nothing seen."""
        self.share_at = math.inf
        self._identities.share()
        for members in self._docs.values():
            members.share()

    def unshared(self) -> bool:
        """True if some non-empty table is this client's own."""
        return (bool(self._identities) and not self._identities.shared) or any(
            m and not m.shared for m in self._docs.values()
        )

    def peer(self, peer_id: str) -> Peer:
        """The identity announced for ``peer_id``, or a placeholder if none was
        (:meth:`Peer.unknown`). Cheaper than ``identities.get`` on a hot path."""
        peer = self._identities.get(peer_id)
        return peer if peer is not None else Peer.unknown(peer_id)

    def presence(self, document_id: str) -> tuple[Peer, ...]:
        """Peers present in ``document_id`` in join order (empty if not tracked)."""
        members = self._docs.get(document_id)
        return members.snapshot() if members else ()

    def size(self, document_id: str) -> int:
        """How many peers are present in ``document_id`` (without building a tuple)."""
        members = self._docs.get(document_id)
        return len(members) if members else 0

    def is_tracked(self, document_id: str) -> bool:
        """True while presence is kept for ``document_id`` (it was entered)."""
        return document_id in self._docs

    def tracked(self) -> Iterable[str]:
        """Tracked document ids, in the order they were first tracked."""
        return self._docs.keys()

    # ------------------------------------------------------------------ local actions

    def track(self, document_id: str) -> None:
        """Start keeping presence for a document (the application entered it)."""
        if document_id not in self._docs:
            self._docs[document_id] = PeerTable()

    def forget(self, document_id: str) -> list[Change]:
        """Stop tracking a document (the application left it)."""
        members = self._docs.pop(document_id, None)
        return [PresenceChanged(document_id)] if members else []

    def reset(self) -> list[Change]:
        """The connection is gone: no identities, nobody present anywhere.
        Documents stay tracked so they can be re-entered after reconnecting."""
        changes: list[Change] = []
        for doc_id, members in self._docs.items():
            if members:
                members.clear()
                changes.append(PresenceChanged(doc_id))
        self._identities.clear()
        return changes

    # ------------------------------------------------------------------ frames

    def authenticated(self, frame: AuthOkFrame, chosen_name: str | None = None) -> list[Change]:
        """A new connection authenticated: forget the old one, record ``me``
        (with the name this client chose for itself, if any)."""
        changes = self.reset()
        me = Peer.from_user(frame.client_peer_id, frame.user, chosen_name)
        self._me = me
        self._identities.put(me)
        return changes

    def apply(self, frame: Frame) -> list[Change]:
        """Apply one server frame. Frames that do not concern identities or
        presence return no changes."""
        # `type(x) is C` both narrows the type and is the cheapest test (this
        # runs for every identity and presence frame).
        if type(frame) is PeerJoinedDocFrame:
            return self._joined(frame.document_id, frame.peer_id)
        if type(frame) is PeerIdentityFrame:
            return self._identity(frame.peer_id, frame.user)
        if type(frame) is PeerLeftDocFrame:
            return self._left(frame.document_id, frame.peer_id)
        if type(frame) is DocPresenceStateFrame:
            return self._state(frame.document_id, frame.peers)
        if type(frame) is PeerDisconnectedFrame:
            return self.disconnected(frame.peer_id)
        return []

    # ------------------------------------------------------------------ derived membership

    def joined(self, document_id: str, peer_id: str) -> list[Change]:
        """``peer_id`` is in ``document_id`` (as ``peer_joined_doc`` says)."""
        return self._joined(document_id, peer_id)

    def left(self, document_id: str, peer_id: str) -> list[Change]:
        """``peer_id`` left ``document_id`` (as ``peer_left_doc`` says)."""
        return self._left(document_id, peer_id)

    def present(self, document_id: str, peer_ids: tuple[str, ...]) -> list[Change]:
        """Exactly ``peer_ids`` are in ``document_id``, in this order (as
        ``doc_presence_state`` says)."""
        return self._state(document_id, peer_ids)

    def identity(
        self, peer_id: str, user: UserInfo | None, chosen_name: str | None
    ) -> list[Change]:
        """Record a peer's identity (as ``peer_identity`` says), with its chosen name."""
        return self._identity(peer_id, user, chosen_name)

    def chosen_name(self, peer_id: str, name: str | None) -> list[Change]:
        """A known peer shares ``name`` for itself now. The server-given fields do
        not change, so neither does any presence value: the new :class:`Peer` is
        swapped in silently (returns no changes). The tables did change, though
        (:attr:`changed`): they are to be shared again once quiet."""
        old = self._identities.get(peer_id)
        if old is None or old.chosen_name == name:
            return []
        peer = intern_peer(old.peer_id, old.user_id, old.name, old.is_anonymous, name)
        self._identities.put(peer)
        for members in self._docs.values():
            if peer_id in members:
                members.put(peer)
        self.changed = True
        return []

    def _joined(self, document_id: str, peer_id: str) -> list[Change]:
        members = self._docs.get(document_id)
        if members is None or peer_id in members:
            return []
        if len(members) >= self.max_peers:
            return _refused(
                f"peer_joined_doc frame: {document_id!r} has {len(members):,} peers present"
                f" already, the most a client holds ({self.max_peers:,}); {peer_id!r} is left out"
            )
        peer = self.peer(peer_id)
        members.put(peer)
        return [PeerJoined(document_id, peer), PresenceChanged(document_id)]

    def _left(self, document_id: str, peer_id: str) -> list[Change]:
        members = self._docs.get(document_id)
        if members is None:
            return []
        peer = members.pop(peer_id)
        if peer is None:
            return []
        change = PresenceChanged(document_id)
        me = self._me
        if me is not None and peer_id == me.peer_id:
            return [change, SelfRemoved(document_id)]
        return [PeerLeft(document_id, peer), change]

    def _state(self, document_id: str, peer_ids: tuple[str, ...]) -> list[Change]:
        members = self._docs.get(document_id)
        if members is None:
            return []
        if len(peer_ids) > self.max_peers:  # before building anything per entry
            return _refused(
                f"doc_presence_state frame: {len(peer_ids):,} peers in {document_id!r}, more"
                f" than a client holds ({self.max_peers:,}); the frame is ignored"
            )
        fresh: dict[str, Peer] = {}
        for pid in peer_ids:
            if pid not in fresh:
                peer = self.peer(pid)
                fresh[peer.peer_id] = peer
        if list(fresh.items()) == list(members.items()):
            return []
        members.replace(fresh)
        return [PresenceChanged(document_id)]

    def _identity(
        self, peer_id: str, user: UserInfo | None, chosen_name: str | None = None
    ) -> list[Change]:
        old = self._identities.get(peer_id)
        if old is None and len(self._identities) >= self.max_identities:
            return _refused(
                f"identity of {peer_id!r} refused: {len(self._identities):,} identities are"
                " held already, the most a client holds"
            )
        if old is not None:
            if chosen_name is None:
                chosen_name = old.chosen_name  # a server frame says nothing about it
            if (
                user is not None
                and old.name == user.name
                and old.user_id == user.id
                and old.is_anonymous == user.is_anonymous
                and old.chosen_name == chosen_name
            ):
                return []  # an identity we have already: nothing to look up or intern
        peer = Peer.from_user(peer_id, user, chosen_name)
        if old is peer:
            return []
        if old == peer:  # the same identity; at most its chosen name is new
            return self.chosen_name(peer_id, chosen_name)
        self._identities.put(peer)
        changes: list[Change] = [IdentityAdded(peer)]
        # A presence frame may have named this peer before its identity arrived.
        # A placeholder equal to the real identity (an anonymous peer named after
        # its id) is not a change of presence(doc).
        for doc_id, members in self._docs.items():
            current = members.get(peer.peer_id)
            if current is not None and current is not peer:
                members.put(peer)
                if current != peer:
                    changes.append(PresenceChanged(doc_id))
        return changes

    def disconnected(self, peer_id: str) -> list[Change]:
        """``peer_id``'s connection closed: out of every document, then forgotten."""
        changes: list[Change] = []
        for doc_id in list(self._docs):
            changes.extend(self._left(doc_id, peer_id))
        peer = self._identities.pop(peer_id)
        if peer is not None:
            changes.append(IdentityRemoved(peer))
        return changes
