#!/usr/bin/env python
"""Benchmarks: our relay and SDK, measured against a raw floor relay in the same run.

    python benchmarks/run.py [--quick] [--json PATH] [--uvloop] [--malloc-tuned] [--no-pin]
                             [--cluster]
    python -m benchmarks.run ...           (the same, from the repository root)

Two relays run as separate processes: the raw floor (``benchmarks/raw_relay.py``:
forwards every binary frame's bytes to every other connection, nothing else)
and ours (``python -m ratatoskr_client relay``). Clients live in this process.
What is measured (see docs/performance.md for the numbers and what they mean),
each phase in ``benchmarks/scenarios``:

* memory: idle clients entered in one document; relay RSS per peer and
  client-process RSS per client (KiB, from /proc); the same for the floor;
* reconnect storm: the relay is killed (SIGKILL) and restarted on the same
  port; seconds until every client's presence shows all of them again;
* one-way A→B latency, sequential messages after a warm-up: raw frames on the
  floor relay; ``send_ephemeral`` → ``ephemeral-message`` callback on ours;
* presence latency (ours): ``enter_document``/``leave_document`` on A →
  ``presence-changed`` on B;
* fan-out, 1 sender → 100 receivers in one document: delivered messages per
  second, the sender waiting while the slowest receiver lags by more than 1,000;
* with ``--cluster``: the relay cluster against one relay (``scenarios/cluster.py``).

The throughput runs need our relay's rate limit out of the way: it is started
with ``--rate-limit 100000000`` (per minute) and the benchmark clients are built
with ``rate_limit=None`` (no client-side pacing). The memory and storm phases use
the defaults, except that all clients share one ``aiohttp.ClientSession``
(documented usage: ``RatatoskrClient(url, session=...)``).

``--malloc-tuned`` re-runs the whole benchmark with ``MALLOC_MMAP_THRESHOLD_=1048576
MALLOC_TRIM_THRESHOLD_=268435456`` in the environment of this process and of
both relays. ``--uvloop`` runs this process and both relays on uvloop.

For the latency phases (1:1 and presence) this process runs on one CPU and both
relays on another (``harness.Placement``: otherwise the scheduler may put the
floor on the clients' CPU and ours elsewhere, and the ratio then measures a
cross-CPU wake-up); ``--no-pin`` leaves placement to the scheduler.

A phase that fails (a timeout, a refused connection, a relay that died) is
logged, listed under FAILED after the tables and in the JSON's ``failures``,
its figures are left out, and the run goes on; the exit status is then 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:
    # Run as a script: Python put benchmarks/ first on sys.path. Put the
    # repository root there instead, so that the modules of this package are
    # imported once each, as benchmarks.*, and never as top-level modules.
    _here = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0] or ".").resolve() == _here:
        del sys.path[0]
    sys.path.insert(0, str(_here.parent))

import argparse
import gc
import os
import time
from collections.abc import Sequence

from benchmarks import report
from benchmarks.harness import (
    BENCH_RATE_LIMIT,
    MALLOC_ENV,
    Failure,
    Phases,
    Placement,
    Redis,
    Relay,
    log,
    machine,
    run_loop,
)
from benchmarks.scenarios import cluster
from benchmarks.scenarios.fanout import FANOUT_RECEIVERS, measure_fanout
from benchmarks.scenarios.latency import measure_latency, measure_presence
from benchmarks.scenarios.memory import raw_memory, sdk_memory_and_storm

#: the --only groups
GROUPS = ("memory", "latency", "presence", "fanout")
#: the most any one phase may take (seconds); the longest, the cluster's memory
#: phase, takes about 5 minutes on a loaded 2-core machine
PHASE_BUDGET = 900.0


async def revive(relays: Sequence[Relay]) -> None:
    """Restart a relay that died in an earlier phase (it was reported there)."""
    for relay in relays:
        await relay.revive()


async def run(args: argparse.Namespace, phases: Phases, planned: list[str]) -> dict[str, float]:
    """The relay and SDK phases (all but the cluster's)."""
    quick = args.quick
    lat_n = 1000 if quick else 2000
    fan_n = 4000 if quick else 12_000
    pres_n = 50 if quick else 200
    idle_n = 200 if quick else 500
    rounds = 4 if quick else 8

    place = Placement.choose(pin=not args.no_pin)
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
        "pinned": int(place.relays is not None),
    }
    info = machine()
    log("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))

    # Memory first, while this process's heap holds nothing from other phases.
    if "memory" in planned:
        log(f"ours: memory and reconnect storm with {idle_n} clients")
        await phases.run(
            "memory",
            lambda: sdk_memory_and_storm(results, idle_n, args.uvloop),
            budget=PHASE_BUDGET,
        )
    if "memory_raw" in planned:
        gc.collect()
        log(f"raw: memory with {idle_n} connections")
        await phases.run(
            "memory_raw", lambda: raw_memory(results, idle_n, args.uvloop), budget=PHASE_BUDGET
        )
    if "memory_2000" in planned:
        gc.collect()
        log("ours: memory with 2000 clients (how it grows per client)")
        await phases.run(
            "memory_2000",
            lambda: sdk_memory_and_storm(results, 2000, args.uvloop, storm=False, suffix="_2000"),
            budget=PHASE_BUDGET,
        )

    relay_phases = [p for p in ("latency", "presence", "fanout") if p in planned]
    if not relay_phases:
        return results
    raw = Relay("raw", use_uvloop=args.uvloop)
    ours = Relay("ours", use_uvloop=args.uvloop)
    await _relay_phases(args, phases, planned, results, [raw, ours], relay_phases, place)
    return results


async def _relay_phases(
    args: argparse.Namespace,
    phases: Phases,
    planned: list[str],
    results: dict[str, float],
    relays: list[Relay],
    relay_phases: Sequence[str],
    place: Placement,
) -> None:
    """Latency, presence and fan-out against the two running-to-be relays."""
    raw, ours = relays
    quick = args.quick
    lat_n, lat_warm = (1000, 200) if quick else (2000, 200)
    fan_n = 4000 if quick else 12_000
    pres_n = 50 if quick else 200
    rounds = 4 if quick else 8
    try:
        if not await phases.run("relays", lambda: _start(relays), budget=PHASE_BUDGET):
            phases.skip(relay_phases, "the relays did not start")
            return
        if "latency" in planned:
            log(
                f"latency: {lat_n} messages each after {lat_warm} warm-up, "
                f"raw and ours alternating in {rounds} rounds"
            )

            async def latency() -> None:
                await revive(relays)
                await measure_latency(results, raw, ours, lat_n, lat_warm, rounds)

            log(f"latency placement: {place.describe()}")
            with place.pinned(relays):
                await phases.run("latency", latency, budget=PHASE_BUDGET, relays=relays)
        if "presence" in planned:
            log(f"presence latency: {pres_n} enters and {pres_n} leaves")

            async def presence() -> None:
                await revive(relays)
                await measure_presence(results, ours, pres_n)

            with place.pinned(relays):
                await phases.run("presence", presence, budget=PHASE_BUDGET, relays=relays)
        if "fanout" in planned:
            log(
                f"fan-out: {fan_n} messages each to {FANOUT_RECEIVERS} receivers, "
                f"raw and ours alternating in {rounds} rounds"
            )

            async def fanout() -> None:
                await revive(relays)
                await measure_fanout(results, raw, ours, fan_n, rounds)

            await phases.run("fanout", fanout, budget=PHASE_BUDGET, relays=relays)
    finally:
        for relay in relays:
            relay.close()


async def _start(relays: Sequence[Relay]) -> None:
    for relay in relays:
        await relay.start()


async def run_cluster(quick: bool, use_uvloop: bool, phases: Phases) -> dict[str, float]:
    """The cluster's phases; keys prefixed ``cluster_``."""
    sizes = cluster.Sizes.for_run(quick)
    results = cluster.settings(sizes)
    names = ["cluster_placements", "cluster_workers", "cluster_memory"]
    redis = Redis()
    try:
        if not await phases.run("cluster_redis", redis.start, budget=60):
            phases.skip(names, "redis-server did not start")
            return results
        log("cluster: latency and fan-out, single relay vs same node vs cross node")
        await phases.run(
            "cluster_placements",
            lambda: cluster.placements(results, redis, sizes, use_uvloop),
            budget=PHASE_BUDGET,
        )
        log("cluster: deliveries/s with 1 vs 2 workers")
        await phases.run(
            "cluster_workers",
            lambda: cluster.workers(results, redis, sizes, use_uvloop),
            budget=PHASE_BUDGET,
        )
        log(
            f"cluster: memory with {sizes.memory_connections} connections, "
            "single relay vs 4 workers"
        )
        await phases.run(
            "cluster_memory",
            lambda: cluster.memory(results, redis, sizes, use_uvloop),
            budget=PHASE_BUDGET,
        )
    finally:
        redis.close()
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark our relay and SDK against a raw floor. On a 2-core machine "
        "a full run takes about 2 minutes, --quick under 30 s, --cluster about 7 more "
        "minutes (see docs/performance.md).",
    )
    parser.add_argument("--quick", action="store_true", help="a smaller run (under 30 s)")
    parser.add_argument(
        "--json", metavar="PATH", help="write the results as JSON (its directory must exist)"
    )
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
        "--no-pin",
        action="store_true",
        help="leave the relays and this process where the scheduler puts them (default: "
        "this process on one CPU, both relays on another, for the 1:1 and presence "
        "latency phases; see docs/performance.md)",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="also run the relay cluster phases, about 7 minutes more (needs redis-server "
        "and the 'cluster' extra); see benchmarks/scenarios/cluster.py",
    )
    args = parser.parse_args(argv)
    if args.only:
        args.only = [p.strip() for p in args.only.split(",") if p.strip()]
        unknown = sorted(set(args.only) - set(GROUPS))
        if unknown or not args.only:
            parser.error(f"--only takes some of {', '.join(GROUPS)}; not {', '.join(unknown)}")
    if args.json:
        # Checked now, not after minutes of measuring.
        target = Path(args.json).resolve()
        if not target.parent.is_dir() or not os.access(target.parent, os.W_OK):
            parser.error(f"--json {args.json}: {target.parent} is not a writable directory")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.malloc_tuned and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        # glibc reads these at start-up: re-execute with them set (relays inherit
        # them), the way this was started (a script or -m).
        os.environ.update(MALLOC_ENV)
        os.execv(sys.executable, sys.orig_argv)

    planned = report.phases_for(quick=args.quick, cluster=args.cluster, only=args.only)
    phases = Phases()
    started = time.perf_counter()
    try:
        results = run_loop(run(args, phases, planned), use_uvloop=args.uvloop)
        if args.cluster:
            results.update(
                run_loop(run_cluster(args.quick, args.uvloop, phases), use_uvloop=args.uvloop)
            )
    except KeyboardInterrupt:
        log("interrupted; every process this run started is stopped")
        return 130
    wall = time.perf_counter() - started
    results["wall_s"] = wall
    if args.cluster:
        report.add_cluster_ratios(results)
    failures = list(phases.failures)
    for problem in report.check_keys(results, planned, failures, cluster=args.cluster):
        failures.append(Failure("keys", problem))
    print(report.render(results, wall))
    if args.cluster:
        print(report.render_cluster(results))
    if failures:
        print(report.render_failures(failures))
    if args.json:
        missing = [k for k in report.REQUIRED_KEYS if k not in results]
        if missing and not args.only:
            log(f"the JSON lacks the required keys: {', '.join(missing)}")
        Path(args.json).write_text(report.to_json(results, failures))
        log(f"results written to {args.json}")
    if failures:
        names = ", ".join(dict.fromkeys(f.phase for f in failures))
        log(f"benchmark incomplete: {len(failures)} failure(s) ({names}); exit status 1")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
