"""RatatoskrUser: a Locust user with a connected Ratatoskr client."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from typing import Any, ClassVar

import gevent
from locust import User, events
from locust.env import Environment
from locust.exception import LocustError

from ..core.membership import Peer
from ..core.settings import ClientOptions, TokenSource
from ..errors import ConnectionClosed, PayloadError, RatatoskrError
from ..sync import RatatoskrClient
from ._hub import HubInbox
from ._probes import ENTERED_AT, ConvergenceTracker, delivery_delay, stamped

__all__ = ["RatatoskrUser"]

#: Request names in Locust's statistics (the request type is ``request_type``).
CONNECT = "connect"
RECONNECT = "reconnect"
DISCONNECT = "disconnect"
ENTER = "enter_document"
LEAVE = "leave_document"
SEND = "send_ephemeral"
SET_STATE = "set_state"
DELIVERY = "ephemeral delivery"
CONVERGENCE = "presence convergence"
ERROR = "error"

#: The interpreter's thread switch interval in Locust processes (seconds).
SWITCH_INTERVAL = 0.001
_DEFAULT_SWITCH_INTERVAL = 0.005

# One per process: every user's receiver-side measurements go through it.
_inbox: HubInbox | None = None


def _prepare_process(**_: Any) -> None:
    """Run by Locust's ``init`` event, before the test starts, in every process.

    The client's loop thread and gevent's hub (every user greenlet) share the
    GIL, and with the interpreter's default switch interval (5 ms) each
    hand-over between them can wait that long: a simulated user's call made
    three times as slow at a few hundred users. Unless the locustfile set its
    own, the interval becomes :data:`SWITCH_INTERVAL`.

    gevent's timers count from the hub's cached time, stale until the hub first
    runs by all the locustfile's import time (importing this SDK is a good part
    of it), which made Locust's ``--run-time`` end the run early by as much:
    the clock is refreshed.
    """
    if sys.getswitchinterval() == _DEFAULT_SWITCH_INTERVAL:
        sys.setswitchinterval(SWITCH_INTERVAL)
    gevent.get_hub().loop.update_now()


_add_init_listener: Callable[..., object] = events.init.add_listener
_add_init_listener(_prepare_process)


def _fire_request(
    environment: Environment,
    request_type: str,
    name: str,
    seconds: float,
    exception: BaseException | None,
    context: dict[str, Any],
) -> None:
    """One entry in Locust's statistics (Locust's EventHook.fire is untyped)."""
    fire: Callable[..., None] = environment.events.request.fire
    fire(
        request_type=request_type,
        name=name,
        response_time=seconds * 1000.0,
        response_length=0,
        response=None,
        context=context,
        exception=exception,
    )


def _report(item: tuple[Environment, str, str, float, BaseException | None]) -> None:
    environment, request_type, name, seconds, exception = item
    _fire_request(environment, request_type, name, seconds, exception, {})


def _shared_inbox() -> HubInbox:
    global _inbox
    if _inbox is None:
        _inbox = HubInbox(_report)
    return _inbox


class RatatoskrUser(User):
    """A simulated participant: one blocking client, connected in ``on_start``.

    Subclass it, set ``host`` (or pass ``--host``: the server URL, e.g.
    ``http://relay.example:4151``) and write tasks with the methods below. Each
    reports to Locust's statistics under :attr:`request_type` and a name:

    ==========================  ================================================
    ``connect``                 socket opened and ``auth_ok`` received
    ``reconnect``               from losing the connection to ``auth_ok`` again
    ``disconnect``              (failures only) a connection was lost
    ``enter_document``          until the server confirmed the enter
    ``leave_document``          the leave frame sent
    ``send_ephemeral``          the message handed to the socket (after pacing)
    ``set_state``               the state change queued (it is coalesced)
    ``ephemeral delivery``      sender's ``send_ephemeral`` → each receiver's
                                callback, measured at the receivers
    ``presence convergence``    an ``enter_document`` starting → each peer already
                                in the document seeing the newcomer
    ``error``                   (failures only) errors reported asynchronously:
                                a refused ``send_ephemeral`` (``PermissionDenied``,
                                ``DocumentNotFound``, ``RateLimited``), a refused
                                reconnect (``AuthError``), a callback that raised
    ==========================  ================================================

    Refusals (``PermissionDenied``, ``RateLimited``...), lost connections and
    timeouts are failures carrying the exception. The methods return the
    asyncio client's value (or True) on success and None (or False) on failure,
    like Locust's own clients. The two receiver-side numbers use wall clocks:
    machines in a distributed run must be NTP-synchronised.

    Attributes:
        token: the token every user of the class connects with (None:
            anonymous). A user of its own: set ``self.token`` in ``on_start``
            before ``super().on_start()`` (per-user tokens, e.g. on upstream),
            or, for a token per user or one that expires, override
            :meth:`user_token` instead.
        client_options: the other options of each user's client
            (:class:`~ratatoskr_client.ClientOptions`: ``heartbeat_interval``,
            ``backoff``...); a ``"token"`` here wins over :attr:`token`.
        connect_retry_delay: seconds between attempts while the first connect
            fails (each failure is reported).
    """

    abstract = True
    request_type: ClassVar[str] = "ratatoskr"
    token: str | None = None
    client_options: ClassVar[ClientOptions] = {}
    connect_retry_delay: ClassVar[float] = 1.0

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        if not self.host:
            raise LocustError(
                f"{type(self).__name__} needs the server's URL: "
                "pass --host or set the host attribute"
            )
        self._client: RatatoskrClient | None = None
        self._inbox = _shared_inbox()
        self._convergence = ConvergenceTracker()
        self._closing = False
        self._lost_at: float | None = None

    @property
    def client(self) -> RatatoskrClient:
        """This user's blocking client (created in ``on_start``)."""
        if self._client is None:
            raise LocustError("the client is created in on_start(); call super().on_start()")
        return self._client

    # ================================================================== lifecycle

    def user_token(self) -> TokenSource:
        """This user's ``token`` option: :attr:`token` unless overridden. A
        subclass returns a token of its own per user, or a callable (plain
        or ``async``) that makes a fresh one, called at every connect and
        ahead of expiry (``docs/load-testing.md``, "Tokens")."""
        return self.token

    def on_start(self) -> None:
        """Create the client and connect, retrying every ``connect_retry_delay``
        seconds until it succeeds (or the user is stopped)."""
        assert self.host is not None
        options: ClientOptions = {"token": self.user_token(), **self.client_options}
        client = self._client = RatatoskrClient(self.host, **options)
        client.on("ephemeral-message", self._on_message)
        client.on("peer-joined", self._on_peer_joined)
        client.on("peer-left", self._on_peer_left)
        client.on("disconnected", self._on_disconnected)
        client.on("connected", self._on_connected)
        client.on("error", self._on_error)
        if callable(options.get("token")):
            # Only a token callable is refreshed (a callback costs 0.3 KiB a user).
            client.on("token-refresh-failed", self._on_error)
        while not self.connect():
            gevent.sleep(self.connect_retry_delay)

    def on_stop(self) -> None:
        """Close the client (leaving every document)."""
        self._closing = True
        if self._client is not None:
            self._client.close()

    def connect(self) -> bool:
        """Connect (``connect``); True once ``auth_ok`` arrived."""
        return self._measure(CONNECT, self.client.connect) is not None

    # ================================================================== operations

    def enter_document(
        self, document_id: str, *, timeout: float | None = None, name: str = ENTER
    ) -> tuple[Peer, ...] | None:
        """Enter a document (``enter_document``) and announce it to the peers
        there, for ``presence convergence``. Returns the presence, or None."""
        entered_at = time.time()
        peers: tuple[Peer, ...] | None = self._measure(
            name, self.client.enter_document, document_id, timeout=timeout
        )
        if peers is not None and len(peers) > 1:
            # ConnectionClosed: lost meanwhile; the reconnect is reported on its own.
            with contextlib.suppress(ConnectionClosed):
                self.client.send_ephemeral(document_id, {ENTERED_AT: entered_at})
        return peers

    def leave_document(self, document_id: str, *, name: str = LEAVE) -> bool:
        """Leave a document (``leave_document``)."""
        return self._measure(name, self.client.leave_document, document_id) is not None

    def send_ephemeral(self, document_id: str, payload: Any, *, name: str = SEND) -> bool:
        """Send a payload stamped with its send time (``send_ephemeral``); the
        receivers report ``ephemeral delivery``. A mapping gains one key
        (``__locust_sent_at``); any other payload is wrapped in a dict."""
        message = stamped(payload, time.time())
        return self._measure(name, self.client.send_ephemeral, document_id, message) is not None

    def set_state(
        self, document_id: str, channel: str, value: Any, *, name: str = SET_STATE
    ) -> bool:
        """Set a channel of this user's state (``set_state``)."""
        return self._measure(name, self.client.set_state, document_id, channel, value) is not None

    def _measure(self, name: str, operation: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a blocking operation and report it; its result (True for None),
        or None on a RatatoskrError (a PayloadError is a bug: it propagates)."""
        start = time.perf_counter()
        exception: RatatoskrError | None = None
        result: Any = None
        try:
            result = operation(*args, **kwargs)
        except PayloadError:
            raise
        except RatatoskrError as exc:
            exception = exc
        elapsed = time.perf_counter() - start
        _fire_request(self.environment, self.request_type, name, elapsed, exception, self.context())
        if exception is not None:
            return None
        return True if result is None else result

    # ================================================================== receivers (loop thread)

    def _queue(self, name: str, seconds: float, exception: BaseException | None = None) -> None:
        self._inbox.put((self.environment, self.request_type, name, seconds, exception))

    def _on_message(self, document_id: str, sender: Peer, payload: Any) -> None:
        now = time.time()
        delay = delivery_delay(payload, now)
        if delay is not None:
            self._queue(DELIVERY, delay)
        converged = self._convergence.announced(document_id, sender.peer_id, payload)
        if converged is not None:
            self._queue(CONVERGENCE, converged)

    def _on_peer_joined(self, document_id: str, peer: Peer) -> None:
        self._convergence.joined(document_id, peer.peer_id, time.time())

    def _on_peer_left(self, document_id: str, peer: Peer) -> None:
        self._convergence.left(document_id, peer.peer_id)

    def _on_disconnected(self, reason: RatatoskrError) -> None:
        if self._closing:
            return
        self._convergence.reset()
        self._lost_at = time.perf_counter()
        self._queue(DISCONNECT, 0.0, reason)

    def _on_connected(self, me: Peer) -> None:
        lost_at, self._lost_at = self._lost_at, None
        if lost_at is not None:
            self._queue(RECONNECT, time.perf_counter() - lost_at)

    def _on_error(self, error: RatatoskrError) -> None:
        self._queue(ERROR, 0.0, error)
