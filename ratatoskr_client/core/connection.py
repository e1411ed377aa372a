"""Where the client's connection is in its life, as one transition table. No I/O.

:class:`Connection` holds the :class:`~ratatoskr_client.status.ConnectionState`,
and the state changes only through :meth:`Connection.apply`, which looks the
pair (state, event) up in :data:`TRANSITIONS` (like h11's ``_state.py``)::

    IDLE ──connect──▶ CONNECTING ──authenticated──▶ CONNECTED ──lost──▶ RECONNECTING
     ▲                    │                            ▲                    │
     └──connect_failed────┘                            └───authenticated────┘
    any state but CLOSED ──close──▶ CLOSED ──connect──▶ CONNECTING

A pair missing from the table is a bug of the client (an input arrived that
the state cannot have): :meth:`Connection.apply` raises
:class:`InvalidTransition`, which the driver reports as an internal error,
never silently. Races that are not bugs (the socket closing because
``close()`` closed it, an ``auth_ok`` that arrives after ``close()``) are
rules of :class:`~ratatoskr_client.core.client.ClientCore`, checked before it
asks for a transition.

The connection's other facts live here too: the reconnect schedule (attempts,
a server's ``retryAfter`` as a floor, giving up), what the server announced
(``features``), and when the auth frame went out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final, Literal, TypeAlias

from ..backoff import Backoff
from ..errors import AuthError, ConnectionClosed, RatatoskrError, RateLimited
from ..protocol.constants import FEATURE_PRESENCE, FEATURE_STATE_REPLAY
from ..status import ConnectionState

__all__ = ["TRANSITIONS", "Connection", "ConnectionEvent", "InvalidTransition"]

IDLE: Final = ConnectionState.IDLE
CONNECTING: Final = ConnectionState.CONNECTING
CONNECTED: Final = ConnectionState.CONNECTED
RECONNECTING: Final = ConnectionState.RECONNECTING
CLOSED: Final = ConnectionState.CLOSED

#: What happens to a connection.
ConnectionEvent: TypeAlias = Literal[
    "connect",  # connect() begins
    "connect_failed",  # connect() failed before authenticating (it may be retried)
    "authenticated",  # auth_ok arrived (on connect() or a reconnect attempt)
    "lost",  # the socket closed or died while connected
    "close",  # the one teardown: close(), giving up, refused credentials, a fatal error
]

#: (state, event) → the next state. Every state change of a client is one of these.
TRANSITIONS: Final[Mapping[tuple[ConnectionState, ConnectionEvent], ConnectionState]] = (
    MappingProxyType(
        {
            (IDLE, "connect"): CONNECTING,
            (CLOSED, "connect"): CONNECTING,  # a closed client may connect again
            (CONNECTING, "connect_failed"): IDLE,
            (CONNECTING, "authenticated"): CONNECTED,
            (RECONNECTING, "authenticated"): CONNECTED,
            (CONNECTED, "lost"): RECONNECTING,
            (IDLE, "close"): CLOSED,
            (CONNECTING, "close"): CLOSED,
            (CONNECTED, "close"): CLOSED,
            (RECONNECTING, "close"): CLOSED,
        }
    )
)


class InvalidTransition(RuntimeError):
    """An input the connection's state cannot have: a bug in the client.

    Raised by :meth:`Connection.apply`; the driver reports it as an internal
    error (an ``error`` event) like any other failure of the core."""


class Connection:
    """The state of one client's connection, and the facts that go with it."""

    __slots__ = ("attempt", "auth_at", "features", "floor", "reconnect", "state")

    def __init__(self, *, reconnect: bool) -> None:
        #: where the connection is; changed by :meth:`apply` only
        self.state = IDLE
        #: the ``reconnect`` option: reconnect after a lost connection
        self.reconnect = reconnect
        #: reconnect attempts made since the connection was lost
        self.attempt = 0
        #: a server's ``retryAfter``: the next attempt waits at least this long
        self.floor = 0.0
        #: what the last server announced (None: none yet, or it sent no features)
        self.features: tuple[str, ...] | None = None
        #: when the auth frame of the current attempt went out
        self.auth_at = 0.0

    def apply(self, event: ConnectionEvent) -> ConnectionState:
        """Move to the state :data:`TRANSITIONS` gives for (state, ``event``).

        Raises:
            InvalidTransition: there is none: a bug in the client.
        """
        state = TRANSITIONS.get((self.state, event))
        if state is None:
            raise InvalidTransition(
                f"internal error: the client got {event!r} while {self.state.value}"
            )
        self.state = state
        if state is CONNECTED or state is RECONNECTING:
            self.attempt = 0  # a new connection, or a new series of attempts
            self.floor = 0.0
        return state

    # ------------------------------------------------------------------ queries

    @property
    def server_presence(self) -> bool:
        """True when the server announced server-side presence."""
        return self.features is not None and FEATURE_PRESENCE in self.features

    @property
    def state_replay(self) -> bool:
        """True when the server replays each peer's state to a joiner."""
        return self.features is not None and FEATURE_STATE_REPLAY in self.features

    def visible_state(self, *, socket_closed: bool) -> ConnectionState:
        """The state as the application sees it: a socket that died before the
        receive loop noticed is already lost (reconnecting, or closed without
        ``reconnect``)."""
        state = self.state
        if state is CONNECTED and socket_closed:
            return RECONNECTING if self.reconnect else CLOSED
        return state

    def usable(self) -> None:
        """Raise ConnectionClosed unless the client was connected and is not closed."""
        if self.state is IDLE:
            raise ConnectionClosed("not connected yet: call connect()")
        if self.state is CLOSED:
            raise ConnectionClosed("client is closed")

    def sendable(self, *, socket_closed: bool) -> None:
        """Raise ConnectionClosed unless a frame can be sent now (nothing is
        queued for a connection that is not there)."""
        state = self.state
        if state is CONNECTED:
            if socket_closed:
                raise ConnectionClosed("not connected (the connection was just lost)")
            return
        if state is CLOSED:
            raise ConnectionClosed("client is closed")
        raise ConnectionClosed(f"not connected (state: {state.value})")

    # ------------------------------------------------------------------ reconnecting

    def next_delay(self, backoff: Backoff, rand: Callable[[], float]) -> float | None:
        """The wait before the next reconnect attempt, counted as made; None:
        the schedule gives up."""
        if backoff.gives_up(self.attempt):
            return None
        delay = max(backoff.delay(self.attempt, rand), self.floor)
        self.attempt += 1
        return delay

    def attempt_failed(self, error: RatatoskrError, *, renewable: bool = False) -> bool:
        """A reconnect attempt failed with ``error``; False when no attempt may
        follow (the credentials were refused: they will not get better —
        unless they come from a ``token`` callable (``renewable``), whose
        next token may be good: then an ``invalid_token`` is retried).

        ``auth_timeout`` is retried: this client sends ``auth`` as soon as the
        socket is open, so the server not reading it in time means the server
        was overloaded (thousands of clients reconnecting to a restarted relay),
        not that the credentials are wrong."""
        if (
            isinstance(error, AuthError)
            and error.code != "auth_timeout"
            and not (renewable and error.code == "invalid_token")
        ):
            return False
        self.floor = error.retry_after if isinstance(error, RateLimited) else 0.0
        return True
