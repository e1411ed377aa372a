"""RatatoskrClient: one WebSocket to a Ratatoskr server, presence and ephemeral messages.

This is the public facade. The client is built in three layers (see
``docs/architecture.md``):

* :class:`~ratatoskr_client.core.client.ClientCore` — every rule, as a state machine
  without I/O: frames and calls in, effects out;
* :class:`~ratatoskr_client.asyncio.driver.Driver` — the aiohttp socket, the receive
  and reconnect loop and the one timer, turning effects into I/O;
* :class:`RatatoskrClient` (here) — arguments, properties and the awaitable
  methods, each a call into the core and a wait on what it answered.

Events and their callbacks' signatures are in :mod:`ratatoskr_client.events`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import aiohttp

from ..backoff import DEFAULT_BACKOFF, Backoff
from ..core.client import ClientCore
from ..core.membership import Peer
from ..core.settings import DEFAULT_PING_INTERVAL, DEFAULT_REQUEST_TIMEOUT, Settings
from ..errors import ConnectionClosed, OperationTimeout
from ..events import EventName, EventSource
from ..protocol.constants import (
    EPHEMERAL_PREFIX,
    MAX_FRAME_SIZE,
    MAX_INCOMING_FRAME_SIZE,
    PRESENCE_HEARTBEAT_INTERVAL,
    RATE_LIMIT,
    STATE_HEARTBEAT,
    STATE_INTERVAL,
    STATE_TTL,
)
from ..status import ConnectionState
from .driver import Driver
from .emitter import SafeEmitter
from .views import ClientViews

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_RATE_LIMIT",
    "DEFAULT_REQUEST_TIMEOUT",
    "ConnectionState",
    "EventName",
    "RatatoskrClient",
    "sidecar_id",
]

DEFAULT_HEARTBEAT_INTERVAL: Final = PRESENCE_HEARTBEAT_INTERVAL
DEFAULT_RATE_LIMIT: Final = RATE_LIMIT
DEFAULT_MAX_FRAME_SIZE: Final = MAX_FRAME_SIZE
DEFAULT_MAX_INCOMING_FRAME_SIZE: Final = MAX_INCOMING_FRAME_SIZE

_CONNECTED: Final = ConnectionState.CONNECTED


def sidecar_id(document_id: str, channel: str) -> str:
    """The public relay channel tied to a document: ``eph:<channel>-<document_id>``.

    Raises:
        ValueError: ``channel`` is empty.
    """
    if not channel:
        raise ValueError("channel must be a non-empty string")
    return f"{EPHEMERAL_PREFIX}{channel}-{document_id}"


class RatatoskrClient(ClientViews, EventSource):
    """A connection to a Ratatoskr server, with presence and ephemeral messaging.

    Use it as an async context manager, or call :meth:`connect` and :meth:`close`::

        async with RatatoskrClient("http://localhost:4151", token="alice-secret") as client:
            peers = await client.enter_document("doc-123")

    Args:
        url: the server, ``http(s)://`` or ``ws(s)://``; the socket path ``/sync`` is
            appended unless the URL already ends with it.
        token: the user's token; None connects anonymously.
        heartbeat_interval: seconds between presence heartbeats for each entered
            document (the server's TTL is 90 s by default).
        reconnect: reconnect after a lost connection (never after :meth:`close` or
            an auth failure).
        backoff: the reconnect schedule (default: full jitter, 0.25 s doubling to 5 s,
            retrying forever).
        rate_limit: ephemeral messages per minute this client allows itself; keep
            it at or below the server's limit. None disables this pacing (an
            anonymous client on a server without ``features`` still paces to
            that server's fixed window, see ``docs/guide.md``, "Pacing").
        rate_burst: how many messages may go out at once (default: a tenth of a
            minute's worth, ``rate_limit // 6``, at least 1); kept below the
            server's burst so network jitter can never trip its limit.
        request_timeout: default seconds to wait for the server to confirm
            :meth:`enter_document`.
        connect_timeout: seconds for opening the socket, and again for authenticating.
        ping_interval: seconds without a whole frame from the server after which
            a WebSocket ping is sent; after 1.5 × that without one (a pong is
            one) the connection is declared dead and reconnected. Bytes that do
            not complete a frame do not count, so a server trickling a frame
            cannot keep a connection alive. None disables it (a dead server is
            then only noticed by TCP).
        max_frame_size: largest frame this client sends (the relay's default limit).
        max_incoming_frame_size: largest frame this client reads (default 1 MiB,
            the relay's own hard limit). A larger one is refused from its header,
            never buffered: an ``error`` event (:class:`ProtocolError`), then
            ``disconnected`` (code 1009) and the reconnect policy.
        session: an aiohttp ``ClientSession`` to use (the caller closes it); by
            default the client creates and closes its own. Many clients in one
            process can share one session (it saves memory); an open socket holds
            one of the session connector's slots, so give it a connector without
            that limit: ``ClientSession(connector=aiohttp.TCPConnector(limit=0))``.
        name: the name this client chooses for itself. It is the ``"name"`` in
            the state it shares (what automerge-repo ``Presence`` apps show),
            ``me.chosen_name``, and, on a server that gives no names (upstream),
            ``me.name`` too. The server's name for us (an account's name, an
            "Adjective Animal") stays ``me.name`` where there is one.
        state_interval: at most one state update per document is sent per this
            many seconds; faster ``set_state`` calls are coalesced (latest wins).
        state_heartbeat: seconds of quiet after which a state heartbeat is sent
            for each document we share state in (automerge-repo's 15 s).
        state_ttl: a peer whose state messages stop for this long is forgotten
            (automerge-repo's 45 s); in peer-to-peer mode it also leaves presence.

    Raises:
        ValueError: an argument is out of range, or the URL is not a server URL.
    """

    __slots__ = ("__weakref__", "_core", "_driver", "_emitter", "url")

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        reconnect: bool = True,
        backoff: Backoff = DEFAULT_BACKOFF,
        rate_limit: int | None = DEFAULT_RATE_LIMIT,
        rate_burst: int | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        connect_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        ping_interval: float | None = DEFAULT_PING_INTERVAL,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_incoming_frame_size: int = DEFAULT_MAX_INCOMING_FRAME_SIZE,
        session: aiohttp.ClientSession | None = None,
        name: str | None = None,
        state_interval: float = STATE_INTERVAL,
        state_heartbeat: float = STATE_HEARTBEAT,
        state_ttl: float = STATE_TTL,
    ) -> None:
        settings = Settings(
            url,
            token=token,
            heartbeat_interval=heartbeat_interval,
            reconnect=reconnect,
            backoff=backoff,
            rate_limit=rate_limit,
            rate_burst=rate_burst,
            request_timeout=request_timeout,
            connect_timeout=connect_timeout,
            ping_interval=ping_interval,
            max_frame_size=max_frame_size,
            max_incoming_frame_size=max_incoming_frame_size,
            name=name,
            state_interval=state_interval,
            state_heartbeat=state_heartbeat,
            state_ttl=state_ttl,
        )
        #: the server URL this client was given
        self.url = url
        self._emitter = SafeEmitter()
        self._core = ClientCore(settings)
        self._driver = Driver(self._core, self._emitter, session)

    @staticmethod
    def sidecar(document_id: str, channel: str) -> str:
        """The public sidecar channel of a document: ``sidecar("doc-123", "chat")``
        is ``"eph:chat-doc-123"``. Anyone may join and send on it."""
        return sidecar_id(document_id, channel)

    # ================================================================== lifecycle

    async def __aenter__(self) -> RatatoskrClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the socket and authenticate; returns once connected.

        A client that was closed may connect again (with nothing entered).
        Calling it while connected does nothing.

        Raises:
            ConnectError: the server cannot be reached, or answers without a
                Ratatoskr WebSocket (``.status`` is its HTTP status). Not retried.
            AuthError: the server refused the credentials (not retried).
            OperationTimeout: the server accepted the connection but did not
                complete the WebSocket upgrade, or did not answer ``auth``,
                within ``connect_timeout``.
            ConnectionClosed: :meth:`close` was called before the connection was made.
            RuntimeError: another ``connect()`` is in progress.
        """
        core = self._core
        if core.state is _CONNECTED or core.state is ConnectionState.RECONNECTING:
            return
        if core.state is ConnectionState.CONNECTING:
            raise RuntimeError("connect() is already in progress")
        core.connect_started()
        try:
            await self._driver.open()
        except BaseException as exc:
            await self._driver.close_http()
            if core.state is ConnectionState.CLOSED:  # close() was called meanwhile
                raise ConnectionClosed("client closed while connecting") from exc
            core.connect_failed()
            raise
        self._driver.start()

    async def close(self) -> None:
        """Leave every entered document, close the socket, stop every task.

        Emits ``presence-changed`` (empty) for each entered document and
        ``disconnected`` if a connection was open. Whatever waits is released
        at once with :class:`ConnectionClosed`: a :meth:`connect` in progress,
        :meth:`enter_document`, :meth:`wait_for_presence`, :meth:`wait_connected`,
        a :meth:`send_ephemeral` waiting for pacing; :meth:`watch_presence`
        iterations end. Coroutine callbacks still running get a second to
        finish, then are cancelled. Idempotent. (A reconnect that gives up,
        refused credentials and an internal error tear the client down the
        same way.)
        """
        core = self._core
        if core.state is ConnectionState.IDLE:
            core.shutdown(ConnectionClosed("client closed"), self._driver.now())
            self._driver.apply()
            await self._driver.close_http()
            return
        await self._driver.close()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the client is connected (for example after a reconnect).

        Raises:
            OperationTimeout: not connected within ``timeout`` seconds.
            ConnectionClosed: the client is closed, or closes (or stops
                reconnecting) while waiting.
        """
        waiter = self._core.wait_connected(connected=self.is_connected)
        if waiter is None:
            return
        driver = self._driver
        fut = driver.future(waiter)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise OperationTimeout(f"not connected within {timeout} s") from None
        finally:
            driver.forget(waiter)

    # ================================================================== documents

    async def enter_document(
        self, document_id: str, *, timeout: float | None = None
    ) -> tuple[Peer, ...]:
        """Enter a document and return its presence once the server confirmed it.

        The client then heartbeats the document every ``heartbeat_interval`` and
        re-enters it after every reconnect, until :meth:`leave_document` or
        :meth:`close`. Entering a document already entered returns its presence.

        Args:
            document_id: the document, or a sidecar channel (``eph:...``).
            timeout: seconds to wait for the server (default ``request_timeout``).

        Returns:
            The peers present, this client included, in join order.

        On a server without server-side presence (peer-to-peer mode, see
        :attr:`server_presence`) entering sends automerge-repo's empty-document
        ``request``, which subscribes this connection to the document's ephemeral
        messages, and the returned presence is this client plus the peers whose
        Presence messages it has seen; others appear as their messages arrive.

        Raises:
            ValueError: ``document_id`` is empty, not text, or too long.
            PermissionDenied: this user may not read the document.
            DocumentNotFound: the server does not know the document.
            LimitExceeded: this connection is present in too many documents.
            PresenceUnsupported: peer-to-peer mode and an ``eph:`` channel, which
                such servers cannot relay.
            OperationTimeout: no answer within ``timeout`` (the document is left).
            ConnectionClosed: the client is not connected yet, is closed, or
                was closed meanwhile.
        """
        core = self._core
        driver = self._driver
        result = core.enter(document_id, driver.now())
        if type(result) is tuple:
            driver.apply()
            return result
        assert type(result) is int
        fut = driver.future(result)
        driver.apply()
        wait = core.settings.request_timeout if timeout is None else timeout
        try:
            value: tuple[Peer, ...] = await asyncio.wait_for(fut, wait)
        except TimeoutError:
            self._abandon(document_id, result)
            raise OperationTimeout(
                f"the server did not confirm entering {document_id!r} within {wait} s"
            ) from None
        except asyncio.CancelledError:
            self._abandon(document_id, result)
            raise
        return value

    def _abandon(self, document_id: str, waiter: int) -> None:
        # The caller gave up (timeout or cancelled): do not stay in a document it
        # cannot know it entered (unless another call still waits for it).
        driver = self._driver
        driver.forget(waiter)
        self._core.enter_abandoned(document_id, waiter, driver.now())
        driver.apply()

    async def leave_document(self, document_id: str) -> None:
        """Leave a document: the server tells the other peers, and this client stops
        tracking it (``presence-changed`` fires with an empty tuple). Leaving a
        document not entered does nothing."""
        self._core.leave(document_id, self._driver.now())
        self._driver.apply()

    # ================================================================== watching

    async def watch_presence(self, document_id: str) -> AsyncIterator[tuple[Peer, ...]]:
        """Yield ``presence(document_id)`` now, then every new value, in order.

        New values come when ``presence-changed`` does (see
        :mod:`ratatoskr_client.events`): at most one per batch of frames the
        client handles at once, so a burst of joins yields its result, not
        every step of it. It does not enter the document. Ends when the
        client closes. To stop
        early, iterate inside ``contextlib.aclosing(client.watch_presence(doc))``:
        that unregisters the watcher at once (after a bare ``break`` it is only
        unregistered when the generator is garbage-collected).
        """
        driver = self._driver
        watcher = self._core.watch(document_id)
        queue = driver.queue(watcher)
        driver.apply()
        try:
            yield self._core.store.presence(document_id)
            while True:
                item = await queue.get()
                if item is None:
                    return
                yield item
        finally:
            driver.forget(watcher)

    async def wait_for_presence(
        self,
        document_id: str,
        predicate: Callable[[tuple[Peer, ...]], bool],
        *,
        timeout: float | None = None,
    ) -> tuple[Peer, ...]:
        """Wait until ``predicate(presence(document_id))`` is true; return that presence.

        Checks the current presence first, then each new value when
        ``presence-changed`` announces it (see :mod:`ratatoskr_client.events`;
        a value that lasted only within one batch of frames is not seen).
        ``timeout`` None waits forever.

        Raises:
            OperationTimeout: the predicate did not become true within ``timeout``.
            ConnectionClosed: the client closed while waiting.
        """
        result = self._core.wait_presence(document_id, predicate)
        if type(result) is tuple:
            return result
        assert type(result) is int
        driver = self._driver
        fut = driver.future(result)
        try:
            value: tuple[Peer, ...] = await asyncio.wait_for(fut, timeout)
            return value
        except TimeoutError:
            names = [p.name for p in self.presence(document_id)]
            raise OperationTimeout(
                f"presence of {document_id!r} did not match within {timeout} s (present: {names})"
            ) from None
        finally:
            driver.forget(result)

    # ================================================================== sending

    async def send_ephemeral(self, document_id: str, payload: Any) -> None:
        """Send a payload to every other peer present in ``document_id``.

        Waits for a pacing token first (see ``rate_limit``), so the client never
        trips the server's rate limit on its own; the frame is written at once
        when one is available. Errors the server sends back
        (``permission_denied``, ``document_not_found``, ``rate_limited``) arrive
        later as ``error`` events.

        Args:
            payload: any CBOR-encodable value (dicts, lists, str, bytes, numbers...).

        Raises:
            ValueError: ``document_id`` is empty, not text, or too long.
            PayloadError: not encodable, too large, or shaped like a control
                message (``{"type": "presence", ...}``, or a ``"__presence"``
                key: use :meth:`set_state` for per-peer state).
            ConnectionClosed: not connected (the message is not queued), or the
                connection was lost or the client closed while it waited for pacing.
        """
        driver = self._driver
        core = self._core
        if core.state is _CONNECTED and driver.socket_closed:
            raise ConnectionClosed("not connected (the connection was just lost)")
        waiter = core.send_ephemeral(document_id, payload, driver.now())
        if waiter is None:
            driver.apply()
            writer = driver.writer
            if writer is not None and writer.paused:  # backpressure, like send_bytes
                await writer.drained()
            return
        fut = driver.future(waiter)
        driver.apply()
        try:
            await fut
        finally:
            driver.forget(waiter)

    async def set_state(self, document_id: str, channel: str, value: Any) -> None:
        """Set one channel of this client's state in a document and share it.

        Like automerge-repo's ``Presence.broadcast(channel, value)``: the value is
        merged into our state, which peers (Python or JavaScript) see in their
        :meth:`state` / ``getPeerStates()``. The first call for a document sends a
        full snapshot once the document is entered; later calls are coalesced,
        so at most one update per ``state_interval`` goes out per document and
        the latest value always does. Returns without waiting for the network.

        Raises:
            PayloadError: the value is not CBOR-encodable or too large.
            ValueError: empty document id or channel.
        """
        self._core.set_state(document_id, channel, value, self._driver.now())
        self._driver.apply()

    def __repr__(self) -> str:
        me = self._core.me
        who = f" as {me.name!r} ({me.peer_id})" if me is not None else ""
        return f"<RatatoskrClient {self._driver.socket_url} {self.connection_state.value}{who}>"
