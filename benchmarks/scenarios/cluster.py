"""The relay cluster's phases (``benchmarks/run.py --cluster``).

Everything is measured against a single relay (no Redis) in the same run, the
same way, so the ratios say what the cluster costs:

* **placements** — 1:1 latency (SDK ``send_ephemeral`` → ``ephemeral-message``):
  both clients on one single relay; both on one relay of a two-relay cluster
  ("same node"); sender and receiver on different relays ("cross node"). The
  three alternate in rounds over connections kept open. Then fan-out 1 → 100
  in the same three placements (the 100 receivers all on the other relay for
  "cross node"), alternating rounds; median round.
* **workers** — throughput, 1 vs 2 workers: ``ratatoskr relay --workers N
  --redis``; 4 documents, each with 1 sender and 24 receivers (bare sockets),
  the kernel spreading connections over the workers; deliveries per second
  for all senders sending at once, the 1- and 2-worker deployments
  alternating; and the CPU time of the relay processes and Redis per
  delivery, which says what the cluster costs whatever the number of cores.
* **memory** — per connection: 4,000 connections (1,000 with ``--quick``),
  each authenticated and present in one of 40 documents, first on one single
  relay, then on ``--workers 4 --redis``; RSS of the relay processes (all
  workers summed) after minus before, per connection, and Redis's own growth.
  The connections are bare sockets that discard what they receive unparsed, so
  the client side costs nothing and the relays' send buffers stay empty.

Redis is ``redis-server --port N --save "" --appendonly no`` on a free port.
Every key starts with ``cluster_``; the ratios are added by ``benchmarks.report``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import statistics
import time
from dataclasses import dataclass

from benchmarks.harness import (
    Redis,
    Relay,
    cpu_ticks,
    pct,
    process_tree_rss_kib,
    wait_idle,
    workers_of,
)
from benchmarks.scenarios.fanout import BACKLOG, SdkFanout
from benchmarks.scenarios.latency import SdkPair
from benchmarks.scenarios.wire import BarePeer, bare_peer

THROUGHPUT_DOCS = 4
THROUGHPUT_RECEIVERS = 24
MEMORY_DOCS = 40


@dataclass(frozen=True)
class Sizes:
    """How much each cluster phase does (``--quick``: less)."""

    latency_messages: int
    fanout_messages: int
    rounds: int
    throughput_messages: int
    throughput_rounds: int
    memory_connections: int

    @classmethod
    def for_run(cls, quick: bool) -> Sizes:
        if quick:
            return cls(1000, 4000, 4, 1000, 2, 1000)
        return cls(2000, 12_000, 6, 3000, 3, 4000)


def settings(sizes: Sizes) -> dict[str, float]:
    """The cluster's settings keys."""
    return {
        "cluster_memory_connections": sizes.memory_connections,
        "cluster_throughput_messages": sizes.throughput_messages,
    }


# --------------------------------------------------------------------------- placements


async def placements(
    results: dict[str, float], redis: Redis, sizes: Sizes, use_uvloop: bool
) -> None:
    """Latency and fan-out: single relay vs same node vs cross node."""
    single = Relay("ours", use_uvloop=use_uvloop)
    node1 = Relay("ours", use_uvloop=use_uvloop, extra=["--redis", redis.url(0)])
    node2 = Relay("ours", use_uvloop=use_uvloop, extra=["--redis", redis.url(0)])
    relays = [single, node1, node2]
    try:
        for relay in relays:
            await relay.start()
        placed = {
            "single": (single, single),
            "same_node": (node1, node1),
            "cross_node": (node1, node2),
        }
        await _latency(results, placed, sizes)
        await _fanout(results, placed, sizes)
    finally:
        for relay in relays:
            relay.close()


async def _latency(
    results: dict[str, float], placed: dict[str, tuple[Relay, Relay]], sizes: Sizes
) -> None:
    pairs = {k: SdkPair(a, b, f"bench-latency-{k}") for k, (a, b) in placed.items()}
    samples: dict[str, list[float]] = {k: [] for k in placed}
    try:
        for pair in pairs.values():
            await pair.open()
            await pair.measure(200)  # warm-up
        gc.collect()
        for _ in range(sizes.rounds):
            for key, pair in pairs.items():
                samples[key] += await pair.measure(sizes.latency_messages // sizes.rounds)
    finally:
        for pair in pairs.values():
            with contextlib.suppress(Exception):
                await pair.close()
    for key, values in samples.items():
        results[f"cluster_{key}_p50_us"] = pct(values, 50)
        results[f"cluster_{key}_p99_us"] = pct(values, 99)


async def _fanout(
    results: dict[str, float], placed: dict[str, tuple[Relay, Relay]], sizes: Sizes
) -> None:
    fans = {k: SdkFanout(a, b, f"bench-fanout-{k}") for k, (a, b) in placed.items()}
    runs: dict[str, list[float]] = {k: [] for k in placed}
    per_round = sizes.fanout_messages // sizes.rounds
    try:
        for fan in fans.values():
            await fan.open()
            await fan.run(min(per_round, 500))  # warm-up
        for _ in range(sizes.rounds):
            for key, fan in fans.items():
                gc.collect()
                runs[key].append((await fan.run(per_round))["per_s"])
    finally:
        for fan in fans.values():
            with contextlib.suppress(Exception):
                await fan.close()
    for key, values in runs.items():
        results[f"cluster_{key}_fanout100_per_s"] = statistics.median(values)


# --------------------------------------------------------------------------- throughput


async def throughput(port: int, messages: int) -> tuple[int, float]:
    """(deliveries, seconds): THROUGHPUT_DOCS senders at once, each to
    THROUGHPUT_RECEIVERS receivers of its document. Every peer is a bare
    socket (see :class:`BarePeer`), so the load generator costs little next
    to the relays."""
    groups = []
    peers: list[BarePeer] = []
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

        async def send_all(doc: str, sender: BarePeer, receivers: list[BarePeer]) -> None:
            for seq in range(1, messages + 1):
                if seq % 100 == 0:  # wait while the slowest receiver lags by > 1000
                    for r in receivers:
                        await r.wait_for(seq - BACKLOG)
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


async def workers(results: dict[str, float], redis: Redis, sizes: Sizes, use_uvloop: bool) -> None:
    """Deliveries per second and CPU per delivery, ``--workers 1`` vs ``2``."""
    deployments: dict[int, Relay] = {}
    try:
        for count, db in ((1, 1), (2, 2)):
            relay = Relay(
                "ours",
                use_uvloop=use_uvloop,
                extra=["--workers", str(count), "--redis", redis.url(db)],
            )
            deployments[count] = relay
            await relay.start()
        per_s: dict[int, list[float]] = {1: [], 2: []}
        cpu: dict[int, list[float]] = {1: [], 2: []}
        tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
        for _ in range(sizes.throughput_rounds):
            for count, relay in deployments.items():
                gc.collect()
                pids = [*workers_of(relay.pid), redis.pid]
                before = cpu_ticks(pids)
                delivered, seconds = await throughput(relay.port, sizes.throughput_messages)
                per_s[count].append(delivered / seconds)
                # CPU of the relays and Redis per delivery: what the cluster
                # costs, whatever the number of cores.
                cpu[count].append((cpu_ticks(pids) - before) * tick_us / delivered)
        for count in (1, 2):
            results[f"cluster_workers{count}_per_s"] = statistics.median(per_s[count])
            results[f"cluster_workers{count}_cpu_us_per_delivery"] = statistics.median(cpu[count])
    finally:
        for relay in deployments.values():
            relay.close()


# --------------------------------------------------------------------------- memory


async def relay_memory(relay: Relay, n: int, redis: Redis | None) -> dict[str, float]:
    """RSS per connection of a running relay (or workers) for n idle peers."""
    await asyncio.sleep(0.5)
    pids = workers_of(relay.pid) or [relay.pid]
    relay_base = process_tree_rss_kib(relay.pid)
    redis_base = redis.rss_kib() if redis is not None else 0
    idle: list[BarePeer] = []
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


async def memory(results: dict[str, float], redis: Redis, sizes: Sizes, use_uvloop: bool) -> None:
    """Memory per connection: one relay, then four workers with Redis."""
    n = sizes.memory_connections
    single = Relay("ours", use_uvloop=use_uvloop)
    try:
        await single.start()
        mem = await relay_memory(single, n, None)
        results["cluster_single_kib_per_conn"] = mem["kib_per_conn"]
    finally:
        single.close()
    workers4 = Relay(
        "ours", use_uvloop=use_uvloop, extra=["--workers", "4", "--redis", redis.url(3)]
    )
    try:
        await workers4.start()
        mem = await relay_memory(workers4, n, redis)
        results["cluster_workers4_kib_per_conn"] = mem["kib_per_conn"]
        results["cluster_workers4_redis_kib_per_conn"] = mem["redis_kib_per_conn"]
        results["cluster_workers4_rss_kib"] = mem["rss_kib"]
    finally:
        workers4.close()
