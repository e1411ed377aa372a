"""The asyncio driver of a ClientCore: sockets, the receive and reconnect loop, one timer.

:class:`Driver` carries out what the core recorded in its outbox
(:mod:`ratatoskr_client.core.outbox`) and turns the network into core inputs.
It holds no protocol rule: what to send, when to reconnect, which error means
what, what a text frame or a socket closed during ``close()`` means, how far
behind a presence watcher may fall — all are the core's decisions. Errors of
the libraries underneath (aiohttp, ``OSError``) become
:class:`~ratatoskr_client.errors.RatatoskrError`\\ s in one place,
:mod:`ratatoskr_client.asyncio.socket` (cbor2's in :mod:`ratatoskr_client.protocol.codec`).

Hot paths, by design: a received frame goes from aiohttp's parser through
:meth:`ClientCore.receive` to the callbacks in one straight line, inside the
protocol's ``data_received`` (:class:`~ratatoskr_client.asyncio.socket.DirectReader`):
no task step, queue or lock per message (the core records the event, and the
driver emits it as soon as ``receive`` returns). Only the end of a connection
(a close frame, a parse error, the end of the stream) is read through
``ws.receive()``, by the receive task, which otherwise sleeps. A frame to send
is written to the socket at once (:class:`SocketWriter`), and only a caller
that must respect backpressure awaits :meth:`SocketWriter.drained`. All timers
of a client are one ``loop.call_at`` handle, re-armed to the earliest time the
core asks for.

Presence changes are settled (:meth:`ClientCore.settle`) by every
:meth:`Driver.apply`, except for received frames: there, once per batch, when
every message aiohttp parsed from one read of the socket is handled (in the
fallback loop: when :func:`backlog` is empty), before the loop waits for more;
so the application's coroutines, which run only when the loop waits, never see
a presence whose ``presence-changed`` is still to come.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
from typing import Any, Final

import aiohttp

from ..core.client import ClientCore
from ..core.outbox import Drop, Fail, Ping, Push, RefreshToken, Resolve, Send, WakeAt
from ..core.refusals import REFUSALS
from ..core.settings import Settings, socket_url
from ..errors import (
    ConnectError,
    ConnectionClosed,
    OperationTimeout,
    RatatoskrError,
    TokenRefreshError,
)
from .emitter import SafeEmitter
from .memory import trim_soon
from .socket import (
    DirectReader,
    SocketWriter,
    abort,
    backlog,
    open_socket,
    receive_failed,
    was_refused,
)

__all__ = ["CALLBACK_GRACE", "Driver"]

log = logging.getLogger("ratatoskr_client")

#: Seconds coroutine callbacks get to finish when the client closes.
CALLBACK_GRACE: Final = 1.0
_BINARY: Final = aiohttp.WSMsgType.BINARY
_TEXT: Final = aiohttp.WSMsgType.TEXT
_ERROR: Final = aiohttp.WSMsgType.ERROR
_PING: Final = aiohttp.WSMsgType.PING
_PONG: Final = aiohttp.WSMsgType.PONG
#: Frames are handed to the core from aiohttp's ``data_received``
#: (:class:`DirectReader`); False: through ``ws.receive()`` in the receive task.
#: A switch for tests and measurements, not an option.
DIRECT_RECEIVE = True


class Driver:
    """Connects a :class:`ClientCore` to the network. See the module docstring."""

    __slots__ = (
        "_clock",
        "_closing",
        "_direct",
        "_futures",
        "_http",
        "_loop",
        "_opening",
        "_owns_http",
        "_refreshing",
        "_socket_urls",
        "_task",
        "_timer",
        "_timer_at",
        "_wakers",
        "core",
        "emitter",
        "settings",
        "writer",
    )

    def __init__(
        self,
        core: ClientCore,
        emitter: SafeEmitter,
        session: aiohttp.ClientSession | None,
    ) -> None:
        self.core = core
        self.emitter = emitter
        self.settings: Settings = core.settings
        self._socket_urls = {url: socket_url(url) for url in core.settings.urls}
        self.writer: SocketWriter | None = None
        self._http = session
        self._owns_http = session is None
        self._opening: aiohttp.ClientWebSocketResponse | None = None
        #: the event loop of the last connect(); asking asyncio for it costs a
        #: system call on Python 3.11 (getpid()), and now() runs once per call
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        #: waiter id -> the future its caller awaits (Resolve/Fail finish it)
        self._futures: dict[int, asyncio.Future[Any]] = {}
        #: presence watcher id -> the future its consumer awaits until a Push
        self._wakers: dict[int, asyncio.Future[None]] = {}
        self._closing = False
        #: the socket's DirectReader while it delivers frames (None: none)
        self._direct: DirectReader | None = None
        #: the loop's clock, for the per-frame path (set with _direct)
        self._clock: Any = None
        #: the task calling the token callable ahead of expiry (None: none)
        self._refreshing: asyncio.Task[None] | None = None

    @property
    def socket_url(self) -> str:
        """The socket URL of the relay the next (or current) connection goes
        to (the core decides which, when the client was given several)."""
        return self._socket_urls[self.core.url]

    # ================================================================== effects

    def apply(self) -> None:
        """Settle presence changes, then carry out every effect the core
        recorded, in order."""
        core = self.core
        if core.unsettled:
            core.settle(self.now())
        self._perform()

    def _perform(self) -> None:
        """Carry out every effect the core recorded, in order."""
        effects = self.core.outbox.effects
        if len(effects) == 1 and type(effects[0]) is tuple:
            # The usual case (a state change, an error): one event.
            self.emitter.emit(*effects.pop())  # type: ignore[misc]
            return
        i = 0
        try:
            while i < len(effects):
                effect = effects[i]
                i += 1
                kind = type(effect)
                if kind is tuple:  # an Emit: (event, *args)
                    self.emitter.emit(*effect)  # type: ignore[misc]
                elif kind is Send:
                    writer = self.writer
                    if writer is not None:
                        writer.write(effect.data)  # type: ignore[union-attr]
                elif kind is Resolve or kind is Fail:
                    self._finish(effect)  # type: ignore[arg-type]
                elif kind is Push:
                    waker = self._wakers.pop(effect.watcher, None)  # type: ignore[union-attr]
                    if waker is not None and not waker.done():
                        waker.set_result(None)
                elif kind is WakeAt:
                    self._arm(effect.when)  # type: ignore[union-attr]
                elif kind is Ping or kind is Drop:
                    self._keepalive(effect)  # type: ignore[arg-type]
                elif kind is RefreshToken:
                    self._refresh()
        finally:
            del effects[:i]

    def _keepalive(self, effect: Ping | Drop) -> None:
        writer = self.writer
        if writer is None:
            return
        if type(effect) is Ping:
            writer.ping()
        else:  # dead: the receive loop sees it closed, and reports it lost
            abort(writer.ws)

    def _finish(self, effect: Resolve | Fail) -> None:
        fut = self._futures.pop(effect.waiter, None)
        if fut is None or fut.done():
            return
        if type(effect) is Resolve:
            fut.set_result(effect.value)
        else:
            fut.set_exception(effect.error)  # type: ignore[union-attr]

    def future(self, waiter: int) -> asyncio.Future[Any]:
        """The future for a waiter id the core just handed out."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futures[waiter] = fut
        return fut

    def woken(self, watcher: int) -> asyncio.Future[None]:
        """A future done when the presence watcher ``watcher`` has something
        to take (the core's :class:`~ratatoskr_client.core.outbox.Push`)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wakers[watcher] = fut
        return fut

    def forget(self, waiter: int) -> None:
        """A waiter or watcher whose caller went away."""
        self._futures.pop(waiter, None)
        self._wakers.pop(waiter, None)
        self.core.cancel(waiter)

    def now(self) -> float:
        """The core's clock: the event loop's."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop.time()

    # ================================================================== tokens

    async def fetch_token(self) -> str:
        """Call the ``token`` callable: a coroutine function is awaited; any
        other callable runs in a worker thread (it may block: an HTTP call to
        an identity provider), and an awaitable it returns is awaited. At
        most ``connect_timeout`` seconds.

        Raises:
            TokenRefreshError: it raised (the cause), timed out or returned no string.
        """
        source = self.settings.token
        assert callable(source)
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                if inspect.iscoroutinefunction(source):
                    result: object = await source()
                else:
                    result = await asyncio.to_thread(source)
                    if inspect.isawaitable(result):
                        result = await result
        except TimeoutError:
            raise TokenRefreshError(
                f"the token callable did not return within {self.settings.connect_timeout} s"
            ) from None
        except Exception as exc:
            raise TokenRefreshError(f"the token callable raised {exc!r}") from exc
        if not isinstance(result, str) or not result:
            raise TokenRefreshError(
                f"the token callable returned {type(result).__name__}, not a token"
            )
        return result

    def _refresh(self) -> None:
        if self._refreshing is not None and not self._refreshing.done():
            return  # one call at a time
        self._refreshing = asyncio.get_running_loop().create_task(
            self._renew(), name="ratatoskr-token"
        )

    async def _renew(self) -> None:
        try:
            token = await self.fetch_token()
        except TokenRefreshError as exc:
            log.warning("token refresh failed: %s", exc)
            self.core.token_failed(exc, self.now())
        else:
            self.core.token_fetched(token, self.now())
        self.apply()

    # ================================================================== the timer

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            if self._timer_at <= when:
                return
            self._timer.cancel()
        if math.isinf(when):
            self._timer = None
            self._timer_at = math.inf
            return
        self._timer_at = when
        self._timer = asyncio.get_running_loop().call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        now = self.now()
        try:
            self.core.on_timer(now)
        except Exception as exc:  # a bug must not stop every timer for good
            log.exception("internal error in the client's timer")
            self.core.report(_internal(exc, "in the timer"))
        self.apply()
        # Clients of one process that shared their peer tables (at this timer)
        # released their own copies: give those pages back.
        trim_soon(self._loop or asyncio.get_running_loop())

    # ================================================================== connecting

    async def open(self) -> None:
        """Open a socket and authenticate; on success the core is CONNECTED.

        Raises:
            ConnectError: the socket could not be opened.
            OperationTimeout: no answer within ``connect_timeout``.
            AuthError, ServerError: the server refused the auth frame.
            ConnectionClosed: the socket closed during auth, or close() was called.
        """
        settings = self.settings
        self._loop = asyncio.get_running_loop()
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
            self._owns_http = True
        core = self.core
        if core.renewable:
            # A fresh token for every connection (a reconnect after its expiry included).
            try:
                token = await self.fetch_token()
            except TokenRefreshError as exc:
                core.token_failed(exc, self.now())
                self.apply()
                raise
            core.token_fetched(token, self.now())
        ws = await open_socket(self._http, self.socket_url, settings)
        self._opening = ws
        try:
            await self._authenticate(ws)
        except BaseException:
            with contextlib.suppress(Exception):
                await ws.close()
            raise
        finally:
            self._opening = None
        self.writer = SocketWriter(ws)
        REFUSALS.connected(self.socket_url)
        log.debug("connected to %s as %s", self.socket_url, self.core.me)
        self.apply()

    async def _authenticate(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        core = self.core
        loop = asyncio.get_running_loop()
        # A socket lost meanwhile drops the write; the receive below says why.
        SocketWriter(ws).write(core.auth_frame(loop.time()))
        timeout = self.settings.connect_timeout
        deadline = loop.time() + timeout
        while True:
            try:
                msg = await ws.receive(timeout=max(0.001, deadline - loop.time()))
            except TimeoutError:
                raise OperationTimeout(
                    f"no answer to auth from {self.socket_url} within {timeout} s"
                ) from None
            kind = msg.type
            if kind is _PING:
                SocketWriter(ws).pong(msg.data)
                continue
            if kind is _PONG:
                continue
            if kind is _ERROR:
                raise receive_failed(msg.data, ws.close_code, self.settings)
            if kind is not _BINARY:
                raise ConnectionClosed(
                    f"{self.socket_url} closed the connection during auth", code=ws.close_code
                )
            if core.handshake(msg.data, loop.time()):
                return  # effects applied once the socket is ours
            self.apply()

    def start(self) -> None:
        """Connected by :meth:`open`: start the receive (and reconnect) loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ratatoskr-receive")

    # ================================================================== the connection loop

    async def _run(self) -> None:
        """Receive frames; on a lost connection, reconnect as the core schedules."""
        core = self.core
        try:
            while True:
                writer = self.writer
                assert writer is not None
                reason = await self._receive(writer.ws)
                if self._closing:
                    return  # close() closed it, and releases the I/O itself
                self._drop_socket()
                lost = self.socket_url  # (the core may turn to the next URL)
                why = core.connection_lost(reason, self.now())
                log.info("connection to %s lost: %s", lost, why)
                self.apply()
                if not await self._reconnect():
                    break
        except Exception as exc:
            # A bug must not leave the client claiming to be connected or to reconnect.
            log.exception("the receive loop failed; closing the client")
            if self._closing:
                return
            with contextlib.suppress(Exception):
                core.report(_internal(exc, "in the receive loop"))
                core.shutdown(ConnectionClosed("internal error in the client"), self.now())
            self.apply()
        await self._release_io()

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> ConnectionClosed:
        """Receive until the connection ends; why it ended."""
        if DIRECT_RECEIVE:
            self._clock = asyncio.get_running_loop().time
            direct = DirectReader.attach(ws, self._on_binary, self._on_other, self._batch_over)
            if direct is not None:
                self._direct = direct
                try:
                    direct.deliver()  # what aiohttp parsed before we attached
                    await direct.ended
                finally:
                    self._direct = None
                    direct.detach()
                if direct.failure is not None:
                    raise direct.failure
        # The end of the connection (or every frame, without a DirectReader).
        return await self._receive_queued(ws)

    # The per-frame path of DirectReader. Their behaviour is the loop's below.

    def _on_binary(self, data: bytes) -> None:
        core = self.core
        try:
            core.receive(data, self._clock())
        except Exception as exc:
            # A bug must cost one frame, never the connection (as on the relay).
            log.exception("internal error while handling a frame")
            core.report(_internal(exc, "while handling a frame"))
        effects = core.outbox.effects
        if effects:
            if len(effects) == 1 and type(effects[0]) is tuple:
                # The usual frame (a message): its one event, emitted here
                # rather than through _perform (once per message).
                self.emitter.emit(*effects.pop())  # type: ignore[misc]
            else:
                self._perform()

    def _on_other(self, msg: aiohttp.WSMessage) -> None:
        kind = msg.type
        core = self.core
        if kind is _TEXT:
            core.receive_text(self._clock())
            self._perform()
            return
        core.heard(self._clock())  # a ping or a pong
        if kind is _PING:
            writer = self.writer
            if writer is not None:
                writer.pong(msg.data)

    def _batch_over(self) -> None:
        if self.core.unsettled:  # the batch is over: announce presence
            self.apply()

    async def _receive_queued(self, ws: aiohttp.ClientWebSocketResponse) -> ConnectionClosed:
        core = self.core
        receive = core.receive
        effects = core.outbox.effects  # (emptied in place, never replaced)
        unsettled = core.unsettled  # (the same)
        perform = self._perform
        emit = self.emitter.emit
        waiting = backlog(ws)
        writer = self.writer
        clock = asyncio.get_running_loop().time
        while True:
            msg = await ws.receive()
            kind = msg.type
            if kind is _BINARY:
                try:
                    receive(msg.data, clock())
                except Exception as exc:
                    # A bug must cost one frame, never the connection (as on the relay).
                    log.exception("internal error while handling a frame")
                    core.report(_internal(exc, "while handling a frame"))
                if effects:
                    if len(effects) == 1 and type(effects[0]) is tuple:
                        emit(*effects.pop())  # type: ignore[misc]
                    else:
                        perform()
            elif kind is _PING or kind is _PONG:
                core.heard(clock())
                if kind is _PING and writer is not None:
                    writer.pong(msg.data)
            elif kind is _TEXT:
                core.receive_text(clock())
                perform()
            elif kind is _ERROR:
                return receive_failed(msg.data, ws.close_code, self.settings)
            else:  # CLOSE, CLOSING, CLOSED
                return ConnectionClosed(
                    f"server closed the connection (code {ws.close_code})", code=ws.close_code
                )
            if unsettled and not waiting:  # the batch is over: announce presence
                self.apply()

    async def _reconnect(self) -> bool:
        """Attempts, as the core schedules them; True once connected again."""
        core = self.core
        while True:
            delay = core.next_attempt(self.now())
            self.apply()
            if delay is None:
                return False  # gave up (the core has torn itself down), or closed
            await asyncio.sleep(delay)
            if self._closing:
                return False
            # Another client of this process was just refused by this address:
            # count the attempt as refused without making it (core/refusals.py).
            # Never when attempts are limited: each of those is made for real.
            url = self.socket_url
            if self.settings.backoff.max_attempts is None:
                age = REFUSALS.skip(url, self.now(), id(self))
                if age is not None:
                    core.attempt_failed(
                        ConnectError(
                            f"cannot connect to {url}: it refused another client of this "
                            f"process {age * 1000:.0f} ms ago (attempt not made)"
                        ),
                        self.now(),
                    )
                    self.apply()
                    continue
            try:
                await self.open()
                return True
            except RatatoskrError as exc:
                log.debug("reconnect attempt %d failed: %s", core.connection.attempt, exc)
                if was_refused(exc):
                    REFUSALS.refused(url, self.now(), id(self))
                core.attempt_failed(exc, self.now())
                self.apply()

    def _stop_direct(self) -> None:
        direct, self._direct = self._direct, None
        if direct is not None:
            direct.detach()

    def _drop_socket(self) -> None:
        self._stop_direct()
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.stop()

    # ================================================================== teardown

    async def close(self) -> None:
        """``close()``: the core leaves and tears down (first: a connection
        that authenticates meanwhile is refused by the core), then every task,
        the socket, the timer and (if ours) the HTTP session go."""
        if self._closing:
            return
        self._closing = True
        try:
            self.core.close(self.now())
            self.apply()  # goodbyes and leaves go out now; waiters fail now
            opening = self._opening
            if opening is not None:  # connect() in progress: make it fail now
                with contextlib.suppress(Exception):
                    await opening.close()
            await self._release_io()
            await self.emitter.drain(CALLBACK_GRACE)
        finally:
            self._closing = False

    async def _release_io(self) -> None:
        """The I/O half of the one teardown (the core did its half)."""
        self._stop_direct()  # nothing reaches the core once it is closed
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = math.inf
        writer, self.writer = self.writer, None
        tasks = [self._task, self._refreshing]
        self._task = self._refreshing = None
        if writer is not None:
            tasks.append(writer.stop())
        current = asyncio.current_task()
        live = [t for t in tasks if t is not None and t is not current]
        for task in live:
            task.cancel()
        if writer is not None:
            with contextlib.suppress(Exception):
                await writer.ws.close()
        await asyncio.gather(*live, return_exceptions=True)
        for fut in self._futures.values():  # nothing may wait on a closed client
            if not fut.done():
                fut.set_exception(ConnectionClosed("client is closed"))
                fut.exception()
        self._futures.clear()
        for waker in self._wakers.values():  # the watches ended: let them see it
            if not waker.done():
                waker.set_result(None)
        self._wakers.clear()
        await self.close_http()

    async def close_http(self) -> None:
        """Close the HTTP session if the client made it."""
        if not self._owns_http:
            return  # the application's session: it closes it
        http, self._http = self._http, None
        if http is not None and not http.closed:
            await http.close()

    # ================================================================== inspection

    def tasks(self) -> tuple[str, ...]:
        """Names of this client's own tasks still running (``ClientStats.tasks``)."""
        names = []
        if self._task is not None and not self._task.done():
            names.append("receive")
        writer = self.writer
        if writer is not None and writer.writing:
            names.append("write")
        return tuple(names)

    def timers(self) -> int:
        """1 if the timer is armed."""
        return 0 if self._timer is None else 1

    @property
    def socket_closed(self) -> bool:
        """True when no socket is open (or the open one has closed)."""
        writer = self.writer
        return writer is None or writer.ws.closed


def _internal(exc: Exception, where: str) -> RatatoskrError:
    error = RatatoskrError(f"internal error {where}: {exc!r}")
    error.__cause__ = exc
    return error
