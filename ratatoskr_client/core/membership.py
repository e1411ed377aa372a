"""Membership: who is connected (identities) and who is in each document. No I/O.

This is what the public API calls *presence* (``presence(doc)``,
``presence-changed``): the set of peers in a document. It is not per-peer
*state* (a cursor, a name a peer shares), which automerge-repo also calls
"Presence" and which lives in :mod:`ratatoskr_client.core.peer_state`.

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

Identity scope: behind a server that announces ``"scoped-identity"`` the store
keeps an identity only while its peer is in one of our tracked documents; the
rules are in :mod:`ratatoskr_client.core.scope`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final

from ..errors import ProtocolError
from ..protocol import (
    FEATURE_SCOPED_IDENTITY,
    AuthOkFrame,
    DocPresenceStateFrame,
    Frame,
    PeerDisconnectedFrame,
    PeerIdentityFrame,
    PeerJoinedDocFrame,
    PeerLeftDocFrame,
    UserInfo,
)
from ..protocol.constants import MAX_IDENTITIES, MAX_PRESENCE_PEERS
from .changes import (
    Change,
    IdentityAdded,
    IdentityRemoved,
    PeerJoined,
    PeerLeft,
    PresenceChanged,
    Refused,
    SelfRemoved,
)
from .peer import _INTERNED as _INTERNED  # (where the shared peers are kept)
from .peer import Peer, intern_peer
from .peer_tables import PeerTable
from .scope import LINGER, ScopedIdentities

__all__ = [
    "LINGER",
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


def _refused(problem: str) -> list[Change]:
    return [Refused(ProtocolError(problem))]


# --------------------------------------------------------------------------- store

#: Seconds the tables must stay unchanged before they are shared with the other
#: clients of the process that hold the same (:mod:`ratatoskr_client.core.peer_tables`):
#: long enough for a burst of joins to be over, short enough that an idle fleet
#: of bots shares its tables within a second.
SHARE_AFTER: Final = 0.5


class MembershipStore(ScopedIdentities):
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
        #: the most identities held at once (with :attr:`incoming`; and at most
        #: as many more out of sight in :attr:`lingering`)
        self.max_identities = max_identities
        #: the most peers held present in one document
        self.max_peers = max_peers
        self._start_scope()
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
        same (see :mod:`ratatoskr_client.core.peer_tables`). Changes nothing seen."""
        self.share_at = math.inf
        self._identities.share()
        for members in self._docs.values():
            members.share()

    def peer(self, peer_id: str) -> Peer:
        """The identity announced for ``peer_id``, or a placeholder if none was
        (:meth:`Peer.unknown`). Cheaper than ``identities.get`` on a hot path."""
        peer = self._identities.get(peer_id)
        if peer is not None:
            return peer
        if self.incoming:
            peer = self.incoming.get(peer_id)
            if peer is not None:
                return peer
        if self.lingering:
            peer = self.lingering.get(peer_id)
            if peer is not None:
                return peer
        return Peer.unknown(peer_id)

    def _drop_unshared(self, peer_ids: Iterable[str]) -> None:
        """Scoped: forget at once the identities of these peers that are in
        none of our documents any more (no frame will say more about them);
        while a leave of ours is on its way, out of sight (:attr:`lingering`)."""
        me = self._me
        linger = self.linger_until != math.inf
        for peer_id in peer_ids:
            if (me is None or peer_id != me.peer_id) and not self._in_a_document(peer_id):
                peer = self._identities.pop(peer_id)
                if peer is not None:
                    self.changed = True
                    if linger:
                        self._linger(peer_id, peer)

    def presence(self, document_id: str) -> tuple[Peer, ...]:
        """Peers present in ``document_id`` in join order (empty if not tracked)."""
        members = self._docs.get(document_id)
        return members.snapshot() if members else ()

    def size(self, document_id: str) -> int:
        """How many peers are present in ``document_id`` (without building a tuple)."""
        members = self._docs.get(document_id)
        return len(members) if members else 0

    def tracked(self) -> Iterable[str]:
        """Tracked document ids, in the order they were first tracked."""
        return self._docs.keys()

    # ------------------------------------------------------------------ local actions

    def track(self, document_id: str) -> None:
        """Start keeping presence for a document (the application entered it)."""
        if document_id not in self._docs:
            self._docs[document_id] = PeerTable()

    def forget(self, document_id: str, now: float | None = None) -> list[Change]:
        """Stop tracking a document (the application left it, at ``now``). With
        scoped identities, the peers known only from it are forgotten too
        (silently: they did not disconnect)."""
        members = self._docs.pop(document_id, None)
        if not members:
            return []
        if self.scoped:
            # Until the server has our leave it may name these peers to us
            # again without their identity (it thinks we know them): keep
            # them out of sight for LINGER seconds (:attr:`lingering`).
            if now is not None:
                self.linger_until = now + LINGER  # (our leave is on its way)
            self._drop_unshared(list(members))
        return [PresenceChanged(document_id)]

    def due(self) -> float:
        """When the store wants :meth:`share` or :meth:`stop_lingering` to run."""
        return min(self.share_at, self.linger_until)

    def reset(self) -> list[Change]:
        """The connection is gone: no identities, nobody present anywhere.
        Documents stay tracked so they can be re-entered after reconnecting."""
        changes: list[Change] = []
        for doc_id, members in self._docs.items():
            if members:
                members.clear()
                changes.append(PresenceChanged(doc_id))
        self._identities.clear()
        self._reset_scope()
        return changes

    # ------------------------------------------------------------------ frames

    def authenticated(self, frame: AuthOkFrame, chosen_name: str | None = None) -> list[Change]:
        """A new connection authenticated: forget the old one, record ``me``
        (with the name this client chose for itself, if any)."""
        changes = self.reset()
        self.scoped = frame.features is not None and FEATURE_SCOPED_IDENTITY in frame.features
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
        joined: list[Change] = [PeerJoined(document_id, peer), PresenceChanged(document_id)]
        if self.incoming or self.lingering:
            return self._adopt(peer) + joined
        return joined

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
            if self.scoped:
                # We are out: the server tells us nothing more about the
                # others there until we are back (its state then lists them).
                others = list(members)
                members.clear()
                self._drop_unshared(others)
            return [change, SelfRemoved(document_id)]
        if self.scoped and not self._in_a_document(peer_id):
            # Out of our last document with it: forgotten, silently, unless
            # the next frame is its peer_disconnected (see disconnected()).
            self._identities.pop(peer_id)
            self.departed[peer_id] = peer
            if self.linger_until != math.inf:
                self._linger(peer_id, peer)  # (a leave of ours is on its way)
            self.changed = True
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
        changes: list[Change] = []
        if self.incoming or self.lingering:
            for peer in fresh.values():
                changes += self._adopt(peer)
        if list(fresh.items()) == list(members.items()):
            return changes
        gone = [pid for pid in members if pid not in fresh]
        members.replace(fresh)
        if self.scoped and gone:
            self._drop_unshared(gone)
        changes.append(PresenceChanged(document_id))
        return changes

    def _identity(
        self, peer_id: str, user: UserInfo | None, chosen_name: str | None = None
    ) -> list[Change]:
        old = self._identities.get(peer_id)
        if (
            old is None
            and len(self._identities) + len(self.incoming) >= self.max_identities
            and peer_id not in self.incoming
        ):
            return _refused(
                f"identity of {peer_id!r} refused: {len(self._identities):,} identities are"
                " held already, the most a client holds"
            )
        if old is None and self.scoped and not self._in_a_document(peer_id):
            # For the next frame, which will name it; kept if it puts the
            # peer in one of our documents.
            self.incoming[peer_id] = Peer.from_user(peer_id, user, chosen_name)
            return []
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
        if peer is None and self.departed:
            peer = self.departed.pop(peer_id, None)  # it left our last document just now
        if self.lingering:
            self.lingering.pop(peer_id, None)
        if peer is not None:
            changes.append(IdentityRemoved(peer))
        return changes
