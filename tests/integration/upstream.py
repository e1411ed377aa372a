"""A stand-in for the upstream Ratatoskr server, and peers that gossip like stock automerge-repo.

:class:`UpstreamStandIn` speaks what ``shared/upstream-wire-notes.md`` observed,
as far as the client tests need it:

* ``auth_ok`` without ``features`` (``user`` null for anonymous peers);
* a connection receives a document's ephemeral messages only after its
  ``request`` (answered with ``sync``) or ``sync`` for that document;
* ephemeral messages are stamped with the sender's peer id and relayed to every
  other subscribed connection, after automerge-repo's de-duplication: dropped
  unless ``count`` is above the last one seen for the same ``(senderId,
  sessionId)``. So the copies that stock peers forward, **relabelled** with the
  forwarder's id, are relayed too — the behaviour the client must cope with;
* optionally, the limit on anonymous connections: ``limit`` frames (all types,
  the auth frame included) per fixed window of ``window`` seconds that starts
  at the connection's first frame; beyond it ``rate_limited`` and the frame is
  dropped.

Tests can hold a connection's ``request`` (:attr:`UpstreamStandIn.hold_requests`)
to stage exactly when it subscribes.

:class:`GossipPeer` is a raw connection that behaves like a stock automerge-repo
``Presence`` peer as far as the wire shows: it forwards every ephemeral message
it receives back to the server with the original ``sessionId`` and ``count``,
and sends its own snapshot, updates, heartbeats and re-announces.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import cbor2
from aiohttp import WSMsgType, web

EMPTY_DOC_SYNC = bytes.fromhex("42000001000000020102")


@dataclass
class UpstreamConn:
    """One accepted connection."""

    ws: web.WebSocketResponse
    peer_id: str = ""
    anonymous: bool = True
    subscribed: set[str] = field(default_factory=set)
    #: frames received, decoded
    frames: list[dict[str, Any]] = field(default_factory=list)
    window_end: float = float("-inf")
    window_used: int = 0
    refused: int = 0
    #: frames to write, in order (see UpstreamStandIn._send)
    outbox: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)


class UpstreamStandIn:
    """``async with UpstreamStandIn() as server``; ``server.url`` for clients."""

    def __init__(
        self, *, limit: int | None = None, window: float = 60.0, answer: str = "sync"
    ) -> None:
        self.server_peer_id = f"server-{uuid.uuid4()}"
        #: how a `request` is answered: "sync" (upstream, for a document it has) or
        #: "doc-unavailable" (it stores nothing: what a stock Repo's find() needs
        #: here to resolve, since this stand-in cannot hand it the document)
        self.answer = answer
        self.limit = limit
        self.window = window
        self.conns: list[UpstreamConn] = []
        #: (senderId, sessionId) -> last count relayed (automerge-repo's de-duplication)
        self._last: dict[tuple[str, str], int] = {}
        #: peer ids whose `request` frames wait until released
        self.hold_requests: set[str] = set()
        self._held: list[tuple[UpstreamConn, dict[str, Any]]] = []
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Event()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> UpstreamStandIn:
        app = web.Application()
        app.router.add_get("/sync", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        for conn in self.conns:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.ws.close(), 1.0)
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ inspection

    def conn(self, peer_id: str) -> UpstreamConn:
        return next(c for c in self.conns if c.peer_id == peer_id)

    async def until(self, cond: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``cond()`` holds, re-checked after every frame received."""
        async with asyncio.timeout(timeout):
            while not cond():
                self._changed.clear()
                await self._changed.wait()

    def release_requests(self, peer_id: str) -> None:
        """Process the held ``request`` frames of ``peer_id`` now (in order)."""
        self.hold_requests.discard(peer_id)
        held = [(c, f) for c, f in self._held if c.peer_id == peer_id]
        self._held = [(c, f) for c, f in self._held if c.peer_id != peer_id]
        for conn, frame in held:
            self._subscribe(conn, frame)

    # ------------------------------------------------------------------ protocol

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = UpstreamConn(ws)
        self.conns.append(conn)
        writer = asyncio.create_task(self._write(conn))
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.BINARY:
                    continue
                frame = cbor2.loads(msg.data)
                conn.frames.append(frame)
                self._answer(conn, frame)
                self._changed.set()
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        return ws

    async def _write(self, conn: UpstreamConn) -> None:
        while True:
            data = await conn.outbox.get()
            with contextlib.suppress(ConnectionResetError, RuntimeError):
                await conn.ws.send_bytes(data)

    def _counted(self, conn: UpstreamConn) -> bool:
        """Upstream's limit on anonymous connections; False: refuse the frame."""
        if self.limit is None or not conn.anonymous:
            return True
        now = asyncio.get_running_loop().time()
        if now >= conn.window_end:
            conn.window_end = now + self.window
            conn.window_used = 0
        conn.window_used += 1
        return conn.window_used <= self.limit

    def _answer(self, conn: UpstreamConn, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "auth":
            conn.anonymous = "token" not in frame
            self._counted(conn)
            conn.peer_id = f"client-{uuid.uuid4()}"
            user = None if conn.anonymous else {"id": f"user-{frame['token']}"}
            self._send(
                conn,
                {
                    "type": "auth_ok",
                    "peerId": self.server_peer_id,
                    "clientPeerId": conn.peer_id,
                    "user": user,
                },
            )
            return
        if not self._counted(conn):
            conn.refused += 1
            self._send(
                conn,
                {
                    "type": "error",
                    "error": "rate_limited",
                    "message": "Too many messages",
                    "retryAfter": 60,
                },
            )
            return
        if kind == "request":
            if conn.peer_id in self.hold_requests:
                self._held.append((conn, frame))
                return
            self._subscribe(conn, frame)
        elif kind == "sync":
            conn.subscribed.add(frame["documentId"])
        elif kind == "ephemeral":
            self._relay(conn, frame)

    def _subscribe(self, conn: UpstreamConn, frame: dict[str, Any]) -> None:
        doc = frame["documentId"]
        conn.subscribed.add(doc)
        reply = {
            "type": self.answer,
            "senderId": self.server_peer_id,
            "targetId": conn.peer_id,
            "documentId": doc,
        }
        if self.answer == "sync":
            reply["data"] = EMPTY_DOC_SYNC
        self._send(conn, reply)

    def _relay(self, conn: UpstreamConn, frame: dict[str, Any]) -> None:
        # Upstream stamps the sender's real id, so a forwarded copy is labelled as
        # the forwarder's, and its de-duplication (per sender and session) lets
        # the copy through.
        key = (conn.peer_id, frame["sessionId"])
        if frame["count"] <= self._last.get(key, -1):
            return
        self._last[key] = frame["count"]
        doc = frame["documentId"]
        for other in self.conns:
            if other is not conn and doc in other.subscribed and not other.ws.closed:
                self._send(other, {**frame, "senderId": conn.peer_id, "targetId": other.peer_id})

    def _send(self, conn: UpstreamConn, frame: dict[str, Any]) -> None:
        # Queued, not awaited: like upstream (Node's buffered socket writes), a
        # message is on its way to every recipient before anything else is
        # handled, so a peer's forwarded copy always reaches a third connection
        # after the original did.
        if not conn.ws.closed:
            conn.outbox.put_nowait(cbor2.dumps(frame))


# --------------------------------------------------------------------------- stock peers

_sessions = itertools.count(1)


class GossipPeer:
    """A stock automerge-repo ``Presence`` peer, as the wire sees it.

    ``forward=True`` (what stock peers do): every ephemeral message received is
    sent back to the server unchanged (same ``sessionId`` and ``count``); set
    :attr:`hold` to keep them until :meth:`release` (to stage a race). Its
    own messages carry its ``sessionId`` and a growing ``count``; a message
    from a peer it has not heard of makes it re-announce its snapshot
    ``reannounce`` seconds later (automerge-repo: 0.5 s).
    """

    def __init__(self, url: str, name: str, *, forward: bool = True, reannounce: float = 0.5):
        self.url = url
        self.name = name
        self.forward = forward
        self.reannounce = reannounce
        self.state: dict[str, Any] = {"name": name}
        self.session_id = f"js-session-{next(_sessions)}-{uuid.uuid4().hex[:8]}"
        self.count = 0
        self.peer_id = ""
        self.known: set[str] = set()
        self.sent: list[dict[str, Any]] = []
        #: hold received messages instead of forwarding them (until release())
        self.hold = False
        #: messages held, decoded, in order
        self.held: list[dict[str, Any]] = []
        self._held_raw: list[bytes] = []
        self._changed = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._documents: set[str] = set()

    async def start(self, document_id: str) -> None:
        """Connect, subscribe to ``document_id`` and send the opening snapshot."""
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(self.url.replace("http", "ws") + "/sync")
        await self._ws.send_bytes(cbor2.dumps({"type": "auth", "anonymous": True}))
        ok = cbor2.loads((await self._ws.receive()).data)
        assert ok["type"] == "auth_ok", ok
        self.peer_id = ok["clientPeerId"]
        await self._ws.send_bytes(
            cbor2.dumps(
                {
                    "type": "request",
                    "senderId": self.peer_id,
                    "targetId": ok["peerId"],
                    "documentId": document_id,
                    "data": EMPTY_DOC_SYNC,
                }
            )
        )
        while cbor2.loads((await self._ws.receive()).data).get("type") not in (
            "sync",
            "doc-unavailable",
        ):
            pass
        self._documents.add(document_id)
        self._tasks.append(asyncio.create_task(self._read(), name=f"gossip-{self.name}"))
        await self.snapshot(document_id)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()

    # ------------------------------------------------------------------ sending

    async def _send_presence(self, document_id: str, message: dict[str, Any]) -> None:
        assert self._ws is not None
        self.count += 1
        frame = {
            "type": "ephemeral",
            "senderId": self.peer_id,
            "targetId": "server",
            "documentId": document_id,
            "count": self.count,
            "sessionId": self.session_id,
            "data": cbor2.dumps({"__presence": message}),
        }
        self.sent.append(frame)
        await self._ws.send_bytes(cbor2.dumps(frame))

    async def snapshot(self, document_id: str) -> None:
        await self._send_presence(document_id, {"type": "snapshot", "state": dict(self.state)})

    async def update(self, document_id: str, channel: str, value: Any) -> None:
        self.state[channel] = value
        await self._send_presence(
            document_id, {"type": "update", "channel": channel, "value": value}
        )

    def animate(self, document_id: str, channel: str, every: float) -> None:
        """Update ``channel`` with a growing counter every ``every`` seconds,
        tagged with this peer's name (``"js-alice:12"``), so that a value shown
        under the wrong peer is seen for what it is."""

        async def run() -> None:
            for n in itertools.count():
                await self.update(document_id, channel, f"{self.name}:{n}")
                await asyncio.sleep(every)

        self._tasks.append(asyncio.create_task(run(), name=f"animate-{self.name}"))

    # ------------------------------------------------------------------ receiving

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type is not WSMsgType.BINARY:
                continue
            frame = cbor2.loads(msg.data)
            self._changed.set()
            if frame.get("type") != "ephemeral":
                continue
            if self.hold:
                self.held.append(frame)
                self._held_raw.append(msg.data)
            elif self.forward:
                # A stock peer gossips to all its peers but the sender: here, the server.
                await self._ws.send_bytes(msg.data)
            sender = frame["senderId"]
            if sender not in self.known:
                self.known.add(sender)
                self._tasks.append(asyncio.create_task(self._reannounce(frame["documentId"])))

    async def until(self, cond: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``cond()`` holds, re-checked after every frame this peer receives."""
        async with asyncio.timeout(timeout):
            while not cond():
                self._changed.clear()
                await self._changed.wait()

    async def release(self) -> None:
        """Forward what was held, in order, and forward at once from now on."""
        assert self._ws is not None
        self.hold = False
        held, self._held_raw, self.held = self._held_raw, [], []
        for data in held:
            await self._ws.send_bytes(data)

    async def _reannounce(self, document_id: str) -> None:
        await asyncio.sleep(self.reannounce)
        await self.snapshot(document_id)
