"""One-way A→B latency, sequential messages after a warm-up, and presence latency.

Raw and SDK measurements alternate in rounds over connections kept open, so a
burst of load from elsewhere on the machine hits both sides alike.

Keys: ``{raw,raw_on_ours,sdk}_{p50,p99}_us``, ``{raw,sdk}_mean_us``;
``presence_{p50,p99}_us``, ``presence_{enter,leave}_p50_us``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import statistics
from collections.abc import Callable
from typing import Any

import aiohttp

from benchmarks.harness import (
    Relay,
    close_all,
    gather_limited,
    new_session,
    now_ns,
    pct,
    sdk_client,
)
from benchmarks.scenarios.wire import drain, raw_frame, raw_join, sample_frame
from ratatoskr_client import RatatoskrClient

#: seconds one message may take to arrive before the phase fails
ARRIVAL_TIMEOUT = 5.0


class RawPair:
    """A and B on the raw relay; B's reader task timestamps each arrival."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.frame = sample_frame({"seq": 0, "cursor": [3, 4]})
        self.waiting: list[asyncio.Future[int]] = []
        self.session: aiohttp.ClientSession | None = None
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self.session = new_session()
        self.a = await self.session.ws_connect(self.relay.url)
        self.sockets.append(self.a)
        self.b = await self.session.ws_connect(self.relay.url)
        self.sockets.append(self.b)
        await self._prepare()
        self.task = asyncio.create_task(self._reader())

    async def _prepare(self) -> None:
        """What the relay needs before A's frames reach B (the raw relay: nothing)."""

    def _next_frame(self) -> bytes:
        """The frame A sends next (the raw relay forwards the same one each time)."""
        return self.frame

    async def _reader(self) -> None:
        async for msg in self.b:
            t = now_ns()
            if msg.type is aiohttp.WSMsgType.BINARY and self.waiting:
                fut = self.waiting.pop()
                if not fut.done():
                    fut.set_result(t)

    async def measure(self, n: int) -> list[float]:
        loop = asyncio.get_running_loop()
        samples = []
        for _ in range(n):
            frame = self._next_frame()
            fut = loop.create_future()
            self.waiting.append(fut)
            t0 = now_ns()
            await self.a.send_bytes(frame)
            t1 = await asyncio.wait_for(fut, ARRIVAL_TIMEOUT)
            samples.append((t1 - t0) / 1000)
        return samples

    async def close(self) -> None:
        """Close whatever :meth:`open` got to."""
        for ws in self.sockets:
            await ws.close()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.session is not None:
            await self.session.close()


class RawOnOursPair(RawPair):
    """:class:`RawPair` on our relay: A and B joined in one document."""

    doc = "bench-latency-raw"

    def __init__(self, relay: Relay) -> None:
        super().__init__(relay)
        self.count = 1  # the join used 1

    async def _prepare(self) -> None:
        await raw_join(self.a, self.doc, "raw-a")
        await raw_join(self.b, self.doc, "raw-b")
        await asyncio.gather(drain(self.a), drain(self.b))

    def _next_frame(self) -> bytes:
        self.count += 1
        return raw_frame(self.doc, self.count, "raw-a")


class SdkPair:
    """A and B on our relay, both in one document: ``send_ephemeral`` on A,
    timestamp in B's ``ephemeral-message`` callback. Given ``relay_b`` (the
    cluster's placements), B is on that relay (which may be the same)."""

    def __init__(
        self, relay: Relay, relay_b: Relay | None = None, doc: str = "bench-latency"
    ) -> None:
        self.relay = relay
        self.split = relay_b is not None
        self.relay_b = relay_b or relay
        self.doc = doc
        self.waiting: list[asyncio.Future[int]] = []
        self.seq = 0
        self.session: aiohttp.ClientSession | None = None
        self.clients: list[RatatoskrClient] = []

    async def open(self) -> None:
        self.session = new_session()
        self.a = sdk_client(self.relay.url, self.session, rate_limit=None)
        self.b = sdk_client(self.relay_b.url, self.session, rate_limit=None)
        self.clients = [self.a, self.b]
        self.b.on("ephemeral-message", self._on_message)
        for client in (self.a, self.b):
            await client.connect()
            await client.enter_document(self.doc)
        if self.split:  # each must see the other, across relays too
            for client in (self.a, self.b):
                await client.wait_for_presence(self.doc, lambda ps: len(ps) == 2, timeout=30)

    def _on_message(self, document_id: str, sender: Any, payload: Any) -> None:
        t = now_ns()
        if self.waiting:
            fut = self.waiting.pop()
            if not fut.done():
                fut.set_result(t)

    async def measure(self, n: int) -> list[float]:
        loop = asyncio.get_running_loop()
        samples = []
        for _ in range(n):
            self.seq += 1
            fut = loop.create_future()
            self.waiting.append(fut)
            t0 = now_ns()
            await self.a.send_ephemeral(self.doc, {"seq": self.seq, "cursor": [3, 4]})
            t1 = await asyncio.wait_for(fut, ARRIVAL_TIMEOUT)
            samples.append((t1 - t0) / 1000)
        return samples

    async def close(self) -> None:
        await close_all(self.clients)
        if self.session is not None:
            await self.session.close()


async def latency(
    raw_relay: Relay, our_relay: Relay, n: int, warmup: int, rounds: int
) -> tuple[list[float], list[float], list[float]]:
    """Samples of the raw floor, of raw clients on our relay, and of the SDK."""
    raw, alone, sdk = RawPair(raw_relay), RawOnOursPair(our_relay), SdkPair(our_relay)
    raw_samples: list[float] = []
    alone_samples: list[float] = []
    sdk_samples: list[float] = []
    try:
        await raw.open()
        await alone.open()
        await sdk.open()
        await raw.measure(warmup)
        await alone.measure(warmup)
        await sdk.measure(warmup)
        gc.collect()
        for _ in range(rounds):
            raw_samples += await raw.measure(n // rounds)
            alone_samples += await alone.measure(n // rounds)
            sdk_samples += await sdk.measure(n // rounds)
    finally:
        await raw.close()
        await alone.close()
        await sdk.close()
    return raw_samples, alone_samples, sdk_samples


async def measure_latency(
    results: dict[str, float], raw: Relay, ours: Relay, n: int, warmup: int, rounds: int
) -> None:
    """The 1:1 latency phase: its keys into ``results``."""
    raw_samples, alone_samples, sdk_samples = await latency(raw, ours, n, warmup, rounds)
    for side, samples in (
        ("raw", raw_samples),
        ("raw_on_ours", alone_samples),
        ("sdk", sdk_samples),
    ):
        results[f"{side}_p50_us"] = pct(samples, 50)
        results[f"{side}_p99_us"] = pct(samples, 99)
    results["raw_mean_us"] = statistics.fmean(raw_samples)
    results["sdk_mean_us"] = statistics.fmean(sdk_samples)


async def presence_latency(relay: Relay, n: int) -> tuple[list[float], list[float]]:
    """A enters then leaves document i (a fresh one each time: the relay bounds
    joins/leaves per document); B, present in all of them, sees it."""
    loop = asyncio.get_running_loop()
    docs = [f"bench-presence-{i}" for i in range(n)]
    expect: dict[str, Callable[[tuple[Any, ...]], bool]] = {}
    futs: dict[str, asyncio.Future[int]] = {}
    enters: list[float] = []
    leaves: list[float] = []
    async with new_session() as session:
        a = sdk_client(relay.url, session, rate_limit=None)
        b = sdk_client(relay.url, session, rate_limit=None)

        def on_presence(document_id: str, peers: tuple[Any, ...]) -> None:
            t = now_ns()
            check = expect.get(document_id)
            if check is not None and check(peers):
                del expect[document_id]
                futs.pop(document_id).set_result(t)

        b.on("presence-changed", on_presence)
        try:
            await a.connect()
            await b.connect()
            await gather_limited([b.enter_document(d, timeout=30) for d in docs], 50)
            a_id = a.me.peer_id
            for doc in docs:
                for entering, out in ((True, enters), (False, leaves)):
                    fut = futs[doc] = loop.create_future()
                    expect[doc] = (
                        (lambda ps: any(p.peer_id == a_id for p in ps))
                        if entering
                        else (lambda ps: all(p.peer_id != a_id for p in ps))
                    )
                    t0 = now_ns()
                    if entering:
                        await a.enter_document(doc)
                    else:
                        await a.leave_document(doc)
                    t1 = await asyncio.wait_for(fut, ARRIVAL_TIMEOUT)
                    out.append((t1 - t0) / 1000)
        finally:
            await close_all([a, b])
    return enters, leaves


async def measure_presence(results: dict[str, float], ours: Relay, n: int) -> None:
    """The presence latency phase: its keys into ``results``."""
    enters, leaves = await presence_latency(ours, n)
    both = enters + leaves
    results["presence_p50_us"] = pct(both, 50)
    results["presence_p99_us"] = pct(both, 99)
    results["presence_enter_p50_us"] = pct(enters, 50)
    results["presence_leave_p50_us"] = pct(leaves, 50)
