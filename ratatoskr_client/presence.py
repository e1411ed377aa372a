"""Peer identities and per-document presence, as a pure state machine. No I/O.

:class:`PresenceStore` takes the server's identity and presence frames and
returns a list of :data:`Change` values describing what changed; it never calls
back, sleeps or touches a socket. :class:`~ratatoskr_client.RatatoskrClient`
feeds it frames and turns the changes into events, so every rule about "who is
where" can be tested here without a network.

Contracts:

* ``presence(doc)`` is the tuple of peers present in ``doc``, this client
  included, in the order they joined; it is empty for documents not tracked.
* A :class:`PresenceChanged` is returned exactly when ``presence(doc)`` changes
  value (never for a no-op such as a duplicate join).
* Only *tracked* documents (those the application entered, see :meth:`track`)
  are kept; frames about other documents are ignored.
* :meth:`reset` (connection lost) empties every document and every identity,
  returning one :class:`PresenceChanged` per document that had peers.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, TypeAlias

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

__all__ = [
    "Change",
    "IdentityAdded",
    "IdentityRemoved",
    "Peer",
    "PeerJoined",
    "PeerLeft",
    "PresenceChanged",
    "PresenceStore",
    "SelfRemoved",
]


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Peer:
    """One connection's identity, as the server verified it.

    Attributes:
        peer_id: the server-assigned id of the connection (new on every connect).
        user_id: the account id, or None for anonymous peers.
        name: the display name (an "Adjective Animal" for anonymous peers).
        is_anonymous: True when the peer authenticated without a token.
    """

    peer_id: str
    user_id: str | None
    name: str
    is_anonymous: bool

    @staticmethod
    def from_user(peer_id: str, user: UserInfo | None) -> Peer:
        """The Peer for a wire ``user`` map (tolerating a missing name or user)."""
        if user is None:
            return intern_peer(peer_id, None, peer_id, True)
        return intern_peer(peer_id, user.id, user.name or user.id or peer_id, user.is_anonymous)

    @staticmethod
    def unknown(peer_id: str) -> Peer:
        """A placeholder for a peer whose identity has not arrived (yet)."""
        return intern_peer(peer_id, None, peer_id, True)


# Every client in a process sees the same peers; sharing one Peer object per
# identity keeps 500 clients in one process from holding 500 copies of each.
_INTERNED: Final[weakref.WeakValueDictionary[str, Peer]] = weakref.WeakValueDictionary()


def intern_peer(peer_id: str, user_id: str | None, name: str, is_anonymous: bool) -> Peer:
    """The shared :class:`Peer` with these fields (created on first use)."""
    peer = _INTERNED.get(peer_id)
    if (
        peer is None
        or peer.name != name
        or peer.user_id != user_id
        or peer.is_anonymous != is_anonymous
    ):
        peer = Peer(peer_id, user_id, name, is_anonymous)
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


Change: TypeAlias = (
    IdentityAdded | IdentityRemoved | PeerJoined | PeerLeft | PresenceChanged | SelfRemoved
)


# --------------------------------------------------------------------------- store


class PresenceStore:
    """Identities and presence for one client connection. See the module docstring."""

    __slots__ = ("_docs", "_identities", "_me", "_snapshots")

    def __init__(self) -> None:
        self._me: Peer | None = None
        self._identities: dict[str, Peer] = {}
        #: tracked document -> present peers by peer id, in join order
        self._docs: dict[str, dict[str, Peer]] = {}
        #: cached presence tuples, dropped whenever a document changes
        self._snapshots: dict[str, tuple[Peer, ...]] = {}

    # ------------------------------------------------------------------ queries

    @property
    def me(self) -> Peer | None:
        """This connection's identity (the last one, after a disconnect)."""
        return self._me

    @property
    def identities(self) -> Mapping[str, Peer]:
        """Every identity the server announced on this connection, self included."""
        return MappingProxyType(self._identities)

    def peer(self, peer_id: str) -> Peer:
        """The identity announced for ``peer_id``, or a placeholder if none was
        (:meth:`Peer.unknown`). Cheaper than ``identities.get`` on a hot path."""
        peer = self._identities.get(peer_id)
        return peer if peer is not None else Peer.unknown(peer_id)

    def presence(self, document_id: str) -> tuple[Peer, ...]:
        """Peers present in ``document_id`` in join order (empty if not tracked)."""
        snap = self._snapshots.get(document_id)
        if snap is None:
            members = self._docs.get(document_id)
            if not members:
                return ()
            snap = self._snapshots[document_id] = tuple(members.values())
        return snap

    def is_tracked(self, document_id: str) -> bool:
        return document_id in self._docs

    def tracked(self) -> Iterable[str]:
        """Tracked document ids, in the order they were first tracked."""
        return self._docs.keys()

    # ------------------------------------------------------------------ local actions

    def track(self, document_id: str) -> None:
        """Start keeping presence for a document (the application entered it)."""
        self._docs.setdefault(document_id, {})

    def forget(self, document_id: str) -> list[Change]:
        """Stop tracking a document (the application left it)."""
        members = self._docs.pop(document_id, None)
        self._snapshots.pop(document_id, None)
        return [PresenceChanged(document_id)] if members else []

    def reset(self) -> list[Change]:
        """The connection is gone: no identities, nobody present anywhere.
        Documents stay tracked so they can be re-entered after reconnecting."""
        changes: list[Change] = []
        for doc_id, members in self._docs.items():
            if members:
                members.clear()
                changes.append(PresenceChanged(doc_id))
        self._snapshots.clear()
        self._identities.clear()
        return changes

    # ------------------------------------------------------------------ frames

    def authenticated(self, frame: AuthOkFrame) -> list[Change]:
        """A new connection authenticated: forget the old one, record ``me``."""
        changes = self.reset()
        me = Peer.from_user(frame.client_peer_id, frame.user)
        self._me = me
        self._identities[me.peer_id] = me
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
            return self._disconnected(frame.peer_id)
        return []

    def _peer(self, peer_id: str) -> Peer:
        peer = self._identities.get(peer_id)
        return peer if peer is not None else Peer.unknown(peer_id)

    def _changed(self, document_id: str) -> PresenceChanged:
        self._snapshots.pop(document_id, None)
        return PresenceChanged(document_id)

    def _joined(self, document_id: str, peer_id: str) -> list[Change]:
        members = self._docs.get(document_id)
        if members is None or peer_id in members:
            return []
        peer = self._peer(peer_id)
        members[peer.peer_id] = peer
        return [PeerJoined(document_id, peer), self._changed(document_id)]

    def _left(self, document_id: str, peer_id: str) -> list[Change]:
        members = self._docs.get(document_id)
        if members is None:
            return []
        peer = members.pop(peer_id, None)
        if peer is None:
            return []
        change = self._changed(document_id)
        me = self._me
        if me is not None and peer_id == me.peer_id:
            return [change, SelfRemoved(document_id)]
        return [PeerLeft(document_id, peer), change]

    def _state(self, document_id: str, peer_ids: tuple[str, ...]) -> list[Change]:
        members = self._docs.get(document_id)
        if members is None:
            return []
        fresh: dict[str, Peer] = {}
        for pid in peer_ids:
            if pid not in fresh:
                peer = self._peer(pid)
                fresh[peer.peer_id] = peer
        if list(fresh.items()) == list(members.items()):
            return []
        self._docs[document_id] = fresh
        return [self._changed(document_id)]

    def _identity(self, peer_id: str, user: UserInfo | None) -> list[Change]:
        old = self._identities.get(peer_id)
        if (
            old is not None
            and user is not None
            and old.name == user.name
            and old.user_id == user.id
            and old.is_anonymous == user.is_anonymous
        ):
            return []  # an identity we have already: nothing to look up or intern
        peer = Peer.from_user(peer_id, user)
        if old is peer or old == peer:
            return []
        self._identities[peer.peer_id] = peer
        changes: list[Change] = [IdentityAdded(peer)]
        # A presence frame may have named this peer before its identity arrived.
        # A placeholder equal to the real identity (an anonymous peer named after
        # its id) is not a change of presence(doc).
        for doc_id, members in self._docs.items():
            current = members.get(peer.peer_id)
            if current is not None and current != peer:
                members[peer.peer_id] = peer
                changes.append(self._changed(doc_id))
        return changes

    def _disconnected(self, peer_id: str) -> list[Change]:
        changes: list[Change] = []
        for doc_id in list(self._docs):
            changes.extend(self._left(doc_id, peer_id))
        peer = self._identities.pop(peer_id, None)
        if peer is not None:
            changes.append(IdentityRemoved(peer))
        return changes
