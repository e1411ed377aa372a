"""The gossip and replay rule (protocol/gossip.py), on its own, with a fake clock."""

from __future__ import annotations

from ratatoskr_client.protocol import Admission, SessionOwners

A, B = "peer-a", "peer-b"


def owners(**kwargs: object) -> SessionOwners[str]:
    return SessionOwners(**kwargs)  # type: ignore[arg-type]


def test_a_session_belongs_to_its_first_sender() -> None:
    table = owners()
    assert table.admit(A, "s1", 1) is Admission.ACCEPTED
    assert table.admit(B, "s1", 2) is Admission.COPY  # B forwarding A's message
    assert table.owner("s1") == A
    assert table.admit(A, "s1", 2) is Admission.ACCEPTED


def test_counts_must_grow() -> None:
    table = owners()
    assert table.admit(A, "s1", 5) is Admission.ACCEPTED
    assert table.admit(A, "s1", 5) is Admission.REPLAY
    assert table.admit(A, "s1", 4) is Admission.REPLAY
    assert table.admit(A, "s1", 6) is Admission.ACCEPTED
    # Counts are per session: another session of the same sender starts anew.
    assert table.admit(A, "s2", 1) is Admission.ACCEPTED


def test_the_per_sender_bound() -> None:
    table = owners(max_per_sender=2)
    assert table.admit(A, "s1", 1) is Admission.ACCEPTED
    assert table.admit(A, "s2", 1) is Admission.ACCEPTED
    assert table.admit(A, "s3", 1) is Admission.TOO_MANY_SESSIONS
    assert table.admit(A, "s1", 2) is Admission.ACCEPTED  # its own still work
    assert table.admit(B, "s3", 1) is Admission.ACCEPTED
    assert table.sessions_of(A) == 2
    assert len(table) == 3


def test_the_table_bound_forgets_the_oldest() -> None:
    table = owners(max_sessions=2)
    table.admit(A, "s1", 1)
    table.admit(A, "s2", 1)
    table.admit(B, "s3", 1)
    assert len(table) == 2
    assert table.owner("s1") is None
    assert table.sessions_of(A) == 1
    # Forgotten: the next sender to use s1 owns it.
    assert table.admit(B, "s1", 1) is Admission.ACCEPTED


def test_released_sessions_keep_late_copies_out_and_let_the_owner_back() -> None:
    table = owners(tombstone_ttl=60.0, max_tombstones=10)
    table.admit(A, "s1", 7, identity="alice")
    table.release(A, now=100.0)
    assert (len(table), table.tombstones) == (0, 1)
    # A late copy (count not above the last), from alice's other tab: dropped...
    assert table.admit(B, "s1", 7, identity="alice") is Admission.REPLAY
    # ...alice's stock peer, reconnected with a higher count, carries on its session.
    assert table.admit(B, "s1", 8, identity="alice") is Admission.ACCEPTED
    assert (table.owner("s1"), table.tombstones) == (B, 0)
    assert table.admit(B, "s1", 8, identity="alice") is Admission.REPLAY


def test_a_tombstone_belongs_to_its_identity_whatever_the_count() -> None:
    table = owners(tombstone_ttl=60.0, max_tombstones=10)
    table.admit(A, "s1", 7, identity="alice")
    table.release(A, now=100.0)
    # Someone else, who read "s1" off a relayed frame, with the largest count:
    # a copy, and the tombstone is untouched.
    assert table.admit(B, "s1", 2**53 - 1, identity="mallory") is Admission.COPY
    assert table.admit(B, "s1", 7, identity="mallory") is Admission.COPY
    assert (table.owner("s1"), table.tombstones) == (None, 1)
    assert table.admit("peer-c", "s1", 8, identity="alice") is Admission.ACCEPTED


def test_a_live_session_passes_only_to_the_same_identity_with_a_new_count() -> None:
    table = owners()
    assert table.admit(A, "s1", 5, identity="alice") is Admission.ACCEPTED
    # Another identity: a copy, whatever the count.
    assert table.admit(B, "s1", 6, identity="bob") is Admission.COPY
    assert table.admit(B, "s1", 2**53 - 1, identity="bob") is Admission.COPY
    # The same identity (the stock peer back before its old socket was noticed
    # dead): a count not above the last is a copy (alice's other tab forwarding
    # what the relay sent it), a new one takes the session over.
    assert table.admit(B, "s1", 5, identity="alice") is Admission.COPY
    assert table.admit(B, "s1", 6, identity="alice") is Admission.REASSIGNED
    assert (table.owner("s1"), table.sessions_of(A), table.sessions_of(B)) == (B, 0, 1)
    # The old connection is now the one whose frames are copies...
    assert table.admit(A, "s1", 6, identity="alice") is Admission.COPY
    # ...and closing it leaves the session with its new owner.
    table.release(A, now=0.0)
    assert (table.owner("s1"), table.tombstones) == (B, 0)
    assert table.admit(B, "s1", 7, identity="alice") is Admission.ACCEPTED


def test_without_an_identity_a_sender_is_its_own() -> None:
    table = owners(tombstone_ttl=60.0, max_tombstones=10)
    table.admit(A, "s1", 1)
    assert table.admit(B, "s1", 2) is Admission.COPY
    table.release(A, now=0.0)
    assert table.admit(B, "s1", 2) is Admission.COPY
    assert table.admit(A, "s1", 2) is Admission.ACCEPTED  # the same sender, back


def test_reassign_ignores_identities() -> None:
    table = owners(reassign=True)
    table.admit(A, "s1", 1, identity="alice")
    assert table.admit(B, "s1", 1, identity="bob") is Admission.REPLAY
    assert table.admit(B, "s1", 2, identity="bob") is Admission.REASSIGNED
    assert table.owner("s1") == B


def test_a_takeover_respects_the_per_sender_bound() -> None:
    table = owners(max_per_sender=1)
    table.admit(A, "s1", 1, identity="alice")
    table.admit(B, "s2", 1, identity="alice")
    assert table.admit(B, "s1", 2, identity="alice") is Admission.TOO_MANY_SESSIONS
    assert table.owner("s1") == A


def test_admission_admitted() -> None:
    assert {a for a in Admission if a.admitted} == {Admission.ACCEPTED, Admission.REASSIGNED}


def test_tombstones_expire_and_are_bounded() -> None:
    table = owners(tombstone_ttl=60.0, max_tombstones=3)
    for i in range(5):
        table.admit(A, f"s{i}", 1)
    table.release(A, now=0.0)
    assert table.tombstones == 3  # the oldest two were forgotten at once
    table.admit(B, "t", 1)
    table.release(B, now=30.0)
    table.expire(now=59.0)
    assert table.tombstones == 3
    table.expire(now=61.0)  # the first three are past the TTL, t is not
    assert table.tombstones == 1
    table.expire(now=91.0)
    assert table.tombstones == 0


def test_full_tombstones_forget_the_biggest_holders_first() -> None:
    table = owners(tombstone_ttl=60.0, max_tombstones=4)
    table.admit("victim", "v", 9, identity="alice")
    table.release("victim", now=0.0)
    # mallory closes connection after connection, each with a fresh session:
    # only her own tombstones make room for her new ones.
    for i in range(50):
        table.admit(f"m{i}", f"m{i}", 1, identity="mallory")
        table.release(f"m{i}", now=float(i))
    assert table.tombstones == 4
    assert table.admit("back", "v", 9, identity="mallory") is Admission.COPY
    assert table.admit("back", "v", 10, identity="alice") is Admission.ACCEPTED
    # With the victim's gone, mallory holds them all: the three newest remain.
    assert table.tombstones == 3
    assert [table.admit("x", f"m{i}", 1, identity="alice") for i in (46, 47, 48, 49)] == [
        Admission.ACCEPTED,
        Admission.COPY,
        Admission.COPY,
        Admission.COPY,
    ]


def test_eviction_between_equal_holders_is_by_age_and_the_books_balance() -> None:
    table = owners(tombstone_ttl=10.0, max_tombstones=3)
    for i, who in enumerate(["a", "b", "c", "d"]):
        table.admit(who, who, 1, identity=who)
        table.release(who, now=float(i))
    # All held one each: "a" went first, then the rest expire in order.
    assert table.admit("x", "a", 2, identity="x") is Admission.ACCEPTED
    assert table.tombstones == 3
    table.expire(now=12.5)  # b (1.0) and c (2.0) are past the 10 s TTL
    assert table.tombstones == 1
    table.expire(now=100.0)
    assert table.tombstones == 0
    assert (table._held, table._holders, table._max_held) == ({}, {}, 0)


def test_without_tombstones_release_forgets() -> None:
    table = owners()
    table.admit(A, "s1", 3)
    table.release(A, now=0.0)
    assert (len(table), table.tombstones) == (0, 0)
    assert table.admit(B, "s1", 1) is Admission.ACCEPTED


def test_clear() -> None:
    table = owners(tombstone_ttl=1.0, max_tombstones=5)
    table.admit(A, "s1", 1)
    table.admit(B, "s2", 1)
    table.release(B, now=0.0)
    table.clear()
    assert (len(table), table.tombstones, table.sessions_of(A)) == (0, 0, 0)
