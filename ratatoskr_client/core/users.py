"""People, not connections: a document's peers grouped by user. No I/O.

One person with three tabs, or a bot with two processes, is three or two
peers (each connection has its own peer id). Applications usually want "who is
here" by person, with "first arrival" and "last departure" events.
:func:`group_users` groups a document's presence by user id; a peer without
one (anonymous, or on a server that verifies nobody) is its own user, keyed
by its peer id. :class:`UserTracker` remembers the users last announced per
document and says who arrived and who left when presence changes: the
client's core turns that into ``user-joined`` and ``user-left``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .peer import Peer

__all__ = ["User", "UserTracker", "group_users", "user_key"]


@dataclass(frozen=True, slots=True)
class User:
    """One person (or bot identity) present in a document, with all its peers.

    Attributes:
        key: what identifies the user: its ``user_id``, or for a peer without
            one (anonymous) that peer's id.
        user_id: the account id, or None for an anonymous peer (then the user
            has exactly one peer).
        name: the server-given name of its first peer (see :class:`Peer`).
        is_anonymous: True for an anonymous peer.
        peers: its peers present in the document, in join order (never empty).
    """

    key: str
    user_id: str | None
    name: str
    is_anonymous: bool
    peers: tuple[Peer, ...]


def user_key(peer: Peer) -> str:
    """The key of ``peer``'s user: its user id, else its peer id."""
    return peer.user_id if peer.user_id is not None else peer.peer_id


def group_users(peers: Iterable[Peer]) -> tuple[User, ...]:
    """``peers`` grouped by user, in the order of each user's first peer."""
    groups: dict[str, list[Peer]] = {}
    for peer in peers:
        groups.setdefault(user_key(peer), []).append(peer)
    return tuple(
        User(key, ps[0].user_id, ps[0].name, ps[0].is_anonymous, tuple(ps))
        for key, ps in groups.items()
    )


class UserTracker:
    """The users last announced in each document, and what changed since."""

    __slots__ = ("_users",)

    def __init__(self) -> None:
        self._users: dict[str, dict[str, User]] = {}

    def update(self, document_id: str, peers: Iterable[Peer]) -> tuple[list[User], list[User]]:
        """Presence of ``document_id`` is ``peers`` now: returns (users who
        arrived: their first peer is here, users who left: their last peer is
        gone). A user who left is given as it was last seen (its last peers)."""
        now = {user.key: user for user in group_users(peers)}
        before = self._users.get(document_id, {})
        arrived = [user for key, user in now.items() if key not in before]
        left = [user for key, user in before.items() if key not in now]
        if now:
            self._users[document_id] = now
        else:
            self._users.pop(document_id, None)
        return arrived, left

    def clear(self) -> None:
        """Forget everything (the client is closed)."""
        self._users.clear()
