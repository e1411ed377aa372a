"""The relay's aiohttp layer: WebSocket at ``/sync``, ``GET /health``, housekeeping.

This module only moves bytes: every rule lives in :class:`~.core.RelayCore`.
Use :class:`~.runner.RelayServer` to run a relay inside your own program or
tests, or :func:`create_app` to mount it in an aiohttp application you already
run (then the handshake deadline of :mod:`.guard`, which needs the listening
socket, is yours to provide, for example by a reverse proxy).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

from aiohttp import WSMsgType, web

from ...protocol import ErrorFrame, encode
from ..cluster import Cluster
from ..config import RelayConfig
from ..core.limits import TURN_BYTES, TURN_FRAMES
from ..core.relay import Connection, RelayCore
from .guard import HandshakeGuard
from .memory import TrimPolicy, trim
from .metrics import MetricsPage, metrics_registry
from .outbox import Batcher, SocketOutbox

__all__ = ["CLUSTER_KEY", "CORE_KEY", "GUARD_KEY", "create_app", "create_metrics_app"]

log = logging.getLogger("ratatoskr_client.server")

CORE_KEY: Final = web.AppKey("ratatoskr_core", RelayCore)
#: The handshake deadlines; :class:`~.runner.RelayServer` feeds it accepted connections.
GUARD_KEY: Final = web.AppKey("ratatoskr_guard", HandshakeGuard)
#: The relay's cluster membership (only when ``redis_url`` is configured).
CLUSTER_KEY: Final = web.AppKey("ratatoskr_cluster", Cluster)
#: Seconds a closing WebSocket waits for the peer's close frame (graceful
#: shutdown only: connections the relay drops are closed without waiting).
CLOSE_TIMEOUT: Final = 2.0


class _OpenSockets:
    """The relay's open WebSockets, closed with 1001 on shutdown."""

    def __init__(self) -> None:
        self.all: set[web.WebSocketResponse] = set()


_SOCKETS_KEY: Final = web.AppKey("ratatoskr_sockets", _OpenSockets)
_BATCHER_KEY: Final = web.AppKey("ratatoskr_batcher", Batcher)
_METRICS_KEY: Final = web.AppKey("ratatoskr_metrics", MetricsPage)


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
        compress=False,  # SocketOutbox writes raw frames; compression would break them
        # Pings and the liveness deadline are the core's rule (check_liveness):
        # aiohttp's heartbeat restarts with every byte received, so a peer
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
    conn = core.open(outbox, request.remote or "")
    loop = asyncio.get_running_loop()
    auth_deadline = loop.time() + cfg.auth_timeout
    # This connection's share of one turn of the event loop (limits.TURN_*):
    # ws.receive() returns messages already buffered without yielding, so a
    # flooding peer would otherwise be served its whole buffer in one go.
    frames_left = TURN_FRAMES
    bytes_left = TURN_BYTES
    try:
        while not outbox.dropped:
            if conn.authenticated:
                msg = await ws.receive()
            else:
                try:
                    msg = await ws.receive(timeout=max(0.001, auth_deadline - loop.time()))
                except TimeoutError:
                    outbox.send(
                        encode(ErrorFrame("auth_timeout", f"no auth within {cfg.auth_timeout:g} s"))
                    )
                    outbox.close(1008, "auth_timeout")
                    break
            kind = msg.type
            if kind is WSMsgType.BINARY:
                data = msg.data
                _apply(core, conn, data)
                bytes_left -= len(data)
            elif kind is WSMsgType.PING:
                outbox.pong(msg.data)
                core.alive(conn)
            elif kind is WSMsgType.PONG:
                core.alive(conn)
            elif kind is WSMsgType.TEXT:
                core.receive_text(conn)
            else:  # CLOSE, CLOSING, CLOSED, ERROR
                break
            frames_left -= 1
            if frames_left <= 0 or bytes_left <= 0:
                frames_left = TURN_FRAMES
                bytes_left = TURN_BYTES
                await asyncio.sleep(0)  # every other ready connection's turn
    finally:
        core.close(conn)
        sockets.discard(ws)
        outbox.flush()  # answers to the peer's last frames go before the close frame
        # Answers the peer's close frame (or sends ours) and releases aiohttp's
        # reader; after a drop the socket is already closed and this returns at once.
        with contextlib.suppress(Exception):
            await ws.close()
    return ws


def _apply(core: RelayCore, conn: Connection, data: bytes) -> None:
    try:
        core.receive(conn, data)
    except Exception:
        # A bug must cost one frame, never the connection or the process.
        log.exception("internal error while handling a frame from %r", conn)
        conn.outbox.send(encode(ErrorFrame("internal_error", "the relay failed on this frame")))


async def _housekeeping(core: RelayCore) -> None:
    # Sweep often enough that a stale peer is gone within TTL + 1 s (or TTL × 1.1),
    # and a dead or trickling socket within 1.5 x ping_interval + 2 sweeps.
    expire_every = min(1.0, core.config.presence_ttl / 10)
    tick = min(expire_every, core.config.ping_interval / 10)
    trimming = TrimPolicy()
    loop = asyncio.get_running_loop()
    expire_at = loop.time() + expire_every
    while True:
        await asyncio.sleep(tick)
        try:
            now = loop.time()
            core.check_liveness()
            if now >= expire_at:
                expire_at = now + expire_every
                core.expire()
            if trimming.due(core.closed_total, now):
                trim()
        except Exception:
            log.exception("relay housekeeping failed")


class _FlushTimer:
    """One timer that runs :meth:`RelayCore.flush_held` when held presence
    changes are due (the core's ``wake_at``)."""

    def __init__(self, core: RelayCore, loop: asyncio.AbstractEventLoop) -> None:
        self._core = core
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self._at = math.inf

    def __call__(self, when: float) -> None:
        if self._handle is not None and self._at <= when:
            return
        self.cancel()
        self._at = when
        delay = max(0.0, when - self._core.clock())
        self._handle = self._loop.call_later(delay, self._run)

    def _run(self) -> None:
        self._handle = None
        self._at = math.inf
        try:
            due = self._core.flush_held()
        except Exception:
            log.exception("relay presence flush failed")
            return
        if due < math.inf:
            self(due)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._at = math.inf


async def _background(app: web.Application) -> AsyncIterator[None]:
    core = app[CORE_KEY]
    flush = _FlushTimer(core, asyncio.get_running_loop())
    core.wake_at = flush
    task = asyncio.create_task(_housekeeping(core))
    yield
    flush.cancel()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    app[GUARD_KEY].cancel_all()


async def _cluster_link(app: web.Application) -> AsyncIterator[None]:
    cluster = app[CLUSTER_KEY]
    cluster.start()
    yield
    await cluster.stop()


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
    config: RelayConfig | None = None, *, core: RelayCore | None = None
) -> web.Application:
    """An aiohttp application serving the relay (``/sync``, ``/health`` and,
    unless ``config.metrics_listen`` puts it on an address of its own,
    ``/metrics``: then serve :func:`create_metrics_app` there). With
    ``config.redis_url`` it joins that Redis server's relay cluster while it
    runs (see ``docs/cluster.md``).

    Pass ``core`` to share state with code that inspects it (tests do).

    Raises:
        ConfigError: ``redis_url`` is set but the ``redis`` package is missing.
    """
    config = config or RelayConfig(open=True)
    app = web.Application(middlewares=[_request_complete])
    app[CORE_KEY] = core = core or RelayCore(config)
    cluster = None
    if config.redis_url is not None:
        cluster = app[CLUSTER_KEY] = Cluster(core, config)
    app[GUARD_KEY] = HandshakeGuard(config.handshake_timeout)
    app[_SOCKETS_KEY] = _OpenSockets()
    app[_BATCHER_KEY] = Batcher()
    app[_METRICS_KEY] = MetricsPage(metrics_registry(core, cluster), config.metrics_token)
    app.router.add_get("/sync", _sync)
    app.router.add_get("/health", _health)
    if config.metrics_listen is None:  # else on its own address: create_metrics_app
        app.router.add_get("/metrics", _metrics)
    app.on_response_prepare.append(_one_request_per_connection)
    app.cleanup_ctx.append(_background)
    if cluster is not None:
        app.cleanup_ctx.append(_cluster_link)
    app.on_shutdown.append(_close_sockets)
    return app
