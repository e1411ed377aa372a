"""Fan-out: 1 sender → 100 receivers in one document, delivered messages per
second, the sender waiting while the slowest receiver lags by more than 1,000.

The raw floor, the floor's clients on our relay, and the SDK alternate in
rounds; the keys are the median round. Keys: ``{raw,raw_on_ours,sdk}_fanout100_per_s``,
``{raw,raw_on_ours,sdk}_client_cpu_us_per_delivery``,
``{raw,sdk}_fanout100_{overall,min,max}_per_s``, ``sdk_fanout100_dropped``,
``fanout_ratio_paired_median``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from benchmarks.harness import Relay, close_all, gather_limited, new_session, sdk_client
from benchmarks.scenarios.wire import drain, raw_frame, raw_join, sample_frame
from ratatoskr_client import RatatoskrClient

#: the sender waits while the slowest receiver lags by more than this many messages
BACKLOG = 1000
FANOUT_RECEIVERS = 100
#: seconds the sender may wait for the slowest receiver to catch up
CATCH_UP_TIMEOUT = 30.0


class Backlog:
    """Bounded backlog: the sender waits while the slowest receiver lags by more
    than ``limit`` messages."""

    def __init__(self, receivers: int, limit: int) -> None:
        self.seen = [0] * receivers
        self.limit = limit
        self.need = 0
        self.pending: set[int] = set()
        self.event = asyncio.Event()
        self.floor = 0  # a lower bound of min(seen), refreshed lazily
        self.waits = 0

    def got(self, receiver: int, seq: int) -> None:
        self.seen[receiver] = seq
        if self.pending and seq >= self.need and receiver in self.pending:
            self.pending.discard(receiver)
            if not self.pending:
                self.event.set()

    async def before_send(self, seq: int) -> None:
        """Called before sending message ``seq`` (1-based)."""
        if seq - 1 - self.floor <= self.limit:
            return
        self.floor = min(self.seen)
        need = seq - 1 - self.limit
        if self.floor >= need:
            return
        self.need = need
        self.pending = {r for r, s in enumerate(self.seen) if s < need}
        self.event.clear()
        self.waits += 1
        try:
            await asyncio.wait_for(self.event.wait(), CATCH_UP_TIMEOUT)
        except TimeoutError:
            raise TimeoutError(
                f"{len(self.pending)} receivers still lacked message {need} "
                f"after {CATCH_UP_TIMEOUT:g} s"
            ) from None
        self.floor = need


class Burst:
    """One timed fan-out burst of n messages: per-receiver counts, the backlog
    bound, and an event set once every receiver has seen message n."""

    def __init__(self, n: int, base: int) -> None:
        self.n = n
        self.base = base  # sequence numbers of this burst are base+1 .. base+n
        self.backlog = Backlog(FANOUT_RECEIVERS, BACKLOG)
        self.counts = [0] * FANOUT_RECEIVERS
        self.remaining = FANOUT_RECEIVERS
        self.done = asyncio.Event()

    def got(self, receiver: int, seq: int) -> None:
        rel = seq - self.base
        if not 0 < rel <= self.n:
            return  # a straggler from an earlier burst
        self.counts[receiver] += 1
        self.backlog.got(receiver, rel)
        if rel == self.n:
            self.remaining -= 1
            if not self.remaining:
                self.done.set()

    async def run(self, send: Callable[[int], Awaitable[None]]) -> dict[str, float]:
        t0 = time.perf_counter()
        for rel in range(1, self.n + 1):
            await self.backlog.before_send(rel)
            await send(self.base + rel)
        with contextlib.suppress(TimeoutError):  # dropped messages never arrive
            await asyncio.wait_for(self.done.wait(), 60)
        elapsed = time.perf_counter() - t0
        delivered = sum(self.counts)
        return {
            "per_s": delivered / elapsed,
            "delivered": delivered,
            "dropped": self.n * FANOUT_RECEIVERS - delivered,
            "seconds": elapsed,
        }


class RawFanout:
    """1 sender and 100 receivers on the raw relay (which forwards to everyone)."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.frame = sample_frame({"seq": 0, "cursor": [3, 4]})
        self.burst = Burst(0, 0)
        self.sent = 0
        self.session: aiohttp.ClientSession | None = None
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        self.session = new_session()
        self.receivers: list[aiohttp.ClientWebSocketResponse] = []
        for _ in range(FANOUT_RECEIVERS):
            self.receivers.append(await self.session.ws_connect(self.relay.url))
            self.sockets.append(self.receivers[-1])
        self.sender = await self.session.ws_connect(self.relay.url)
        self.sockets.append(self.sender)
        await self._prepare()
        self.tasks = [
            asyncio.create_task(self._reader(r, ws)) for r, ws in enumerate(self.receivers)
        ]

    async def _prepare(self) -> None:
        """What the relay needs before the sender's frames reach everyone."""

    def _next_frame(self) -> bytes:
        return self.frame

    async def _reader(self, r: int, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                burst = self.burst
                # Raw frames carry no sequence number: the relay forwards in order
                # and drops nothing, so the count within the burst is one.
                burst.got(r, burst.base + burst.counts[r] + 1)

    async def _send(self, seq: int) -> None:
        await self.sender.send_bytes(self._next_frame())

    async def run(self, n: int) -> dict[str, float]:
        self.burst = Burst(n, self.sent)
        self.sent += n
        return await self.burst.run(self._send)

    async def close(self) -> None:
        """Close whatever :meth:`open` got to."""
        for ws in self.sockets:
            await ws.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()


class RawOnOursFanout(RawFanout):
    """:class:`RawFanout` on our relay: the sender and receivers joined in one
    document; the receivers still count frames without decoding them."""

    doc = "bench-fanout-raw"

    def __init__(self, relay: Relay) -> None:
        super().__init__(relay)
        self.count = 1

    async def _prepare(self) -> None:
        for i, ws in enumerate(self.receivers):
            await raw_join(ws, self.doc, f"raw-r{i}")
        await raw_join(self.sender, self.doc, "raw-s")
        await asyncio.gather(*(drain(ws) for ws in [self.sender, *self.receivers]))

    def _next_frame(self) -> bytes:
        self.count += 1
        return raw_frame(self.doc, self.count, "raw-s")


class SdkFanout:
    """1 sender and 100 receiving clients present in one document on our relay;
    or, given ``receiver_relay`` (the cluster's placements), the sender on
    ``relay`` and the receivers on ``receiver_relay`` (which may be the same)."""

    def __init__(
        self, relay: Relay, receiver_relay: Relay | None = None, doc: str = "bench-fanout"
    ) -> None:
        self.relay = relay
        self.split = receiver_relay is not None
        self.receiver_relay = receiver_relay or relay
        self.doc = doc
        self.burst = Burst(0, 0)
        self.sent = 0
        self.session: aiohttp.ClientSession | None = None
        self.clients: list[RatatoskrClient] = []

    async def open(self) -> None:
        self.session = new_session()
        self.sender = sdk_client(self.relay.url, self.session, rate_limit=None)
        receivers = [
            sdk_client(self.receiver_relay.url, self.session, rate_limit=None)
            for _ in range(FANOUT_RECEIVERS)
        ]
        for r, client in enumerate(receivers):
            client.on("ephemeral-message", functools.partial(self._on_message, r))
        self.clients = [self.sender, *receivers]
        await gather_limited([c.connect() for c in self.clients], 50)
        await gather_limited([c.enter_document(self.doc, timeout=30) for c in self.clients], 50)
        # Placed on two relays, a receiver must see everyone too: the sender's
        # presence has crossed over.
        watchers = self.clients[:2] if self.split else [self.sender]
        for client in watchers:
            await client.wait_for_presence(
                self.doc, lambda ps: len(ps) == len(self.clients), timeout=30
            )

    def _on_message(self, r: int, document_id: str, sender: Any, payload: Any) -> None:
        self.burst.got(r, payload["seq"])

    async def _send(self, seq: int) -> None:
        await self.sender.send_ephemeral(self.doc, {"seq": seq, "cursor": [3, 4]})

    async def run(self, n: int) -> dict[str, float]:
        self.burst = Burst(n, self.sent)
        self.sent += n
        return await self.burst.run(self._send)

    async def close(self) -> None:
        await close_all(self.clients)
        if self.session is not None:
            await self.session.close()


async def timed(run: Awaitable[dict[str, float]]) -> dict[str, float]:
    """A fan-out round, with this process's CPU time per delivered message."""
    gc.collect()
    cpu = time.process_time()  # user + system CPU of this process
    result = await run
    result["cpu_us_per_delivery"] = (time.process_time() - cpu) * 1e6 / max(1, result["delivered"])
    return result


async def fanout(
    raw_relay: Relay, our_relay: Relay, n: int, rounds: int
) -> tuple[list[dict[str, float]], list[dict[str, float]], list[dict[str, float]]]:
    """Rounds of the raw floor, of raw clients on our relay, and of the SDK."""
    raw, alone, sdk = RawFanout(raw_relay), RawOnOursFanout(our_relay), SdkFanout(our_relay)
    raw_runs: list[dict[str, float]] = []
    alone_runs: list[dict[str, float]] = []
    sdk_runs: list[dict[str, float]] = []
    try:
        await raw.open()
        await alone.open()
        await sdk.open()
        await raw.run(min(n // rounds, 500))  # warm-up
        await alone.run(min(n // rounds, 500))
        await sdk.run(min(n // rounds, 500))
        for _ in range(rounds):
            raw_runs.append(await timed(raw.run(n // rounds)))
            alone_runs.append(await timed(alone.run(n // rounds)))
            sdk_runs.append(await timed(sdk.run(n // rounds)))
    finally:
        await raw.close()
        await alone.close()
        await sdk.close()
    return raw_runs, alone_runs, sdk_runs


async def measure_fanout(
    results: dict[str, float], raw: Relay, ours: Relay, n: int, rounds: int
) -> None:
    """The fan-out phase: its keys into ``results``."""
    raw_runs, alone_runs, sdk_runs = await fanout(raw, ours, n, rounds)
    # The median round: robust to a burst of load from elsewhere.
    for side, runs in (("raw", raw_runs), ("raw_on_ours", alone_runs), ("sdk", sdk_runs)):
        results[f"{side}_fanout100_per_s"] = statistics.median(r["per_s"] for r in runs)
        results[f"{side}_client_cpu_us_per_delivery"] = statistics.median(
            r["cpu_us_per_delivery"] for r in runs
        )
    for side, runs in (("raw", raw_runs), ("sdk", sdk_runs)):
        total = sum(r["delivered"] for r in runs)
        results[f"{side}_fanout100_overall_per_s"] = total / sum(r["seconds"] for r in runs)
        results[f"{side}_fanout100_min_per_s"] = min(r["per_s"] for r in runs)
        results[f"{side}_fanout100_max_per_s"] = max(r["per_s"] for r in runs)
    results["sdk_fanout100_dropped"] = sum(r["dropped"] for r in sdk_runs)
    # Each SDK round ran right after a raw one: the median of these paired
    # ratios is the least sensitive to load changing during the run.
    results["fanout_ratio_paired_median"] = statistics.median(
        s["per_s"] / r["per_s"] for r, s in zip(raw_runs, sdk_runs, strict=True)
    )
