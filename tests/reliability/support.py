"""Shared machinery for the reliability suite.

* :class:`RecordingPeer` — a raw WebSocket peer (aiohttp + cbor2, no SDK code)
  whose background reader records **every** frame it ever receives, across
  reconnections, so a test can assert over all of them at the end. It can be
  *paused* (no reads, no pongs, the TCP connection left open) to play a
  half-open connection.
* :class:`BlackholeProxy` — a TCP proxy in front of the relay that can start
  silently dropping every byte in both directions, as a dead network path does.
* :class:`Changes` — wait for a condition over many clients and the relay,
  re-checked after every event that could change it (never polling, never
  sleeping for luck).
* :func:`assert_never_about` — the security check run after every scenario.
* :func:`seeded` — a seeded ``random.Random`` whose seed is reported on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
import cbor2

from ..integration.rawpeer import decode_strict

Frame = dict[str, Any]

#: Waits in this suite only run this long when something is wrong.
LONG = 20.0


def seeded(name: str) -> tuple[random.Random, int]:
    """A Random seeded from ``RATATOSKR_SEED`` (to replay a failure) or at random."""
    raw = os.environ.get("RATATOSKR_SEED")
    seed = int(raw) if raw else random.SystemRandom().randrange(2**32)
    print(f"{name}: RATATOSKR_SEED={seed}")  # shown by pytest for a failing test
    return random.Random(seed), seed


def transport_of(ws: aiohttp.ClientWebSocketResponse) -> asyncio.Transport:
    transport = getattr(getattr(ws, "_writer", None), "transport", None)
    if transport is None:  # other aiohttp versions
        transport = ws._response.connection.transport  # type: ignore[union-attr]
    assert transport is not None
    return transport


# --------------------------------------------------------------------------- waiting


class Changes:
    """Something that may change a condition happened: :meth:`poke` it.

    :meth:`until` re-evaluates the condition after every poke and returns as
    soon as it holds, or fails after ``timeout`` with ``describe()``.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.pokes = 0

    def poke(self, *_: Any) -> None:
        self.pokes += 1
        self._event.set()

    async def until(
        self,
        cond: Callable[[], bool],
        timeout: float,
        describe: Callable[[], str] = lambda: "",
    ) -> float:
        """Seconds it took for ``cond()`` to hold."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeout
        while not cond():
            self._event.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"condition not reached within {timeout} s: {describe()}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), remaining)
        return loop.time() - start

    def watch_relay(self, core: Any) -> None:
        """Poke after every frame, close and expiry sweep the relay core handles."""
        for name in ("receive", "receive_text", "close", "expire"):
            method = getattr(core, name)

            def wrapped(*args: Any, _method: Any = method, **kwargs: Any) -> Any:
                try:
                    return _method(*args, **kwargs)
                finally:
                    self.poke()

            setattr(core, name, wrapped)


class Background:
    """Tasks that drive a workload during a test; ``async with`` cancels and
    awaits whatever is still running when the block ends (failing or not)."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any]] = []

    def start(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self.tasks.append(task)
        return task

    async def __aenter__(self) -> Background:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


# --------------------------------------------------------------------------- raw peers


class RecordingPeer:
    """A raw peer that records every frame it receives, on every connection it opens."""

    def __init__(self, ws_url: str, label: str) -> None:
        self.ws_url = ws_url
        self.label = label
        #: every frame received, over every connection, in order
        self.frames: list[Frame] = []
        #: the event loop's clock when each frame of ``frames`` arrived
        self.arrivals: list[float] = []
        #: (connection number, frame) for every frame
        self.log: list[tuple[int, Frame]] = []
        self.text_frames: list[str] = []
        self.peer_ids: list[str] = []
        self.peer_id = ""
        self.user: Any = None
        self.connections = 0
        self.closed = True
        self.close_code: int | None = None
        self.closed_at: float | None = None
        self.session_id = f"session-{uuid.uuid4().hex}"
        self.count = 0
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self.on_frame: Callable[[Frame], None] | None = None

    def __repr__(self) -> str:
        return f"<RecordingPeer {self.label} {self.peer_id}>"

    # ------------------------------------------------------------------ connection

    @classmethod
    async def open(
        cls, ws_url: str, label: str, token: str | None = None, *, auth: bool = True
    ) -> RecordingPeer:
        peer = cls(ws_url, label)
        await peer.connect(token, auth=auth)
        return peer

    async def connect(
        self, token: str | None = None, *, auth: bool = True, keep_session: bool = False
    ) -> None:
        """Open a (new) connection, and authenticate unless ``auth`` is False.
        With ``keep_session`` the peer carries on its ``sessionId`` and
        ``count``, as a stock automerge-repo peer does across reconnects; else
        it starts a new session, as our client does."""
        await self._drop_connection()
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(self.ws_url, autoping=True, max_msg_size=0)
        self.connections += 1
        self.closed = False
        self.close_code = None
        self.closed_at = None
        if not keep_session:
            self.session_id = f"session-{uuid.uuid4().hex}"
            self.count = 0
        self._reader = asyncio.create_task(self._read(self._ws, self.connections))
        if auth:
            frame: Frame = {"type": "auth"}
            if token is None:
                frame["anonymous"] = True
            else:
                frame["token"] = token
            mark = len(self.frames)
            await self.send(frame)
            ok = await self.wait_for(
                lambda f: f.get("type") in ("auth_ok", "auth_error"), since=mark
            )
            assert ok["type"] == "auth_ok", f"{self.label}: auth refused: {ok}"
            self.peer_id = ok["clientPeerId"]
            self.user = ok["user"]
            self.peer_ids.append(self.peer_id)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, number: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.BINARY:
                frame = decode_strict(msg.data)
                self.frames.append(frame)
                self.arrivals.append(loop.time())
                self.log.append((number, frame))
                if self.on_frame is not None:
                    self.on_frame(frame)
            elif msg.type is aiohttp.WSMsgType.TEXT:
                self.text_frames.append(msg.data)
            else:
                if number == self.connections:
                    self.closed = True
                    self.closed_at = loop.time()
                    self.close_code = (
                        int(msg.data) if msg.type is aiohttp.WSMsgType.CLOSE else ws.close_code
                    )
                self._changed.set()
                return
            self._changed.set()

    async def _drop_connection(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        ws, self._ws = self._ws, None
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)
        http, self._http = self._http, None
        if http is not None:
            await http.close()
        self.closed = True

    async def close(self) -> None:
        await self._drop_connection()

    def pause(self) -> None:
        """Stop reading (no more pongs) while keeping the TCP connection open:
        the peer's process is alive but stuck, or its network path is gone."""
        assert self._ws is not None and self._reader is not None
        self._reader.cancel()
        self._reader = None
        transport_of(self._ws).pause_reading()

    def resume(self) -> None:
        assert self._ws is not None and self._reader is None
        transport_of(self._ws).resume_reading()
        self._reader = asyncio.create_task(self._read(self._ws, self.connections))

    # ------------------------------------------------------------------ sending

    async def send(self, frame: Frame | bytes | str) -> None:
        ws = self._ws
        assert ws is not None, f"{self.label} is not connected"
        if isinstance(frame, str):
            await ws.send_str(frame)
        elif isinstance(frame, bytes | bytearray):
            await ws.send_bytes(bytes(frame))
        else:
            await ws.send_bytes(cbor2.dumps(frame))

    def ephemeral_frame(self, document_id: str, payload: Any = None, **fields: Any) -> Frame:
        self.count += 1
        frame: Frame = {
            "type": "ephemeral",
            "senderId": self.peer_id,
            "targetId": "",
            "documentId": document_id,
            "count": self.count,
            "sessionId": self.session_id,
            "data": cbor2.dumps(payload),
        }
        frame.update(fields)
        return frame

    async def ephemeral(self, document_id: str, payload: Any = None, **fields: Any) -> Frame:
        frame = self.ephemeral_frame(document_id, payload, **fields)
        await self.send(frame)
        return frame

    async def presence(self, document_id: str, status: str) -> None:
        await self.ephemeral(
            document_id, {"type": "presence", "status": status, "documentId": document_id}
        )

    async def join(self, document_id: str, timeout: float = LONG) -> Frame:
        mark = len(self.frames)
        await self.presence(document_id, "join")
        return await self.wait_for(
            lambda f: f.get("type") == "doc_presence_state" and f.get("documentId") == document_id,
            timeout,
            since=mark,
        )

    async def barrier(self, timeout: float = LONG) -> None:
        """A round trip through the relay: everything it sent us before handling
        this has been recorded when this returns."""
        probe = f"probe-{uuid.uuid4().hex}"
        mark = len(self.frames)
        # Undecodable data: answered at once with invalid_message naming the probe.
        await self.send(self.ephemeral_frame(probe, data=b"\xff"))
        await self.wait_for(
            lambda f: f.get("type") == "error" and f.get("documentId") == probe,
            timeout,
            since=mark,
        )

    # ------------------------------------------------------------------ receiving

    async def wait_for(
        self, predicate: Callable[[Frame], bool], timeout: float = LONG, *, since: int = 0
    ) -> Frame:
        """The first frame from index ``since`` matching ``predicate``."""
        return self.frames[await self.wait_index(predicate, timeout, since=since)]

    async def wait_index(
        self, predicate: Callable[[Frame], bool], timeout: float = LONG, *, since: int = 0
    ) -> int:
        """The index in ``frames`` of the first frame from ``since`` matching."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        checked = since
        while True:
            for i in range(checked, len(self.frames)):
                if predicate(self.frames[i]):
                    return i
            checked = max(checked, len(self.frames))
            if self._reader is None or self._reader.done():  # nothing more will come
                raise AssertionError(
                    f"{self.label}: closed ({self.close_code}) while waiting; got {self.frames}"
                )
            self._changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.label}: no matching frame within {timeout} s; got {self.frames[-20:]}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_closed(self, timeout: float = LONG) -> int | None:
        reader = self._reader
        assert reader is not None
        await asyncio.wait_for(asyncio.shield(reader), timeout)
        return self.close_code

    def received(self, predicate: Callable[[Frame], bool]) -> list[Frame]:
        return [f for f in self.frames if predicate(f)]


# --------------------------------------------------------------------------- proxy


class _Link:
    def __init__(self, dropping: bool) -> None:
        self.dropping = dropping
        self.passed = 0
        self.dropped = 0
        self.writers: list[asyncio.StreamWriter] = []


class BlackholeProxy:
    """A TCP proxy to ``127.0.0.1:upstream_port``.

    :meth:`blackhole` makes every open connection, and every new one, silently
    drop all bytes in both directions (nothing is closed: both ends see a
    connection that simply went quiet). :meth:`restore` lets *new* connections
    through again; the blackholed ones stay dead, as TCP connections across a
    lost path do.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.dropping = False
        self.links: list[_Link] = []
        self.new_link = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> BlackholeProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for link in self.links:
            for writer in link.writers:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        await self._server.wait_closed()

    def blackhole(self) -> None:
        self.dropping = True
        for link in self.links:
            link.dropping = True

    def restore(self) -> None:
        self.dropping = False

    def traffic(self) -> int:
        """Bytes passed so far over every connection."""
        return sum(link.passed for link in self.links)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        link = _Link(self.dropping)
        link.writers.append(writer)
        self.links.append(link)
        self.new_link.set()
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        link.writers.append(up_writer)
        try:
            await asyncio.gather(
                self._pump(link, reader, up_writer), self._pump(link, up_reader, writer)
            )
        finally:
            self._tasks.discard(task)

    @staticmethod
    async def _pump(link: _Link, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = await src.read(65536)
                if not data:
                    break
                if link.dropping:
                    link.dropped += len(data)
                    continue
                link.passed += len(data)
                dst.write(data)
                await dst.drain()
            if not link.dropping:  # a dead path carries no FIN either
                dst.close()


# --------------------------------------------------------------------------- security


def mentions(frame: Any, needle: str) -> bool:
    """True if ``needle`` occurs in any string, bytes or nested CBOR inside ``frame``."""
    if isinstance(frame, str):
        return needle in frame
    if isinstance(frame, bytes | bytearray):
        if needle.encode() in frame:
            return True
        try:
            inner = cbor2.loads(frame)
        except Exception:
            return False
        return mentions(inner, needle)
    if isinstance(frame, dict):
        return any(mentions(k, needle) or mentions(v, needle) for k, v in frame.items())
    if isinstance(frame, list | tuple):
        return any(mentions(v, needle) for v in frame)
    return False


def assert_never_about(frames: Iterable[Frame], document_id: str) -> dict[str, int]:
    """No frame mentions ``document_id`` anywhere, except error frames answering
    the peer's own frames about it (``permission_denied`` for its attempts, or
    ``invalid_message`` / ``rate_limited`` echoing the ``documentId`` of a frame
    it sent): those carry nothing but the id the peer itself used. Returns the
    count of those errors by code."""
    answers: dict[str, int] = {}
    for frame in frames:
        if not mentions(frame, document_id):
            continue
        assert frame.get("type") == "error", f"leak about {document_id!r}: {frame}"
        assert frame.get("documentId") == document_id, f"leak about {document_id!r}: {frame}"
        assert set(frame) - {"retryAfter"} == {"type", "error", "message", "documentId"}, frame
        assert not mentions(frame["message"], document_id), f"leak about {document_id!r}: {frame}"
        answers[frame["error"]] = answers.get(frame["error"], 0) + 1
    return answers


async def try_to_break_in(spy: RecordingPeer, document_id: str, victim_peer_id: str) -> int:
    """Every way into a document a peer may not read: join, heartbeat, an injected
    message with a forged ``senderId``, automerge ``request`` and ``sync``. Also
    forged server-only frames about it. Waits until each attempt is answered;
    returns the number of ``permission_denied`` answers expected (5)."""
    mark = len(spy.frames)
    await spy.presence(document_id, "join")
    await spy.presence(document_id, "heartbeat")
    await spy.ephemeral(
        document_id, {"inject": spy.label}, senderId=victim_peer_id, targetId=victim_peer_id
    )
    for kind in ("request", "sync"):
        await spy.send(
            {
                "type": kind,
                "senderId": victim_peer_id,
                "targetId": "server",
                "documentId": document_id,
                "data": bytes.fromhex("42000001000000020102"),
            }
        )
    forged: list[Frame] = [
        {"type": "peer_joined_doc", "documentId": document_id, "peerId": spy.peer_id},
        {"type": "doc_presence_state", "documentId": document_id, "peers": [spy.peer_id]},
        {
            "type": "peer_identity",
            "peerId": victim_peer_id,
            "user": {"id": "alice", "name": "Alice", "isAnonymous": False},
        },
        {
            "type": "peer_identity",
            "peerId": spy.peer_id,
            "user": {"id": "alice", "name": "Alice", "isAnonymous": False},
        },
    ]
    for frame in forged:
        await spy.send(frame)
    await spy.barrier()
    answers = [f for f in spy.frames[mark:] if f.get("type") == "error"]
    codes = [f["error"] for f in answers]
    assert codes[:5] == ["permission_denied"] * 5, codes
    assert codes[5:9] == ["invalid_message"] * 4, codes  # server-only frames refused
    assert codes[9:] == ["invalid_message"], codes  # the barrier's probe
    return 5
