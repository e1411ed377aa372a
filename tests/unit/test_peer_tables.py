"""Peer tables shared between the clients of a process (ratatoskr_client.core.peer_tables)."""

from __future__ import annotations

import gc

from ratatoskr_client.core.membership import MembershipStore, Peer, intern_peer
from ratatoskr_client.core.peer_tables import _FROZEN, PeerTable
from ratatoskr_client.protocol import (
    AuthOkFrame,
    DocPresenceStateFrame,
    PeerIdentityFrame,
    PeerJoinedDocFrame,
    PeerLeftDocFrame,
    UserInfo,
)

from .coreharness import unshared


def peer(i: int) -> Peer:
    return intern_peer(f"peer-table-{i}", None, f"Name {i}", True)


def test_tables_of_the_same_content_share_one_frozen_table() -> None:
    a: PeerTable[Peer] = PeerTable()
    b: PeerTable[Peer] = PeerTable()
    for table in (a, b):
        for i in range(5):
            table.put(peer(i))
    a.share()
    b.share()
    assert a.shared and b.shared
    assert a.snapshot() is b.snapshot()  # one tuple for both
    assert list(a) == list(b) == [f"peer-table-{i}" for i in range(5)]


def test_a_change_copies_first_and_never_touches_the_other_clients_table() -> None:
    a: PeerTable[Peer] = PeerTable()
    b: PeerTable[Peer] = PeerTable()
    for table in (a, b):
        table.put(peer(1))
        table.put(peer(2))
        table.share()
    assert a.pop("peer-table-1") == peer(1)
    a.put(peer(3))
    assert not a.shared and b.shared
    assert list(a.snapshot()) == [peer(2), peer(3)]
    assert list(b.snapshot()) == [peer(1), peer(2)]
    b.share()
    assert list(b) == ["peer-table-1", "peer-table-2"]


def test_order_matters_for_ordered_tables_only() -> None:
    forward: PeerTable[Peer] = PeerTable()
    backward: PeerTable[Peer] = PeerTable()
    for i in (1, 2):
        forward.put(peer(i))
    for i in (2, 1):
        backward.put(peer(i))
    forward.share()
    backward.share()
    assert forward.snapshot() is not backward.snapshot()  # join order is content

    left: PeerTable[Peer] = PeerTable(ordered=False)
    right: PeerTable[Peer] = PeerTable(ordered=False)
    for i in (3, 1, 2):
        left.put(peer(i))
    for i in (2, 3, 1):
        right.put(peer(i))
    left.share()
    right.share()
    assert left.snapshot() is right.snapshot()
    assert list(left) == sorted(left)  # shared unordered tables are in id order


def test_frozen_tables_live_as_long_as_a_table_uses_them() -> None:
    gc.collect()
    before = len(_FROZEN)
    tables: list[PeerTable[Peer]] = [PeerTable() for _ in range(3)]
    for table in tables:
        table.put(peer(7))
        table.share()
    assert len(_FROZEN) == before + 1
    tables[0].put(peer(8))  # copies away
    del tables[1:], table
    gc.collect()
    assert len(_FROZEN) == before


def test_clients_that_learnt_the_same_peers_in_another_order_share_their_tables() -> None:
    # What 500 clients of one process see: the same identities and the same
    # document, each having learnt them in its own order.
    def store_for(me: int, others: list[int]) -> MembershipStore:
        store = MembershipStore()
        store.authenticated(
            AuthOkFrame("relay", f"peer-table-{me}", UserInfo(None, f"Name {me}", True))
        )
        store.track("doc")
        for i in others:
            store.apply(PeerIdentityFrame(f"peer-table-{i}", UserInfo(None, f"Name {i}", True)))
        store.apply(DocPresenceStateFrame("doc", tuple(f"peer-table-{i}" for i in range(4))))
        return store

    stores = [store_for(me, [i for i in (3, 2, 1, 0) if i != me]) for me in range(4)]
    views = [(dict(s.identities), s.presence("doc")) for s in stores]
    for store in stores:
        assert unshared(store)
        store.share()
        assert not unshared(store)
    assert len({id(s.presence("doc")) for s in stores}) == 1
    # Nothing seen changed.
    assert [(dict(s.identities), s.presence("doc")) for s in stores] == views
    # And each goes on on its own.
    stores[0].apply(PeerJoinedDocFrame("doc", "peer-table-9"))
    stores[1].apply(PeerLeftDocFrame("doc", "peer-table-0"))
    assert [p.peer_id for p in stores[0].presence("doc")][-1] == "peer-table-9"
    assert "peer-table-0" not in {p.peer_id for p in stores[1].presence("doc")}
    assert stores[2].presence("doc") == views[2][1]


def test_the_store_says_when_to_share() -> None:
    store = MembershipStore()
    assert store.share_at == float("inf")
    assert store.touched(10.0) == 10.5
    store.share()
    assert store.share_at == float("inf")


def test_a_peer_seen_with_and_without_its_chosen_name_is_one_object_of_each():
    """Clients see a peer's identity (no chosen name yet) and its state (the
    name) at different moments: however they interleave, each variant is
    one object, so tables holding the same variants share."""
    plain = intern_peer("peer-x", None, "Keen Badger", True)
    named = intern_peer("peer-x", None, "Keen Badger", True, "Keen Badger")
    assert intern_peer("peer-x", None, "Keen Badger", True) is plain  # a late client
    assert intern_peer("peer-x", None, "Keen Badger", True, "Keen Badger") is named
    assert named == plain and named is not plain
    # A changed server-given field is a new identity's object.
    renamed = intern_peer("peer-x", None, "Brave Badger", True, "Keen Badger")
    assert renamed is not named and renamed.name == "Brave Badger"
