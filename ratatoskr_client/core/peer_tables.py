"""Tables of peers that the clients of one process share while they hold the same. No I/O.

A client keeps two kinds of peer table: every identity the server announced,
and, per entered document, who is present there in join order. Both are as
large as the server's population, and in a process that runs many clients of
one server (bots, load tests, test suites) they are the same in every client:
500 clients in one 500-peer document would hold 500 copies of each, a quarter
of a million entries.

A :class:`PeerTable` is a client's own dict while it changes. When the client's
tables have been quiet for a moment, its core calls :meth:`PeerTable.share`:
the table then uses the frozen table of the same content, made by whichever
client got there first (looked up by content, held weakly, so it lives as long
as some client uses it), and the client's own copy is dropped. The next change
copies the content back into an own dict first (copy on write), so sharing
never changes what a client sees. In the benchmark's 500 clients in one
document, this is what brings the live heap per client from about 52 KiB to
about 23 (docs/performance.md).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping
from typing import Any, Final, Generic, Protocol, TypeVar

__all__ = ["PeerTable", "released_entries", "take_released"]

#: Entries of own tables dropped by sharing since the count was last taken,
#: process-wide. Pure accounting: the asyncio layer reads it to decide when to
#: give the freed pages back (``ratatoskr_client.asyncio.memory``).
_released = [0]


def released_entries() -> int:
    """Entries of own peer tables dropped by sharing, not yet taken."""
    return _released[0]


def take_released() -> int:
    """The count of :func:`released_entries`, reset to 0."""
    count, _released[0] = _released[0], 0
    return count


class _Keyed(Protocol):
    @property
    def peer_id(self) -> str: ...

    @property
    def name(self) -> str: ...


PeerT = TypeVar("PeerT", bound=_Keyed)


class _Frozen(Generic[PeerT]):
    """One table's content, never changed again; shared by every table that
    holds exactly these peers, in this order."""

    __slots__ = ("__weakref__", "peers", "snapshot")

    def __init__(self, peers: dict[str, PeerT]) -> None:
        self.peers = peers
        self.snapshot = tuple(peers.values())


# Content (whether order matters, then the ids of the Peer objects in order: Peer
# objects are interned, so equal content means the same objects) -> the frozen
# table holding it. The
# frozen table holds those Peers, so their ids cannot be reused while it lives.
_FROZEN: Final[weakref.WeakValueDictionary[tuple[bool | int, ...], _Frozen[Any]]] = (
    weakref.WeakValueDictionary()
)


class PeerTable(Mapping[str, PeerT]):
    """An ordered table of peers by peer id, shared with other clients of the
    process when it holds the same content (see the module docstring)."""

    __slots__ = ("_frozen", "_peers", "_snapshot", "ordered")

    def __init__(self, *, ordered: bool = True) -> None:
        #: False: the order of the entries carries no meaning, so a shared table
        #: is kept in peer id order (clients that learnt the same peers in
        #: different orders then share it)
        self.ordered = ordered
        self._peers: dict[str, PeerT] = {}
        #: the frozen table ``_peers`` belongs to, while shared
        self._frozen: _Frozen[PeerT] | None = None
        #: ``tuple(values())``, cached until the next change
        self._snapshot: tuple[PeerT, ...] | None = None

    # ------------------------------------------------------------------ reading

    def __getitem__(self, peer_id: str) -> PeerT:
        return self._peers[peer_id]

    def get(self, peer_id: str, default: PeerT | None = None) -> PeerT | None:  # type: ignore[override]
        """The peer with ``peer_id``, or ``default``."""
        return self._peers.get(peer_id, default)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers

    def __iter__(self) -> Iterator[str]:
        return iter(self._peers)

    def __len__(self) -> int:
        return len(self._peers)

    def snapshot(self) -> tuple[PeerT, ...]:
        """The peers, in order, as a tuple (the same object until the next change)."""
        frozen = self._frozen
        if frozen is not None:
            return frozen.snapshot
        snap = self._snapshot
        if snap is None:
            snap = self._snapshot = tuple(self._peers.values())
        return snap

    @property
    def shared(self) -> bool:
        """True while the table uses a frozen, shared content."""
        return self._frozen is not None

    # ------------------------------------------------------------------ changing

    def _own(self) -> dict[str, PeerT]:
        if self._frozen is not None:
            self._peers = dict(self._peers)
            self._frozen = None
        self._snapshot = None
        return self._peers

    def put(self, peer: PeerT) -> None:
        """Add ``peer`` at the end, or replace the entry with its id in place."""
        self._own()[peer.peer_id] = peer

    def pop(self, peer_id: str) -> PeerT | None:
        """Remove and return the peer with ``peer_id`` (None if absent)."""
        if peer_id not in self._peers:
            return None
        return self._own().pop(peer_id)

    def clear(self) -> None:
        """Remove every peer."""
        self._peers = {}
        self._frozen = None
        self._snapshot = None

    def replace(self, peers: dict[str, PeerT]) -> None:
        """Hold exactly ``peers`` (the table takes the dict over)."""
        self._peers = peers
        self._frozen = None
        self._snapshot = None

    def share(self) -> None:
        """Use the frozen table of the same content, made now if there is none."""
        if self._frozen is not None or not self._peers:
            return
        peers = self._peers
        if not self.ordered:
            peers = {pid: peers[pid] for pid in sorted(peers)}
        key = (self.ordered, *map(id, peers.values()))
        frozen: _Frozen[PeerT] | None = _FROZEN.get(key)
        if frozen is None:
            # This dict becomes the frozen content: _own() copies it before any
            # change, so it is never written again.
            frozen = _FROZEN[key] = _Frozen(peers)
        if frozen.peers is not self._peers:
            _released[0] += len(self._peers)  # this client's own copy goes
        self._peers = frozen.peers
        self._frozen = frozen
        self._snapshot = None

    def __repr__(self) -> str:
        names = ", ".join(p.name for p in self._peers.values())
        return f"<PeerTable [{names}]{' shared' if self._frozen else ''}>"
