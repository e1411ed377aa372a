"""What the client's core asks for: the :class:`Outbox` and its effects. No I/O.

Both cores of this package follow one output convention
(``docs/architecture.md``, "One output convention"): a core never calls the
application or its driver. It writes what must happen into an outbox it was
given, which only records; the driver carries it out once the core's call has
returned. The relay's core writes to a per-connection outbox; this is the
client's.

:class:`~ratatoskr_client.core.client.ClientCore` and the parts that produce
output (the send queue, the waiters) write into one :class:`Outbox`, each
through a typed method; the driver (:mod:`ratatoskr_client.asyncio.driver`)
takes the effects in the order they were recorded and applies them, and the
core's unit tests read them as a list:

* :class:`Send` — write these bytes on the current connection;
* :data:`Emit` — emit this event with these arguments: the tuple
  ``(event, *args)`` (a plain tuple: the core makes one per message received,
  and a tuple costs a third of a dataclass to make and to read). Membership
  events are recorded only while someone listens to them (see
  :meth:`~ratatoskr_client.core.client.ClientCore.listening`);
* :class:`Resolve` / :class:`Fail` — finish this waiter (an ``await`` of the
  application) with a value or an exception;
* :class:`Push` — a presence watcher has new values to take
  (:meth:`~ratatoskr_client.core.client.ClientCore.next_presence`);
* :class:`WakeAt` — call :meth:`~ratatoskr_client.core.client.ClientCore.on_timer`
  at this time;
* :class:`Ping` — send a WebSocket ping on the current connection;
* :class:`RefreshToken` — call the ``token`` callable, and give the core
  what it returns (``token_fetched``) or why it failed (``token_failed``);
* :class:`Drop` — the current connection is dead (:mod:`.liveness`): close it
  at once, without a closing handshake; the driver then reports it lost as it
  does any other.

Why record instead of calling: an application callback run from inside the
core could call the client again while the core is half-way through a frame;
and the order of what the core asks for is then exactly the order it is done
in, with nothing to reason about but a list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from ..errors import ConnectionClosed, RatatoskrError

__all__ = [
    "MIN_TIMER_STEP",
    "Drop",
    "Effect",
    "Emit",
    "Fail",
    "Outbox",
    "Ping",
    "Push",
    "RefreshToken",
    "Resolve",
    "Send",
    "WakeAt",
]


#: The shortest time the core asks to be woken after (seconds): no timer can
#: spin, whatever rounding does to a deadline.
MIN_TIMER_STEP: Final = 0.001


@dataclass(slots=True)
class Send:
    """Write ``data`` (one frame) on the current connection."""

    data: bytes


@dataclass(slots=True)
class Resolve:
    """The waiter ``waiter`` is done, with ``value``."""

    waiter: int
    value: Any = None


@dataclass(slots=True)
class Fail:
    """The waiter ``waiter`` fails with ``error``."""

    waiter: int
    error: RatatoskrError | Exception


@dataclass(slots=True)
class Push:
    """The presence watcher ``watcher`` has values to take (or its end)."""

    watcher: int


@dataclass(slots=True)
class WakeAt:
    """Call the core's ``on_timer`` at ``when`` (a time on the core's clock)."""

    when: float


@dataclass(slots=True)
class Ping:
    """Send a WebSocket ping on the current connection."""


@dataclass(slots=True)
class Drop:
    """The current connection is dead: close it now, without a closing
    handshake (its peer is not answering). ``reason`` says why."""

    reason: ConnectionClosed


@dataclass(slots=True)
class RefreshToken:
    """Call the ``token`` callable; answer with ``ClientCore.token_fetched``
    or ``ClientCore.token_failed``."""


Emit: TypeAlias = tuple[str, *tuple[Any, ...]]
"""Emit ``effect[0]`` (the event's name) with ``effect[1:]`` (its arguments)."""

Effect: TypeAlias = Send | Emit | Resolve | Fail | Push | WakeAt | Ping | Drop | RefreshToken


class Outbox:
    """Records the effects of the core's inputs, in order; carries out nothing.

    :attr:`effects` is the record. The driver applies and removes them (in
    place: the list is never replaced, so a reference to it stays valid);
    a unit test reads them with :meth:`take`.
    """

    __slots__ = ("_wake", "effects")

    def __init__(self) -> None:
        #: what must happen, oldest first
        self.effects: list[Effect] = []
        # The earliest wake-up recorded since the timer last fired.
        self._wake = math.inf

    def send(self, data: bytes) -> None:
        """Write ``data`` (one encoded frame) on the current connection."""
        self.effects.append(Send(data))

    def emit(self, event: str, *args: Any) -> None:
        """Emit ``event`` with ``args`` to the application's callbacks."""
        self.effects.append((event, *args))

    def resolve(self, waiter: int, value: Any = None) -> None:
        """The await ``waiter`` returns ``value``."""
        self.effects.append(Resolve(waiter, value))

    def fail(self, waiter: int, error: RatatoskrError | Exception) -> None:
        """The await ``waiter`` raises ``error``."""
        self.effects.append(Fail(waiter, error))

    def push(self, watcher: int) -> None:
        """The presence watcher ``watcher`` has something to take."""
        self.effects.append(Push(watcher))

    def wake_at(self, when: float) -> None:
        """Call the core's ``on_timer`` at ``when``. Recorded only when earlier
        than every wake-up recorded since the timer last fired (the driver
        keeps one timer, at the earliest time asked for)."""
        if when < self._wake:
            self._wake = when
            self.effects.append(WakeAt(when))

    def timer_fired(self) -> None:
        """The timer fired (or was cancelled): the next wake-up is recorded
        whatever its time."""
        self._wake = math.inf

    def ping(self) -> None:
        """Send a WebSocket ping on the current connection."""
        self.effects.append(Ping())

    def refresh_token(self) -> None:
        """Call the ``token`` callable (the driver answers the core)."""
        self.effects.append(RefreshToken())

    def drop(self, reason: ConnectionClosed) -> None:
        """Close the current connection at once: it is dead (``reason``)."""
        self.effects.append(Drop(reason))

    def take(self) -> list[Effect]:
        """Every effect recorded so far, removed from the record."""
        taken = self.effects[:]
        self.effects.clear()
        return taken

    def __repr__(self) -> str:
        return f"<Outbox {self.effects!r}>"
