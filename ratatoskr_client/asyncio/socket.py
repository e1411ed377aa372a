"""The client's socket: translating aiohttp's errors, and writing frames in order. No policy.

* :func:`open_socket` opens the WebSocket, and is (with :func:`connect_error`)
  the one place where what that can raise (aiohttp errors, ``OSError``, a
  timeout) becomes one of our errors; :func:`receive_failed` does the same for
  a socket that failed while reading (a frame over ``max_incoming_frame_size``);
* :class:`SocketWriter` writes frames to one WebSocket, in order, without a
  suspension point when the transport is not paused; a write on a socket that
  is going away is dropped (the receive loop sees the close and says why);
* :func:`abort` closes a socket at once, and :func:`backlog` shows the
  messages aiohttp has read but the receive loop has not taken yet.

The socket is opened without aiohttp's heartbeat and with ``autoping=False``:
aiohttp restarts its heartbeat on every chunk of bytes, which a server
trickling one frame a byte at a time defeats. The core's ping rule
(:mod:`ratatoskr_client.core.liveness`) counts whole frames instead, so the receive loop sees pings
and pongs, and answers pings itself (:meth:`SocketWriter.pong`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import ssl
from collections import deque
from collections.abc import Callable, Sized
from typing import Any, Final

import aiohttp

from ..core.settings import Settings
from ..errors import ConnectError, ConnectionClosed, OperationTimeout, ProtocolError, RatatoskrError

__all__ = [
    "CLOSE_TIMEOUT",
    "SocketWriter",
    "abort",
    "backlog",
    "connect_error",
    "open_socket",
    "receive_failed",
    "was_refused",
]

_BINARY: Final = aiohttp.WSMsgType.BINARY
_PING: Final = aiohttp.WSMsgType.PING
_PONG: Final = aiohttp.WSMsgType.PONG
_MESSAGE_TOO_BIG: Final = aiohttp.WSCloseCode.MESSAGE_TOO_BIG
#: Seconds close() waits for the server to answer our close frame.
CLOSE_TIMEOUT: Final = 2.0


async def open_socket(
    http: aiohttp.ClientSession, url: str, settings: Settings
) -> aiohttp.ClientWebSocketResponse:
    """Open the WebSocket at ``url``: no frame larger than
    ``max_incoming_frame_size`` is read, and pings are the core's (see the
    module docstring).

    Raises:
        ConnectError: it could not be opened (see :func:`connect_error`).
        OperationTimeout: no answer within ``connect_timeout``.
    """
    try:
        # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancellation
        # that arrives as the socket opens (CPython gh-86296), leaving the
        # cancelled caller running with an open socket.
        async with asyncio.timeout(settings.connect_timeout):
            return await http.ws_connect(
                url,
                heartbeat=None,
                # aiohttp refuses a message whose size is >= max_msg_size; its
                # reader refuses it from the frame's header, before buffering it.
                max_msg_size=settings.max_incoming_frame_size + 1,
                autoping=False,
                # close() waits this long for the server's close reply, not 10 s.
                timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT),
            )
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
        raise connect_error(exc, url, settings.connect_timeout) from exc


def was_refused(error: BaseException) -> bool:
    """True if ``error`` (from :func:`open_socket`) is the server's address
    refusing the TCP connection: nothing listens there (yet)."""
    cause = error.__cause__
    return isinstance(cause, aiohttp.ClientConnectorError) and isinstance(
        cause.os_error, ConnectionRefusedError
    )


def connect_error(exc: BaseException, url: str, timeout: float) -> RatatoskrError:
    """What opening the socket to ``url`` failed with, as one of our errors."""
    if isinstance(exc, TimeoutError):
        return OperationTimeout(
            f"no answer from {url} within {timeout} s (the connection or the WebSocket upgrade)"
        )
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return ConnectError(
            f"no Ratatoskr WebSocket at {url}: the server answered HTTP {exc.status}"
            f" ({exc.message}) to the upgrade request",
            status=exc.status,
        )
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        reason = f"the server's TLS certificate was refused: {exc.certificate_error}"
        return ConnectError(f"cannot connect to {url}: {reason}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        # aiohttp's own text ("Cannot connect to host h:p ssl:default [...]") shows
        # its connector's internals; the operating system's reason is what helps.
        return ConnectError(f"cannot connect to {url}: {os_reason(exc.os_error)}")
    return ConnectError(f"cannot connect to {url}: {exc}")


def os_reason(error: OSError) -> str:
    """An ``OSError`` in words: "connection refused", "name or service not
    known"..., without asyncio's "Connect call failed ('127.0.0.1', 1)"."""
    if isinstance(error, socket.gaierror):
        reason = error.strerror or str(error)
        return f"cannot resolve the host name ({reason[:1].lower()}{reason[1:]})"
    if isinstance(error, ssl.SSLError):  # (its errno is OpenSSL's, not the system's)
        return f"the TLS handshake failed ({error.reason or error})"
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error.errno, int) and error.errno > 0:
        reason = os.strerror(error.errno)
        return reason[:1].lower() + reason[1:]
    return error.strerror or str(error) or type(error).__name__


def receive_failed(exc: object, code: int | None, settings: Settings) -> ConnectionClosed:
    """Why a socket failed while reading (aiohttp's ``ERROR`` message ``exc``,
    the close ``code``). A frame over ``max_incoming_frame_size`` is the
    server breaking the protocol: the reason's ``__cause__`` is then a
    :class:`ProtocolError` (the core reports it as an ``error`` event)."""
    if code == _MESSAGE_TOO_BIG:
        limit = settings.max_incoming_frame_size
        size = re.search(r"size (\d+)", str(exc))  # aiohttp: "Message size N exceeds ..."
        frame = f"a frame of {int(size[1]):,} bytes" if size else "a frame"
        problem = ProtocolError(
            f"the server sent {frame}, more than max_incoming_frame_size ({limit:,} bytes):"
            " refused unread, the connection closed with 1009"
        )
        reason = ConnectionClosed(str(problem), code=code)
        reason.__cause__ = problem
        return reason
    return ConnectionClosed(f"connection failed: {exc}", code=code)


def abort(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Close the socket's TCP connection now, without a closing handshake (its
    peer is not answering); the receive loop then sees it closed."""
    transport: Any = getattr(getattr(ws, "_writer", None), "transport", None)
    if transport is None:  # other aiohttp versions
        connection = getattr(getattr(ws, "_response", None), "connection", None)
        transport = getattr(connection, "transport", None)
    if transport is not None:
        transport.abort()
    else:  # nothing to abort: the closing handshake, in the background
        asyncio.get_running_loop().create_task(ws.close(), name="ratatoskr-abort")


def backlog(ws: aiohttp.ClientWebSocketResponse) -> Sized:
    """The messages aiohttp has read from ``ws`` and the receive loop has not
    taken yet (a live view: empty when the next receive would wait). On an
    aiohttp that keeps them elsewhere, always empty: the driver then settles
    presence after every frame (correct, only not batched)."""
    buffer = getattr(getattr(ws, "_reader", None), "_buffer", None)
    return buffer if isinstance(buffer, deque) else ()


class SocketWriter:
    """Writes frames to one WebSocket in order, at once when it can.

    aiohttp's ``send_bytes`` is a coroutine; awaiting it per frame would make
    every send a suspension point. For uncompressed frames its writer writes
    synchronously and only then waits for backpressure, so this calls that
    synchronous step directly, and lets callers that should respect
    backpressure await :meth:`drained`. On an aiohttp without that step (or a
    compressed socket) frames go through ``send_bytes`` from one task, in order.
    """

    __slots__ = ("_backlog", "_fast", "_protocol", "_task", "ws")

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        writer = getattr(ws, "_writer", None)
        fast = getattr(writer, "_write_websocket_frame", None)
        compress = getattr(writer, "compress", 1)
        self._fast: Callable[[bytes, int, int], None] | None = fast if not compress else None
        self._protocol = getattr(writer, "protocol", None)
        #: frames waiting for the fallback path (made on first use: most
        #: sockets never need it, and an empty deque is 600 bytes)
        self._backlog: deque[tuple[bytes, aiohttp.WSMsgType]] | None = None
        self._task: asyncio.Task[None] | None = None

    def write(self, data: bytes, opcode: aiohttp.WSMsgType = _BINARY) -> None:
        """Send one frame (binary unless told), after every frame written before it."""
        if self.ws.closed:
            return  # lost: the receive loop notices and tells the core
        fast = self._fast
        pending = self._backlog
        if fast is not None and not pending:
            # try/except, not contextlib.suppress: this runs once per frame sent,
            # and a try block costs nothing until something is raised.
            try:  # noqa: SIM105
                fast(data, opcode, 0)
            except (aiohttp.ClientError, ConnectionError, OSError, RuntimeError):
                pass  # a closing transport: the receive loop sees the close
            return
        if pending is None:
            pending = self._backlog = deque()
        pending.append((data, opcode))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._flush(), name="ratatoskr-write"
            )

    async def _flush(self) -> None:
        pending = self._backlog
        assert pending is not None
        ws = self.ws
        try:
            while pending:
                data, opcode = pending[0]
                with contextlib.suppress(aiohttp.ClientError, ConnectionError, OSError):
                    if opcode is _BINARY:
                        await ws.send_bytes(data)
                    elif opcode is _PING:
                        await ws.ping(data)
                    else:
                        await ws.pong(data)
                pending.popleft()
        finally:
            self._task = None

    def ping(self) -> None:
        """Send a WebSocket ping."""
        self.write(b"", _PING)

    def pong(self, data: bytes) -> None:
        """Answer a ping whose payload was ``data``."""
        self.write(data, _PONG)

    @property
    def writing(self) -> bool:
        """True while frames wait on the fallback path (its task is running)."""
        return self._task is not None

    @property
    def paused(self) -> bool:
        """True while writes are waiting: the transport's buffer is over its
        limit, or frames queue in the fallback path."""
        protocol = self._protocol
        return self._task is not None or bool(getattr(protocol, "writing_paused", False))

    async def drained(self) -> None:
        """Wait while the socket's send buffer is over its limit (backpressure)."""
        if self._task is not None:
            await asyncio.shield(self._task)
        protocol = self._protocol
        if protocol is not None and getattr(protocol, "writing_paused", False):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await protocol._drain_helper()

    def stop(self) -> asyncio.Task[None] | None:
        """Drop what is not written yet; returns the writing task, if any."""
        if self._backlog is not None:
            self._backlog.clear()
        return self._task
