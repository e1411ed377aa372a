"""The client's socket: translating aiohttp's errors, and writing frames in order. No policy.

* :func:`open_socket` opens the WebSocket, and is (with :func:`connect_error`)
  the one place where what that can raise (aiohttp errors, ``OSError``, a
  timeout) becomes one of our errors; :func:`receive_failed` does the same for
  a socket that failed while reading (a frame over ``max_incoming_frame_size``);
* :class:`SocketWriter` writes frames to one WebSocket, in order, without a
  suspension point when the transport is not paused; a write on a socket that
  is going away is dropped (the receive loop sees the close and says why);
* :func:`abort` closes a socket at once, and :func:`backlog` shows the
  messages aiohttp has read but the receive loop has not taken yet;
* :class:`DirectReader` hands each message aiohttp parses to the driver as
  the bytes arrive, instead of queueing it for a task to take.

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
    "DirectReader",
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
_TEXT: Final = aiohttp.WSMsgType.TEXT
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
            ws = await http.ws_connect(
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
    forget_handshake(ws)
    return ws


#: What a socket's handshake response shows once :func:`forget_handshake` ran:
#: one empty read-only header map of aiohttp's type, shared (made on first use).
_no_headers: list[Any] = []


def _empty_headers(like: Any) -> Any:
    if not _no_headers:
        empty = like.copy()  # a mutable copy of the same type's kind...
        empty.clear()
        _no_headers.append(type(like)(empty))  # ...and read-only again
    return _no_headers[0]


def forget_handshake(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Drop the HTTP headers of the upgrade (the server's and ours) that the
    open socket's response object keeps for as long as the socket lives.

    Nothing reads them once the socket is open (the client never exposes the
    response), and they are about 2 KiB per connection: a tenth of an idle
    client (see docs/performance.md). Only aiohttp's plain data fields are
    replaced, by empty ones of the same types; on an aiohttp without them this
    does nothing."""
    response: Any = getattr(ws, "_response", None)
    if response is None:
        return
    headers = getattr(response, "_headers", None)
    if not hasattr(headers, "copy") or not isinstance(
        getattr(response, "_raw_headers", None), tuple
    ):
        return
    none = _empty_headers(headers)
    response._raw_headers = ()
    response._headers = none
    cache = getattr(response, "_cache", None)
    if isinstance(cache, dict):
        cache.clear()  # the cached `headers` property
    info = getattr(response, "_request_info", None)
    if isinstance(info, aiohttp.RequestInfo):
        response._request_info = aiohttp.RequestInfo(info.url, info.method, none, info.real_url)
    forget_http_parser(ws)


def forget_http_parser(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Drop the HTTP response parser of the upgraded connection's protocol.

    It parsed the one HTTP response of the connection (the 101); from then on
    the WebSocket's parser reads every byte, and the HTTP parser is only
    asked, when the connection is lost, whether an HTTP response was cut
    short, which an upgraded connection never has. It keeps the 101's
    headers (twice: as text and as bytes): 2.7 KiB per connection with
    itself (``benchmarks/locust_memory.py``). Only done once the
    protocol says it is upgraded and the WebSocket parser is in place."""
    protocol: Any = getattr(getattr(ws, "_writer", None), "protocol", None)
    if (
        protocol is not None
        and getattr(protocol, "_upgraded", False) is True
        and getattr(protocol, "_payload_parser", None) is not None
        and getattr(protocol, "_parser", None) is not None
    ):
        protocol._parser = None


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


class DirectReader:
    """Hands every data message aiohttp parses from one socket to the driver
    at once, from the protocol's ``data_received``, instead of queueing it.

    Why: aiohttp parses a chunk of bytes into messages, queues them, and wakes
    the task awaiting ``receive()``, which then takes them one by one through
    ``receive()`` (a Python coroutine per message). That costs a task step per
    chunk and those coroutine steps per message (the SDK's own share of the
    1:1 latency), and it lets messages pile up: in a burst, every socket with
    bytes ready is parsed in one loop iteration before any task runs, so a
    process of many clients holds all of their queued messages at once, and
    pymalloc keeps the arenas that peak touched (the memory per idle client).
    Here, each message is handled as soon as it is parsed, so at most one
    socket read's worth of messages exists at a time.

    How: this object stands in for aiohttp's WebSocket parser on the
    connection's protocol. Each ``feed_data`` lets the real parser parse (its
    checks, its size limit, its flow control: nothing of it changes), then
    takes the messages from aiohttp's queue through the queue's own read (so
    its accounting and its pause/resume of the socket stay right). Binary,
    text, ping and pong messages go to ``on_binary`` / ``on_other``; at the
    first message of any other kind (a close), at the end of the stream, at
    a parse error, or when a handler raises, it stops taking messages and
    resolves :attr:`ended`: the driver then reads the rest through
    ``receive()`` as before, so every way a connection ends is aiohttp's.

    :meth:`attach` returns None on an aiohttp whose internals differ from
    those this was written against (3.14: the response object keeps its
    parser, which older releases do not): the driver then receives through
    ``receive()`` alone.
    """

    __slots__ = (
        "_buffer",
        "_on_batch",
        "_on_binary",
        "_on_other",
        "_parser",
        "_protocol",
        "_queue",
        "ended",
        "failure",
    )

    def __init__(
        self,
        protocol: Any,
        parser: Any,
        queue: Any,
        on_binary: Callable[[bytes], None],
        on_other: Callable[[aiohttp.WSMessage], None],
        on_batch: Callable[[], None],
    ) -> None:
        self._protocol = protocol
        self._parser = parser
        self._queue = queue
        self._buffer: deque[tuple[aiohttp.WSMessage, int]] = queue._buffer
        self._on_binary = on_binary
        self._on_other = on_other
        self._on_batch = on_batch
        #: resolved when the driver must read the rest through ``receive()``
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        #: what a handler raised (the driver re-raises it), if that ended it
        self.failure: BaseException | None = None

    @classmethod
    def attach(
        cls,
        ws: aiohttp.ClientWebSocketResponse,
        on_binary: Callable[[bytes], None],
        on_other: Callable[[aiohttp.WSMessage], None],
        on_batch: Callable[[], None],
    ) -> DirectReader | None:
        """Stand in for ``ws``'s parser; None if that is not possible (see
        the class docstring) or the socket is closing."""
        parser = getattr(ws, "_parser", None)
        queue = getattr(ws, "_reader", None)
        protocol = getattr(getattr(ws, "_writer", None), "protocol", None)
        if ws.closed or parser is None or queue is None or protocol is None:
            return None
        if (
            not isinstance(getattr(queue, "_buffer", None), deque)
            or not callable(getattr(queue, "read", None))
            or queue.exception() is not None
            or queue.is_eof()
            or getattr(protocol, "_payload_parser", None) is not parser
            or getattr(protocol, "_payload", None) is not queue
        ):
            return None
        direct = cls(protocol, parser, queue, on_binary, on_other, on_batch)
        protocol._payload_parser = direct
        return direct

    def detach(self) -> None:
        """Give the socket back to aiohttp's parser and queue alone."""
        protocol = self._protocol
        if protocol._payload_parser is self:
            protocol._payload_parser = self._parser
        self._end()

    # ------------------------------------------------------ the parser's interface

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        """aiohttp's protocol hands us the bytes read: parse, then deliver."""
        result: tuple[bool, bytes] = self._parser.feed_data(data)
        if not self.ended.done():
            self.deliver()
            if result[0]:  # a parse error: aiohttp queued it; receive() reports it
                self._end()
        return result

    def feed_eof(self) -> None:
        """The connection is gone: receive() says how."""
        try:
            self._parser.feed_eof()
        finally:
            self._end()

    # ------------------------------------------------------ delivering

    def deliver(self) -> None:
        """Hand over every message queued now (the driver calls this once
        when it attaches, for what aiohttp parsed before)."""
        buffer = self._buffer
        if not buffer:
            return
        read = self._queue.read
        on_binary = self._on_binary
        try:
            while buffer:
                kind = buffer[0][0].type
                if kind is _BINARY:
                    on_binary(_take(read).data)
                elif kind is _PING or kind is _PONG or kind is _TEXT:
                    self._on_other(_take(read))
                else:  # a close: receive() handles it
                    self._end()
                    return
                if self.ended.done():
                    return  # detached meanwhile (a callback closed the client)
            self._on_batch()
        except Exception as exc:  # a bug: the receive loop fails as it would have
            self.failure = exc
            self._end()

    def _end(self) -> None:
        ended = self.ended
        if not ended.done():
            ended.set_result(None)


def _take(read: Callable[[], Any]) -> Any:
    """aiohttp's queue's next message, which is there: its ``read()``
    coroutine returns it without suspending (the queue then does its own
    accounting, and resumes a paused socket when it has room again)."""
    step = read()
    try:
        step.send(None)
    except StopIteration as done:
        return done.value
    step.close()
    raise RuntimeError("aiohttp's queue had no message ready")
