"""How the relay writes to a WebSocket: pre-framed bytes, batched per loop iteration.

:class:`SocketOutbox` is the aiohttp layer's implementation of
:class:`~.core.Outbox`. It writes whole, uncompressed binary frames straight to
the connection's transport (instead of awaiting ``send_bytes``), which is what
lets one sender fan out to hundreds of peers without yielding per recipient
and without one slow reader holding up the others: backpressure is handled per
peer (:data:`SLOW_PEER_BYTES`, :data:`STALLED_PEER_BYTES`).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Final

from aiohttp import web

from ..core.counters import RelayCounters

__all__ = ["SLOW_PEER_BYTES", "STALLED_PEER_BYTES", "Batcher", "SocketOutbox"]

log = logging.getLogger("ratatoskr_client.server")

#: Above this many bytes waiting in a socket's send buffer, ephemeral messages to
#: that peer are dropped (they are fire-and-forget; presence frames still go out).
SLOW_PEER_BYTES: Final = 1 << 20
#: Above this many, the peer is disconnected as too slow; it reconnects and resyncs.
STALLED_PEER_BYTES: Final = 8 << 20
#: Seconds a connection the relay closes has to take its last frames (the
#: error saying why, the close frame) before it is aborted.
CLOSE_GRACE: Final = 2.0


def frame_header(length: int, opcode: int = 0x2) -> bytes:
    """RFC 6455 header of an unmasked, final server-to-client frame (binary by default)."""
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, length))
    if length < 0x10000:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


#: A complete ping frame with no payload.
_PING: Final = bytes((0x89, 0))


def close_frame(code: int, reason: str) -> bytes:
    """A complete RFC 6455 close frame (control frames carry at most 125 bytes)."""
    payload = struct.pack("!H", code) + reason.encode("utf-8")[:123]
    return frame_header(len(payload), opcode=0x8) + payload


class Batcher:
    """Coalesces the frames written to one connection within one event-loop
    iteration.

    The first frame for a connection in an iteration is written at once, so a
    lone message (the common case) gains no latency. Frames that follow it in the
    same iteration are held and written together, with one system call, when the
    iteration ends. When many peers connect or join at once, each newcomer makes
    the relay send a frame to everyone; batching turns the K writes per
    connection and iteration into two.
    """

    __slots__ = ("_dirty", "_loop", "_scheduled")

    def __init__(self) -> None:
        self._dirty: list[SocketOutbox] = []
        self._scheduled = False
        #: the relay's loop, found once: asking asyncio for it costs a system
        #: call on Python 3.11 (getpid()), and this runs once per message
        self._loop: asyncio.AbstractEventLoop | None = None

    def hold(self, outbox: SocketOutbox) -> None:
        """``outbox`` holds frames: flush it when this loop iteration ends."""
        self._dirty.append(outbox)
        if not self._scheduled:
            self._scheduled = True
            loop = self._loop
            if loop is None or loop.is_closed():
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every held frame now (also called before shutdown)."""
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for outbox in dirty:
            outbox.flush()


class SocketOutbox:
    """Writes the core's frames for one connection straight to its transport.

    When the core (or the backpressure rules) drops the connection, it is closed
    at the TCP level at once: a close frame is queued behind what was already
    sent and the transport is closed, without waiting for the peer's answer, so
    a hostile or dead peer cannot keep the connection's memory and file
    descriptor alive. ``dropped`` tells the connection's handler to stop.
    """

    __slots__ = (
        "_batcher",
        "_counters",
        "_held",
        "_transport",
        "_ws",
        "dropped",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
        batcher: Batcher,
        counters: RelayCounters,
    ) -> None:
        self._ws = ws
        #: the relay's traffic counts (frames written by type, drops)
        self._counters = counters
        self._transport = transport
        self._batcher = batcher
        #: frames waiting for the end of this loop iteration, in one buffer (not a
        #: list of small bytes objects: a storm holds tens of thousands of frames
        #: at once, which would fragment the heap); None: the next frame goes
        #: out at once
        self._held: bytearray | None = None
        #: the connection was closed by the relay (see :meth:`close`)
        self.dropped = False

    def _writable(self) -> bool:
        # Once aiohttp has begun the close handshake (ws.closed), no data frame
        # may follow its close frame.
        return not self.dropped and not self._ws.closed and not self._transport.is_closing()

    def _queued(self) -> int:
        """Bytes written but not yet sent to the peer, held frames included."""
        held = self._held
        return self._transport.get_write_buffer_size() + (len(held) if held else 0)

    def flush(self) -> None:
        """Write the held frames (at the end of the iteration, or before a close)."""
        held, self._held = self._held, None
        if held and not self._ws.closed and not self._transport.is_closing():
            self._transport.write(held)

    def _write(self, *parts: bytes) -> None:
        held = self._held
        if held is None:
            self._transport.write(b"".join(parts))
            self._held = bytearray()  # hold whatever follows in this iteration
            self._batcher.hold(self)
        else:
            for part in parts:
                held += part

    def send(self, frame: bytes) -> None:
        """Queue a control frame; never dropped, but a peer with more than
        :data:`STALLED_PEER_BYTES` queued after it is disconnected."""
        if not self._writable():
            return
        self._write(frame_header(len(frame)), frame)
        self._counters.frame_out(_frame_type(frame))
        if self._queued() > STALLED_PEER_BYTES:
            log.warning(
                "disconnecting a peer that stopped reading (%d bytes queued)", self._queued()
            )
            self.dropped = True
            self._held = None
            self._counters.slow_disconnects += 1
            # abort(), not close(): close() would wait to flush what the peer
            # does not read. The socket and its buffers are released now.
            self._transport.abort()

    def send_ephemeral(self, prefix: bytes, suffix: bytes) -> None:
        """Queue the frame ``prefix + suffix``, unless more than
        :data:`SLOW_PEER_BYTES` are queued already (then it is dropped)."""
        if not self._writable():
            return
        if self._queued() > SLOW_PEER_BYTES:
            self._counters.ephemeral_dropped += 1
            return
        self._write(frame_header(len(prefix) + len(suffix)), prefix, suffix)
        self._counters.ephemeral_out += 1

    def close(self, code: int, reason: str) -> None:
        """Send what is pending and a close frame, then close the TCP connection
        (once the kernel has taken those bytes), without waiting for the peer.
        If the kernel has not taken them :data:`CLOSE_GRACE` seconds later, the
        peer is not reading (or is gone): the connection is aborted, so that
        flushing to it cannot keep the socket open for as long as it likes."""
        if self.dropped:
            return
        self.flush()
        self.dropped = True
        transport = self._transport
        if not self._ws.closed and not transport.is_closing():
            transport.write(close_frame(code, reason))
        transport.close()
        if transport.get_write_buffer_size():
            asyncio.get_running_loop().call_later(CLOSE_GRACE, transport.abort)

    def ping(self) -> None:
        """Send a WebSocket ping (empty payload)."""
        if self._writable():
            self._write(_PING)

    def pong(self, payload: bytes) -> None:
        """Answer the peer's ping (``payload`` is at most 125 bytes: the
        WebSocket reader refuses longer control frames)."""
        if self._writable():
            self._write(frame_header(len(payload), opcode=0xA), payload)


_TYPE_KEY: Final = b"dtype"


def _frame_type(frame: bytes) -> str:
    """The ``type`` of a frame the relay encoded (its first key, by construction),
    for counting; ``other`` if it is not where it should be."""
    # A map head of one byte, "type", then a text head of one byte (< 24 chars).
    if frame[1:6] == _TYPE_KEY and 0x60 <= frame[6] < 0x78:
        return frame[7 : 7 + (frame[6] & 0x1F)].decode("ascii", "replace")
    return "other"
