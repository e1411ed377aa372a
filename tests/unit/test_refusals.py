"""The process-wide table of recent connection refusals (core/refusals.py), in fake time."""

from __future__ import annotations

from ratatoskr_client.core.refusals import MAX_ADDRESSES, REFUSAL_MEMORY, Refusals

URL = "ws://relay.example/sync"


def test_another_clients_fresh_refusal_makes_an_attempt_skip():
    r = Refusals()
    assert r.skip(URL, 10.0, who=1) is None  # nothing known: attempt
    r.refused(URL, 10.0, who=1)
    age = r.skip(URL, 10.04, who=2)
    assert age is not None and abs(age - 0.04) < 1e-9
    assert r.skip("ws://other.example/sync", 10.04, who=2) is None  # per address


def test_a_clients_own_refusal_never_makes_it_skip():
    r = Refusals()
    r.refused(URL, 10.0, who=1)
    assert r.skip(URL, 10.01, who=1) is None


def test_a_refusal_is_forgotten_after_its_memory_and_on_any_success():
    r = Refusals()
    r.refused(URL, 10.0, who=1)
    assert r.skip(URL, 10.0 + REFUSAL_MEMORY + 0.001, who=2) is None
    assert r.skip(URL, 10.0, who=2) is None  # it was dropped, not just aged
    r.refused(URL, 20.0, who=1)
    r.connected(URL)
    assert r.skip(URL, 20.01, who=2) is None


def test_a_clock_that_went_back_does_not_skip():
    r = Refusals()
    r.refused(URL, 10.0, who=1)
    assert r.skip(URL, 9.0, who=2) is None


def test_the_table_is_bounded():
    r = Refusals()
    for i in range(MAX_ADDRESSES + 10):
        r.refused(f"ws://h{i}/sync", 1.0, who=1)
    assert r.skip("ws://h0/sync", 1.0, who=2) is None  # the oldest went first
    assert r.skip(f"ws://h{MAX_ADDRESSES + 9}/sync", 1.0, who=2) == 0.0
