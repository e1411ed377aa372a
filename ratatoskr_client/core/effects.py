"""What the client's core asks its driver to do: the effects. No I/O.

:class:`~ratatoskr_client.core.client.ClientCore` never touches a socket, a clock or
a future. Every call into it appends effects to ``core.effects``, in order; the
driver (:mod:`ratatoskr_client.asyncio.driver`) applies them in that order, and the
core's unit tests read them as a list:

* :class:`Send` — write these bytes on the current connection;
* :class:`Emit` — emit this event with these arguments;
* :class:`PresenceChanged` — emit ``presence-changed`` with the document's
  current presence (built only if someone listens);
* :class:`Resolve` / :class:`Fail` — finish this waiter (an ``await`` of the
  application) with a value or an exception;
* :class:`Push` — give this ``watch_presence`` iterator a value (None: it ends);
* :class:`WakeAt` — call :meth:`~ratatoskr_client.core.client.ClientCore.on_timer`
  at this time (the earliest one asked for wins);
* :class:`Ping` — send a WebSocket ping on the current connection;
* :class:`Drop` — the current connection is dead (:mod:`._liveness`): close it
  at once, without a closing handshake; the driver then reports it lost as it
  does any other.

Two shortcuts, both set by the driver and both off in the unit tests (where
every event is an effect): ``ClientCore.deliver`` receives an application
message's ``ephemeral-message`` directly when no effect is pending (the same
order, no allocation per message), and ``ClientCore.listens`` lets the core
skip the effects of membership events nobody listens to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from ..errors import ConnectionClosed, RatatoskrError
from .membership import Peer

__all__ = [
    "Drop",
    "Effect",
    "Emit",
    "Fail",
    "Ping",
    "PresenceChanged",
    "Push",
    "Resolve",
    "Send",
    "WakeAt",
]


@dataclass(slots=True)
class Send:
    """Write ``data`` (one frame) on the current connection."""

    data: bytes


@dataclass(slots=True)
class Emit:
    """Emit ``event`` with ``args``."""

    event: str
    args: tuple[Any, ...]


@dataclass(slots=True)
class PresenceChanged:
    """``presence(document_id)`` has a new value: emit ``presence-changed``."""

    document_id: str


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
    """The watcher ``watcher`` gets ``peers`` (None: the watch is over)."""

    watcher: int
    peers: tuple[Peer, ...] | None


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


Effect: TypeAlias = Send | Emit | PresenceChanged | Resolve | Fail | Push | WakeAt | Ping | Drop
