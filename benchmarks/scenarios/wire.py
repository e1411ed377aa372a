"""Raw-protocol clients: frames for the floor relay, and just enough of the
protocol for bare WebSockets and sockets to be relayed by ours.

The floor's clients on *our* relay make the relay's cost and the SDK's visible
apart: relay ratio = raw clients on ours / raw clients on the raw relay; SDK
ratio = SDK clients on ours / raw clients on ours. They authenticate, join,
and send ephemeral frames with a growing count (our relay drops replays).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
import time
from typing import Any

import aiohttp
import cbor2

from ratatoskr_client.protocol import (
    AuthFrame,
    EphemeralFrame,
    PresenceMessage,
    encode,
    encode_payload,
)

_RAW_PAYLOAD = encode_payload({"seq": 0, "cursor": [3, 4]})


def sample_frame(payload: Any) -> bytes:
    """A frame shaped and sized like what our relay forwards (for the raw floor)."""
    return encode(
        EphemeralFrame(
            "peer-0123456789abcdef",
            "peer-fedcba9876543210",
            "bench-doc",
            123456,
            "0123456789abcdef",
            encode_payload(payload),
        )
    )


def raw_frame(doc: str, count: int, session_id: str) -> bytes:
    """An ephemeral frame as a raw client on our relay sends it."""
    return encode(
        EphemeralFrame("peer-0123456789abcdef", "relay", doc, count, session_id, _RAW_PAYLOAD)
    )


async def raw_join(ws: aiohttp.ClientWebSocketResponse, doc: str, session_id: str) -> None:
    """Authenticate anonymously and join ``doc`` (the join's count is 1)."""
    await ws.send_bytes(encode(AuthFrame(anonymous=True)))
    await ws.receive()  # auth_ok
    join = encode_payload(PresenceMessage("join", doc).to_payload())
    await ws.send_bytes(encode(EphemeralFrame("", "", doc, 1, session_id, join)))


async def drain(ws: aiohttp.ClientWebSocketResponse, quiet: float = 0.3) -> None:
    """Read and drop frames (identities, joins) until the socket is quiet."""
    with contextlib.suppress(TimeoutError):
        while True:
            await asyncio.wait_for(ws.receive(), quiet)


class BarePeer(asyncio.Protocol):
    """A WebSocket peer on a bare socket: upgrade, auth and join ``doc`` in one
    write, then it only counts the ephemeral frames that arrive (by finding
    their ``"ephemeral"`` type in the byte stream), parsing nothing. It costs
    the load generator almost nothing next to the relays."""

    _MARK = b"iephemeral"  # the text head of a 9-character string, and the type

    def __init__(self, port: int, doc: str) -> None:
        self.port = port
        self.doc = doc
        self.upgraded = asyncio.get_running_loop().create_future()
        self.buffer = b""
        self.tail = b""
        self.received = 0
        self.count = 0
        self.session_id = f"bench-{os.urandom(6).hex()}"
        self.changed = asyncio.Event()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET /sync HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        if not self.upgraded.done():
            self.buffer += data
            if b"\r\n\r\n" not in self.buffer:
                return
            data = self.buffer.split(b"\r\n\r\n", 1)[1]
            self.buffer = b""
            presence = {"type": "presence", "status": "join", "documentId": self.doc}
            self.write(cbor2.dumps({"type": "auth", "anonymous": True}))
            self.ephemeral(self.doc, presence)
            self.upgraded.set_result(None)
        # A mark split across two reads is counted once: count in tail + data,
        # minus what was already counted in the tail.
        joined = self.tail + data
        found = joined.count(self._MARK) - self.tail.count(self._MARK)
        self.tail = joined[-(len(self._MARK) - 1) :]
        if found:
            self.received += found
            self.changed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed during the upgrade"))
        self.changed.set()

    def write(self, payload: bytes) -> None:
        """Send one binary frame (masked with a zero key, as a client must mask)."""
        assert self.transport is not None
        n = len(payload)
        head = bytes((0x82, 0x80 | n)) if n < 126 else struct.pack("!BBH", 0x82, 0xFE, n)
        self.transport.write(head + b"\x00\x00\x00\x00" + payload)

    def ephemeral(self, doc: str, payload: Any) -> None:
        self.count += 1
        frame = {
            "type": "ephemeral",
            "documentId": doc,
            "count": self.count,
            "sessionId": self.session_id,
            "data": cbor2.dumps(payload),
        }
        self.write(cbor2.dumps(frame))

    async def wait_for(self, received: int, timeout: float = 60) -> None:
        """Until at least ``received`` ephemeral frames have arrived.

        Raises:
            TimeoutError: not within ``timeout``, or the connection was lost.
        """
        deadline = time.monotonic() + timeout
        while self.received < received:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.transport is None or self.transport.is_closing():
                raise TimeoutError(f"a bare peer received {self.received} of {received} frames")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def bare_peer(port: int, doc: str) -> BarePeer:
    """A connected, authenticated :class:`BarePeer` present in ``doc``."""
    loop = asyncio.get_running_loop()
    _, peer = await loop.create_connection(lambda: BarePeer(port, doc), "127.0.0.1", port)
    await peer.upgraded
    return peer
