"""RatatoskrClient: one WebSocket to a Ratatoskr server, presence and ephemeral messages.

The client is a thin asyncio driver around pure parts: the codec
(:mod:`ratatoskr_client.protocol`), the presence store
(:mod:`ratatoskr_client.presence`), the pacing bucket
(:mod:`ratatoskr_client.pacing`) and the reconnect schedule
(:mod:`ratatoskr_client.backoff`). It owns three kinds of task: the receive loop
(which also reconnects), the heartbeat timer, and the application's coroutine
callbacks. ``close()`` ends all of them.

Events (``client.on(name, callback)``; callbacks may be plain functions or
coroutine functions):

====================  ===========================================================
``connected``         ``(me: Peer)`` — authenticated, on every (re)connection
``disconnected``      ``(reason: RatatoskrError)`` — the connection is gone
``reconnecting``      ``(attempt: int, delay: float)`` — next try, 1-based, in ``delay`` s
``peer-identity``     ``(peer: Peer)`` — the server announced a peer
``peer-disconnected`` ``(peer: Peer)`` — a peer's connection closed
``peer-joined``       ``(document_id: str, peer: Peer)`` — a peer entered a document
``peer-left``         ``(document_id: str, peer: Peer)`` — a peer left, expired or dropped
``presence-changed``  ``(document_id: str, peers: tuple[Peer, ...])`` — new value of
                      ``presence(document_id)``
``ephemeral-message`` ``(document_id: str, sender: Peer, payload: Any)`` — every
                      ephemeral message, automerge-repo Presence messages included
``state-changed``     ``(document_id: str, peer: Peer, state: Mapping[str, Any])`` —
                      a peer's state (``set_state`` / automerge-repo ``Presence``)
                      has a new value; empty when it is forgotten
``error``             ``(error: RatatoskrError)`` — server error frames that answer
                      no awaited call, bad frames, failing callbacks
====================  ===========================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from enum import Enum
from typing import Any, Final, Literal, TypeAlias, TypeVar, cast, get_args
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from ._events import SafeEmitter
from ._statesync import StateSync
from .backoff import DEFAULT_BACKOFF, Backoff
from .errors import (
    AuthError,
    ConnectError,
    ConnectionClosed,
    DocumentNotFound,
    LimitExceeded,
    OperationTimeout,
    PayloadError,
    PermissionDenied,
    PresenceUnsupported,
    ProtocolError,
    RatatoskrError,
    RateLimited,
    ServerError,
    TransportError,
    error_from_frame,
)
from .pacing import TokenBucket
from .presence import (
    Change,
    IdentityAdded,
    IdentityRemoved,
    Peer,
    PeerJoined,
    PeerLeft,
    PresenceChanged,
    PresenceStore,
    SelfRemoved,
)
from .protocol import (
    MAX_DOCUMENT_ID_BYTES,
    AuthErrorFrame,
    AuthFrame,
    AuthOkFrame,
    DocPresenceStateFrame,
    DocUnavailableFrame,
    EphemeralFrame,
    ErrorFrame,
    Frame,
    PeerDisconnectedFrame,
    PeerIdentityFrame,
    PeerJoinedDocFrame,
    PeerLeftDocFrame,
    PresenceMessage,
    PresenceStatus,
    RequestFrame,
    SyncFrame,
    UserInfo,
    decode,
    decode_payload,
    encode,
    encode_payload,
    fits_utf8,
)
from .state import (
    DEFAULT_STATE_HEARTBEAT,
    DEFAULT_STATE_INTERVAL,
    DEFAULT_STATE_TTL,
    parse_state_payload,
    update_payload,
)

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

log = logging.getLogger("ratatoskr_client")

DEFAULT_HEARTBEAT_INTERVAL: Final = 30.0
DEFAULT_PING_INTERVAL: Final = 20.0
DEFAULT_RATE_LIMIT: Final = 600
DEFAULT_REQUEST_TIMEOUT: Final = 10.0
DEFAULT_MAX_FRAME_SIZE: Final = 64 * 1024
# Envelope bytes around an ephemeral payload (ids, counters, keys): a generous bound.
_ENVELOPE_OVERHEAD: Final = 512
# Seconds coroutine callbacks get to finish when the client closes.
_CALLBACK_GRACE: Final = 1.0
# Seconds close() waits for the server to answer our close frame.
_CLOSE_TIMEOUT: Final = 2.0
# A watch_presence() consumer this far behind loses its oldest snapshots.
_WATCH_BACKLOG: Final = 1000
# The empty-document sync message automerge-repo sends in a `request`; upstream
# subscribes the connection to the document's ephemeral messages when it sees it.
EMPTY_DOC_SYNC: Final = bytes.fromhex("42000001000000020102")
# Upstream counts every frame of an anonymous connection against 100 per minute.
_UPSTREAM_ANONYMOUS_LIMIT: Final = 90
# Gossip copies remembered per connection in peer-to-peer mode (see _is_gossip_copy).
_MAX_SEEN_SESSIONS: Final = 4096
_BINARY: Final = aiohttp.WSMsgType.BINARY

EventName: TypeAlias = Literal[
    "connected",
    "disconnected",
    "reconnecting",
    "peer-identity",
    "peer-disconnected",
    "peer-joined",
    "peer-left",
    "presence-changed",
    "ephemeral-message",
    "state-changed",
    "error",
]
_EVENTS: Final = frozenset(get_args(EventName))
# Error codes by which the server refuses a presence membership.
_MEMBERSHIP_REFUSALS: Final = (PermissionDenied, DocumentNotFound, LimitExceeded)

F = TypeVar("F", bound=Callable[..., Any])


class ConnectionState(Enum):
    """Where the client is in its life. Read it from :attr:`RatatoskrClient.connection_state`."""

    IDLE = "idle"  #: created and not connected yet (or connect() failed: it may be retried)
    CONNECTING = "connecting"  #: connect() in progress
    CONNECTED = "connected"  #: authenticated socket open
    RECONNECTING = "reconnecting"  #: connection lost, retrying with backoff
    CLOSED = "closed"  #: close() called, auth refused, or reconnect gave up


def sidecar_id(document_id: str, channel: str) -> str:
    """The public relay channel tied to a document: ``eph:<channel>-<document_id>``."""
    if not channel:
        raise ValueError("channel must be a non-empty string")
    return f"eph:{channel}-{document_id}"


def _socket_url(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"expected an http(s):// or ws(s):// URL, got {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/sync"):
        path += "/sync"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


class RatatoskrClient:
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
            it at or below the server's limit. None disables pacing.
        rate_burst: how many messages may go out at once (default: a tenth of a
            minute's worth, ``rate_limit // 6``, at least 1); kept below the
            server's burst so network jitter can never trip its limit.
        request_timeout: default seconds to wait for the server to confirm
            :meth:`enter_document`.
        connect_timeout: seconds for opening the socket and authenticating.
        ping_interval: seconds of silence after which a WebSocket ping is sent; a
            missing pong within half that declares the connection dead. None
            disables it (a dead server is then only noticed by TCP).
        max_frame_size: largest frame this client sends (the relay's default limit).
        session: an aiohttp ``ClientSession`` to use (the caller closes it); by
            default the client creates and closes its own. Many clients in one
            process can share one session (it saves memory); an open socket holds
            one of the session connector's slots, so give it a connector without
            that limit: ``ClientSession(connector=aiohttp.TCPConnector(limit=0))``.
        name: the display name this client puts in its shared state (``"name"``)
            when the server gives it none (upstream servers do not); peers in
            peer-to-peer mode know us by it.
        state_interval: at most one state update per document is sent per this
            many seconds; faster ``set_state`` calls are coalesced (latest wins).
        state_heartbeat: seconds of quiet after which a state heartbeat is sent
            for each document we share state in (automerge-repo's 15 s).
        state_ttl: a peer whose state messages stop for this long is forgotten
            (automerge-repo's 45 s); in peer-to-peer mode it also leaves presence.
    """

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
        session: aiohttp.ClientSession | None = None,
        name: str | None = None,
        state_interval: float = DEFAULT_STATE_INTERVAL,
        state_heartbeat: float = DEFAULT_STATE_HEARTBEAT,
        state_ttl: float = DEFAULT_STATE_TTL,
    ) -> None:
        _check_seconds("heartbeat_interval", heartbeat_interval)
        _check_seconds("request_timeout", request_timeout)
        _check_seconds("connect_timeout", connect_timeout)
        if ping_interval is not None:
            _check_seconds("ping_interval", ping_interval)
        if rate_limit is not None and rate_limit < 1:
            raise ValueError(f"rate_limit must be >= 1 or None, got {rate_limit}")
        if rate_burst is not None and rate_burst < 1:
            raise ValueError(f"rate_burst must be >= 1 or None, got {rate_burst}")
        _check_seconds("state_heartbeat", state_heartbeat)
        _check_seconds("state_ttl", state_ttl)
        if not (math.isfinite(state_interval) and state_interval >= 0):
            raise ValueError(f"state_interval must be >= 0, got {state_interval}")
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name must be a non-empty string or None, got {name!r}")
        if max_frame_size <= _ENVELOPE_OVERHEAD:
            raise ValueError(f"max_frame_size must be > {_ENVELOPE_OVERHEAD}, got {max_frame_size}")
        self.url = url
        self._ws_url = _socket_url(url)
        self._token = token
        self._heartbeat_interval = heartbeat_interval
        self._reconnect = reconnect
        self._backoff = backoff
        self._rate_limit = rate_limit
        self._rate_burst = rate_burst or max(1, (rate_limit or 0) // 6)
        self._request_timeout = request_timeout
        self._connect_timeout = connect_timeout
        self._ping_interval = ping_interval
        self._max_frame_size = max_frame_size
        self._http = session
        self._owns_http = session is None
        self._name = name

        self._emitter = SafeEmitter()
        self._store = PresenceStore()
        self._sync = StateSync(
            self, interval=state_interval, heartbeat=state_heartbeat, ttl=state_ttl
        )
        #: peer-to-peer mode only: sessionId -> (first sender, last count)
        self._seen_sessions: dict[str, tuple[str, int]] = {}
        self._state = ConnectionState.IDLE
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._server_peer_id = ""
        self._features: tuple[str, ...] | None = None
        #: a server has answered auth at least once (so _features is known)
        self._authenticated = False
        self._session_id = ""
        self._count = 0
        self._bucket: TokenBucket | None = None
        self._pace_lock = asyncio.Lock()

        #: documents the application entered (and has not left), in order
        self._entered: dict[str, None] = {}
        #: documents whose join is on the wire and unanswered, on this connection
        self._joining: set[str] = set()
        #: enter_document() calls waiting for the server's doc_presence_state
        self._confirm: dict[str, asyncio.Future[tuple[Peer, ...]]] = {}
        self._watchers: dict[str, set[asyncio.Queue[tuple[Peer, ...] | None]]] = {}
        self._waiters: dict[
            str, list[tuple[Callable[[tuple[Peer, ...]], bool], asyncio.Future[tuple[Peer, ...]]]]
        ] = {}
        #: wait_connected() calls waiting for the next successful connection
        self._connect_waiters: set[asyncio.Future[None]] = set()
        #: the socket connect() is authenticating, so close() can abort it
        self._opening: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        #: resolved by close(): wakes senders waiting for a pacing token
        self._closed_future: asyncio.Future[None] | None = None

    # ================================================================== properties

    @property
    def connection_state(self) -> ConnectionState:
        """The connection state, kept in step with the socket."""
        if self._state is ConnectionState.CONNECTED and (self._ws is None or self._ws.closed):
            # The socket died and the receive loop has not run yet: say so now.
            return ConnectionState.RECONNECTING if self._reconnect else ConnectionState.CLOSED
        return self._state

    @property
    def is_connected(self) -> bool:
        """True exactly when an authenticated socket is open."""
        return self.connection_state is ConnectionState.CONNECTED

    @property
    def me(self) -> Peer:
        """This connection's identity from ``auth_ok`` (after a disconnect, the last
        one; a reconnect brings a new peer id).

        Raises:
            ConnectionClosed: the client has never connected.
        """
        me = self._store.me
        if me is None:
            raise ConnectionClosed("not connected yet: call connect() first")
        return me

    @property
    def peers(self) -> Mapping[str, Peer]:
        """Every identity the server announced on this connection, by peer id,
        this client included. Empty while disconnected. A read-only live view."""
        return self._store.identities

    @property
    def server_presence(self) -> bool:
        """Which presence mode is in use.

        True: the server announced server-side presence (``features`` in
        ``auth_ok`` includes ``"presence"``), so membership comes from the server.
        False (a server like today's upstream): peer-to-peer mode, membership is
        derived from the peers' automerge-repo Presence messages. Also False
        before the first connection.
        """
        return self._features is not None and "presence" in self._features

    @property
    def features(self) -> tuple[str, ...]:
        """The ``features`` the server announced (empty for servers that send none)."""
        return self._features or ()

    @property
    def entered_documents(self) -> tuple[str, ...]:
        """Documents the application entered and has not left (re-entered
        automatically after a reconnect)."""
        return tuple(self._entered)

    def presence(self, document_id: str) -> tuple[Peer, ...]:
        """Peers present in ``document_id``, this client included, in join order.

        Empty for documents not entered, and while disconnected.
        """
        return self._store.presence(document_id)

    def state(self, document_id: str) -> Mapping[str, Mapping[str, Any]]:
        """Each peer's state in ``document_id``: peer id → its latest state.

        Peers' states come from their automerge-repo Presence messages (snapshots
        and per-channel updates, merged); this client's own state is included,
        under its own peer id, once it shares state there (:meth:`set_state`, or
        always in peer-to-peer mode). A read-only view; empty while disconnected.
        """
        me = self._store.me
        return self._sync.state(document_id, me.peer_id if me is not None else None)

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
        _check_document_id(document_id)
        if not isinstance(channel, str) or not channel:
            raise ValueError(f"channel must be a non-empty string, got {channel!r}")
        size = len(encode_payload(update_payload(channel, value)))
        if size + _ENVELOPE_OVERHEAD > self._max_frame_size:
            raise PayloadError(
                f"state value of {size} bytes is too large for a {self._max_frame_size}-byte frame"
            )
        self._sync.set_local(document_id, channel, value)

    @staticmethod
    def sidecar(document_id: str, channel: str) -> str:
        """The public sidecar channel of a document: ``sidecar("doc-123", "chat")``
        is ``"eph:chat-doc-123"``. Anyone may join and send on it."""
        return sidecar_id(document_id, channel)

    # ================================================================== events

    def on(self, event: EventName, callback: F | None = None) -> Any:
        """Call ``callback`` every time ``event`` fires; usable as a decorator.

        Raises:
            ValueError: ``event`` is not one of the documented event names.
        """
        self._check_event(event)
        if callback is None:
            return self._emitter.on(event)
        return self._emitter.on(event, callback)

    def once(self, event: EventName, callback: F | None = None) -> Any:
        """Like :meth:`on`, but the callback runs at most once."""
        self._check_event(event)
        if callback is None:
            return self._emitter.once(event)
        return self._emitter.once(event, callback)

    def off(self, event: EventName, callback: Callable[..., Any]) -> None:
        """Remove a callback added with :meth:`on` or :meth:`once` (no-op if absent)."""
        self._check_event(event)
        with contextlib.suppress(KeyError):
            self._emitter.remove_listener(event, callback)

    remove_listener = off

    @staticmethod
    def _check_event(event: str) -> None:
        if event not in _EVENTS:
            raise ValueError(f"unknown event {event!r}; expected one of {sorted(_EVENTS)}")

    def _emit(self, event: EventName, *args: Any) -> None:
        self._emitter.emit(event, *args)

    def _report(self, error: RatatoskrError) -> None:
        self._emitter.emit("error", error)

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
            ConnectError: the server cannot be reached (not retried).
            AuthError: the server refused the credentials (not retried).
            OperationTimeout: no answer to the auth frame within ``connect_timeout``.
            ConnectionClosed: :meth:`close` was called before the connection was made.
        """
        if self._state in (ConnectionState.CONNECTED, ConnectionState.RECONNECTING):
            return
        if self._state is ConnectionState.CONNECTING:
            raise RuntimeError("connect() is already in progress")
        self._state = ConnectionState.CONNECTING
        self._closing = False
        try:
            await self._open()
        except BaseException as exc:
            if self._stopping():  # close() was called meanwhile and has cleaned up
                await self._close_http()
                raise ConnectionClosed("client closed while connecting") from exc
            self._state = ConnectionState.IDLE
            await self._close_http()
            raise
        self._supervisor = self._spawn(self._run(), "receive")
        self._spawn(self._heartbeat_loop(), "heartbeat")

    async def close(self) -> None:
        """Leave every entered document, close the socket, stop every task.

        Emits ``presence-changed`` (empty) for each entered document and
        ``disconnected`` if a connection was open. A :meth:`connect` still in
        progress fails with :class:`ConnectionClosed`; pending
        :meth:`enter_document`, :meth:`wait_for_presence` and :meth:`wait_connected`
        calls fail with it too, and :meth:`watch_presence` iterations end.
        Coroutine callbacks still running get a second to finish, then are
        cancelled. Idempotent.
        """
        if self._closing or self._state is ConnectionState.CLOSED:
            return
        if self._state is ConnectionState.IDLE:
            self._state = ConnectionState.CLOSED
            await self._close_http()
            return
        self._closing = True
        if self._closed_future is not None and not self._closed_future.done():
            self._closed_future.set_result(None)
        was_connected = self.is_connected
        ws = self._ws
        opening = self._opening
        if opening is not None:  # connect() in progress: make it fail now
            with contextlib.suppress(Exception):
                await opening.close()
        if ws is not None and was_connected:
            for doc_id in list(self._entered):
                with contextlib.suppress(RatatoskrError):
                    await self._sync.left(doc_id)
                    if self.server_presence:
                        await self._send_presence("leave", doc_id)
        self._entered.clear()
        self._joining.clear()
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        self._state = ConnectionState.CLOSED
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._ws = None
        self._sync.reset()
        for change in self._store.reset():
            self._dispatch(change)
        for doc_id in list(self._store.tracked()):
            self._store.forget(doc_id)
        closed = ConnectionClosed("client closed")
        self._fail_waiters(closed)
        if was_connected or ws is not None:
            self._emit("disconnected", closed)
        await self._emitter.drain(_CALLBACK_GRACE)
        await self._close_http()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the client is connected (for example after a reconnect).

        Raises:
            OperationTimeout: not connected within ``timeout`` seconds.
            ConnectionClosed: the client is closed, or closes (or stops
                reconnecting) while waiting.
        """
        self._check_usable()
        if self.is_connected:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._connect_waiters.add(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise OperationTimeout(f"not connected within {timeout} s") from None
        finally:
            self._connect_waiters.discard(fut)

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
            PermissionDenied: this user may not read the document.
            DocumentNotFound: the server does not know the document.
            LimitExceeded: this connection is present in too many documents.
            PresenceUnsupported: peer-to-peer mode and an ``eph:`` channel, which
                such servers cannot relay.
            OperationTimeout: no answer within ``timeout`` (the document is left).
            ConnectionClosed: the client is closed, or was closed meanwhile.
        """
        _check_document_id(document_id)
        self._check_usable()
        if self._authenticated and not self.server_presence and _is_sidecar(document_id):
            raise self._presence_unsupported(document_id)
        if document_id in self._entered and document_id not in self._joining:
            present = self._store.presence(document_id)
            if self.is_connected and any(p is self._store.me for p in present):
                return present
        fut = self._confirm.get(document_id)
        if fut is None or fut.done():
            fut = self._confirm[document_id] = asyncio.get_running_loop().create_future()
        if document_id not in self._entered:
            self._entered[document_id] = None
            self._store.track(document_id)
        if self.is_connected and document_id not in self._joining:
            await self._join(document_id)
        wait = self._request_timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.shield(fut), wait)
        except TimeoutError:
            if self._confirm.get(document_id) is fut:
                await self._abandon(document_id)
            raise OperationTimeout(
                f"the server did not confirm entering {document_id!r} within {wait} s"
            ) from None
        except asyncio.CancelledError:
            # The caller gave up (e.g. its own timeout): do not stay in a document
            # it cannot know it entered. Leave in the background; re-raise now.
            if self._confirm.get(document_id) is fut and not fut.done():
                self._spawn(self._abandon(document_id), "abandon")
            raise

    async def leave_document(self, document_id: str) -> None:
        """Leave a document: the server tells the other peers, and this client stops
        tracking it (``presence-changed`` fires with an empty tuple). Leaving a
        document not entered does nothing."""
        if document_id not in self._entered:
            return
        await self._abandon(document_id)

    def _drop_document(
        self, document_id: str, error: RatatoskrError
    ) -> asyncio.Future[tuple[Peer, ...]] | None:
        """Stop claiming a document: no longer entered, joining or tracked. An
        enter_document() still waiting gets ``error``: its future is returned."""
        self._entered.pop(document_id, None)
        self._joining.discard(document_id)
        fut = self._confirm.pop(document_id, None)
        for change in self._store.forget(document_id):
            self._dispatch(change)
        if fut is None or fut.done():
            return None
        fut.set_exception(error)
        return fut

    async def _abandon(self, document_id: str) -> None:
        fut = self._drop_document(
            document_id, RatatoskrError(f"left {document_id!r} before the server confirmed")
        )
        if fut is not None:
            fut.exception()  # mark retrieved: nobody may be awaiting it any more
        if self.is_connected:
            with contextlib.suppress(ConnectionClosed):
                await self._sync.left(document_id)
                if self.server_presence:
                    await self._send_presence("leave", document_id)
        else:
            await self._sync.left(document_id)

    async def _join(self, document_id: str) -> None:
        self._joining.add(document_id)
        try:
            if self.server_presence:
                await self._send_presence("join", document_id)
            else:
                # Peer-to-peer mode: subscribe the connection like automerge-repo does.
                await self._pace()
                me = self._store.me
                request = RequestFrame(
                    me.peer_id if me is not None else "",
                    self._server_peer_id,
                    document_id,
                    EMPTY_DOC_SYNC,
                )
                await self._send_bytes(self._require_ws(), encode(request))
        except ConnectionClosed:
            # The reconnect will send the join again; the caller keeps waiting.
            self._joining.discard(document_id)

    # ================================================================== watching

    async def watch_presence(self, document_id: str) -> AsyncIterator[tuple[Peer, ...]]:
        """Yield ``presence(document_id)`` now, then every new value, in order.

        It does not enter the document. Ends when the client closes. To stop
        early, iterate inside ``contextlib.aclosing(client.watch_presence(doc))``:
        that unregisters the watcher at once (after a bare ``break`` it is only
        unregistered when the generator is garbage-collected).
        """
        queue: asyncio.Queue[tuple[Peer, ...] | None] = asyncio.Queue()
        self._watchers.setdefault(document_id, set()).add(queue)
        try:
            yield self._store.presence(document_id)
            while True:
                item = await queue.get()
                if item is None:
                    return
                yield item
        finally:
            watchers = self._watchers.get(document_id)
            if watchers is not None:
                watchers.discard(queue)
                if not watchers:
                    del self._watchers[document_id]

    async def wait_for_presence(
        self,
        document_id: str,
        predicate: Callable[[tuple[Peer, ...]], bool],
        *,
        timeout: float | None = None,
    ) -> tuple[Peer, ...]:
        """Wait until ``predicate(presence(document_id))`` is true; return that presence.

        Checks the current presence first. ``timeout`` None waits forever.

        Raises:
            OperationTimeout: the predicate did not become true within ``timeout``.
            ConnectionClosed: the client closed while waiting.
        """
        current = self._store.presence(document_id)
        if predicate(current):
            return current
        self._check_usable()
        fut: asyncio.Future[tuple[Peer, ...]] = asyncio.get_running_loop().create_future()
        entry = (predicate, fut)
        self._waiters.setdefault(document_id, []).append(entry)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            names = [p.name for p in self._store.presence(document_id)]
            raise OperationTimeout(
                f"presence of {document_id!r} did not match within {timeout} s (present: {names})"
            ) from None
        finally:
            waiters = self._waiters.get(document_id)
            if waiters is not None:
                with contextlib.suppress(ValueError):
                    waiters.remove(entry)
                if not waiters:
                    del self._waiters[document_id]

    # ================================================================== sending

    async def send_ephemeral(self, document_id: str, payload: Any) -> None:
        """Send a payload to every other peer present in ``document_id``.

        Waits for a pacing token first (see ``rate_limit``), so the client never
        trips the server's rate limit on its own. Errors the server sends back
        (``permission_denied``, ``document_not_found``, ``rate_limited``) arrive
        later as ``error`` events.

        Args:
            payload: any CBOR-encodable value (dicts, lists, str, bytes, numbers...).

        Raises:
            PayloadError: not encodable, too large, or shaped like a presence
                control message (``{"type": "presence", ...}``).
            ConnectionClosed: not connected (the message is not queued).
        """
        _check_document_id(document_id)
        # Any mapping (dict subclasses too) goes on the wire as a CBOR map. (The
        # type test first: isinstance() against an ABC is slow on this hot path.)
        is_map = type(payload) is dict or isinstance(payload, Mapping)
        if is_map and payload.get("type") == "presence":
            raise PayloadError('payloads with "type": "presence" are reserved for presence')
        data = encode_payload(payload)
        if len(data) + _ENVELOPE_OVERHEAD > self._max_frame_size:
            raise PayloadError(
                f"payload of {len(data)} bytes is too large for a {self._max_frame_size}-byte frame"
            )
        self._require_ws()
        if self._bucket is not None:
            await self._pace()
        await self._send_ephemeral_data(document_id, data)

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        async with self._pace_lock:  # FIFO: waiting senders go out in call order
            while True:
                bucket = self._bucket
                if bucket is None:
                    return
                wait = bucket.take(loop.time())
                if wait <= 0:
                    return
                # A long pause (a server's retryAfter) must not outlive close().
                closed = self._closed_signal
                await asyncio.wait([closed], timeout=wait)
                if closed.done():
                    raise ConnectionClosed("client closed while waiting to send")

    async def _send_state_payload(
        self, document_id: str, payload: dict[str, Any], *, paced: bool = True
    ) -> None:
        """Send an automerge-repo Presence message (an ordinary, rate-limited
        ephemeral message)."""
        self._require_ws()
        if paced:
            await self._pace()
        await self._send_ephemeral_data(document_id, encode_payload(payload))

    async def _send_presence(self, status: PresenceStatus, document_id: str) -> None:
        data = encode_payload(PresenceMessage(status, document_id).to_payload())
        await self._send_ephemeral_data(document_id, data)

    async def _send_ephemeral_data(self, document_id: str, data: bytes) -> None:
        ws = self._require_ws()
        self._count += 1
        me = self._store.me
        frame = EphemeralFrame(
            me.peer_id if me is not None else "",
            self._server_peer_id,
            document_id,
            self._count,
            self._session_id,
            data,
        )
        await self._send_bytes(ws, encode(frame))

    async def _send_bytes(self, ws: aiohttp.ClientWebSocketResponse, data: bytes) -> None:
        try:
            await ws.send_bytes(data)
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectionClosed(f"connection lost while sending: {exc}") from exc

    def _require_ws(self) -> aiohttp.ClientWebSocketResponse:
        ws = self._ws
        if ws is None or ws.closed or self._state is not ConnectionState.CONNECTED:
            if self._state is ConnectionState.CLOSED:
                raise ConnectionClosed("client is closed")
            raise ConnectionClosed(f"not connected (state: {self.connection_state.value})")
        return ws

    def _check_usable(self) -> None:
        if self._state in (ConnectionState.IDLE, ConnectionState.CLOSED) or self._closing:
            raise ConnectionClosed(
                "client is closed"
                if self._state is ConnectionState.CLOSED
                else "not connected yet: call connect() first"
            )

    # ================================================================== connection

    async def _open(self) -> None:
        """Open a socket and authenticate; on success the client is CONNECTED."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
            self._owns_http = True
        try:
            ws = await asyncio.wait_for(
                self._http.ws_connect(
                    self._ws_url,
                    heartbeat=self._ping_interval,
                    max_msg_size=16 * 1024 * 1024,
                    autoping=True,
                    # close() waits this long for the server's close reply, not 10 s.
                    timeout=aiohttp.ClientWSTimeout(ws_close=_CLOSE_TIMEOUT),
                ),
                self._connect_timeout,
            )
        except TimeoutError as exc:
            raise ConnectError(
                f"cannot connect to {self._ws_url}: no answer within {self._connect_timeout} s"
            ) from exc
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise ConnectError(f"cannot connect to {self._ws_url}: {exc}") from exc
        self._opening = ws
        try:
            auth_ok = await self._authenticate(ws)
            if self._stopping():
                raise ConnectionClosed("client closed while connecting")
        except BaseException:
            with contextlib.suppress(Exception):
                await ws.close()
            raise
        finally:
            self._opening = None
        self._ws = ws
        self._server_peer_id = auth_ok.peer_id
        self._features = auth_ok.features
        self._authenticated = True
        self._session_id = secrets.token_hex(8)
        self._joining.clear()
        self._seen_sessions.clear()
        self._sync.p2p = not self.server_presence
        user = auth_ok.user
        if self._name is not None and (user is None or user.name is None):
            # The server gave no display name (upstream): use ours.
            user = UserInfo(None if user is None else user.id, self._name, user is None)
            auth_ok = AuthOkFrame(auth_ok.peer_id, auth_ok.client_peer_id, user, auth_ok.features)
        self._bucket = self._make_bucket(anonymous=user is None or user.is_anonymous)
        for change in self._store.authenticated(auth_ok):
            self._dispatch(change)
        self._state = ConnectionState.CONNECTED
        for fut in self._connect_waiters:
            if not fut.done():
                fut.set_result(None)
        log.debug("connected to %s as %s", self._ws_url, self._store.me)
        self._emit("connected", self._store.me)
        if not self.server_presence:
            # Entered while we did not know yet: sidecars cannot work here.
            for doc_id in [d for d in self._entered if _is_sidecar(d)]:
                self._refuse_entered(doc_id, self._presence_unsupported(doc_id))
        for doc_id in list(self._entered):  # restore presence after a reconnect
            if self._ws is not ws:
                break
            await self._join(doc_id)

    def _make_bucket(self, *, anonymous: bool) -> TokenBucket | None:
        limit = self._rate_limit
        burst = self._rate_burst
        if not self.server_presence and anonymous:
            # Upstream counts every frame of an anonymous connection (100/min).
            limit = min(limit or _UPSTREAM_ANONYMOUS_LIMIT, _UPSTREAM_ANONYMOUS_LIMIT)
            burst = min(burst, limit // 6)
        if limit is None:
            return None
        return TokenBucket.per_minute(limit, asyncio.get_running_loop().time(), burst=burst)

    def _presence_unsupported(self, document_id: str) -> PresenceUnsupported:
        announced = "none" if self._features is None else list(self._features)
        return PresenceUnsupported(
            f"the server at {self.url} has no server-side presence (features announced: "
            f"{announced}) and cannot relay sidecar channels such as {document_id!r}"
        )

    def _refuse_entered(self, doc_id: str, error: PresenceUnsupported) -> None:
        """A document entered before we knew the server cannot serve it (entered
        while connecting): stop claiming it, and tell whoever waits."""
        if self._drop_document(doc_id, error) is None:
            self._report(error)

    async def _authenticate(self, ws: aiohttp.ClientWebSocketResponse) -> AuthOkFrame:
        auth = (
            AuthFrame(token=self._token) if self._token is not None else AuthFrame(anonymous=True)
        )
        await self._send_bytes(ws, encode(auth))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._connect_timeout
        while True:
            try:
                msg = await ws.receive(timeout=max(0.001, deadline - loop.time()))
            except TimeoutError:
                raise OperationTimeout(
                    f"no answer to auth from {self._ws_url} within {self._connect_timeout} s"
                ) from None
            if msg.type is not aiohttp.WSMsgType.BINARY:
                raise ConnectionClosed(
                    f"{self._ws_url} closed the connection during auth", code=ws.close_code
                )
            try:
                frame = decode(msg.data)
            except ProtocolError as exc:
                self._report(exc)
                continue
            if isinstance(frame, AuthOkFrame):
                return frame
            if isinstance(frame, AuthErrorFrame):
                raise AuthError(frame.error, frame.message)
            if isinstance(frame, ErrorFrame):
                raise error_from_frame(
                    frame.error,
                    frame.message,
                    document_id=frame.document_id,
                    retry_after=frame.retry_after,
                )
            log.debug("ignoring %s frame before auth_ok", type(frame).__name__)

    async def _run(self) -> None:
        """Receive frames; on a lost connection, reconnect until closed."""
        try:
            while True:
                ws = self._ws
                assert ws is not None
                reason = await self._receive_loop(ws)
                if self._closing:
                    return
                self._lost(reason)
                if not self._reconnect or not await self._reconnect_loop():
                    break  # auth refused, reconnect disabled or given up
        except Exception:
            # A bug must not leave the client claiming to reconnect forever.
            log.exception("the receive loop failed; closing the client")
            if self._closing:
                return
            # Only code that cannot be what failed: close the socket (so the
            # relay drops us instead of keeping a ghost) and empty the views.
            ws, self._ws = self._ws, None
            if ws is not None:
                with contextlib.suppress(Exception):
                    await ws.close()
            try:
                changes = self._store.reset()
                for change in changes:
                    self._dispatch(change)
                self._emit("disconnected", ConnectionClosed("internal error in the client"))
            except Exception:
                log.exception("could not report the failure")
        await self._shut_down(ConnectionClosed("client stopped reconnecting"))

    async def _shut_down(self, reason: ConnectionClosed) -> None:
        """The client closes on its own (not through close())."""
        self._state = ConnectionState.CLOSED
        self._sync.reset()
        self._fail_waiters(reason)
        for doc_id in list(self._store.tracked()):
            self._store.forget(doc_id)
        self._entered.clear()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        await self._close_http()

    async def _receive_loop(self, ws: aiohttp.ClientWebSocketResponse) -> ConnectionClosed:
        while True:
            msg = await ws.receive()
            kind = msg.type
            if kind is _BINARY:
                try:
                    self._on_bytes(msg.data)
                except Exception as exc:
                    # A bug must cost one frame, never the connection (as on the relay).
                    log.exception("internal error while handling a frame")
                    error = RatatoskrError(f"internal error while handling a frame: {exc!r}")
                    error.__cause__ = exc
                    self._report(error)
            elif kind is aiohttp.WSMsgType.TEXT:
                self._report(ProtocolError("server sent a text frame; expected binary CBOR"))
            elif kind is aiohttp.WSMsgType.ERROR:
                return ConnectionClosed(f"connection failed: {msg.data}", code=ws.close_code)
            else:  # CLOSE, CLOSING, CLOSED
                return ConnectionClosed(
                    f"server closed the connection (code {ws.close_code})", code=ws.close_code
                )

    def _lost(self, reason: ConnectionClosed) -> None:
        log.info("connection to %s lost: %s", self._ws_url, reason)
        self._ws = None
        self._joining.clear()
        self._state = ConnectionState.RECONNECTING if self._reconnect else ConnectionState.CLOSED
        self._sync.disconnected()
        for change in self._store.reset():
            self._dispatch(change)
        self._emit("disconnected", reason)

    async def _reconnect_loop(self) -> bool:
        """Retry with backoff. True once reconnected; False on auth failure or give-up."""
        attempt = 0
        floor = 0.0  # a server's retryAfter, when it asked for one
        while not self._closing:
            if self._backoff.gives_up(attempt):
                self._report(ConnectionClosed(f"gave up reconnecting after {attempt} attempts"))
                return False
            delay = max(self._backoff.delay(attempt), floor)
            attempt += 1
            self._emit("reconnecting", attempt, delay)
            await asyncio.sleep(delay)
            if self._stopping():
                return False
            try:
                await self._open()
                return True
            except AuthError as exc:
                log.warning("reconnect to %s refused: %s", self._ws_url, exc)
                self._report(exc)
                return False
            except RateLimited as exc:
                floor = exc.retry_after
            except (TransportError, OperationTimeout, ServerError) as exc:
                log.debug("reconnect attempt %d failed: %s", attempt, exc)
                floor = 0.0
        return False

    @property
    def _closed_signal(self) -> asyncio.Future[None]:
        fut = self._closed_future
        if fut is None or (fut.done() and not self._closing):
            fut = self._closed_future = asyncio.get_running_loop().create_future()
        return fut

    def _stopping(self) -> bool:
        # A method, not the attribute, so type checkers do not assume that
        # _closing is unchanged across an await.
        return self._closing

    async def _heartbeat_loop(self) -> None:
        """One task for both timers (a task per client is memory at scale): the
        server's presence heartbeats, and the state heartbeats and pruning."""
        loop = asyncio.get_running_loop()
        state_period = min(1.0, self._sync.heartbeat / 2, self._sync.states.ttl / 4)
        next_presence = loop.time() + self._heartbeat_interval
        next_state = loop.time() + state_period
        while True:
            await asyncio.sleep(max(0.0, min(next_presence, next_state) - loop.time()))
            now = loop.time()
            if now >= next_presence:
                next_presence = now + self._heartbeat_interval
                await self._send_heartbeats()
            if now >= next_state:
                next_state = now + state_period
                if self.is_connected:
                    await self._sync.tick()

    async def _send_heartbeats(self) -> None:
        if not self.is_connected or not self.server_presence:
            return  # peer-to-peer mode: state heartbeats keep us present
        # Joins still unanswered get a heartbeat too: the server treats it as a
        # join, so a lost join heals itself.
        for doc_id in list(self._entered):
            try:
                await self._send_presence("heartbeat", doc_id)
            except ConnectionClosed:
                return

    async def _close_http(self) -> None:
        if not self._owns_http:
            return  # the application's session: it closes it
        http, self._http = self._http, None
        if http is not None and not http.closed:
            await http.close()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"ratatoskr-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("internal task %s failed", task.get_name(), exc_info=exc)

    # ================================================================== incoming

    def _on_bytes(self, data: bytes) -> None:
        try:
            frame = decode(data)
        except ProtocolError as exc:
            self._report(exc)
            return
        if type(frame) is EphemeralFrame:  # the hot path: one per message received
            self._on_ephemeral(frame)
            return
        kind = type(frame)
        if kind is ErrorFrame:
            self._on_error_frame(cast(ErrorFrame, frame))
            return
        if kind is SyncFrame or kind is DocUnavailableFrame:
            if self.server_presence:
                return  # automerge-repo's answer to our nothing: no document sync here
            doc_id = cast(SyncFrame | DocUnavailableFrame, frame).document_id
            if doc_id not in self._joining:
                return
            # Peer-to-peer mode: the server answered our request, so we are
            # subscribed. Present: us, plus whoever already sent us their state.
            me = self._store.me
            ids = (me.peer_id,) if me is not None else ()
            frame = DocPresenceStateFrame(doc_id, ids + self._sync.states.peers(doc_id))
            kind = DocPresenceStateFrame
        if kind is DocPresenceStateFrame:
            self._joining.discard(cast(DocPresenceStateFrame, frame).document_id)
        for change in self._store.apply(frame):
            self._dispatch(change)
        if kind is DocPresenceStateFrame:
            doc_id = cast(DocPresenceStateFrame, frame).document_id
            if doc_id in self._entered:
                self._sync.confirmed(doc_id, self._display_name())
            fut = self._confirm.pop(doc_id, None)
            if fut is not None and not fut.done():
                fut.set_result(self._store.presence(doc_id))

    def _on_ephemeral(self, frame: EphemeralFrame) -> None:
        if frame.session_id == self._session_id:
            return  # our own message, echoed back by a gossiping peer
        doc_id = frame.document_id
        if not self.server_presence and (
            doc_id not in self._entered or self._is_gossip_copy(frame)
        ):
            return
        try:
            payload = decode_payload(frame.data)
        except ProtocolError as exc:
            self._report(exc)
            return
        if type(payload) is dict and "__presence" in payload:
            try:
                message = parse_state_payload(payload)
            except ProtocolError as exc:
                self._report(exc)
            else:
                if message is not None and frame.sender_id:
                    self._sync.received(doc_id, frame.sender_id, message)
        self._emitter.emit("ephemeral-message", doc_id, self._store.peer(frame.sender_id), payload)

    def _is_gossip_copy(self, frame: EphemeralFrame) -> bool:
        """Peer-to-peer mode: upstream relays the copies stock peers forward,
        relabelled as the forwarder's. A sessionId first seen from another
        sender, or a count not above the last one seen, marks such a copy."""
        seen = self._seen_sessions.get(frame.session_id)
        if seen is not None:
            sender, count = seen
            if sender != frame.sender_id or frame.count <= count:
                return True
        elif len(self._seen_sessions) >= _MAX_SEEN_SESSIONS:
            del self._seen_sessions[next(iter(self._seen_sessions))]
        self._seen_sessions[frame.session_id] = (frame.sender_id, frame.count)
        return False

    def _on_error_frame(self, frame: ErrorFrame) -> None:
        exc = error_from_frame(
            frame.error, frame.message, document_id=frame.document_id, retry_after=frame.retry_after
        )
        doc_id = frame.document_id
        if isinstance(exc, RateLimited):
            if doc_id is None:
                if self._bucket is not None:
                    self._bucket.pause(asyncio.get_running_loop().time(), exc.retry_after)
            elif doc_id in self._joining:
                # The relay's per-document bound on joins: try again when allowed.
                self._spawn(self._rejoin_later(doc_id, exc.retry_after), "rejoin")
        # The server refused our membership: stop claiming the document; if an
        # enter_document() call is waiting, it receives the error instead.
        if (
            doc_id is not None
            and isinstance(exc, _MEMBERSHIP_REFUSALS)
            and doc_id in self._entered
            and self._drop_document(doc_id, exc) is not None
        ):
            return
        self._report(exc)

    async def _rejoin_later(self, document_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        if document_id in self._entered and self.is_connected:
            await self._join(document_id)

    def _dispatch(self, change: Change) -> None:
        # Runs once or twice per presence frame (N of them per client in a
        # reconnect storm): plain type tests and direct emits, no cast() calls.
        kind = type(change)
        if type(change) is PresenceChanged:
            self._presence_changed(change.document_id)
        elif type(change) is PeerJoined:
            self._emitter.emit("peer-joined", change.document_id, change.peer)
        elif type(change) is IdentityAdded:
            self._emitter.emit("peer-identity", change.peer)
        elif kind is PeerLeft:
            left = cast(PeerLeft, change)
            if not self._sync.p2p:
                self._sync.peer_left(left.document_id, left.peer.peer_id)
            self._emit("peer-left", left.document_id, left.peer)
        elif kind is IdentityRemoved:
            self._emit("peer-disconnected", cast(IdentityRemoved, change).peer)
        elif kind is SelfRemoved:
            doc_id = cast(SelfRemoved, change).document_id
            if doc_id in self._entered and self.is_connected and doc_id not in self._joining:
                log.info("server expired our presence in %r; joining again", doc_id)
                self._spawn(self._join(doc_id), "rejoin")

    def _presence_changed(self, document_id: str) -> None:
        emitter_listens = self._emitter.has_listeners("presence-changed")
        watchers = self._watchers.get(document_id)
        waiters = self._waiters.get(document_id)
        if not (emitter_listens or watchers or waiters):
            return  # nobody looks: skip building the snapshot
        peers = self._store.presence(document_id)
        if waiters:
            for predicate, fut in list(waiters):
                if fut.done():
                    continue
                try:
                    if predicate(peers):
                        fut.set_result(peers)
                except Exception as exc:
                    fut.set_exception(exc)
        if watchers:
            for queue in watchers:
                if queue.qsize() >= _WATCH_BACKLOG:
                    queue.get_nowait()  # a stalled consumer loses its oldest snapshot
                queue.put_nowait(peers)
        if emitter_listens:
            self._emit("presence-changed", document_id, peers)

    # ================================================================== state hooks

    def _display_name(self) -> str:
        me = self._store.me
        return self._name or (me.name if me is not None else "")

    def _is_confirmed(self, document_id: str) -> bool:
        me = self._store.me
        return (
            self.is_connected
            and document_id in self._entered
            and document_id not in self._joining
            and me is not None
            and any(p.peer_id == me.peer_id for p in self._store.presence(document_id))
        )

    def _emit_state(self, document_id: str, peer_id: str, state: Mapping[str, Any]) -> None:
        peer = self._store.identities.get(peer_id) or Peer.unknown(peer_id)
        self._emit("state-changed", document_id, peer, state)

    def _emit_own_state(self, document_id: str, state: Mapping[str, Any]) -> None:
        me = self._store.me
        if me is not None:
            self._emit("state-changed", document_id, me, state)

    def _p2p_seen(self, document_id: str, peer_id: str, state: Mapping[str, Any]) -> None:
        """Peer-to-peer mode: a peer's Presence message is its identity and presence."""
        name = state.get("name")
        user = UserInfo(None, name if isinstance(name, str) and name else peer_id, True)
        frames: list[Frame] = [PeerIdentityFrame(peer_id, user)]
        if document_id not in self._joining:
            frames.append(PeerJoinedDocFrame(document_id, peer_id))
        for frame in frames:
            for change in self._store.apply(frame):
                self._dispatch(change)

    def _p2p_gone(self, document_id: str, peer_id: str) -> None:
        """Peer-to-peer mode: goodbye or silence. Gone from the document, and
        forgotten entirely once it is in no document we share."""
        for change in self._store.apply(PeerLeftDocFrame(document_id, peer_id)):
            self._dispatch(change)
        if not any(peer_id in self._sync.states.peers(d) for d in self._entered):
            for change in self._store.apply(PeerDisconnectedFrame(peer_id)):
                self._dispatch(change)

    def _fail_waiters(self, error: RatatoskrError) -> None:
        for waiter in self._connect_waiters:
            if not waiter.done():
                waiter.set_exception(error)
        for fut in self._confirm.values():
            if not fut.done():
                fut.set_exception(error)
                fut.exception()
        self._confirm.clear()
        for waiters in self._waiters.values():
            for _, fut in waiters:
                if not fut.done():
                    fut.set_exception(error)
        for queues in self._watchers.values():
            for queue in queues:
                queue.put_nowait(None)

    def __repr__(self) -> str:
        me = self._store.me
        who = f" as {me.name!r} ({me.peer_id})" if me is not None else ""
        return f"<RatatoskrClient {self._ws_url} {self.connection_state.value}{who}>"


def _check_seconds(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value}")


def _is_sidecar(document_id: str) -> bool:
    return document_id.startswith("eph:")


def _check_document_id(document_id: object) -> None:
    if not isinstance(document_id, str) or not document_id:
        raise ValueError(f"document_id must be a non-empty string, got {document_id!r}")
    if not fits_utf8(document_id, MAX_DOCUMENT_ID_BYTES):
        raise ValueError(
            f"document_id must be at most {MAX_DOCUMENT_ID_BYTES} bytes in UTF-8, "
            f"got {len(document_id.encode('utf-8', 'surrogatepass'))}"
        )
