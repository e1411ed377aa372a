#!/usr/bin/env python
"""Benchmarks: our relay and SDK, measured against a raw floor relay in the same run.

    python benchmarks/run.py [--quick] [--json PATH] [--uvloop] [--malloc-tuned] [--cluster]

Two relays run as separate processes: the raw floor (``benchmarks/raw_relay.py``:
forwards every binary frame's bytes to every other connection, nothing else)
and ours (``python -m ratatoskr_client relay``). Clients live in this process.
What is measured (see docs/performance.md for the numbers and what they mean):

* one-way A→B latency, sequential messages after a warm-up: raw frames on the
  floor relay; ``send_ephemeral`` → ``ephemeral-message`` callback on ours;
* fan-out, 1 sender → 100 receivers in one document: delivered messages per
  second, the sender waiting while the slowest receiver lags by more than 1,000;
* presence latency (ours): ``enter_document``/``leave_document`` on A →
  ``presence-changed`` on B;
* memory: idle clients entered in one document; relay RSS per peer and
  client-process RSS per client (KiB, from /proc);
* reconnect storm: the relay is killed (SIGKILL) and restarted on the same
  port; seconds until every client's presence shows all of them again.

The throughput runs need our relay's rate limit out of the way: it is started
with ``--rate-limit 100000000`` (per minute) and the benchmark clients are built
with ``rate_limit=None`` (no client-side pacing). The memory and storm phases use
the defaults, except that all clients share one ``aiohttp.ClientSession``
(documented usage: ``RatatoskrClient(url, session=...)``).

``--malloc-tuned`` re-runs the whole benchmark with ``MALLOC_MMAP_THRESHOLD_=1048576
MALLOC_TRIM_THRESHOLD_=268435456`` in the environment of this process and of
both relays. ``--uvloop`` runs this process and both relays on uvloop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from ratatoskr_client import RatatoskrClient
from ratatoskr_client.protocol import (
    AuthFrame,
    EphemeralFrame,
    PresenceMessage,
    encode,
    encode_payload,
)

HERE = Path(__file__).resolve().parent
RAW_RELAY = HERE / "raw_relay.py"
LISTENING = re.compile(r"listening on ws://(?P<host>\[[^\]]+\]|[^\s:/]+):(?P<port>\d+)/sync")
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "268435456"}
#: our relay's rate limit for the benchmark (per minute): out of the way
BENCH_RATE_LIMIT = 100_000_000
BACKLOG = 1000
FANOUT_RECEIVERS = 100

REQUIRED_KEYS = (
    "raw_p50_us",
    "raw_p99_us",
    "sdk_p50_us",
    "sdk_p99_us",
    "presence_p50_us",
    "presence_p99_us",
    "raw_fanout100_per_s",
    "sdk_fanout100_per_s",
    "relay_kib_per_peer",
    "client_kib_per_client",
    "restart_converge_s",
)

now_ns = time.perf_counter_ns


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def pct(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation between order statistics."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


# --------------------------------------------------------------------------- relays


class Relay:
    """One relay process: ours or the raw floor. Started, killed, restarted."""

    def __init__(self, kind: str, *, use_uvloop: bool, extra: Sequence[str] = ()) -> None:
        self.kind = kind
        self.use_uvloop = use_uvloop
        #: more options for our relay (--redis, --workers, ...)
        self.extra = list(extra)
        self.port = 0
        self.host = "127.0.0.1"
        self.proc: subprocess.Popen[str] | None = None
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in close())

    def command(self) -> list[str]:
        if self.kind == "raw":
            cmd = [sys.executable, str(RAW_RELAY), "--port", str(self.port)]
        else:
            cmd = [sys.executable, "-m", "ratatoskr_client", "relay", "--port", str(self.port)]
            cmd += ["--rate-limit", str(BENCH_RATE_LIMIT), *self.extra]
        if self.use_uvloop:
            cmd.append("--uvloop")
        return cmd

    async def start(self) -> float:
        """Start the process (on the same port as before, if it ran already);
        return the seconds until it printed its listening line."""
        t0 = time.perf_counter()
        # Popen only forks and execs; the wait for the relay is the awaited readline.
        self.proc = subprocess.Popen(  # noqa: ASYNC220
            self.command(), stdout=subprocess.PIPE, stderr=self._stderr, text=True
        )
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), 30)
        except TimeoutError:
            raise RuntimeError(f"{self.kind} relay did not start: {self.stderr_tail()}") from None
        match = LISTENING.search(line)
        if match is None:
            raise RuntimeError(
                f"{self.kind} relay printed {line!r} instead of its listening line: "
                f"{self.stderr_tail()}"
            )
        self.host = match["host"]
        self.port = int(match["port"])
        return time.perf_counter() - t0

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/sync"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def kill(self) -> None:
        """SIGKILL, like a crash."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-2000:]

    def close(self) -> None:
        self.stop()
        self._stderr.close()


# --------------------------------------------------------------------------- helpers


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


def new_session() -> aiohttp.ClientSession:
    # limit=0: an open WebSocket holds its connector slot, and the default
    # connector allows only 100 of them.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


def sdk_client(url: str, session: aiohttp.ClientSession, **options: Any) -> RatatoskrClient:
    return RatatoskrClient(url, session=session, **options)


async def gather_limited(coros: Sequence[Awaitable[Any]], limit: int) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(coro: Awaitable[Any]) -> Any:
        async with sem:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


async def close_all(clients: Sequence[RatatoskrClient]) -> None:
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


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
        await asyncio.wait_for(self.event.wait(), 30)
        self.floor = need


# --------------------------------------------------------------------------- latency
#
# Raw and SDK measurements alternate in rounds over connections kept open, so a
# burst of load from elsewhere on the machine hits both sides alike.


class RawPair:
    """A and B on the raw relay; B's reader task timestamps each arrival."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.frame = sample_frame({"seq": 0, "cursor": [3, 4]})
        self.waiting: list[asyncio.Future[int]] = []

    async def open(self) -> None:
        self.session = new_session()
        self.a = await self.session.ws_connect(self.relay.url)
        self.b = await self.session.ws_connect(self.relay.url)
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
            t1 = await asyncio.wait_for(fut, 5)
            samples.append((t1 - t0) / 1000)
        return samples

    async def close(self) -> None:
        for ws in (self.a, self.b):
            await ws.close()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.session.close()


class SdkPair:
    """A and B on our relay, both in one document: ``send_ephemeral`` on A,
    timestamp in B's ``ephemeral-message`` callback."""

    doc = "bench-latency"

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.waiting: list[asyncio.Future[int]] = []
        self.seq = 0

    async def open(self) -> None:
        self.session = new_session()
        self.a = sdk_client(self.relay.url, self.session, rate_limit=None)
        self.b = sdk_client(self.relay.url, self.session, rate_limit=None)
        self.b.on("ephemeral-message", self._on_message)
        for client in (self.a, self.b):
            await client.connect()
            await client.enter_document(self.doc)

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
            t1 = await asyncio.wait_for(fut, 5)
            samples.append((t1 - t0) / 1000)
        return samples

    async def close(self) -> None:
        await close_all([self.a, self.b])
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
                    t1 = await asyncio.wait_for(fut, 5)
                    out.append((t1 - t0) / 1000)
        finally:
            await close_all([a, b])
    return enters, leaves


# --------------------------------------------------------------------------- fan-out


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

    async def open(self) -> None:
        self.session = new_session()
        self.receivers = [
            await self.session.ws_connect(self.relay.url) for _ in range(FANOUT_RECEIVERS)
        ]
        self.sender = await self.session.ws_connect(self.relay.url)
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
        for ws in [self.sender, *self.receivers]:
            await ws.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.session.close()


class SdkFanout:
    """1 sender and 100 receiving clients present in one document on our relay."""

    doc = "bench-fanout"

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.burst = Burst(0, 0)
        self.sent = 0

    async def open(self) -> None:
        self.session = new_session()
        url = self.relay.url
        self.sender = sdk_client(url, self.session, rate_limit=None)
        receivers = [
            sdk_client(url, self.session, rate_limit=None) for _ in range(FANOUT_RECEIVERS)
        ]
        for r, client in enumerate(receivers):
            client.on("ephemeral-message", functools.partial(self._on_message, r))
        self.clients = [self.sender, *receivers]
        await gather_limited([c.connect() for c in self.clients], 50)
        await gather_limited([c.enter_document(self.doc, timeout=30) for c in self.clients], 50)
        await self.sender.wait_for_presence(
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
        await self.session.close()


# --------------------------------------------------------------------------- the relay alone
#
# The raw floor's clients on *our* relay, so that the relay's cost and the SDK's
# are visible apart: relay ratio = raw clients on ours / raw clients on the raw
# relay; SDK ratio = SDK clients on ours / raw clients on ours. They speak just
# enough of the protocol to be relayed: auth, a join, and ephemeral frames with
# a growing count (our relay drops replays).

_RAW_PAYLOAD = encode_payload({"seq": 0, "cursor": [3, 4]})


def _raw_frame(doc: str, count: int, session_id: str) -> bytes:
    return encode(
        EphemeralFrame("peer-0123456789abcdef", "relay", doc, count, session_id, _RAW_PAYLOAD)
    )


async def _raw_join(ws: aiohttp.ClientWebSocketResponse, doc: str, session_id: str) -> None:
    """Authenticate anonymously and join ``doc``."""
    await ws.send_bytes(encode(AuthFrame(anonymous=True)))
    await ws.receive()  # auth_ok
    join = encode_payload(PresenceMessage("join", doc).to_payload())
    await ws.send_bytes(encode(EphemeralFrame("", "", doc, 1, session_id, join)))


async def _drain(ws: aiohttp.ClientWebSocketResponse, quiet: float = 0.3) -> None:
    """Read and drop frames (identities, joins) until the socket is quiet."""
    with contextlib.suppress(TimeoutError):
        while True:
            await asyncio.wait_for(ws.receive(), quiet)


class RawOnOursPair(RawPair):
    """:class:`RawPair` on our relay: A and B joined in one document."""

    doc = "bench-latency-raw"

    def __init__(self, relay: Relay) -> None:
        super().__init__(relay)
        self.count = 1  # the join used 1

    async def _prepare(self) -> None:
        await _raw_join(self.a, self.doc, "raw-a")
        await _raw_join(self.b, self.doc, "raw-b")
        await asyncio.gather(_drain(self.a), _drain(self.b))

    def _next_frame(self) -> bytes:
        self.count += 1
        return _raw_frame(self.doc, self.count, "raw-a")


class RawOnOursFanout(RawFanout):
    """:class:`RawFanout` on our relay: the sender and receivers joined in one
    document; the receivers still count frames without decoding them."""

    doc = "bench-fanout-raw"

    def __init__(self, relay: Relay) -> None:
        super().__init__(relay)
        self.count = 1

    async def _prepare(self) -> None:
        for i, ws in enumerate(self.receivers):
            await _raw_join(ws, self.doc, f"raw-r{i}")
        await _raw_join(self.sender, self.doc, "raw-s")
        await asyncio.gather(*(_drain(ws) for ws in [self.sender, *self.receivers]))

    def _next_frame(self) -> bytes:
        self.count += 1
        return _raw_frame(self.doc, self.count, "raw-s")


async def _timed(run: Awaitable[dict[str, float]]) -> dict[str, float]:
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
            raw_runs.append(await _timed(raw.run(n // rounds)))
            alone_runs.append(await _timed(alone.run(n // rounds)))
            sdk_runs.append(await _timed(sdk.run(n // rounds)))
    finally:
        await raw.close()
        await alone.close()
        await sdk.close()
    return raw_runs, alone_runs, sdk_runs


# --------------------------------------------------------------------------- memory + storm


async def settle_rss(read: Callable[[], int], seconds: float = 1.0) -> int:
    await asyncio.sleep(seconds)
    return read()


async def sdk_memory_and_storm(
    n: int, use_uvloop: bool, *, storm: bool = True, suffix: str = ""
) -> dict[str, float]:
    """n idle clients in one document: memory on both sides; then (``storm``)
    the relay is killed and restarted, and we time until every presence is
    whole again. ``suffix`` is appended to the memory keys."""
    doc = "bench-idle"
    relay = Relay("ours", use_uvloop=use_uvloop)
    results: dict[str, float] = {}
    clients: list[RatatoskrClient] = []
    try:
        await relay.start()
        async with new_session() as session:
            # Warm-up: one client through the whole path, so that lazily imported
            # code and first-use caches are in both baselines.
            warm = sdk_client(relay.url, session)
            await warm.connect()
            await warm.enter_document(doc)
            await warm.close()
            await asyncio.sleep(0.3)
            gc.collect()
            relay_base = relay.rss_kib()
            client_base = rss_kib()

            clients = [sdk_client(relay.url, session) for _ in range(n)]
            t0 = time.perf_counter()
            await gather_limited([c.connect() for c in clients], 100)
            await gather_limited([c.enter_document(doc, timeout=60) for c in clients], 100)
            await wait_converged(clients, doc, n, timeout=120)
            results["join_converge_s" + suffix] = time.perf_counter() - t0
            gc.collect()
            relay_rss = await settle_rss(relay.rss_kib)
            client_rss = rss_kib()
            results["relay_kib_per_peer" + suffix] = (relay_rss - relay_base) / n
            results["client_kib_per_client" + suffix] = (client_rss - client_base) / n
            results["relay_rss_base_kib" + suffix] = relay_base
            results["relay_rss_kib" + suffix] = relay_rss
            results["client_rss_base_kib" + suffix] = client_base
            results["client_rss_kib" + suffix] = client_rss
            log(
                f"memory: relay {relay_base} -> {relay_rss} KiB, "
                f"client {client_base} -> {client_rss} KiB for {n} clients"
            )

            if storm:
                before = frozenset(c.me.peer_id for c in clients)
                t0 = time.perf_counter()
                relay.kill()
                restart = await relay.start()
                results["restart_relay_up_s"] = time.perf_counter() - t0
                results["restart_relay_start_s"] = restart
                connected_at = await wait_converged(
                    clients, doc, n, timeout=120, t0=t0, old_ids=before
                )
                results["restart_converge_s"] = time.perf_counter() - t0
                results["restart_all_connected_s"] = connected_at
                after = {c.me.peer_id for c in clients}
                assert not (before & after), "peer ids must be new after a reconnect"
                for c in clients:
                    assert {p.peer_id for p in c.presence(doc)} == after, "ghost or missing peer"
                results["restart_relay_rss_kib"] = relay.rss_kib()
            # Kill first: closing n connected clients would make the relay fan
            # out n x n departure frames for nothing.
            relay.kill()
            await close_all(clients)
    finally:
        relay.close()
        await close_all(clients)
    return results


async def wait_converged(
    clients: Sequence[RatatoskrClient],
    doc: str,
    n: int,
    *,
    timeout: float,
    t0: float | None = None,
    old_ids: frozenset[str] = frozenset(),
) -> float:
    """Poll until every client is connected (with a peer id not in ``old_ids``)
    and sees n peers in ``doc``; returns the seconds since t0 at which the last
    client was connected."""
    start = time.perf_counter() if t0 is None else t0
    deadline = time.perf_counter() + timeout
    all_connected = -1.0
    while True:
        connected = all(c.is_connected and c.me.peer_id not in old_ids for c in clients)
        if connected and all_connected < 0:
            all_connected = time.perf_counter() - start
        if connected and all(len(c.presence(doc)) == n for c in clients):
            return all_connected
        if time.perf_counter() > deadline:
            short = sum(1 for c in clients if len(c.presence(doc)) != n)
            raise TimeoutError(f"{short} of {n} clients did not converge within {timeout} s")
        await asyncio.sleep(0.01)


async def raw_memory_worker(url: str, n: int) -> None:
    """Child process: n bare WebSocket connections to the raw relay; prints
    the client RSS before and after, as JSON."""
    async with new_session() as session:
        warm = await session.ws_connect(url)
        await warm.close()
        await asyncio.sleep(0.3)
        gc.collect()
        base = rss_kib()
        conns = [await session.ws_connect(url) for _ in range(n)]
        await asyncio.sleep(1.0)
        gc.collect()
        print(json.dumps({"base": base, "rss": rss_kib()}), flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # the parent has read the relay's RSS
        for ws in conns:
            await ws.close()


async def raw_memory(n: int, use_uvloop: bool) -> dict[str, float]:
    relay = Relay("raw", use_uvloop=use_uvloop)
    try:
        await relay.start()
        await asyncio.sleep(0.3)
        relay_base = relay.rss_kib()
        cmd = [sys.executable, __file__, "--raw-memory-worker", relay.url, str(n)]
        if use_uvloop:
            cmd.append("--uvloop")
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        try:
            assert proc.stdout is not None
            assert proc.stdin is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 120)
            worker = json.loads(line)
            relay_rss = await settle_rss(relay.rss_kib, 0.2)
            proc.stdin.write(b"done\n")
            await proc.stdin.drain()
            await asyncio.wait_for(proc.wait(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    finally:
        relay.close()
    return {
        "raw_relay_kib_per_conn": (relay_rss - relay_base) / n,
        "raw_client_kib_per_conn": (worker["rss"] - worker["base"]) / n,
    }


# --------------------------------------------------------------------------- main


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import importlib.metadata as md

    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "cbor2": md.version("cbor2"),
        "loop": "uvloop" if isinstance_uvloop() else "asyncio",
    }


def isinstance_uvloop() -> bool:
    loop = asyncio.get_running_loop()
    return type(loop).__module__.startswith("uvloop")


async def run(args: argparse.Namespace) -> dict[str, float]:
    quick = args.quick
    lat_n, lat_warm = (1000, 200) if quick else (2000, 200)
    fan_n = 4000 if quick else 12_000
    pres_n = 50 if quick else 200
    idle_n = 200 if quick else 500
    rounds = 4 if quick else 8
    phases = set(args.only.split(",")) if args.only else None

    def want(name: str) -> bool:
        return phases is None or name in phases

    results: dict[str, float] = {
        "quick": int(quick),
        "uvloop": int(args.uvloop),
        "malloc_tuned": int(all(os.environ.get(k) == v for k, v in MALLOC_ENV.items())),
        "latency_messages": lat_n,
        "fanout_messages": fan_n,
        "fanout_receivers": FANOUT_RECEIVERS,
        "rounds": rounds,
        "presence_cycles": pres_n,
        "idle_clients": idle_n,
        "relay_rate_limit_per_min": BENCH_RATE_LIMIT,
    }
    info = machine()
    log("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))

    # Memory first, while this process's heap holds nothing from other phases.
    if want("memory"):
        log(f"ours: memory and reconnect storm with {idle_n} clients")
        results.update(await sdk_memory_and_storm(idle_n, args.uvloop))
        gc.collect()
        log(f"raw: memory with {idle_n} connections")
        results.update(await raw_memory(idle_n, args.uvloop))
        if not quick:
            gc.collect()
            log("ours: memory with 2000 clients (how it grows per client)")
            results.update(
                await sdk_memory_and_storm(2000, args.uvloop, storm=False, suffix="_2000")
            )

    raw = Relay("raw", use_uvloop=args.uvloop)
    ours = Relay("ours", use_uvloop=args.uvloop)
    try:
        await raw.start()
        await ours.start()
        if want("latency"):
            log(
                f"latency: {lat_n} messages each after {lat_warm} warm-up, "
                f"raw and ours alternating in {rounds} rounds"
            )
            raw_samples, alone_samples, sdk_samples = await latency(
                raw, ours, lat_n, lat_warm, rounds
            )
            for side, samples in (
                ("raw", raw_samples),
                ("raw_on_ours", alone_samples),
                ("sdk", sdk_samples),
            ):
                results[f"{side}_p50_us"] = pct(samples, 50)
                results[f"{side}_p99_us"] = pct(samples, 99)
            results["raw_mean_us"] = statistics.fmean(raw_samples)
            results["sdk_mean_us"] = statistics.fmean(sdk_samples)
        if want("presence"):
            log(f"presence latency: {pres_n} enters and {pres_n} leaves")
            enters, leaves = await presence_latency(ours, pres_n)
            both = enters + leaves
            results["presence_p50_us"] = pct(both, 50)
            results["presence_p99_us"] = pct(both, 99)
            results["presence_enter_p50_us"] = pct(enters, 50)
            results["presence_leave_p50_us"] = pct(leaves, 50)
        if want("fanout"):
            log(
                f"fan-out: {fan_n} messages each to {FANOUT_RECEIVERS} receivers, "
                f"raw and ours alternating in {rounds} rounds"
            )
            raw_runs, alone_runs, sdk_runs = await fanout(raw, ours, fan_n, rounds)
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
    finally:
        raw.close()
        ours.close()
    return results


def report(results: dict[str, float], wall: float) -> None:
    def get(key: str) -> float:
        return results.get(key, float("nan"))

    rows = [
        ("1:1 latency p50 (µs)", "raw_p50_us", "sdk_p50_us", "≤ 1.5 × raw", 1.5, "le"),
        ("1:1 latency p99 (µs)", "raw_p99_us", "sdk_p99_us", "≤ 2 × raw", 2.0, "le"),
        (
            "fan-out 1→100 (deliveries/s)",
            "raw_fanout100_per_s",
            "sdk_fanout100_per_s",
            "≥ 0.7 × raw",
            0.7,
            "ge",
        ),
    ]
    print()
    print(f"{'measure':34} {'raw floor':>12} {'ours':>12} {'ratio':>7}  target")
    split = [
        ("  relay alone: raw clients, p50", "raw_p50_us", "raw_on_ours_p50_us"),
        ("  relay alone: raw clients, p99", "raw_p99_us", "raw_on_ours_p99_us"),
        ("  relay alone: fan-out", "raw_fanout100_per_s", "raw_on_ours_fanout100_per_s"),
        ("  SDK alone: vs raw clients, p50", "raw_on_ours_p50_us", "sdk_p50_us"),
        ("  SDK alone: vs raw clients, p99", "raw_on_ours_p99_us", "sdk_p99_us"),
        ("  SDK alone: fan-out", "raw_on_ours_fanout100_per_s", "sdk_fanout100_per_s"),
        (
            "  client CPU µs per delivery",
            "raw_client_cpu_us_per_delivery",
            "sdk_client_cpu_us_per_delivery",
        ),
        (
            "  … raw clients on our relay",
            "raw_client_cpu_us_per_delivery",
            "raw_on_ours_client_cpu_us_per_delivery",
        ),
    ]
    for label, rk, sk, target, bound, op in rows:
        raw, ours = get(rk), get(sk)
        ratio = ours / raw if raw else float("nan")
        ok = ratio <= bound if op == "le" else ratio >= bound
        mark = "ok" if ok else "MISSED"
        print(f"{label:34} {raw:12.1f} {ours:12.1f} {ratio:7.2f}  {target} {mark}")
    for label, rk, sk in split:
        raw, ours = get(rk), get(sk)
        if raw == raw and ours == ours:
            print(f"{label:34} {raw:12.1f} {ours:12.1f} {ours / raw:7.2f}")
    absolute = [
        ("presence latency p50 (µs)", "presence_p50_us", None),
        ("presence latency p99 (µs)", "presence_p99_us", None),
        ("relay KiB per peer", "relay_kib_per_peer", 32.0),
        ("client KiB per client", "client_kib_per_client", 24.0),
        ("client KiB per client, 2,000", "client_kib_per_client_2000", 24.0),
        ("reconnect storm converge (s)", "restart_converge_s", 5.0),
    ]
    floor = {
        "relay_kib_per_peer": "raw_relay_kib_per_conn",
        "client_kib_per_client": "raw_client_kib_per_conn",
        "client_kib_per_client_2000": "raw_client_kib_per_conn",
    }
    for label, key, limit in absolute:
        value = get(key)
        if value != value:
            continue  # not measured in this run
        raw = get(floor[key]) if key in floor else float("nan")
        raw_txt = f"{raw:12.1f}" if raw == raw else f"{'':12}"
        target = f"≤ {limit:g} {'ok' if value <= limit else 'MISSED'}" if limit else ""
        print(f"{label:34} {raw_txt} {value:12.1f} {'':7}  {target}")
    paired = results.get("fanout_ratio_paired_median")
    if paired is not None:
        print(f"{'fan-out ratio, paired rounds':34} {'':12} {'':12} {paired:7.2f}  (median)")
    print(f"\n(wall time {wall:.1f} s; our relay ran with --rate-limit {BENCH_RATE_LIMIT}/min)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark our relay and SDK against a raw floor.")
    parser.add_argument("--quick", action="store_true", help="a smaller run (under 60 s)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--uvloop", action="store_true", help="run everything on uvloop")
    parser.add_argument(
        "--malloc-tuned",
        action="store_true",
        help="set " + " ".join(f"{k}={v}" for k, v in MALLOC_ENV.items()) + " for every process",
    )
    parser.add_argument(
        "--only",
        metavar="PHASES",
        help="comma-separated subset of: memory (incl. the storm), latency, presence, fanout",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="also run the relay cluster phases (needs redis-server and the 'cluster' "
        "extra); see benchmarks/cluster_bench.py",
    )
    parser.add_argument(
        "--raw-memory-worker", nargs=2, metavar=("URL", "N"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)

    if args.malloc_tuned and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        # glibc reads these at start-up: re-execute with them set (relays inherit them).
        os.environ.update(MALLOC_ENV)
        os.execv(sys.executable, [sys.executable, *sys.argv])

    def run_loop(coro: Any) -> Any:
        if args.uvloop:
            import uvloop

            return uvloop.run(coro)
        return asyncio.run(coro)

    if args.raw_memory_worker:
        url, n = args.raw_memory_worker
        run_loop(raw_memory_worker(url, int(n)))
        return 0

    started = time.perf_counter()
    results = run_loop(run(args))
    if args.cluster:
        from cluster_bench import report_cluster, run_cluster

        results.update(run_loop(run_cluster(args.quick, args.uvloop)))
    wall = time.perf_counter() - started
    results["wall_s"] = wall
    report(results, wall)
    if args.cluster:
        report_cluster(results)
    if args.json:
        missing = [k for k in REQUIRED_KEYS if k not in results]
        if missing and not args.only:
            print(f"missing keys: {missing}", file=sys.stderr)
            return 1
        Path(args.json).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
