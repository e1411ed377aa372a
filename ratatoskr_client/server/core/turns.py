"""The fairness rule between a relay's connections: whose frames are handled
in which turn of the event loop (:class:`Turns`). No I/O, no clock.

The bounds it applies (:data:`~.limits.TURN_FRAMES`, :data:`~.limits.TURN_BYTES`,
:data:`~.limits.ROUND_SECONDS`) are in :mod:`.limits` with the relay's other
fixed limits; the asyncio layer measures each frame's work and waits as told.
"""

from __future__ import annotations

from collections import deque
from typing import Final, Generic, TypeVar

from .limits import ROUND_SECONDS, TURN_BYTES, TURN_FRAMES

__all__ = ["GO_ON", "OVER", "PAUSED", "Turns"]

_W = TypeVar("_W")

#: What :meth:`Turns.over` says about a connection's turn.
GO_ON: Final = 0  # it may have its next frame handled now
OVER: Final = 1  # its turn is over: it waits at the back of the line
PAUSED: Final = 2  # this round's work is done: it waits at the front, its turn unfinished


class Turns(Generic[_W]):
    """The fairness rule between the connections of one relay: whose frames
    are handled in which turn of the event loop. No I/O and no clock of its
    own: the I/O layer measures the work it does on each frame (decoding, the
    rules, the frames written) and passes the seconds in.

    A connection's *turn* is :data:`~.limits.TURN_FRAMES` frames, :data:`~.limits.TURN_BYTES`
    of payload or :data:`~.limits.ROUND_SECONDS` of work, whichever comes first (at
    least one frame). Then it *waits* in a line, in arrival order. Each
    *round* (one turn of the event loop, which also reads the sockets) gives
    their turn to the connections at the head of the line that are expected
    to take ROUND_SECONDS of work in all (at least one).

    Once a round has done ROUND_SECONDS of work, while connections wait, a
    connection has at most one more frame handled in it: one whose turn the
    round gave is *paused* (it goes back to the front of the line, its turn
    unfinished: it loses no place); any other one (a frame has just arrived
    on a quiet connection) has had its turn and joins the back of the line.

    So a turn of the event loop does about ROUND_SECONDS of work plus a frame
    per connection it serves, however many connections flood and however
    costly their frames, and a frame arriving on a quiet connection waits
    for that, not for a turn of every flooder. Those that flood share the
    rest in arrival order, a whole turn each in quick succession, so a limit
    that refuses their frames sees them as sent, and cuts them off as it
    would without them.
    """

    __slots__ = ("_line", "_paused", "round", "used")

    def __init__(self) -> None:
        #: waiting connections, with the seconds their next turn is expected
        #: to take, in order
        self._line: deque[tuple[_W, float]] = deque()
        #: seconds of work done since the current round began
        self.used = 0.0
        #: the current round's number
        self.round = 0
        #: turns paused in the current round (they go back to the front in order)
        self._paused = 0

    def __len__(self) -> int:
        """Connections waiting for their next turn."""
        return len(self._line)

    def over(self, frames: int, size: int, seconds: float, frame_seconds: float, given: int) -> int:
        """A frame was handled, in ``frame_seconds``, in a turn that has had
        ``frames`` frames, ``size`` bytes of payload and ``seconds`` of work in
        all, and that round ``given`` gave (-1: the connection did not wait).
        :data:`GO_ON`, :data:`OVER` (it must :meth:`wait`) or :data:`PAUSED`
        (it must :meth:`wait` with ``paused=True``, its turn unfinished)."""
        self.used += frame_seconds
        if frames >= TURN_FRAMES or size >= TURN_BYTES or seconds >= ROUND_SECONDS:
            return OVER
        if self.used < ROUND_SECONDS or not self._line:
            return GO_ON
        return PAUSED if given == self.round else OVER

    def wait(self, waiter: _W, frames: int, seconds: float, *, paused: bool = False) -> bool:
        """``waiter`` waits for its next turn (``paused``: the rest of this
        one), after ``frames`` frames and ``seconds`` of work in this turn.
        True if the line was empty (the I/O layer must then arrange a call of
        :meth:`next_round` after the work already under way)."""
        line = self._line
        # A turn is expected to cost as much per frame as the last one.
        expected = min(ROUND_SECONDS, seconds / frames * TURN_FRAMES)
        if paused:
            line.insert(self._paused, (waiter, expected))
            self._paused += 1
        else:
            line.append((waiter, expected))
        if len(line) > 1:
            return False
        self.used = 0.0  # a round begins with the first in line
        return True

    def next_round(self) -> list[_W]:
        """A round begins: the waiting connections whose turn it is, in
        order. Call it once per turn of the event loop while any wait."""
        line = self._line
        given: list[_W] = []
        expected = 0.0
        while line and (not given or expected < ROUND_SECONDS):
            waiter, seconds = line.popleft()
            given.append(waiter)
            expected += seconds
        self.used = 0.0
        self.round += 1
        self._paused = 0
        return given

    def clear(self) -> None:
        """Forget every waiting connection (their event loop is gone)."""
        self._line.clear()
        self.used = 0.0
        self._paused = 0
