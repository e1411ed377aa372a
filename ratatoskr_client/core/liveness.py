"""When a connection is dead: the client's ping rule. No I/O.

A connection is alive while whole WebSocket frames arrive on it. After
``ping_interval`` seconds without one the client sends a ping; after
``PONG_GRACE`` times that (1.5 × ``ping_interval``) without one it declares
the connection dead, and the driver closes the socket and reconnects.

Only *whole* frames count — a message, a ping or a pong — never bytes. The
heartbeat aiohttp offers (``heartbeat=`` in ``ws_connect``) restarts its timer
on every chunk of bytes received, so a server that sends one frame a byte at a
time after ``auth_ok`` kept a client "connected" forever (70 s seen with
``ping_interval=4``). Here the core learns of a frame only once the frame is
complete: the receive loop passes ``now`` with every message (a binary one
through :meth:`~ratatoskr_client.core.client.ClientCore.receive`, which stores it in
:attr:`Liveness.heard_at`, nothing more: that is the hot path), and pings,
pongs and text frames through
:meth:`~ratatoskr_client.core.client.ClientCore.heard` and
:meth:`~ratatoskr_client.core.client.ClientCore.receive_text`.

Before declaring a connection dead the rule looks once more, at the core's
next timer step (1 ms), after the receive loop had its turn: when the event
loop was blocked (a slow callback, a loaded machine), frames that arrived
meanwhile have been read but not handled yet when the timer fires, and they
must count.
"""

from __future__ import annotations

import math
from typing import Final, Literal

from ..errors import ConnectionClosed

__all__ = ["PONG_GRACE", "Liveness"]

#: The connection is dead after this many ping intervals without a whole frame.
PONG_GRACE: Final = 1.5


class Liveness:
    """The ping rule of one client's connections (see the module docstring)."""

    __slots__ = ("_pinged_at", "_suspect", "heard_at", "interval", "verdict")

    def __init__(self, interval: float | None) -> None:
        #: ``ping_interval``; None: no pings, a dead connection is left to TCP
        self.interval = interval
        #: when the last whole frame arrived (the receive loop's clock)
        self.heard_at = -math.inf
        #: why the current connection was declared dead (None: it was not)
        self.verdict: ConnectionClosed | None = None
        self._pinged_at = -math.inf
        self._suspect = False

    def start(self, now: float) -> None:
        """A connection was authenticated at ``now``."""
        self.heard_at = now
        self.verdict = None
        self._pinged_at = -math.inf
        self._suspect = False

    def stop(self) -> None:
        """The connection is gone: nothing to watch until the next one."""
        self.verdict = None
        self.heard_at = -math.inf

    def deadline(self) -> float:
        """When :meth:`check` has something to do next (inf: never)."""
        interval = self.interval
        if interval is None or self.verdict is not None or self.heard_at == -math.inf:
            return math.inf
        if self._suspect:
            return -math.inf  # at the next timer step
        if self._pinged_at <= self.heard_at:  # no ping since the last frame
            return self.heard_at + interval
        return self.heard_at + PONG_GRACE * interval

    def check(self, now: float) -> Literal["ping", "dead"] | None:
        """What to do now: send a ping, drop the connection (``"dead"``:
        :attr:`verdict` says why), or nothing."""
        interval = self.interval
        if interval is None or self.verdict is not None or self.heard_at == -math.inf:
            return None
        silent = now - self.heard_at
        if silent >= PONG_GRACE * interval:
            if not self._suspect:
                self._suspect = True  # look again once the receive loop had its turn
                return None
            self.verdict = ConnectionClosed(
                f"the server sent no whole frame and no pong for {silent:.3g} s: the"
                f" connection is dead (ping_interval {interval:g} s; dead after"
                f" {PONG_GRACE:g} × that)"
            )
            return "dead"
        self._suspect = False
        if silent >= interval and self._pinged_at <= self.heard_at:
            self._pinged_at = now
            return "ping"
        return None
