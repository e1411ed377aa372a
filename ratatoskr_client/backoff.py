"""Reconnect delays: capped exponential backoff with full jitter. Pure functions.

The delay before reconnect attempt ``n`` (counting from 0) is drawn uniformly
from ``[0, min(max_delay, base_delay * multiplier ** n))``. Full jitter spreads
a crowd of clients that lost the same server over the whole window, so a
restarted relay is not hit by all of them at once; the cap keeps the wait short
once the server is back. With the defaults the windows are 0.25, 0.5, 1, 2, 4,
then 5 seconds forever: a client retries every 2.5 s on average and never
gives up.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_BACKOFF", "Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """A reconnect schedule.

    Attributes:
        base_delay: the jitter window of the first attempt, in seconds.
        multiplier: how much the window grows per failed attempt.
        max_delay: the largest window, in seconds.
        max_attempts: give up after this many failed attempts (None: never).
    """

    base_delay: float = 0.25
    multiplier: float = 2.0
    max_delay: float = 5.0
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        finite = all(math.isfinite(v) for v in (self.base_delay, self.max_delay, self.multiplier))
        if not finite or self.base_delay < 0 or self.max_delay < 0 or self.multiplier < 1:
            raise ValueError(
                "need finite base_delay >= 0, max_delay >= 0 and multiplier >= 1, got "
                f"{self.base_delay=}, {self.max_delay=}, {self.multiplier=}"
            )
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be None or >= 1, got {self.max_attempts}")

    def window(self, attempt: int) -> float:
        """The upper bound of the delay before attempt ``attempt`` (0-based)."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        if self.base_delay == 0 or self.multiplier == 1:
            return min(self.base_delay, self.max_delay)  # the window never grows
        try:
            window = self.base_delay * self.multiplier**attempt
        except OverflowError:  # a client that has been retrying for days
            return self.max_delay
        return min(window, self.max_delay)

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """A jittered delay for attempt ``attempt``: uniform in ``[0, window(attempt))``.

        ``rand`` returns a float in [0, 1); pass a seeded one for reproducible tests.
        """
        return self.window(attempt) * rand()

    def gives_up(self, attempt: int) -> bool:
        """True if attempt ``attempt`` (0-based) should not be made."""
        return self.max_attempts is not None and attempt >= self.max_attempts


#: The schedule RatatoskrClient uses unless told otherwise.
DEFAULT_BACKOFF: Final = Backoff()
