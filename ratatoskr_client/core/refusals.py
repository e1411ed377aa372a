"""Servers that refused a connection moments ago, shared by the clients of a process. No I/O.

When a relay restarts, every client of a process that was connected to it
retries on its own backoff schedule. While the relay is down each attempt is
refused at once, and with thousands of clients in one process (bots, load
generators) those refused attempts are most of the process's work: aiohttp
spends about 0.1 ms of CPU on each, 10,000 clients make about 40,000 in the
two seconds a relay takes to restart, and that CPU is taken from the relay
starting up on the same machine.

So a refusal is shared: a client about to retry a server that refused another
client of the same process less than :data:`REFUSAL_MEMORY` ago counts that
attempt as failed without making it, and waits for its next one as its backoff
says. At most one real attempt per address per :data:`REFUSAL_MEMORY` is thus
refused (plus one per client whose own refusal was the last), and a server
that is back is found by the first attempt made after it: a client that
skipped an attempt loses at most its next backoff window, the same as if its
attempt had been refused. A client's own refusal never makes it skip (its
backoff already spaces its attempts), and any success forgets the refusal.
"""

from __future__ import annotations

from typing import Final

__all__ = ["REFUSALS", "REFUSAL_MEMORY", "Refusals"]

#: Seconds a refusal stands for the other clients of the process.
REFUSAL_MEMORY: Final = 0.1
#: At most this many addresses are remembered (the oldest refusal is forgotten first).
MAX_ADDRESSES: Final = 1024


class Refusals:
    """The last refusal per address: when, and which client saw it."""

    __slots__ = ("_last", "memory")

    def __init__(self, memory: float = REFUSAL_MEMORY) -> None:
        self.memory = memory
        self._last: dict[str, tuple[float, int]] = {}

    def refused(self, address: str, now: float, who: int) -> None:
        """Client ``who`` (any id unique among the live clients) was refused at ``now``."""
        last = self._last
        last.pop(address, None)
        if len(last) >= MAX_ADDRESSES:
            last.pop(next(iter(last)), None)
        last[address] = (now, who)

    def connected(self, address: str) -> None:
        """A client connected to ``address``: it is up."""
        self._last.pop(address, None)

    def skip(self, address: str, now: float, who: int) -> float | None:
        """Whether client ``who`` should count its attempt as refused without
        making it: the age of another client's refusal in seconds if so, else None."""
        entry = self._last.get(address)
        if entry is None:
            return None
        at, by = entry
        age = now - at
        if age > self.memory or age < 0:
            # pop, not del: the sync client runs its event loop in its own
            # thread, and another thread's client may have dropped it already.
            self._last.pop(address, None)
            return None
        return None if by == who else age


#: The process-wide table the clients share.
REFUSALS: Final = Refusals()
