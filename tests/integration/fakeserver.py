"""A tiny scripted WebSocket server for client tests the real relay cannot stage.

It records every frame each connection sends (raw CBOR maps, in order), answers
``auth`` with ``auth_ok`` (with or without ``features``) or ``auth_error``,
answers presence joins with ``doc_presence_state`` unless told to ignore them,
and forwards ordinary ephemeral messages to the other connections, as the
upstream server does. Tests wait on what it receives with :meth:`wait_for`, and
can script it: hold auth, refuse it, answer it with an error frame, deny joins,
freeze a connection (no more reads, no pongs) or drop it. As a hostile server it
can also write raw bytes (:meth:`FakeServer.send_raw`, with :func:`ws_frame`
for framing) and trickle a frame a byte at a time (:meth:`FakeServer.trickle`).

Also here, for the client tests: :class:`Recorder` (every event a client emits,
and waiting on them without sleeping), :func:`abort_transport` (kill a client's
TCP connection as a crash would) and :func:`ratatoskr_tasks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_args

import cbor2
from aiohttp import WSMsgType, web

from ratatoskr_client import EventName

FULL_FEATURES = ("identity", "presence", "ephemeral")


@dataclass
class Conn:
    """One accepted WebSocket."""

    number: int
    ws: web.WebSocketResponse
    peer_id: str
    request: web.Request
    frames: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Received:
    conn: Conn
    frame: dict[str, Any]
    #: the event loop's clock when the frame arrived
    at: float = 0.0

    @property
    def payload(self) -> Any:
        """The decoded ``data`` of an ephemeral frame."""
        return cbor2.loads(self.frame["data"])


class FakeServer:
    """``async with FakeServer(...) as server``: ``server.url`` is what clients take."""

    def __init__(
        self,
        *,
        features: tuple[str, ...] | None = FULL_FEATURES,
        answer_joins: bool = True,
        refuse_auth: bool = False,
        user: dict[str, Any] | None = None,
        hold_auth: asyncio.Event | None = None,
    ) -> None:
        self.features = features
        self.answer_joins = answer_joins
        #: set to True (also while running) to refuse every new auth
        self.refuse_auth = refuse_auth
        self.user = user
        #: when set, auth is answered only once this event is set
        self.hold_auth = hold_auth
        #: frames answering the next auth attempts instead of auth_ok (then close)
        self.auth_replies: list[dict[str, Any]] = []
        #: documents whose joins are answered with permission_denied
        self.deny: set[str] = set()
        #: connections that stopped reading (and so answer no ping)
        self._frozen: set[int] = set()
        self._stopping = asyncio.Event()
        self.conns: list[Conn] = []
        self.received: list[Received] = []
        self._waiters: list[tuple[Callable[[Received], bool], asyncio.Future[Received]]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.auth_attempts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeServer:
        app = web.Application()
        app.router.add_get("/sync", self._handle)
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping.set()
        for waiter in self._waiters:
            waiter[1].cancel()
        # Close our side first, so a client that misbehaves cannot hold the
        # shutdown (and the test) for aiohttp's long shutdown timeout.
        for conn in self.conns:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.ws.close(code=1001), 1.0)
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ inspection

    def ephemerals(self, conn: Conn | None = None) -> list[Received]:
        return [
            r
            for r in self.received
            if r.frame.get("type") == "ephemeral" and (conn is None or r.conn is conn)
        ]

    def presence_messages(self, status: str | None = None) -> list[Received]:
        out = []
        for r in self.ephemerals():
            payload = r.payload
            is_presence = isinstance(payload, dict) and payload.get("type") == "presence"
            if is_presence and (status is None or payload.get("status") == status):
                out.append(r)
        return out

    async def wait_for(
        self, predicate: Callable[[Received], bool], timeout: float = 5.0
    ) -> Received:
        """The first frame (already received or future) matching ``predicate``."""
        for r in self.received:
            if predicate(r):
                return r
        fut: asyncio.Future[Received] = asyncio.get_running_loop().create_future()
        entry = (predicate, fut)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._waiters.remove(entry)

    async def send(self, conn: Conn, frame: dict[str, Any]) -> None:
        await conn.ws.send_bytes(cbor2.dumps(frame))

    async def send_raw(self, conn: Conn, data: bytes, chunk: int = 64 * 1024) -> int:
        """Write ``data`` as it is (WebSocket framing included, see
        :func:`ws_frame`), a chunk at a time, each once the previous one is on
        its way, so the server never holds more than a chunk of it. Stops when
        the client closes the connection; returns the bytes written."""
        request = conn.request
        written = 0
        for start in range(0, len(data), chunk):
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            transport.write(data[start : start + chunk])
            written += len(data[start : start + chunk])
            try:
                await request.writer.drain()
            except ConnectionError:
                break
        return written

    async def send_each(self, conn: Conn, frames: list[bytes]) -> int:
        """Write each of ``frames`` (framed, see :func:`ws_frame`) on its own,
        letting the event loop run after each, so that a client in the same
        process reads them one or two at a time. Returns the frames written."""
        written = 0
        for frame in frames:
            transport = conn.request.transport
            if transport is None or transport.is_closing():
                break
            transport.write(frame)
            written += 1
            await asyncio.sleep(0)
        return written

    async def trickle(self, conn: Conn, data: bytes, every: float) -> int:
        """Write ``data`` one byte every ``every`` seconds (a server that keeps a
        frame coming forever) until it is all written or the client closed the
        connection; returns the bytes written."""
        written = 0
        for byte in data:
            transport = conn.request.transport
            if transport is None or transport.is_closing():
                break
            transport.write(bytes((byte,)))
            written += 1
            await asyncio.sleep(every)
        return written

    def freeze(self, conn: Conn) -> None:
        """Stop reading ``conn`` after its next frame, as a hung server would:
        no more answers, no pongs."""
        self._frozen.add(conn.number)

    async def drop(self, conn: Conn) -> None:
        """Close one connection from the server side."""
        await conn.ws.close(code=1001, message=b"fake server drops you")

    # ------------------------------------------------------------------ protocol

    def _record(self, conn: Conn, frame: dict[str, Any]) -> None:
        conn.frames.append(frame)
        item = Received(conn, frame, asyncio.get_running_loop().time())
        self.received.append(item)
        for predicate, fut in list(self._waiters):
            if not fut.done() and predicate(item):
                fut.set_result(item)

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = Conn(len(self.conns) + 1, ws, f"client-{len(self.conns) + 1}", request)
        self.conns.append(conn)
        async for msg in ws:
            if msg.type is not WSMsgType.BINARY:
                continue
            frame = cbor2.loads(msg.data)
            self._record(conn, frame)
            if conn.number in self._frozen:
                await self._stopping.wait()  # hung until the server shuts down
                break
            with contextlib.suppress(ConnectionResetError):
                await self._answer(conn, frame)
        return ws

    async def _answer(self, conn: Conn, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "auth":
            self.auth_attempts += 1
            if self.hold_auth is not None:
                await self.hold_auth.wait()
                if conn.ws.closed:
                    return
            if self.auth_replies:
                await self.send(conn, self.auth_replies.pop(0))
                await conn.ws.close()
                return
            if self.refuse_auth:
                await self.send(
                    conn, {"type": "auth_error", "error": "invalid_token", "message": "nope"}
                )
                await conn.ws.close()
                return
            auth_ok: dict[str, Any] = {
                "type": "auth_ok",
                "peerId": "server-1",
                "clientPeerId": conn.peer_id,
                "user": self.user,
            }
            if self.features is not None:
                auth_ok["features"] = list(self.features)
            await self.send(conn, auth_ok)
            return
        if kind != "ephemeral":
            return
        payload = cbor2.loads(frame["data"])
        if isinstance(payload, dict) and payload.get("type") == "presence":
            status = payload.get("status")
            doc = payload.get("documentId")
            first_heartbeat = status == "heartbeat" and not self._joined(conn, doc)
            if doc in self.deny and status != "leave":
                await self.send(
                    conn,
                    {
                        "type": "error",
                        "error": "permission_denied",
                        "documentId": doc,
                        "message": "Read access required",
                    },
                )
            elif self.answer_joins and (status == "join" or first_heartbeat):
                await self.send(
                    conn, {"type": "doc_presence_state", "documentId": doc, "peers": [conn.peer_id]}
                )
            return
        for other in self.conns:
            if other is not conn and not other.ws.closed:
                await self.send(
                    other, {**frame, "senderId": conn.peer_id, "targetId": other.peer_id}
                )

    def _joined(self, conn: Conn, document_id: str) -> bool:
        joins = [
            f
            for f in conn.frames[:-1]
            if f.get("type") == "ephemeral"
            and cbor2.loads(f["data"])
            == {"type": "presence", "status": "join", "documentId": document_id}
        ]
        return bool(joins)


def ws_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """One unfragmented WebSocket frame as a server sends it (not masked)."""
    head = bytes((0x80 | opcode,))
    n = len(payload)
    if n < 126:
        return head + bytes((n,)) + payload
    if n < 1 << 16:
        return head + bytes((126,)) + struct.pack(">H", n) + payload
    return head + bytes((127,)) + struct.pack(">Q", n) + payload


# --------------------------------------------------------------------------- client-side helpers

#: Every event a client emits (the public EventName literal is the one list).
CLIENT_EVENTS: tuple[str, ...] = get_args(EventName)


class Recorder:
    """Records every event a client emits, in order, and lets a test wait for one."""

    def __init__(self, client: Any, events: tuple[str, ...] = CLIENT_EVENTS) -> None:
        self.client = client
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        for name in events:
            client.on(name, self._listener(name))

    def _listener(self, name: str) -> Callable[..., None]:
        def record(*args: Any) -> None:
            self.events.append((name, args))
            for cond, fut in list(self._waiters):
                if not fut.done() and cond():
                    fut.set_result(None)

        return record

    def of(self, name: str, since: int = 0) -> list[tuple[Any, ...]]:
        """The arguments of every ``name`` event recorded (from index ``since``)."""
        return [args for event, args in self.events[since:] if event == name]

    def names(self, since: int = 0) -> list[str]:
        return [event for event, _ in self.events[since:]]

    def mark(self) -> int:
        return len(self.events)

    async def until(self, cond: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``cond()`` is true, re-checking after every event of this client."""
        if cond():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (cond, fut)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            self._waiters.remove(entry)

    async def wait(
        self,
        name: str,
        predicate: Callable[..., bool] = lambda *args: True,
        *,
        since: int = 0,
        timeout: float = 5.0,
    ) -> tuple[Any, ...]:
        """The arguments of the first ``name`` event (from index ``since``) matching."""

        def found() -> bool:
            return any(predicate(*args) for args in self.of(name, since))

        await self.until(found, timeout)
        return next(args for args in self.of(name, since) if predicate(*args))


def abort_transport(client: Any) -> None:
    """Kill a client's TCP connection without a WebSocket close frame, as a crashed
    process would (the client object itself is left alone).

    The one place the tests reach into a client: a crash cannot be staged
    through the public API."""
    writer = client._driver.writer
    assert writer is not None, "client is not connected"
    ws = writer.ws
    transport = getattr(getattr(ws, "_writer", None), "transport", None)
    if transport is None:  # other aiohttp versions
        transport = ws._response.connection.transport
    transport.abort()


def ratatoskr_tasks() -> list[asyncio.Task[Any]]:
    """Tasks the client library started that are still alive."""
    return [
        t for t in asyncio.all_tasks() if t.get_name().startswith("ratatoskr-") and not t.done()
    ]
