"""Giving freed memory back to the operating system after many connections close.

CPython frees a closed connection's objects at once, but glibc's allocator
keeps the pages it served them from: after 2,000 connections closed, the
relay's live objects were back at their baseline while its RSS stayed 100 MB
above it. ``malloc_trim(0)`` returns those pages. :class:`TrimPolicy` decides
when that is worth its cost (a walk of the heap, tens of milliseconds for a
large one); :func:`trim` does it where the C library has it (glibc), and is a
no-op elsewhere.
"""

from __future__ import annotations

from typing import Final

from ..._libc import trim

__all__ = ["TRIM_AFTER_CLOSED", "TRIM_INTERVAL", "TrimPolicy", "trim"]

#: Trim once at least this many connections have closed since the last trim...
TRIM_AFTER_CLOSED: Final = 500
#: ...and at most once per this many seconds.
TRIM_INTERVAL: Final = 10.0


class TrimPolicy:
    """When to trim, from the count of closed connections and a clock. Pure."""

    __slots__ = ("_last_closed", "_next_allowed", "after_closed", "interval")

    def __init__(self, after_closed: int = TRIM_AFTER_CLOSED, interval: float = TRIM_INTERVAL):
        self.after_closed = after_closed
        self.interval = interval
        self._last_closed = 0
        self._next_allowed = 0.0

    def due(self, closed_total: int, now: float) -> bool:
        """True if a trim is due now (and counts it as done)."""
        if closed_total - self._last_closed < self.after_closed or now < self._next_allowed:
            return False
        self._last_closed = closed_total
        self._next_allowed = now + self.interval
        return True
