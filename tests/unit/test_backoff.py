"""Backoff: capped exponential windows with full jitter, as pure functions."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ratatoskr_client import Backoff
from ratatoskr_client.backoff import DEFAULT_BACKOFF


def test_default_windows_double_from_a_quarter_second_and_cap_at_five():
    windows = [DEFAULT_BACKOFF.window(n) for n in range(9)]
    assert windows == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]


def test_default_never_gives_up():
    assert DEFAULT_BACKOFF.max_attempts is None
    assert not any(DEFAULT_BACKOFF.gives_up(n) for n in (0, 1, 10, 10**6, 10**30))


@given(attempt=st.integers(min_value=0, max_value=200), r=st.floats(0.0, 1.0, exclude_max=True))
def test_delay_is_within_zero_and_the_window(attempt, r):
    delay = DEFAULT_BACKOFF.delay(attempt, lambda: r)
    assert 0.0 <= delay < DEFAULT_BACKOFF.window(attempt)
    assert delay == DEFAULT_BACKOFF.window(attempt) * r


def test_delays_with_the_real_random_source_spread_over_the_window():
    delays = [DEFAULT_BACKOFF.delay(6) for _ in range(2000)]
    assert all(0.0 <= d < 5.0 for d in delays)
    assert min(delays) < 0.5 and max(delays) > 4.5  # full jitter, not a fixed delay


def test_a_seeded_rand_gives_reproducible_delays():
    a = random.Random(42)
    b = random.Random(42)
    first = [DEFAULT_BACKOFF.delay(n, a.random) for n in range(10)]
    second = [DEFAULT_BACKOFF.delay(n, b.random) for n in range(10)]
    assert first == second
    assert len(set(first)) == 10


def test_rand_edges():
    assert DEFAULT_BACKOFF.delay(3, lambda: 0.0) == 0.0
    almost_one = math.nextafter(1.0, 0.0)
    assert DEFAULT_BACKOFF.delay(3, lambda: almost_one) < 2.0


@pytest.mark.parametrize("attempt", [1100, 10**6, 10**100, 10**400])
def test_huge_attempt_numbers_do_not_overflow(attempt):
    assert DEFAULT_BACKOFF.window(attempt) == 5.0
    assert 0.0 <= DEFAULT_BACKOFF.delay(attempt) < 5.0


def test_huge_attempts_with_a_multiplier_of_one_stay_at_the_base():
    flat = Backoff(base_delay=0.3, multiplier=1.0, max_delay=5.0)
    assert flat.window(10**400) == 0.3


def test_custom_schedule():
    backoff = Backoff(base_delay=0.1, multiplier=3.0, max_delay=1.0)
    assert [round(backoff.window(n), 9) for n in range(4)] == [0.1, 0.3, 0.9, 1.0]


def test_max_attempts_counts_attempts_made():
    backoff = Backoff(max_attempts=3)
    assert [backoff.gives_up(n) for n in range(5)] == [False, False, False, True, True]


def test_backoff_is_immutable():
    with pytest.raises(AttributeError):
        DEFAULT_BACKOFF.base_delay = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_delay": -0.1},
        {"max_delay": -1.0},
        {"multiplier": 0.5},
        {"max_attempts": 0},
        {"max_attempts": -3},
        {"base_delay": math.nan},
        {"max_delay": math.nan},
        {"multiplier": math.nan},
        {"max_delay": math.inf},
    ],
)
def test_invalid_schedules_are_rejected(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Backoff(**kwargs)


def test_negative_attempt_is_rejected():
    with pytest.raises(ValueError, match="attempt"):
        DEFAULT_BACKOFF.window(-1)
    with pytest.raises(ValueError, match="attempt"):
        DEFAULT_BACKOFF.delay(-1)


def test_zero_delays_are_allowed():
    backoff = Backoff(base_delay=0.0, max_delay=0.0)
    assert backoff.window(5) == 0.0
    assert backoff.delay(5) == 0.0
