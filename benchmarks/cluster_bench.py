"""The relay cluster's benchmark phases, run by ``benchmarks/run.py --cluster``.

Everything is measured against a single relay (no Redis) in the same run, the
same way, so the ratios say what the cluster costs:

* **1:1 latency** (SDK ``send_ephemeral`` -> ``ephemeral-message``): both
  clients on one single relay; both on one relay of a two-relay cluster
  ("same node"); sender and receiver on different relays ("cross node").
  The three alternate in rounds over connections kept open.
* **fan-out 1 -> 100**: the same three placements (the 100 receivers all on
  the other relay for "cross node"), alternating rounds; median round.
* **throughput, 1 vs 2 workers**: ``ratatoskr relay --workers N --redis``;
  4 documents, each with 1 sender and 24 receivers (raw WebSockets), the
  kernel spreading connections over the workers; deliveries per second for
  all senders sending at once, the 1- and 2-worker deployments alternating;
  and the CPU time of the relay processes and Redis per delivery, which says
  what the cluster costs whatever the number of cores.
* **memory per connection**: 4,000 connections (1,000 with ``--quick``),
  each authenticated and present in one of 40 documents, first on one single
  relay, then on ``--workers 4 --redis``; RSS of the relay processes (all
  workers summed) after minus before, per connection, and Redis's own growth.
  The connections are bare sockets that discard what they receive unparsed, so
  the client side costs nothing and the relays' send buffers stay empty.

Redis is ``redis-server --port N --save "" --appendonly no`` on a free port.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import os
import shutil
import socket
import statistics
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import cbor2
import run as base

THROUGHPUT_DOCS = 4
THROUGHPUT_RECEIVERS = 24
MEMORY_DOCS = 40


# --------------------------------------------------------------------------- processes


class Redis:
    """A redis-server on a free loopback port, no persistence."""

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("--cluster needs redis-server (apt-get install redis-server)")
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        self.proc = subprocess.Popen(  # noqa: ASYNC220 (fork/exec only)
            [*command, "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        for _ in range(200):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            await asyncio.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def rss_kib(self) -> int:
        assert self.proc is not None
        return base.rss_kib(self.proc.pid)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def process_tree_rss_kib(pid: int) -> int:
    """RSS of a relay: the process itself, or the sum of its workers."""
    children = workers_of(pid)
    return sum(base.rss_kib(p) for p in children) if children else base.rss_kib(pid)


def workers_of(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total


async def wait_idle(pids: list[int], quiet: float = 0.5, timeout: float = 300) -> None:
    """Until the processes stop using CPU (their fan-out is done)."""
    deadline = time.monotonic() + timeout
    last = cpu_ticks(pids)
    while time.monotonic() < deadline:
        await asyncio.sleep(quiet)
        now = cpu_ticks(pids)
        if now - last <= 2:  # ticks are 10 ms: idle but for heartbeats
            return
        last = now
    raise TimeoutError("the relays never went idle")


# --------------------------------------------------------------------------- latency


class SplitPair(base.SdkPair):
    """A on one relay, B on another (or the same)."""

    def __init__(self, relay_a: base.Relay, relay_b: base.Relay, doc: str) -> None:
        super().__init__(relay_a)
        self.relay_b = relay_b
        self.doc = doc

    async def open(self) -> None:
        self.session = base.new_session()
        self.a = base.sdk_client(self.relay.url, self.session, rate_limit=None)
        self.b = base.sdk_client(self.relay_b.url, self.session, rate_limit=None)
        self.b.on("ephemeral-message", self._on_message)
        for client in (self.a, self.b):
            await client.connect()
            await client.enter_document(self.doc)
        await self.a.wait_for_presence(self.doc, lambda ps: len(ps) == 2, timeout=30)
        await self.b.wait_for_presence(self.doc, lambda ps: len(ps) == 2, timeout=30)


class SplitFanout(base.SdkFanout):
    """The sender on one relay, the 100 receivers on another (or the same)."""

    def __init__(self, sender_relay: base.Relay, receiver_relay: base.Relay, doc: str) -> None:
        super().__init__(sender_relay)
        self.receiver_relay = receiver_relay
        self.doc = doc

    async def open(self) -> None:
        import functools

        self.session = base.new_session()
        self.sender = base.sdk_client(self.relay.url, self.session, rate_limit=None)
        receivers = [
            base.sdk_client(self.receiver_relay.url, self.session, rate_limit=None)
            for _ in range(base.FANOUT_RECEIVERS)
        ]
        for r, client in enumerate(receivers):
            client.on("ephemeral-message", functools.partial(self._on_message, r))
        self.clients = [self.sender, *receivers]
        await base.gather_limited([c.connect() for c in self.clients], 50)
        await base.gather_limited(
            [c.enter_document(self.doc, timeout=30) for c in self.clients], 50
        )
        for client in (self.sender, receivers[0]):
            await client.wait_for_presence(
                self.doc, lambda ps: len(ps) == len(self.clients), timeout=30
            )


async def placements(
    single: base.Relay, node1: base.Relay, node2: base.Relay, lat_n: int, fan_n: int, rounds: int
) -> dict[str, float]:
    out: dict[str, float] = {}
    placed = {"single": (single, single), "same_node": (node1, node1), "cross_node": (node1, node2)}
    # ---- latency
    pairs = {k: SplitPair(a, b, f"bench-latency-{k}") for k, (a, b) in placed.items()}
    samples: dict[str, list[float]] = {k: [] for k in placed}
    try:
        for pair in pairs.values():
            await pair.open()
            await pair.measure(200)  # warm-up
        gc.collect()
        for _ in range(rounds):
            for key, pair in pairs.items():
                samples[key] += await pair.measure(lat_n // rounds)
    finally:
        for pair in pairs.values():
            with contextlib.suppress(Exception):
                await pair.close()
    for key, values in samples.items():
        out[f"cluster_{key}_p50_us"] = base.pct(values, 50)
        out[f"cluster_{key}_p99_us"] = base.pct(values, 99)
    # ---- fan-out
    fans = {k: SplitFanout(a, b, f"bench-fanout-{k}") for k, (a, b) in placed.items()}
    runs: dict[str, list[float]] = {k: [] for k in placed}
    try:
        for fan in fans.values():
            await fan.open()
            await fan.run(min(fan_n // rounds, 500))  # warm-up
        for _ in range(rounds):
            for key, fan in fans.items():
                gc.collect()
                runs[key].append((await fan.run(fan_n // rounds))["per_s"])
    finally:
        for fan in fans.values():
            with contextlib.suppress(Exception):
                await fan.close()
    for key, values in runs.items():
        out[f"cluster_{key}_fanout100_per_s"] = statistics.median(values)
    return out


# --------------------------------------------------------------------------- throughput


async def throughput(port: int, messages: int) -> tuple[int, float]:
    """(deliveries, seconds): THROUGHPUT_DOCS senders at once, each to
    THROUGHPUT_RECEIVERS receivers of its document. Every peer is a bare
    socket (see :class:`_BarePeer`), so the load generator costs little next
    to the relays."""
    groups = []
    peers: list[_BarePeer] = []
    try:
        for i in range(THROUGHPUT_DOCS):
            doc = f"bench-throughput-{i}"
            group = [await bare_peer(port, doc) for _ in range(THROUGHPUT_RECEIVERS + 1)]
            peers += group
            groups.append((doc, group[0], group[1:]))
        # Everyone present everywhere: a probe reaches every receiver.
        for doc, sender, receivers in groups:
            while not all(r.received for r in receivers):
                sender.ephemeral(doc, 0)
                with contextlib.suppress(TimeoutError):
                    for r in receivers:
                        await r.wait_for(1, timeout=0.5)
        for p in peers:
            p.received = 0

        async def send_all(doc: str, sender: _BarePeer, receivers: list[_BarePeer]) -> None:
            for seq in range(1, messages + 1):
                if seq % 100 == 0:  # wait while the slowest receiver lags by > 1000
                    for r in receivers:
                        await r.wait_for(seq - base.BACKLOG)
                sender.ephemeral(doc, seq)
            for r in receivers:
                await r.wait_for(messages)

        t0 = time.perf_counter()
        await asyncio.gather(*(send_all(*g) for g in groups))
        elapsed = time.perf_counter() - t0
        return sum(p.received for p in peers), elapsed
    finally:
        for p in peers:
            p.close()


# --------------------------------------------------------------------------- memory


class _BarePeer(asyncio.Protocol):
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
        """Until at least ``received`` ephemeral frames have arrived."""
        deadline = time.monotonic() + timeout
        while self.received < received:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.transport is None or self.transport.is_closing():
                raise TimeoutError(f"{self.received} of {received} frames")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def bare_peer(port: int, doc: str) -> _BarePeer:
    """A connected, authenticated :class:`_BarePeer` present in ``doc``."""
    loop = asyncio.get_running_loop()
    _, peer = await loop.create_connection(lambda: _BarePeer(port, doc), "127.0.0.1", port)
    await peer.upgraded
    return peer


async def memory(relay: base.Relay, n: int, redis: Redis | None) -> dict[str, float]:
    """RSS per connection of a running relay (or workers) for n idle peers."""
    await asyncio.sleep(0.5)
    pids = workers_of(relay.pid) or [relay.pid]
    relay_base = process_tree_rss_kib(relay.pid)
    redis_base = redis.rss_kib() if redis is not None else 0
    idle: list[_BarePeer] = []
    try:
        for i in range(n):
            idle.append(await bare_peer(relay.port, f"bench-mem-{i % MEMORY_DOCS}"))
        await wait_idle(pids)
        gc.collect()
        relay_rss = process_tree_rss_kib(relay.pid)
        out = {"kib_per_conn": (relay_rss - relay_base) / n, "rss_kib": relay_rss}
        if redis is not None:
            out["redis_kib_per_conn"] = (redis.rss_kib() - redis_base) / n
        return out
    finally:
        for peer in idle:
            peer.close()


# --------------------------------------------------------------------------- the phases


async def run_cluster(quick: bool, use_uvloop: bool) -> dict[str, float]:
    """Every cluster phase; keys prefixed ``cluster_``."""
    lat_n = 1000 if quick else 2000
    fan_n = 4000 if quick else 12_000
    rounds = 4 if quick else 6
    thr_n = 1000 if quick else 3000
    mem_n = 1000 if quick else 4000
    results: dict[str, float] = {
        "cluster_memory_connections": mem_n,
        "cluster_throughput_messages": thr_n,
    }
    redis = Redis()
    await redis.start()
    relays: list[base.Relay] = []
    try:
        base.log("cluster: latency and fan-out, single relay vs same node vs cross node")
        single = base.Relay("ours", use_uvloop=use_uvloop)
        node1 = base.Relay("ours", use_uvloop=use_uvloop, extra=["--redis", redis.url(0)])
        node2 = base.Relay("ours", use_uvloop=use_uvloop, extra=["--redis", redis.url(0)])
        relays += [single, node1, node2]
        for relay in relays:
            await relay.start()
        results.update(await placements(single, node1, node2, lat_n, fan_n, rounds))
        for relay in relays:
            relay.close()
        relays.clear()

        base.log("cluster: deliveries/s with 1 vs 2 workers")
        deployments = {}
        for workers, db in ((1, 1), (2, 2)):
            relay = base.Relay(
                "ours",
                use_uvloop=use_uvloop,
                extra=["--workers", str(workers), "--redis", redis.url(db)],
            )
            relays.append(relay)
            await relay.start()
            deployments[workers] = relay
        per_s: dict[int, list[float]] = {1: [], 2: []}
        cpu: dict[int, list[float]] = {1: [], 2: []}
        tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
        assert redis.proc is not None
        for _ in range(2 if quick else 3):
            for workers, relay in deployments.items():
                gc.collect()
                pids = [*workers_of(relay.pid), redis.proc.pid]
                before = cpu_ticks(pids)
                delivered, seconds = await throughput(relay.port, thr_n)
                per_s[workers].append(delivered / seconds)
                # CPU of the relays and Redis per delivery: what the cluster
                # costs, whatever the number of cores.
                cpu[workers].append((cpu_ticks(pids) - before) * tick_us / delivered)
        for workers in (1, 2):
            results[f"cluster_workers{workers}_per_s"] = statistics.median(per_s[workers])
            results[f"cluster_workers{workers}_cpu_us_per_delivery"] = statistics.median(
                cpu[workers]
            )
        for relay in relays:
            relay.close()
        relays.clear()

        base.log(f"cluster: memory with {mem_n} connections, single relay vs 4 workers")
        single = base.Relay("ours", use_uvloop=use_uvloop)
        relays.append(single)
        await single.start()
        mem = await memory(single, mem_n, None)
        results["cluster_single_kib_per_conn"] = mem["kib_per_conn"]
        single.close()
        relays.clear()
        workers4 = base.Relay(
            "ours", use_uvloop=use_uvloop, extra=["--workers", "4", "--redis", redis.url(3)]
        )
        relays.append(workers4)
        await workers4.start()
        mem = await memory(workers4, mem_n, redis)
        results["cluster_workers4_kib_per_conn"] = mem["kib_per_conn"]
        results["cluster_workers4_redis_kib_per_conn"] = mem["redis_kib_per_conn"]
        results["cluster_workers4_rss_kib"] = mem["rss_kib"]
    finally:
        for relay in relays:
            relay.close()
        redis.close()
    return results


def report_cluster(results: dict[str, float]) -> None:
    """Print the cluster figures with their ratios to the single relay."""

    def get(key: str) -> float:
        return results.get(key, float("nan"))

    print()
    print(f"{'cluster (ratios to one relay)':34} {'one relay':>12} {'cluster':>12} {'ratio':>7}")
    rows = [
        ("1:1 p50 (µs), same node", "cluster_single_p50_us", "cluster_same_node_p50_us"),
        ("1:1 p50 (µs), cross node", "cluster_single_p50_us", "cluster_cross_node_p50_us"),
        ("1:1 p99 (µs), same node", "cluster_single_p99_us", "cluster_same_node_p99_us"),
        ("1:1 p99 (µs), cross node", "cluster_single_p99_us", "cluster_cross_node_p99_us"),
        (
            "fan-out 1→100/s, same node",
            "cluster_single_fanout100_per_s",
            "cluster_same_node_fanout100_per_s",
        ),
        (
            "fan-out 1→100/s, cross node",
            "cluster_single_fanout100_per_s",
            "cluster_cross_node_fanout100_per_s",
        ),
        ("deliveries/s, 2 vs 1 worker", "cluster_workers1_per_s", "cluster_workers2_per_s"),
        (
            "CPU µs per delivery, 2 vs 1",
            "cluster_workers1_cpu_us_per_delivery",
            "cluster_workers2_cpu_us_per_delivery",
        ),
        (
            "KiB per connection, 4 workers",
            "cluster_single_kib_per_conn",
            "cluster_workers4_kib_per_conn",
        ),
    ]
    for label, one, many in rows:
        a, b = get(one), get(many)
        ratio = b / a if a else float("nan")
        results[f"{many}_ratio"] = ratio
        print(f"{label:34} {a:12.1f} {b:12.1f} {ratio:7.2f}")
    redis_kib = get("cluster_workers4_redis_kib_per_conn")
    print(f"{'Redis KiB per connection':34} {'':12} {redis_kib:12.1f}")
