"""Token-bucket rate limiting, as a pure state machine (the caller passes the clock).

The relay uses one bucket per connection to enforce its limit; the client uses one
to pace its own sends so that it never trips that limit. See ``docs/guide.md``,
"Pacing", for why the client's burst is smaller than the server's.
"""

from __future__ import annotations

import math

__all__ = ["TokenBucket"]


class TokenBucket:
    """``capacity`` tokens, refilled continuously at ``rate`` tokens per second.

    The bucket starts full. :meth:`take` spends one token if there is one; a
    bucket can also be paused (a server's ``retryAfter``), during which no token
    is handed out.
    """

    __slots__ = ("_paused_until", "_stamp", "_tokens", "capacity", "rate")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        if not (math.isfinite(rate) and math.isfinite(capacity)) or rate <= 0 or capacity < 1:
            raise ValueError(f"need finite rate > 0 and capacity >= 1, got {rate=}, {capacity=}")
        self.rate = float(rate)
        self.capacity = float(capacity)
        self._tokens = self.capacity
        self._stamp = now
        self._paused_until = 0.0

    @classmethod
    def per_minute(cls, limit: int, now: float, *, burst: float | None = None) -> TokenBucket:
        """A bucket allowing ``limit`` tokens per minute, bursting to ``burst``
        (default: ``limit``)."""
        return cls(limit / 60.0, float(limit if burst is None else burst), now)

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def take(self, now: float) -> float:
        """Spend one token. Returns 0.0 on success, otherwise the seconds to wait
        before a token will be available (nothing is spent then)."""
        if now < self._paused_until:
            return self._paused_until - now
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate

    def pause(self, now: float, seconds: float) -> None:
        """Hand out nothing for ``seconds``, and drain the bucket so the first
        sends after the pause are paced rather than a burst."""
        self._refill(now)
        self._paused_until = max(self._paused_until, now + max(0.0, seconds))
        self._tokens = 0.0
        self._stamp = self._paused_until

    def tokens(self, now: float) -> float:
        """Tokens available at ``now`` (0 while paused)."""
        if now < self._paused_until:
            return 0.0
        self._refill(now)
        return self._tokens
