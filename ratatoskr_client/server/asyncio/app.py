"""The relay's aiohttp layer: WebSocket at ``/sync``, ``GET /health``, the core's timer.

This module only moves bytes and time: every rule lives in
:class:`~ratatoskr_client.server.core.RelayCore`. Each connection's messages
go to the core as they arrive, the core's frames go out through a
:class:`~.outbox.SocketOutbox`, and one timer runs
:meth:`~ratatoskr_client.server.core.RelayCore.on_timer` when the core says
(presence expiry, the liveness rule, auth deadlines, held presence changes),
on the core's clock. Use :class:`~.runner.RelayServer` to run a relay inside
your own program or tests, or :func:`create_app` to mount it in an aiohttp
application you already run (then the handshake deadline of :mod:`.guard`,
which needs the listening socket, is yours to provide, for example by a
reverse proxy).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

from aiohttp import WSMsgType, web

from ..cluster import Cluster
from ..config import RelayConfig
from ..core.clock import AdvancingClock
from ..core.relay import SWEEP_MAX_INTERVAL, RelayCore
from ..core.turns import GO_ON, OVER, Turns
from .admin import add_admin_routes, add_disabled_admin_routes
from .guard import HandshakeGuard
from .lookups import LookupRunner
from .memory import TrimPolicy, trim
from .metrics import MetricsPage, metrics_registry
from .outbox import Batcher, SocketOutbox
from .webhooks import WebhookSender

__all__ = [
    "CLUSTER_KEY",
    "CORE_KEY",
    "GUARD_KEY",
    "WEBHOOKS_KEY",
    "create_app",
    "create_metrics_app",
]

log = logging.getLogger("ratatoskr_client.server")

CORE_KEY: Final = web.AppKey("ratatoskr_core", RelayCore)
#: The handshake deadlines; :class:`~.runner.RelayServer` feeds it accepted connections.
GUARD_KEY: Final = web.AppKey("ratatoskr_guard", HandshakeGuard)
#: The relay's cluster membership (only when ``redis_url`` is configured).
CLUSTER_KEY: Final = web.AppKey("ratatoskr_cluster", Cluster)
#: How the work done on a connection's frames is measured (see core.turns.Turns):
#: the relay thread's CPU time, so that time the machine gives other processes
#: is nobody's work (a wall clock would cut turns short on a busy machine,
#: costing a wake-up per turn for nothing).
_WORK_CLOCK: Final = getattr(time, "thread_time", time.perf_counter)
#: Seconds a closing WebSocket waits for the peer's close frame (graceful
#: shutdown only: connections the relay drops are closed without waiting).
CLOSE_TIMEOUT: Final = 2.0


class _OpenSockets:
    """The relay's open WebSockets, closed with 1001 on shutdown."""

    def __init__(self) -> None:
        self.all: set[web.WebSocketResponse] = set()


class _Line(Turns["asyncio.Future[None]"]):
    """The fairness rule (:class:`~ratatoskr_client.server.core.turns.Turns`)
    on the event loop: a connection whose turn is over awaits a future, which
    a callback run once per turn of the loop (after the work already
    scheduled) resolves when its next turn comes."""

    __slots__ = ("_loop",)

    def __init__(self) -> None:
        super().__init__()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def wait_turn(self, frames: int, seconds: float, verdict: int) -> int:
        """Wait for the next turn (``verdict`` ``OVER``) or the rest of this
        one (``PAUSED``, see :mod:`ratatoskr_client.server.core.turns`);
        returns the round that gives it."""
        loop = self._loop
        if loop is None or loop.is_closed():
            # (Found once: asking asyncio costs a system call on Python 3.11.
            # Waiters of a loop that has closed will never run again.)
            loop = self._loop = asyncio.get_running_loop()
            self.clear()
        turn = loop.create_future()
        if self.wait(turn, frames, seconds, paused=verdict != OVER):
            loop.call_soon(self._round)
        await turn
        return self.round

    def _round(self) -> None:
        for turn in self.next_round():
            if not turn.done():  # (cancelled: its connection is gone)
                turn.set_result(None)
        if len(self):
            # Scheduled now, it runs after the turns just given (and the work
            # already scheduled), then the loop reads its sockets.
            assert self._loop is not None
            self._loop.call_soon(self._round)


_SOCKETS_KEY: Final = web.AppKey("ratatoskr_sockets", _OpenSockets)
_BATCHER_KEY: Final = web.AppKey("ratatoskr_batcher", Batcher)
_TURNS_KEY: Final = web.AppKey("ratatoskr_turns", _Line)
_METRICS_KEY: Final = web.AppKey("ratatoskr_metrics", MetricsPage)
#: The webhook sender (only when ``webhook_url`` is configured).
WEBHOOKS_KEY: Final = web.AppKey("ratatoskr_webhooks", WebhookSender)


_HEALTHY: Final = b'{"status": "ok"}'


async def _health(request: web.Request) -> web.Response:
    # 200 whenever the relay serves its own peers (what a load balancer asks);
    # a relay in a cluster adds whether its Redis link is up. Unauthenticated
    # and cheap: a constant body, or a few fields of the cluster link.
    cluster = request.app.get(CLUSTER_KEY)
    if cluster is None:
        return web.Response(body=_HEALTHY, content_type="application/json")
    body: dict[str, object] = {"status": "ok"}
    body.update(cluster.health())
    return web.json_response(body)


async def _metrics(request: web.Request) -> web.Response:
    return await request.app[_METRICS_KEY].handle(request)


@web.middleware
async def _request_complete(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    # A handler runs once the request line and headers are in: the connection
    # has met its handshake deadline.
    request.app[GUARD_KEY].started(request.protocol)
    return await handler(request)


async def _one_request_per_connection(request: web.Request, response: web.StreamResponse) -> None:
    # Plain HTTP (/health, errors) is answered and the connection closed, so an
    # idle keep-alive connection cannot outlive the handshake deadline either.
    if not isinstance(response, web.WebSocketResponse):
        response.force_close()
        response.headers["Connection"] = "close"  # (headers are prepared before this hook)


async def _sync(request: web.Request) -> web.StreamResponse:
    core = request.app[CORE_KEY]
    cfg = core.config
    ws = web.WebSocketResponse(
        # Frames up to 16x the limit are read and answered with an error frame;
        # beyond that aiohttp closes the socket (1009) without buffering them.
        # (+1: aiohttp refuses a message whose size is >= max_msg_size.)
        max_msg_size=cfg.max_frame_size * 16 + 1,
        # SocketOutbox writes its frames to the transport itself, uncompressed;
        # permessage-deflate would compress nothing but aiohttp's own replies.
        compress=False,
        # Pings and the liveness deadline are the core's rule (check_liveness):
        # aiohttp's heartbeat restarts whenever bytes arrive, so a peer
        # trickling an endless frame would never be pinged nor closed. Pings
        # and pongs are therefore handled below, where they count as frames.
        heartbeat=None,
        autoping=False,
        # We answer the peer's close frame ourselves, after writing what the
        # relay said before it (held frames would otherwise be lost).
        autoclose=False,
        timeout=CLOSE_TIMEOUT,
    )
    try:
        await ws.prepare(request)
    except ConnectionError as exc:
        # The client went away during the handshake: an everyday network event.
        # aiohttp writes what the handler returns; on a closed transport that
        # fails quietly, where a half-prepared WebSocket would raise.
        log.debug("connection from %s lost during the upgrade: %s", request.remote, exc)
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=499)
    transport = request.transport
    if transport is None or transport.is_closing():  # gone during the handshake
        return ws
    sockets = request.app[_SOCKETS_KEY].all
    sockets.add(ws)
    outbox = SocketOutbox(ws, transport, request.app[_BATCHER_KEY], core.counters)
    # (The core starts the connection's auth deadline; when it closes the
    # connection, for that or anything else, the socket's transport is closed
    # and ws.receive() below returns.)
    conn = core.open(outbox, request.remote or "")
    # This connection's turns (core.turns.Turns): ws.receive() returns messages
    # already buffered without yielding, so a flooding peer would otherwise be
    # served its whole buffer in one go.
    turns = request.app[_TURNS_KEY]
    clock = _WORK_CLOCK
    frames = size = 0
    spent = 0.0
    given = -1  # the round in which its turn was given (-1: it has not waited)
    clean = False  # closed with a close frame from the peer
    try:
        while not outbox.dropped:
            msg = await ws.receive()
            kind = msg.type
            started = clock()
            if conn.successor is not None:
                # It resumed a peer (maybe while its auth waited for a look-up,
                # answered between two frames): this socket carries that one.
                conn = conn.successor
            if kind is WSMsgType.BINARY:
                data = msg.data
                core.receive(conn, data)  # (never raises: a bug costs the frame only)
                size += len(data)
            elif kind is WSMsgType.PING:
                outbox.pong(msg.data)
                core.alive(conn)
            elif kind is WSMsgType.PONG:
                core.alive(conn)
            elif kind is WSMsgType.TEXT:
                core.receive_text(conn)
            else:  # CLOSE, CLOSING, CLOSED, ERROR
                clean = kind is WSMsgType.CLOSE  # (the peer said goodbye: no resume)
                break
            frames += 1
            took = clock() - started
            spent += took
            verdict = turns.over(frames, size, spent, took, given)
            if verdict != GO_ON:
                given = await turns.wait_turn(frames, spent, verdict)  # the others' turns
                if verdict == OVER:
                    frames = size = 0
                    spent = 0.0
    finally:
        if conn.successor is not None:
            conn = conn.successor
        core.close(conn, clean=clean, outbox=outbox)
        sockets.discard(ws)
        outbox.flush()  # answers to the peer's last frames go before the close frame
        # Answers the peer's close frame (or sends ours) and releases aiohttp's
        # reader; after a drop the socket is already closed and this returns at once.
        with contextlib.suppress(Exception):
            await ws.close()
    return ws


class _Timer:
    """The relay's one timer: runs :meth:`RelayCore.on_timer` when the core
    says (what it returned last, or an earlier time through its
    ``wake_at``), and gives freed memory back to the system when that is due.

    Times are the core's clock; the delay of the loop's timer is the
    difference. When that clock is an :class:`~ratatoskr_client.server.core.clock.AdvancingClock`
    (a test's :class:`~ratatoskr_client.server.core.clock.ManualClock`),
    every advance runs the timer at once, so time a test moves is time the
    relay's rules see, without waiting for it.
    """

    def __init__(self, core: RelayCore, loop: asyncio.AbstractEventLoop) -> None:
        self._core = core
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self._at = math.inf
        self._stopped = False
        self._trimming = TrimPolicy()
        clock = core.clock
        self._unsubscribe = (
            clock.on_advance(self._advanced) if isinstance(clock, AdvancingClock) else None
        )

    def __call__(self, when: float) -> None:
        """Run the core's timer rules at ``when`` at the latest (its ``wake_at``)."""
        if self._stopped or (self._handle is not None and self._at <= when):
            return
        self._schedule(when)

    def _schedule(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._at = when
        delay = max(0.0, when - self._core.clock())
        self._handle = self._loop.call_later(delay, self.run)

    def run(self) -> None:
        """Run every timer rule that is due now, and wait for the next."""
        if self._stopped:
            return
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._at = math.inf
        core = self._core
        now = core.clock()
        try:
            due = core.on_timer(now)
        except Exception:
            log.exception("relay housekeeping failed")
            due = now + SWEEP_MAX_INTERVAL
        if self._trimming.due(core.closed_total, self._loop.time()):
            trim()
        # (The core's sweeps make it at most a second anyway; the cap keeps the
        # trimming policy looked at even if a core said "never".)
        self._schedule(min(due, now + SWEEP_MAX_INTERVAL))

    def _advanced(self) -> None:
        # The clock jumped: run now, in the relay's loop (at once when the
        # advance happens in it, as in a test on the same loop).
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self.run()
        else:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nothing to wake
                self._loop.call_soon_threadsafe(self.run)

    def cancel(self) -> None:
        """Stop (the application is shutting down)."""
        self._stopped = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._at = math.inf
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None


async def _background(app: web.Application) -> AsyncIterator[None]:
    core = app[CORE_KEY]
    timer = _Timer(core, asyncio.get_running_loop())
    core.wake_at = timer
    lookups = LookupRunner(core)
    core.request = lookups
    timer.run()  # (and then when the core says)
    yield
    timer.cancel()
    await lookups.close()
    app[GUARD_KEY].cancel_all()


async def _cluster_link(app: web.Application) -> AsyncIterator[None]:
    cluster = app[CLUSTER_KEY]
    cluster.start()
    yield
    await cluster.stop()


async def _webhooks(app: web.Application) -> AsyncIterator[None]:
    sender = app[WEBHOOKS_KEY]
    sender.start()
    yield
    await sender.stop()


async def _close_sockets(app: web.Application) -> None:
    async def close(ws: web.WebSocketResponse) -> None:
        with contextlib.suppress(Exception):
            await ws.close(code=1001, message=b"relay shutting down")

    app[_BATCHER_KEY].flush()  # frames held this iteration go before the close frames
    # Concurrently: each close waits for the peer's close reply.
    await asyncio.gather(*(close(ws) for ws in list(app[_SOCKETS_KEY].all)))


def create_metrics_app(relay_app: web.Application) -> web.Application:
    """The application for ``metrics_listen``: ``/metrics`` and ``/health`` of
    the relay ``relay_app`` (made by :func:`create_app`), to serve on an
    address of their own. It shares the relay's handshake deadlines."""
    app = web.Application(middlewares=[_request_complete])
    app[GUARD_KEY] = relay_app[GUARD_KEY]
    app[_METRICS_KEY] = relay_app[_METRICS_KEY]
    cluster = relay_app.get(CLUSTER_KEY)
    if cluster is not None:
        app[CLUSTER_KEY] = cluster
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/health", _health)
    app.on_response_prepare.append(_one_request_per_connection)
    return app


def create_app(
    config: RelayConfig | None = None,
    *,
    core: RelayCore | None = None,
    clock: Callable[[], float] | None = None,
) -> web.Application:
    """An aiohttp application serving the relay (``/sync``, ``/health`` and,
    unless ``config.metrics_listen`` puts it on an address of its own,
    ``/metrics``: then serve :func:`create_metrics_app` there). With
    ``config.redis_url`` it joins that Redis server's relay cluster while it
    runs (see ``docs/cluster.md``).

    Pass ``core`` to share state with code that inspects it (tests do), or
    ``clock`` for the relay's time (default ``time.monotonic``; a test's
    :class:`~ratatoskr_client.server.core.clock.ManualClock`): the core's rules
    and the application's timer run on it.

    Raises:
        ConfigError: ``redis_url`` is set but the ``redis`` package is missing.
        ValueError: both ``core`` and a ``clock`` other than the core's are given.
    """
    config = config or RelayConfig(open=True)
    if core is None:
        core = RelayCore(config) if clock is None else RelayCore(config, clock=clock)
    elif clock is not None and clock is not core.clock:
        raise ValueError("create_app: the core runs on its own clock; give the clock to the core")
    app = web.Application(middlewares=[_request_complete])
    app[CORE_KEY] = core
    cluster = None
    if config.redis_url is not None:
        cluster = app[CLUSTER_KEY] = Cluster(core, config)
    app[GUARD_KEY] = HandshakeGuard(config.handshake_timeout)
    app[_SOCKETS_KEY] = _OpenSockets()
    app[_BATCHER_KEY] = Batcher()
    app[_TURNS_KEY] = _Line()
    webhooks = None
    if config.webhook_url is not None:
        webhooks = app[WEBHOOKS_KEY] = WebhookSender(core, config, cluster)
    app[_METRICS_KEY] = MetricsPage(
        metrics_registry(core, cluster, webhooks.stats if webhooks is not None else None),
        config.metrics_token,
    )
    app.router.add_get("/sync", _sync)
    app.router.add_get("/health", _health)
    if config.metrics_listen is None:  # else on its own address: create_metrics_app
        app.router.add_get("/metrics", _metrics)
    if config.admin_token is not None:
        add_admin_routes(app, core, cluster)
    else:
        add_disabled_admin_routes(app)
    app.on_response_prepare.append(_one_request_per_connection)
    app.cleanup_ctx.append(_background)
    if cluster is not None:
        app.cleanup_ctx.append(_cluster_link)
    if webhooks is not None:
        # (after the cluster link: stopped before it, while Redis is still there)
        app.cleanup_ctx.append(_webhooks)
    app.on_shutdown.append(_close_sockets)
    return app
