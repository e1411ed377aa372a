"""The client's pacing: never trip the server's limit. No I/O.

:class:`Pacer` combines the client's own token bucket (``rate_limit`` /
``rate_burst``; see ``docs/guide.md``, "Pacing", for why its burst is smaller
than the server's) with, on upstream, upstream's fixed window for anonymous
connections: a frame may go out only when every one of them allows it, and
only then is it counted. The buckets themselves are the wire's
(:mod:`ratatoskr_client.protocol.rates`).
"""

from __future__ import annotations

from ..protocol.rates import FixedWindow, TokenBucket

__all__ = ["FixedWindow", "Pacer", "TokenBucket"]


class Pacer:
    """The client's pacing: a token bucket, a fixed window, or both; a frame may
    go out only when every one of them allows it, and only then is it counted."""

    __slots__ = ("bucket", "window")

    def __init__(self, bucket: TokenBucket | None, window: FixedWindow | None = None) -> None:
        self.bucket = bucket
        self.window = window

    def take(self, now: float) -> float:
        """Spend one frame's allowance. Returns 0.0 on success, otherwise the
        seconds to wait (nothing is spent then)."""
        window = self.window
        if window is not None:
            wait = window.wait(now)
            if wait > 0:
                return wait
        bucket = self.bucket
        if bucket is not None:
            wait = bucket.take(now)
            if wait > 0:
                return wait
        if window is not None:
            window.spend(now)
        return 0.0

    def pause(self, now: float, seconds: float) -> None:
        """The server asked us to wait ``seconds`` (``retryAfter``)."""
        if self.bucket is not None:
            self.bucket.pause(now, seconds)
        if self.window is not None:
            self.window.pause(now, seconds)
