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
    table.admit(A, "s1", 7)
    table.release(A, now=100.0)
    assert (len(table), table.tombstones) == (0, 1)
    # A late copy (count not above the last) from anyone is dropped...
    assert table.admit(B, "s1", 7) is Admission.REPLAY
    # ...the peer, reconnected with a higher count, carries on its session.
    assert table.admit(B, "s1", 8) is Admission.ACCEPTED
    assert (table.owner("s1"), table.tombstones) == (B, 0)
    assert table.admit(B, "s1", 8) is Admission.REPLAY


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
