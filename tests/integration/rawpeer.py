"""Raw WebSocket peers for the relay's integration tests.

A :class:`RawPeer` is a bare aiohttp WebSocket that sends and receives plain
CBOR maps with cbor2: no SDK code is involved, so the tests see the wire exactly
as any third-party client would.

Waiting is always for a specific frame, with a timeout (:meth:`RawPeer.recv_until`).
To prove that a peer did *not* receive something, use :func:`settle`: it makes
the acting peers and then the observers each complete a round trip with the
relay; the relay handles a connection's frames in order and writes to each
socket in order, so anything it would have sent to an observer because of an
earlier action arrives before the observer's round-trip reply. After that,
assert over :attr:`RawPeer.frames`, which holds every frame ever received.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import cbor2

__all__ = ["DEFAULT_TIMEOUT", "RawPeer", "RawPeers", "is_frame", "settle"]

Frame = dict[str, Any]
Predicate = Callable[[Frame], bool]

#: Generous: the machine is small and shared. Tests only wait this long on failure.
DEFAULT_TIMEOUT = 5.0

_labels = itertools.count(1)


def is_frame(frame_type: str, **fields: Any) -> Predicate:
    """A predicate: the frame has this ``type`` and these field values."""

    def predicate(frame: Frame) -> bool:
        return frame.get("type") == frame_type and all(
            frame.get(k, object()) == v for k, v in fields.items()
        )

    predicate.__name__ = f"{frame_type}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"
    return predicate


def decode_strict(data: bytes) -> Frame:
    """One CBOR map and nothing after it (what the relay must send)."""
    stream = io.BytesIO(data)
    value = cbor2.CBORDecoder(stream, read_size=1).decode()
    assert stream.tell() == len(data), f"trailing bytes after a frame from the relay: {data!r}"
    assert type(value) is dict, f"the relay sent a non-map frame: {value!r}"
    return value


class RawPeer:
    """One WebSocket connection to the relay."""

    def __init__(
        self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse, label: str
    ) -> None:
        self.session = session
        self.ws = ws
        self.label = label
        #: every frame received, in order (including those returned by recv_until)
        self.frames: list[Frame] = []
        self._unread: list[Frame] = []
        self.closed = False
        self.close_code: int | None = None
        self.peer_id: str | None = None
        self.user: dict[str, Any] | None = None
        self.session_id = f"session-{uuid.uuid4().hex}"
        self.count = 0

    def __repr__(self) -> str:
        return f"<RawPeer {self.label} {self.peer_id}>"

    # ------------------------------------------------------------------ sending

    async def send(self, frame: Frame | bytes | str) -> None:
        """Send a map (CBOR-encoded), raw bytes (a binary frame) or str (a text frame)."""
        if isinstance(frame, str):
            await self.ws.send_str(frame)
        elif isinstance(frame, bytes | bytearray):
            await self.ws.send_bytes(bytes(frame))
        else:
            await self.ws.send_bytes(cbor2.dumps(frame))

    def next_count(self) -> int:
        self.count += 1
        return self.count

    def ephemeral_frame(
        self, document_id: str, payload: Any = None, *, data: Any = None, **fields: Any
    ) -> Frame:
        """An ephemeral frame as a stock peer would send it (fields override)."""
        frame: Frame = {
            "type": "ephemeral",
            "senderId": self.peer_id or "",
            "targetId": "",
            "documentId": document_id,
            "count": self.next_count(),
            "sessionId": self.session_id,
            "data": cbor2.dumps(payload) if data is None else data,
        }
        frame.update(fields)
        return frame

    async def ephemeral(
        self, document_id: str, payload: Any = None, *, data: Any = None, **fields: Any
    ) -> Frame:
        """Send an ephemeral message; returns the frame sent."""
        frame = self.ephemeral_frame(document_id, payload, data=data, **fields)
        await self.send(frame)
        return frame

    async def presence(self, document_id: str, status: str) -> None:
        payload = {"type": "presence", "status": status, "documentId": document_id}
        await self.ephemeral(document_id, payload)

    async def join(self, document_id: str, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        """Join and wait for the document's ``doc_presence_state``."""
        await self.presence(document_id, "join")
        return await self.recv_until(
            is_frame("doc_presence_state", documentId=document_id), timeout
        )

    async def heartbeat(self, document_id: str) -> None:
        await self.presence(document_id, "heartbeat")

    async def leave(self, document_id: str) -> None:
        await self.presence(document_id, "leave")

    async def auth(self, token: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        """Authenticate (anonymously without a token) and wait for ``auth_ok``."""
        frame: Frame = {"type": "auth"}
        if token is None:
            frame["anonymous"] = True
        else:
            frame["token"] = token
        await self.send(frame)
        ok = await self.recv_until(lambda f: f.get("type") in ("auth_ok", "auth_error"), timeout)
        assert ok["type"] == "auth_ok", f"{self.label}: auth refused: {ok}"
        self.peer_id = ok["clientPeerId"]
        self.user = ok["user"]
        return ok

    async def barrier(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """A round trip through the relay: join a fresh sidecar channel, wait for
        its presence state, leave it again. Everything the relay sent this peer
        before handling the join has arrived when this returns."""
        channel = f"eph:barrier-{uuid.uuid4().hex}"
        await self.join(channel, timeout)
        await self.leave(channel)

    # ------------------------------------------------------------------ receiving

    async def _read(self, timeout: float) -> bool:
        """Read one message into the buffers. False once the socket is closed."""
        if self.closed:
            return False
        msg = await self.ws.receive(timeout=timeout)
        if msg.type is aiohttp.WSMsgType.BINARY:
            frame = decode_strict(msg.data)
            self.frames.append(frame)
            self._unread.append(frame)
            return True
        if msg.type is aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"{self.label}: the relay sent a text frame: {msg.data!r}")
        # CLOSE, CLOSING, CLOSED, ERROR
        self.closed = True
        if msg.type is aiohttp.WSMsgType.CLOSE:
            # The code the relay sent. (ws.close_code can read 1006 instead when the
            # relay has already dropped the TCP connection before our close reply.)
            self.close_code = int(msg.data)
        else:
            self.close_code = self.ws.close_code
        return False

    async def recv_until(self, predicate: Predicate, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        """The first not-yet-returned frame matching ``predicate``, waiting up to
        ``timeout`` seconds. Frames that do not match stay available."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for i, frame in enumerate(self._unread):
                if predicate(frame):
                    del self._unread[i]
                    return frame
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                alive = await self._read(remaining)
            except TimeoutError:
                raise AssertionError(
                    f"{self.label}: no frame matching {getattr(predicate, '__name__', predicate)}"
                    f" within {timeout} s; received {self.frames}"
                ) from None
            if not alive:
                raise AssertionError(
                    f"{self.label}: closed ({self.close_code}) before a frame matching "
                    f"{getattr(predicate, '__name__', predicate)}; received {self.frames}"
                )

    async def recv_type(
        self, frame_type: str, timeout: float = DEFAULT_TIMEOUT, **fields: Any
    ) -> Frame:
        """recv_until() for a frame of this type with these field values."""
        return await self.recv_until(is_frame(frame_type, **fields), timeout)

    async def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> int | None:
        """Read (and record) frames until the relay closes the socket; the close code."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.closed:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                await self._read(remaining)
            except TimeoutError:
                raise AssertionError(
                    f"{self.label}: still open after {timeout} s; received {self.frames}"
                ) from None
        return self.close_code

    def received(self, predicate: Predicate) -> list[Frame]:
        """Every frame received so far that matches."""
        return [f for f in self.frames if predicate(f)]

    def errors(self) -> list[Frame]:
        return self.received(lambda f: f.get("type") in ("error", "auth_error"))

    # ------------------------------------------------------------------ closing

    async def close(self) -> None:
        """Close the WebSocket cleanly (close handshake), then the HTTP session."""
        try:
            if not self.ws.closed:
                await self.ws.close()
        finally:
            await self.session.close()

    async def abort(self) -> None:
        """Drop the TCP connection without a close handshake."""
        await self.session.close()


async def settle(*peers: RawPeer, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Round trips for ``peers`` in the order given: actors first, observers last."""
    for peer in peers:
        await peer.barrier(timeout)


class RawPeers:
    """Opens raw peers against one relay and closes them all at the end."""

    def __init__(self, ws_url: str) -> None:
        self.ws_url = ws_url
        self.peers: list[RawPeer] = []

    async def connect(self, label: str | None = None) -> RawPeer:
        """A connected, unauthenticated peer (each with its own HTTP session)."""
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(self.ws_url, autoping=True, max_msg_size=0)
        except BaseException:
            await session.close()
            raise
        peer = RawPeer(session, ws, label or f"peer{next(_labels)}")
        self.peers.append(peer)
        return peer

    async def __call__(self, token: str | None = None, *, label: str | None = None) -> RawPeer:
        """A connected peer, authenticated with ``token`` (anonymous without one)."""
        peer = await self.connect(label)
        await peer.auth(token)
        return peer

    async def close_all(self) -> None:
        while self.peers:
            await self.peers.pop().close()

    async def __aenter__(self) -> RawPeers:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close_all()
