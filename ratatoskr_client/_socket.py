"""The client's socket: translating aiohttp's errors, and writing frames in order. No policy.

* :func:`open_socket` opens the WebSocket, and is (with :func:`connect_error`)
  the one place where what that can raise (aiohttp errors, ``OSError``, a
  timeout) becomes one of our errors;
* :class:`SocketWriter` writes frames to one WebSocket, in order, without a
  suspension point when the transport is not paused; a write on a socket that
  is going away is dropped (the receive loop sees the close and says why).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Final

import aiohttp

from ._settings import Settings
from .errors import ConnectError, OperationTimeout, RatatoskrError

__all__ = ["CLOSE_TIMEOUT", "SocketWriter", "connect_error", "open_socket"]

_BINARY: Final = aiohttp.WSMsgType.BINARY
#: Seconds close() waits for the server to answer our close frame.
CLOSE_TIMEOUT: Final = 2.0
#: Largest frame we read (the relay's limit is far below; a bound on memory).
MAX_MESSAGE_SIZE: Final = 16 * 1024 * 1024


async def open_socket(
    http: aiohttp.ClientSession, url: str, settings: Settings
) -> aiohttp.ClientWebSocketResponse:
    """Open the WebSocket at ``url`` (pinging after ``ping_interval`` of silence).

    Raises:
        ConnectError: it could not be opened (see :func:`connect_error`).
        OperationTimeout: no answer within ``connect_timeout``.
    """
    try:
        return await asyncio.wait_for(
            http.ws_connect(
                url,
                heartbeat=settings.ping_interval,
                max_msg_size=MAX_MESSAGE_SIZE,
                autoping=True,
                # close() waits this long for the server's close reply, not 10 s.
                timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT),
            ),
            settings.connect_timeout,
        )
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
        raise connect_error(exc, url, settings.connect_timeout) from exc


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
    return ConnectError(f"cannot connect to {url}: {exc}")


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
        self._backlog: deque[bytes] | None = None
        self._task: asyncio.Task[None] | None = None

    def write(self, data: bytes) -> None:
        """Send one binary frame, after every frame written before it."""
        if self.ws.closed:
            return  # lost: the receive loop notices and tells the core
        fast = self._fast
        backlog = self._backlog
        if fast is not None and not backlog:
            # try/except, not contextlib.suppress: this runs once per frame sent,
            # and a try block costs nothing until something is raised.
            try:  # noqa: SIM105
                fast(data, _BINARY, 0)
            except (aiohttp.ClientError, ConnectionError, OSError, RuntimeError):
                pass  # a closing transport: the receive loop sees the close
            return
        if backlog is None:
            backlog = self._backlog = deque()
        backlog.append(data)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._flush(), name="ratatoskr-write"
            )

    async def _flush(self) -> None:
        backlog = self._backlog
        assert backlog is not None
        try:
            while backlog:
                data = backlog[0]
                with contextlib.suppress(aiohttp.ClientError, ConnectionError, OSError):
                    await self.ws.send_bytes(data)
                backlog.popleft()
        finally:
            self._task = None

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
