"""The relay's aiohttp layer: WebSocket at ``/sync``, ``GET /health``, timers, shutdown.

This module only moves bytes: every rule lives in :class:`~.core.RelayCore`. Use
:class:`RelayServer` to run a relay inside your own program or tests::

    async with RelayServer(RelayConfig(port=0, open=True)) as relay:
        print(relay.url)          # http://127.0.0.1:<free port>

or :func:`create_app` to mount it in an aiohttp application you already run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import AsyncIterator
from typing import Any, Final

from aiohttp import WSMsgType, web

from ..protocol import ErrorFrame, encode
from .config import RelayConfig
from .core import RelayCore, RelayStats, Session

__all__ = ["RelayServer", "create_app"]

log = logging.getLogger("ratatoskr_client.server")

CORE_KEY: Final = web.AppKey("ratatoskr_core", RelayCore)


class _OpenSockets:
    """The relay's open WebSockets, closed with 1001 on shutdown."""

    def __init__(self) -> None:
        self.all: set[web.WebSocketResponse] = set()


_SOCKETS_KEY: Final = web.AppKey("ratatoskr_sockets", _OpenSockets)

#: Above this many bytes waiting in a socket's send buffer, ephemeral messages to
#: that peer are dropped (they are fire-and-forget; presence frames still go out).
SLOW_PEER_BYTES: Final = 1 << 20
#: Above this many, the peer is disconnected as too slow; it reconnects and resyncs.
STALLED_PEER_BYTES: Final = 8 << 20


def _frame_header(length: int) -> bytes:
    """RFC 6455 header of an unmasked, final, binary server-to-client frame."""
    if length < 126:
        return bytes((0x82, length))
    if length < 0x10000:
        return struct.pack("!BBH", 0x82, 126, length)
    return struct.pack("!BBQ", 0x82, 127, length)


class _Batcher:
    """Coalesces the frames written to one connection within one event-loop
    iteration.

    The first frame for a connection in an iteration is written at once, so a
    lone message (the common case) gains no latency. Frames that follow it in the
    same iteration are held and written together, with one system call, when the
    iteration ends. When many peers connect or join at once, each newcomer makes
    the relay send a frame to everyone; batching turns the K writes per
    connection and iteration into two.
    """

    __slots__ = ("_dirty", "_scheduled")

    def __init__(self) -> None:
        self._dirty: list[_SocketOutbox] = []
        self._scheduled = False

    def hold(self, outbox: _SocketOutbox) -> None:
        self._dirty.append(outbox)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for outbox in dirty:
            outbox.flush()


_BATCHER_KEY: Final = web.AppKey("ratatoskr_batcher", _Batcher)


class _SocketOutbox:
    """Writes the core's frames straight to the connection's transport.

    Writing whole, uncompressed binary frames synchronously (instead of awaiting
    ``WebSocketResponse.send_bytes``) is what lets one sender fan out to hundreds
    of peers without yielding per recipient, and without one slow reader blocking
    everyone else: backpressure is handled per peer (see SLOW_PEER_BYTES). Frames
    that follow another in the same loop iteration are batched (see _Batcher).
    """

    __slots__ = (
        "_batcher",
        "_held",
        "_transport",
        "_ws",
        "close_code",
        "close_reason",
        "dropped",
    )

    def __init__(
        self, ws: web.WebSocketResponse, transport: asyncio.Transport, batcher: _Batcher
    ) -> None:
        self._ws = ws
        self._transport = transport
        self._batcher = batcher
        #: frames waiting for the end of this loop iteration, in one buffer (not a
        #: list of small bytes objects: a storm holds tens of thousands of frames
        #: at once, which would fragment the heap); None: the next frame goes
        #: out at once
        self._held: bytearray | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self.dropped = 0

    def _writable(self) -> bool:
        return self.close_code is None and not self._ws.closed and not self._transport.is_closing()

    def _queued(self) -> int:
        """Bytes written but not yet sent to the peer, held frames included."""
        held = self._held
        return self._transport.get_write_buffer_size() + (len(held) if held else 0)

    def flush(self) -> None:
        """Write the held frames (at the end of the iteration, or before a close)."""
        held, self._held = self._held, None
        if held and not self._ws.closed and not self._transport.is_closing():
            self._transport.write(held)

    def send(self, frame: bytes) -> None:
        if not self._writable():
            return
        held = self._held
        if held is None:
            self._transport.write(_frame_header(len(frame)) + frame)
            self._held = bytearray()  # hold whatever follows in this iteration
            self._batcher.hold(self)
        else:
            held += _frame_header(len(frame))
            held += frame
        if self._queued() > STALLED_PEER_BYTES:
            log.warning(
                "disconnecting a peer that stopped reading (%d bytes queued)", self._queued()
            )
            self._held = None
            self._transport.abort()

    def send_ephemeral(self, prefix: bytes, suffix: bytes) -> None:
        if not self._writable():
            return
        if self._queued() > SLOW_PEER_BYTES:
            self.dropped += 1
            return
        header = _frame_header(len(prefix) + len(suffix))
        held = self._held
        if held is None:
            self._transport.write(header + prefix + suffix)
            self._held = bytearray()  # hold whatever follows in this iteration
            self._batcher.hold(self)
        else:
            held += header
            held += prefix
            held += suffix

    def close(self, code: int, reason: str) -> None:
        # Acted on by the connection's own handler right after the current frame.
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _sync(request: web.Request) -> web.StreamResponse:
    core = request.app[CORE_KEY]
    cfg = core.config
    ws = web.WebSocketResponse(
        # Frames up to 16x the limit are read and answered with an error frame;
        # beyond that aiohttp closes the socket (1009) without buffering them.
        # (+1: aiohttp refuses a message whose size is >= max_msg_size.)
        max_msg_size=cfg.max_frame_size * 16 + 1,
        compress=False,  # _SocketOutbox writes raw frames; compression would break them
        heartbeat=cfg.ping_interval,
        autoping=True,
    )
    await ws.prepare(request)
    transport = request.transport
    if transport is None:  # the client went away during the handshake
        return ws
    sockets = request.app[_SOCKETS_KEY].all
    sockets.add(ws)
    outbox = _SocketOutbox(ws, transport, request.app[_BATCHER_KEY])
    session = core.open(outbox)
    loop = asyncio.get_running_loop()
    auth_deadline = loop.time() + cfg.auth_timeout
    try:
        while True:
            if session.authenticated:
                msg = await ws.receive()
            else:
                try:
                    msg = await ws.receive(timeout=max(0.001, auth_deadline - loop.time()))
                except TimeoutError:
                    outbox.send(
                        encode(ErrorFrame("auth_timeout", f"no auth within {cfg.auth_timeout:g} s"))
                    )
                    outbox.flush()  # the error frame goes before the close frame
                    await ws.close(code=1008, message=b"auth_timeout")
                    break
            if msg.type is WSMsgType.BINARY:
                _apply(core, session, msg.data)
            elif msg.type is WSMsgType.TEXT:
                core.receive_text(session)
            else:  # CLOSE, CLOSING, CLOSED, ERROR
                break
            if outbox.close_code is not None:
                outbox.flush()  # e.g. auth_error goes before the close frame
                await ws.close(code=outbox.close_code, message=outbox.close_reason.encode())
                break
    finally:
        core.close(session)
        sockets.discard(ws)
    return ws


def _apply(core: RelayCore, session: Session, data: bytes) -> None:
    try:
        core.receive(session, data)
    except Exception:
        # A bug must cost one frame, never the connection or the process.
        log.exception("internal error while handling a frame from %r", session)
        session.outbox.send(encode(ErrorFrame("internal_error", "the relay failed on this frame")))


async def _expiry_loop(core: RelayCore) -> None:
    # Sweep often enough that a stale peer is gone within TTL + 1 s (or TTL × 1.1).
    interval = min(1.0, core.config.presence_ttl / 10)
    while True:
        await asyncio.sleep(interval)
        try:
            core.expire()
        except Exception:
            log.exception("presence expiry failed")


async def _background(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_expiry_loop(app[CORE_KEY]))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _close_sockets(app: web.Application) -> None:
    async def close(ws: web.WebSocketResponse) -> None:
        with contextlib.suppress(Exception):
            await ws.close(code=1001, message=b"relay shutting down")

    app[_BATCHER_KEY].flush()  # frames held this iteration go before the close frames
    # Concurrently: each close waits for the peer's close reply.
    await asyncio.gather(*(close(ws) for ws in list(app[_SOCKETS_KEY].all)))


def create_app(
    config: RelayConfig | None = None, *, core: RelayCore | None = None
) -> web.Application:
    """An aiohttp application serving the relay (``/sync`` and ``/health``).

    Pass ``core`` to share state with code that inspects it (tests do).
    """
    config = config or RelayConfig(open=True)
    app = web.Application()
    app[CORE_KEY] = core or RelayCore(config)
    app[_SOCKETS_KEY] = _OpenSockets()
    app[_BATCHER_KEY] = _Batcher()
    app.router.add_get("/sync", _sync)
    app.router.add_get("/health", _health)
    app.cleanup_ctx.append(_background)
    app.on_shutdown.append(_close_sockets)
    return app


class RelayServer:
    """A relay listening on a real socket; an async context manager.

    ``RelayServer(config)`` or ``RelayServer(port=0, open=True, presence_ttl=1)``
    (keyword arguments build or override the :class:`RelayConfig`). With port 0
    the OS picks a free port; :attr:`port` and :attr:`url` tell which. A stopped
    server can be started again; it then listens on the same port (its state
    starts empty, like a restarted process).
    """

    def __init__(self, config: RelayConfig | None = None, **overrides: Any) -> None:
        base = config or RelayConfig(open=True)
        self.config = base.with_(**overrides) if overrides else base
        self._runner: web.AppRunner | None = None
        self._core: RelayCore | None = None
        self._port: int | None = None

    async def start(self) -> RelayServer:
        """Start listening. Returns self."""
        if self._runner is not None:
            raise RuntimeError("relay already running")
        self._core = RelayCore(self.config)
        app = create_app(self.config, core=self._core)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        port = self._port if self._port is not None else self.config.port
        site = web.TCPSite(runner, self.config.host, port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._port = int(runner.addresses[0][1])
        self._runner = runner
        log.info("relay listening on %s", self.ws_url)
        if self.config.open:
            log.warning(
                "open mode: every document not listed in the configuration exists and "
                "is readable by every peer, anonymous ones included"
            )
        if not self.config.server_presence:
            log.warning("server_presence is off: behaving like the upstream server (no presence)")
        return self

    async def stop(self) -> None:
        """Close every socket (1001 going away) and stop listening. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> RelayServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._runner is not None

    @property
    def port(self) -> int:
        """The port listened on (known once started)."""
        if self._port is None:
            raise RuntimeError("relay not started")
        return self._port

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def url(self) -> str:
        """``http://host:port``: what :class:`~ratatoskr_client.RatatoskrClient` takes."""
        return f"http://{self._netloc()}"

    @property
    def ws_url(self) -> str:
        """``ws://host:port/sync``: the WebSocket endpoint."""
        return f"ws://{self._netloc()}/sync"

    def _netloc(self) -> str:
        host = self.config.host
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{self.port}"

    @property
    def core(self) -> RelayCore:
        """The running relay's state (for inspection in tests)."""
        if self._core is None:
            raise RuntimeError("relay not started")
        return self._core

    def stats(self) -> RelayStats:
        """Sizes of the relay's tables."""
        return self.core.stats()
