"""TokenBucket: burst, continuous refill, pause and wait times, with an injected clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ratatoskr_client.core.pacing import TokenBucket


def test_starts_full_and_allows_a_burst_of_capacity():
    bucket = TokenBucket(rate=1.0, capacity=5, now=100.0)
    assert bucket.tokens(100.0) == 5.0
    assert [bucket.take(100.0) for _ in range(5)] == [0.0] * 5
    assert bucket.take(100.0) == pytest.approx(1.0)  # the sixth must wait a full token
    assert bucket.tokens(100.0) == pytest.approx(0.0)


def test_a_refused_take_spends_nothing():
    bucket = TokenBucket(rate=2.0, capacity=1, now=0.0)
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.25) == pytest.approx(0.25)  # half a token refilled meanwhile
    assert bucket.take(0.5) == 0.0


def test_refills_continuously_and_never_beyond_capacity():
    bucket = TokenBucket(rate=10.0, capacity=3, now=0.0)
    for _ in range(3):
        bucket.take(0.0)
    assert bucket.tokens(0.05) == pytest.approx(0.5)
    assert bucket.tokens(0.2) == pytest.approx(2.0)
    assert bucket.tokens(100.0) == 3.0


def test_wait_time_is_exact():
    bucket = TokenBucket(rate=4.0, capacity=1, now=0.0)
    bucket.take(0.0)
    wait = bucket.take(0.1)  # 0.4 tokens there, 0.6 missing at 4/s
    assert wait == pytest.approx(0.15)
    assert bucket.take(0.1 + wait) == 0.0


def test_per_minute():
    bucket = TokenBucket.per_minute(600, 0.0)
    assert bucket.rate == 10.0
    assert bucket.capacity == 600.0
    paced = TokenBucket.per_minute(600, 0.0, burst=100)
    assert paced.capacity == 100.0
    assert paced.rate == 10.0


def test_pause_hands_out_nothing_then_resumes_from_empty():
    bucket = TokenBucket(rate=10.0, capacity=5, now=0.0)
    bucket.pause(1.0, 2.0)
    assert bucket.tokens(2.0) == 0.0
    assert bucket.take(1.5) == pytest.approx(1.5)  # the rest of the pause
    assert bucket.take(2.999) == pytest.approx(0.001)
    # After the pause the bucket is empty: the first send waits for a token.
    assert bucket.take(3.0) == pytest.approx(0.1)
    assert bucket.take(3.1) == 0.0
    assert bucket.tokens(10.0) == 5.0


def test_a_shorter_pause_does_not_cut_a_longer_one():
    bucket = TokenBucket(rate=1.0, capacity=1, now=0.0)
    bucket.pause(0.0, 5.0)
    bucket.pause(1.0, 1.0)
    assert bucket.take(3.0) == pytest.approx(2.0)


def test_negative_pause_is_a_drain_only():
    bucket = TokenBucket(rate=1.0, capacity=3, now=0.0)
    bucket.pause(0.0, -4.0)
    assert bucket.tokens(0.0) == 0.0
    assert bucket.take(1.0) == 0.0


def test_a_clock_going_backwards_refills_nothing():
    bucket = TokenBucket(rate=1.0, capacity=2, now=10.0)
    bucket.take(10.0)
    bucket.take(10.0)
    assert bucket.tokens(5.0) == 0.0
    assert bucket.take(10.5) == pytest.approx(0.5)


@given(
    rate=st.floats(0.5, 100.0),
    capacity=st.integers(1, 20),
    steps=st.lists(st.floats(0.0, 2.0), max_size=60),
)
def test_never_more_than_capacity_plus_rate_times_elapsed(rate, capacity, steps):
    bucket = TokenBucket(rate, capacity, 0.0)
    now = 0.0
    taken = 0
    for dt in steps:
        now += dt
        while bucket.take(now) == 0.0:
            taken += 1
        assert 0.0 <= bucket.tokens(now) < 1.0
    assert taken <= capacity + rate * now + 1e-6


@pytest.mark.parametrize(
    ("rate", "capacity"),
    [(0.0, 1), (-1.0, 1), (1.0, 0.5), (1.0, 0), (math.nan, 1), (1.0, math.nan), (math.inf, 1)],
)
def test_invalid_buckets_are_rejected(rate, capacity):
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate, capacity, 0.0)
