"""How many simulated users one Locust worker process sustains, and at what cost
(``benchmarks/locust_capacity.py``).

A reference relay runs in its own process (``python -m ratatoskr_client relay
--uvloop`` when uvloop is installed, default rate limit), and one Locust process
(``python -m locust``, headless: one process is what a worker is) runs
``examples/locustfile.py`` against it. Three phases, each printed as a table:

* **connect rate**: N users spawned at once (``--spawn-rate`` N); connects per
  second = connects / (last ``auth_ok`` − first), from Locust's statistics.
  With the relay's ``identity_scope = "global"`` every connect makes it
  announce the newcomer's identity to every connected peer (the plan's wire
  contract), so N connects in one process handle N² identity frames: the rate
  falls as N grows. In its default document scope a connect sends none.
* **memory**: idle users (entered in documents of 10, no messages); the Locust
  process's ``VmRSS`` from /proc with N users, minus with 10, per added user.
* **the floor** for both: N asyncio clients in one plain Python process (no
  Locust, no blocking layer) connecting at once, then entering documents of 10:
  seconds to connect, and RSS per client; the ratios are Locust's over it.
* **load**: N users in documents of 10, each moving its cursor once a second
  and reacting once a second (so 2 messages sent per user per second, each
  delivered to the 9 others), moving to another document every 30 s on
  average. Over a steady window after every user is in: messages sent per
  second, reactions received per second (``ephemeral delivery``), delivery
  latency percentiles, failures, and the CPU of the Locust process (of one
  core: its event-loop thread and its greenlets share one GIL) and the relay.

A worker sustains N users when every user connects, nothing fails, the send
rate reaches the target, and delivery p95 stays under 250 ms. The machine and
the relay are shared with the worker, so on a 2-core machine the relay's CPU
counts against it: read the relay column too.

Locust writes its statistics (``--csv``, ``--json-file``) into a temporary
directory that is removed after each measurement. A measurement that fails is
printed as a FAILED row and the others go on; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, BenchmarkError, Relay, cpu_seconds, describe, rss_kib

LOCUSTFILE = ROOT / "examples" / "locustfile.py"
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
GROUP = 10  # users per document


@contextlib.contextmanager
def locust(
    url: str, users: int, scenario: list[str], spawn_rate: int | None = None
) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """A running Locust process (it runs until terminated) and the path prefix
    of its statistics, in a temporary directory removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="locust-capacity-") as tmp:
        out = Path(tmp) / "run"
        args = [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
            "--host", url, "--users", str(users), "--spawn-rate", str(spawn_rate or users),
            "--run-time", "600s", "--json-file", str(out), "--csv", str(out),
            "--loglevel", "ERROR", "--documents", str(max(1, users // GROUP)), *scenario,
        ]  # fmt: skip
        process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        try:
            yield process, out
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()


def wait_connected(
    process: subprocess.Popen[str], out: Path, users: int, timeout: float = 120.0
) -> float:
    """Wait until Locust's CSV (written every second) counts ``users`` connects;
    return the time it was seen."""
    path = out.parent / f"{out.name}_stats.csv"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for row in csv.DictReader(path.read_text().splitlines()):
                if row["Name"] == "connect" and int(row["Request Count"]) >= users:
                    return time.time()
        if process.poll() is not None:
            raise BenchmarkError(f"locust exited with status {process.returncode} while connecting")
        time.sleep(0.2)
    raise BenchmarkError(f"{users} users did not all connect within {timeout:g} s")


def finish(process: subprocess.Popen[str], out: Path) -> dict[str, dict[str, Any]]:
    """Stop Locust (SIGTERM: it stops its users and writes its statistics) and
    read its final statistics by name."""
    process.terminate()
    _, err = process.communicate(timeout=600)
    if "Traceback" in err:
        last = err.strip().splitlines()[-1]
        raise BenchmarkError(f"locust failed: {last}")
    entries = json.loads(out.with_suffix(".json").read_text())
    return {entry["name"]: entry for entry in entries}


def percentile(entry: dict[str, Any], q: float) -> float:
    times = sorted((float(ms), n) for ms, n in entry["response_times"].items())
    target = q * sum(n for _, n in times)
    seen = 0
    for ms, n in times:
        seen += n
        if seen >= target:
            return ms
    return float("nan")


def per_second(entry: dict[str, Any] | None, start: float, end: float) -> float:
    if entry is None:
        return 0.0
    window = [int(n) for t, n in entry["num_reqs_per_sec"].items() if start <= int(t) < end]
    return sum(window) / max(1.0, end - start)


# The floor: the same clients with the asyncio API in one plain process (no
# Locust, no blocking layer), connected concurrently, then entered in documents.
FLOOR = """
import asyncio, sys, time
from pathlib import Path
from ratatoskr_client import RatatoskrClient

async def main(url, n, group):
    clients = [RatatoskrClient(url) for _ in range(n)]
    start = time.perf_counter()
    await asyncio.gather(*(c.connect() for c in clients))
    span = time.perf_counter() - start
    await asyncio.gather(*(c.enter_document(f"floor-{i // group}") for i, c in enumerate(clients)))
    await asyncio.sleep(3)
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    print(span, pages, flush=True)
    await asyncio.gather(*(c.close() for c in clients))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


def floor(url: str, users: int) -> tuple[float, int]:
    """(seconds to connect ``users`` asyncio clients at once, RSS KiB after)."""
    proc = subprocess.run(
        [sys.executable, "-c", FLOOR, url, str(users), str(GROUP)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    out = proc.stdout.split()
    if proc.returncode or len(out) != 2:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchmarkError(f"the floor's {users} clients failed: {last}")
    return float(out[0]), int(out[1]) * PAGE_KIB


def connect_rate(url: str, users: int) -> str:
    with locust(url, users, ["--cursor-rate", "0.01", "--stay", "0"]) as (process, out):
        wait_connected(process, out, users)
        stats = finish(process, out)["connect"]
    span = stats["last_request_timestamp"] - stats["start_time"]
    rate = (stats["num_requests"] - 1) / span if span > 0 else float("inf")
    floor_span, _ = floor(url, users)
    return (
        f"{users:6d} {stats['num_requests']:9d} {span:8.2f} {rate:10.0f} "
        f"{floor_span:8.2f} {span / floor_span:6.2f}"
    )


def memory(url: str, users: int) -> int:
    idle = ["--cursor-rate", "0.01", "--reactions-per-minute", "0", "--stay", "0"]
    with locust(url, users, idle, spawn_rate=min(users, 200)) as (process, out):
        wait_connected(process, out, users)
        time.sleep(3)  # entered, settled
        rss = rss_kib(process.pid)
        stats = finish(process, out)
    if stats["connect"]["num_requests"] != users:
        raise BenchmarkError(f"{stats['connect']['num_requests']} connects, not {users}")
    return rss


def memory_row(url: str, users: int, base: int, floor_base: int) -> str:
    rss = memory(url, users)
    per_user = (rss - base) / (users - GROUP)
    per_client = (floor(url, users)[1] - floor_base) / (users - GROUP)
    return (
        f"{users:6d} {rss / 1024:8.1f} {per_user:9.1f} {per_client:15.1f} "
        f"{per_user / per_client:6.2f}"
    )


def load(url: str, relay_pid: int, users: int, steady: int) -> str:
    scenario = ["--cursor-rate", "1", "--reactions-per-minute", "60", "--stay", "30"]
    with locust(url, users, scenario, spawn_rate=100) as (process, out):
        wait_connected(process, out, users)
        time.sleep(3)  # entered, settled
        start, cpu0, relay0 = time.time(), cpu_seconds(process.pid), cpu_seconds(relay_pid)
        time.sleep(steady)
        end, cpu1, relay1 = time.time(), cpu_seconds(process.pid), cpu_seconds(relay_pid)
        stats = finish(process, out)
    sent = per_second(stats.get("set_state"), start, end) + per_second(
        stats.get("send_ephemeral"), start, end
    )
    delivery = stats["ephemeral delivery"]
    failures = sum(entry["num_failures"] for entry in stats.values())
    return (
        f"{users:6d} {sent:8.0f} {2 * users:8d} {per_second(delivery, start, end):9.0f} "
        f"{percentile(delivery, 0.5):6.0f} {percentile(delivery, 0.95):6.0f} "
        f"{percentile(delivery, 0.99):6.0f} {failures:6d} "
        f"{100 * (cpu1 - cpu0) / (end - start):6.0f}% "
        f"{100 * (relay1 - relay0) / (end - start):6.0f}%"
    )


def user_counts(text: str) -> list[int]:
    """``--users``: comma-separated counts, each above the document size."""
    try:
        counts = [int(n) for n in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of numbers: {text!r}"
        ) from None
    if not counts or min(counts) <= GROUP:
        raise argparse.ArgumentTypeError(f"every count must be above {GROUP}")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="How many simulated users one Locust worker process sustains. "
        "With the defaults it takes about 3.5 minutes on a 2-core machine."
    )
    parser.add_argument(
        "--users", type=user_counts, default="100,200,400,600", help="user counts to try"
    )
    parser.add_argument("--steady", type=int, default=20, help="seconds measured under load")
    args = parser.parse_args(argv)
    counts: list[int] = args.users
    failed: list[str] = []

    def row(label: str, measure: Callable[[], str]) -> None:
        try:
            print(measure(), flush=True)
        except Exception as exc:  # reported, and the next measurement goes on
            failed.append(label)
            print(f"FAILED {label}: {describe(exc)}", flush=True)

    relay = Relay(
        "ours", use_uvloop=importlib.util.find_spec("uvloop") is not None, rate_limit=None
    )
    try:
        try:
            relay.start_blocking()
        except BenchmarkError as exc:
            print(f"locust_capacity: {exc}", file=sys.stderr)
            return 1
        url = relay.http_url
        print(f"relay {url}; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}")
        print("\nconnect rate (all users spawned at once)")
        print(" users  connects  span s  connects/s  floor s  ratio")
        for n in counts:
            row(f"connect rate, {n} users", functools.partial(connect_rate, url, n))

        print("\nmemory (idle users, documents of 10)")
        try:
            base = memory(url, GROUP)
            _, floor_base = floor(url, GROUP)
        except Exception as exc:
            failed.append("memory")
            print(f"FAILED memory with {GROUP} users (the baseline): {describe(exc)}")
        else:
            print(f" users  RSS MiB  KiB/user  floor KiB/user  ratio   (above {GROUP} users)")
            for n in counts:
                row(f"memory, {n} users", functools.partial(memory_row, url, n, base, floor_base))

        print(f"\nload (documents of {GROUP}; 1 cursor move + 1 reaction per user per second)")
        print(" users  sent/s  target  recv'd/s  p50ms  p95ms  p99ms  fails  locust  relay")
        for n in counts:
            row(f"load, {n} users", functools.partial(load, url, relay.pid, n, args.steady))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        relay.close()
    if failed:
        print(f"\n{len(failed)} measurement(s) failed: {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0
