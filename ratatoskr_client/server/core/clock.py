"""The relay's time: a clock is any ``() -> float`` of monotonic seconds. No I/O.

Every rule of the relay that involves time (presence expiry, the liveness
rule, the auth deadline, the presence budget, rate limits, tombstones) reads
the clock its :class:`~.relay.RelayCore` was given, and so does every timer of
its aiohttp layer: ``RelayServer(config, clock=...)`` and
``create_app(config, clock=...)`` pass it on. By default it is
``time.monotonic``.

:class:`ManualClock` is time for tests: it moves only when told
(:meth:`ManualClock.advance`), and a relay running on it is woken at once when
it does, so "advance the relay's clock by 95 s" runs the presence expiry (and
every other timer rule that became due) without waiting 95 real seconds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["AdvancingClock", "Clock", "ManualClock"]

#: A clock: monotonic seconds (only differences matter).
Clock = Callable[[], float]


@runtime_checkable
class AdvancingClock(Protocol):
    """A clock that says when it jumps forward (:class:`ManualClock` does):
    the relay's timers subscribe, so they run when it moves rather than when
    real time has passed."""

    def __call__(self) -> float:
        """The current time, in seconds."""

    def on_advance(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (with no arguments) after every advance, in the
        advancing thread; returns a function that unsubscribes it."""


class ManualClock:
    """A clock that moves only when :meth:`advance` is called.

    ::

        clock = ManualClock()
        async with RelayServer(presence_ttl=90, clock=clock) as relay:
            ...                # a client joins "doc"
            clock.advance(95)  # the relay's expiry sweep runs now
            assert relay.core.presence("doc") == ()

    A relay on this clock runs its timer rules (expiry, liveness, auth
    deadlines, held presence changes) when the clock is advanced: at once,
    inside :meth:`advance`, when it is called from the relay's event loop
    (a test's own loop), or soon after in the relay's loop when it is called
    from another thread. Real time still passes for everything else: socket
    timeouts, the handshake deadline, the cluster's link to Redis, and the
    clients, whose own timers (heartbeats, pings) run on their event loop.
    """

    __slots__ = ("_listeners", "_lock", "_now")

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        """The current time."""
        return self._now

    @property
    def now(self) -> float:
        """The current time (what calling the clock returns)."""
        return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock ``seconds`` forward and wake everything that runs on
        it (see the class docstring). Returns the new time.

        Raises:
            ValueError: ``seconds`` is negative (a monotonic clock never goes back).
        """
        if not seconds >= 0:
            raise ValueError(f"a clock only moves forward: advance({seconds!r})")
        with self._lock:
            self._now += seconds
            listeners = list(self._listeners)
        for callback in listeners:
            callback()
        return self._now

    def on_advance(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` after every :meth:`advance`; returns a function
        that unsubscribes it (a stopped relay unsubscribes its timer)."""
        with self._lock:
            self._listeners.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return unsubscribe

    def __repr__(self) -> str:
        return f"ManualClock({self._now!r})"
