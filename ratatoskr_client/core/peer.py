"""A peer's identity (:class:`Peer`), shared by every client of a process.
Re-exported by :mod:`ratatoskr_client.core.membership` and :mod:`ratatoskr_client`. No I/O."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Final

from ..protocol import UserInfo

__all__ = ["Peer", "intern_peer", "server_peer"]


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Peer:
    """One connection's identity, as the server verified it, and the name it
    chose for itself.

    **The name to show is** :attr:`display_name`: the name the peer chose for
    itself if it shared one, else the server's. The two fields behind it:

    * ``name`` is the name the **server** gives the connection: the account's
      name for a token user, an "Adjective Animal" for an anonymous one. A
      server without names (the upstream server today) gives none; then
      ``name`` is the peer's chosen name, or its ``user_id``, or its peer id.
    * ``chosen_name`` is the name the **peer** chose for itself: the ``"name"``
      in the state it shares (automerge-repo ``Presence`` convention, and what
      ``RatatoskrClient(name=...)`` puts there). None until it shares one. For
      :attr:`~ratatoskr_client.RatatoskrClient.me` it is the ``name=`` argument;
      a client's own entry in its ``peers`` and ``presence()`` shows, once it
      shares state, the name its state carries, as the others see it.

    ``chosen_name`` is not part of the identity: two ``Peer`` values are equal
    when their server-given fields are, whatever they call themselves.

    Attributes:
        peer_id: the server-assigned id of the connection (new on every connect).
        user_id: the account id, or None for anonymous peers (and for every
            peer on a server that verifies nothing, like upstream).
        name: the server-given display name (see above).
        is_anonymous: True when the peer authenticated without a token.
        chosen_name: the name the peer shares for itself, or None.
        display_name: the name to show (a property: ``chosen_name or name``).
        is_server: True for the server itself: the sender of a message the
            relay's operator published into a document (its ``peer_id`` is
            the server's, from ``auth_ok``; ``name`` is ``"server"``).
    """

    peer_id: str
    user_id: str | None
    name: str
    is_anonymous: bool
    chosen_name: str | None = field(default=None, compare=False)
    is_server: bool = False

    @property
    def display_name(self) -> str:
        """The name an application shows for this peer: ``chosen_name`` when the
        peer shared one (``RatatoskrClient(name="alpha")`` → "alpha"), else
        ``name`` (the server's: the account's name, or "Adjective Animal").

        A peer's chosen name arrives with its first state message, just after
        its identity: until then this is the server's name, and it changes once
        (redraw on ``peer-state-changed``). For ``client.me`` it is the
        ``name=`` option from the start.
        """
        return self.chosen_name or self.name

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
# By peer id and chosen name: a peer is seen without its chosen name (its
# identity arrived) and then with it (its state did), at different moments by
# different clients; keyed by peer id alone, each without-variant made later
# replaced the entry, and the clients that saw the name after that made a
# Peer of their own, equal but not the same object, so their tables, equal
# too, were not shared (peer_tables shares by the objects' identities).
_INTERNED: Final[weakref.WeakValueDictionary[tuple[str, str | None], Peer]] = (
    weakref.WeakValueDictionary()
)


def intern_peer(
    peer_id: str,
    user_id: str | None,
    name: str,
    is_anonymous: bool,
    chosen_name: str | None = None,
) -> Peer:
    """The shared :class:`Peer` with these fields (created on first use)."""
    key = (peer_id, chosen_name)
    peer = _INTERNED.get(key)
    if (
        peer is None
        or peer.name != name
        or peer.user_id != user_id
        or peer.is_anonymous != is_anonymous
    ):
        peer = Peer(peer_id, user_id, name, is_anonymous, chosen_name)
        _INTERNED[key] = peer
    return peer


def server_peer(peer_id: str) -> Peer:
    """The :class:`Peer` standing for the server ``peer_id`` (``is_server``),
    the sender of what the relay's operator publishes."""
    peer = _SERVERS.get(peer_id)
    if peer is None:
        peer = _SERVERS[peer_id] = Peer(peer_id, None, "server", False, is_server=True)
    return peer


_SERVERS: Final[weakref.WeakValueDictionary[str, Peer]] = weakref.WeakValueDictionary()
