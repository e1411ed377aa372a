"""The raw floor's clients on our relay: the relay's cost apart from the SDK's.

``benchmarks/run.py`` compares our stack (SDK clients on our relay) with the raw
floor (bare aiohttp clients on the raw relay). These phases put the raw floor's
clients on *our* relay, so the two costs are visible separately:

* relay ratio = raw clients on our relay / raw clients on the raw relay;
* SDK ratio = SDK clients on our relay / raw clients on our relay.

The raw clients speak just enough of the protocol to be relayed (auth, a join,
an ephemeral frame with a growing count) and read frames the way the raw
floor's clients do. Imported by run.py; not run on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp

from ratatoskr_client.protocol import (
    AuthFrame,
    EphemeralFrame,
    PresenceMessage,
    encode,
    encode_payload,
)

__all__ = ["RawOnOursFanout", "RawOnOursPair", "cpu_seconds"]

_PAYLOAD = encode_payload({"seq": 0, "cursor": [3, 4]})


def cpu_seconds() -> float:
    """CPU time of this process so far (user + system)."""
    return time.process_time()


def _frame(doc: str, count: int, session_id: str) -> bytes:
    return encode(
        EphemeralFrame("peer-0123456789abcdef", "relay", doc, count, session_id, _PAYLOAD)
    )


async def _join(ws: aiohttp.ClientWebSocketResponse, doc: str, session_id: str) -> None:
    """Authenticate anonymously and join ``doc``; wait for the relay's answer."""
    await ws.send_bytes(encode(AuthFrame(anonymous=True)))
    await ws.receive()  # auth_ok
    join = encode_payload(PresenceMessage("join", doc).to_payload())
    await ws.send_bytes(encode(EphemeralFrame("", "", doc, 1, session_id, join)))


async def _drain(ws: aiohttp.ClientWebSocketResponse, quiet: float = 0.3) -> None:
    """Read and drop frames (identities, joins) until the socket is quiet."""
    with contextlib.suppress(TimeoutError):
        while True:
            await asyncio.wait_for(ws.receive(), quiet)


class RawOnOursPair:
    """A and B, raw clients on our relay, in one document: A sends, B's reader
    timestamps each arrival (as run.RawPair does on the raw relay)."""

    doc = "bench-latency-raw"

    def __init__(self, url: str, now_ns: Any) -> None:
        self.url = url
        self.now_ns = now_ns
        self.waiting: list[asyncio.Future[int]] = []
        self.count = 1  # the join used 1

    async def open(self, session: aiohttp.ClientSession) -> None:
        self.a = await session.ws_connect(self.url)
        self.b = await session.ws_connect(self.url)
        await _join(self.a, self.doc, "raw-a")
        await _join(self.b, self.doc, "raw-b")
        await _drain(self.a)
        await _drain(self.b)
        self.task = asyncio.create_task(self._reader())

    async def _reader(self) -> None:
        async for msg in self.b:
            t = self.now_ns()
            if msg.type is aiohttp.WSMsgType.BINARY and self.waiting:
                fut = self.waiting.pop()
                if not fut.done():
                    fut.set_result(t)

    async def measure(self, n: int) -> list[float]:
        loop = asyncio.get_running_loop()
        samples = []
        for _ in range(n):
            self.count += 1
            frame = _frame(self.doc, self.count, "raw-a")
            fut = loop.create_future()
            self.waiting.append(fut)
            t0 = self.now_ns()
            await self.a.send_bytes(frame)
            t1 = await asyncio.wait_for(fut, 5)
            samples.append((t1 - t0) / 1000)
        return samples

    async def close(self) -> None:
        for ws in (self.a, self.b):
            await ws.close()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class RawOnOursFanout:
    """1 raw sender and ``receivers`` raw receivers in one document on our relay;
    the receivers count frames without decoding them, like run.RawFanout's."""

    doc = "bench-fanout-raw"

    def __init__(self, url: str, receivers: int, burst_type: Any) -> None:
        self.url = url
        self.n_receivers = receivers
        self.burst_type = burst_type
        self.burst = burst_type(0, 0)
        self.sent = 0
        self.count = 1

    async def open(self, session: aiohttp.ClientSession) -> None:
        self.receivers = [await session.ws_connect(self.url) for _ in range(self.n_receivers)]
        self.sender = await session.ws_connect(self.url)
        for i, ws in enumerate(self.receivers):
            await _join(ws, self.doc, f"raw-r{i}")
        await _join(self.sender, self.doc, "raw-s")
        await asyncio.gather(*(_drain(ws) for ws in [self.sender, *self.receivers]))
        self.tasks = [
            asyncio.create_task(self._reader(r, ws)) for r, ws in enumerate(self.receivers)
        ]

    async def _reader(self, r: int, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                burst = self.burst
                burst.got(r, burst.base + burst.counts[r] + 1)

    async def _send(self, seq: int) -> None:
        self.count += 1
        await self.sender.send_bytes(_frame(self.doc, self.count, "raw-s"))

    async def run(self, n: int) -> dict[str, float]:
        self.burst = self.burst_type(n, self.sent)
        self.sent += n
        result: dict[str, float] = await self.burst.run(self._send)
        return result

    async def close(self) -> None:
        for ws in [self.sender, *self.receivers]:
            await ws.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
