"""Rate limits as pure state machines (the caller passes the clock). No I/O.

Both sides of the wire count with these: the relay limits each connection
with a :class:`TokenBucket`, and a client paces itself with the same kind of
bucket (and, on upstream, with upstream's :class:`FixedWindow`) so that it
never trips the server's limit (:mod:`ratatoskr_client.core.pacing`).

* :class:`TokenBucket` — ``capacity`` tokens refilled continuously.
* :class:`FixedWindow` — the upstream server's limit on anonymous connections:
  so many frames per fixed window that starts at the first frame. A token
  bucket cannot model it: a bucket refills continuously, so over the first
  window it hands out its burst *plus* a window's worth of refill, more than the
  window allows.
"""

from __future__ import annotations

import math
from typing import Self

__all__ = ["FixedWindow", "TokenBucket"]


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
    def per_minute(cls, limit: int, now: float, *, burst: float | None = None) -> Self:
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


class FixedWindow:
    """At most ``limit`` frames per window of ``window`` seconds; a window starts
    at the first frame after the previous one ended.

    That is how the upstream server counts an anonymous connection's frames
    (100 per 60 s). Our clock is not the server's: our first frame reaches it a
    little later than we sent it, so its window ends a little later than ours.
    ``guard`` seconds are added to every window, so frames sent just after our
    window ended cannot land in the server's previous one.
    """

    __slots__ = ("_end", "_used", "guard", "limit", "window")

    def __init__(self, limit: int, window: float, *, guard: float = 1.0) -> None:
        if limit < 1 or not (math.isfinite(window) and window > 0) or guard < 0:
            raise ValueError(f"need limit >= 1, window > 0, guard >= 0, got {limit=}, {window=}")
        self.limit = limit
        self.window = window
        self.guard = guard
        self._end = -math.inf
        self._used = 0

    def wait(self, now: float) -> float:
        """Seconds until a frame may go out (0.0: now). Spends nothing."""
        if now >= self._end or self._used < self.limit:
            return 0.0
        return self._end - now

    def spend(self, now: float) -> None:
        """Count one frame sent at ``now`` (starting a window if none is open)."""
        if now >= self._end:
            self._end = now + self.window + self.guard
            self._used = 0
        self._used += 1

    def pause(self, now: float, seconds: float) -> None:
        """The server said to wait ``seconds``: nothing goes out until then, and
        a new window starts with the first frame after."""
        self._end = max(self._end, now + max(0.0, seconds))
        self._used = self.limit
