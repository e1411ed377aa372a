#!/usr/bin/env python
"""How many simulated users one Locust worker process sustains, and at what cost.

    python benchmarks/locust_capacity.py [--users 100,200,400,600] [--steady 20]

A reference relay runs in its own process (``python -m ratatoskr_client relay
--uvloop`` when uvloop is installed), and one Locust process (``python -m
locust``, headless: one process is what a worker is) runs
``examples/locustfile.py`` against it. Three phases, each printed as a table:

* **connect rate**: N users spawned at once (``--spawn-rate`` N); connects per
  second = connects / (last ``auth_ok`` − first), from Locust's statistics.
  Every connect makes the server announce the newcomer's identity to every
  connected peer (the wire contract), so N connects in one process handle N²
  identity frames: the rate falls as N grows.
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
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "examples" / "locustfile.py"
TICK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
GROUP = 10  # users per document


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def rss_kib(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KIB


def start_relay() -> tuple[subprocess.Popen[str], str]:
    args = [sys.executable, "-m", "ratatoskr_client", "relay", "--port", "0"]
    if importlib.util.find_spec("uvloop") is not None:
        args.append("--uvloop")
    relay = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert relay.stdout is not None
    line = relay.stdout.readline()
    match = re.search(r"ws://([\d.]+:\d+)", line)
    if match is None:
        relay.kill()
        sys.exit(f"relay did not start: {line!r}")
    return relay, f"http://{match.group(1)}"


def run_locust(
    url: str, users: int, scenario: list[str], spawn_rate: int | None = None
) -> tuple[subprocess.Popen[str], Path]:
    """Start Locust (it runs until terminated); its statistics go to ``out``."""
    out = Path(tempfile.mkdtemp(prefix="locust-capacity-")) / "run"
    args = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", url, "--users", str(users), "--spawn-rate", str(spawn_rate or users),
        "--run-time", "600s", "--json-file", str(out), "--csv", str(out),
        "--loglevel", "ERROR", "--documents", str(max(1, users // GROUP)), *scenario,
    ]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), out


def wait_connected(out: Path, users: int, timeout: float = 120.0) -> float:
    """Wait until Locust's CSV (written every second) counts ``users`` connects;
    return the time it was seen."""
    path = out.parent / f"{out.name}_stats.csv"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for row in csv.DictReader(path.read_text().splitlines()):
                if row["Name"] == "connect" and int(row["Request Count"]) >= users:
                    return time.time()
        time.sleep(0.2)
    sys.exit(f"{users} users did not all connect within {timeout} s")


def finish(process: subprocess.Popen[str], out: Path) -> dict[str, dict[str, Any]]:
    process.terminate()  # SIGTERM: Locust stops its users and writes its statistics
    _, err = process.communicate(timeout=600)
    if "Traceback" in err:
        sys.exit(f"locust failed:\n{err}")
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
    window = [n for t, n in entry["num_reqs_per_sec"].items() if start <= int(t) < end]
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
    out = subprocess.run(
        [sys.executable, "-c", FLOOR, url, str(users), str(GROUP)],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout.split()  # fmt: skip
    return float(out[0]), int(out[1]) * PAGE_KIB


def connect_rate(url: str, users: int) -> str:
    process, out = run_locust(url, users, ["--cursor-rate", "0.01", "--stay", "0"])
    wait_connected(out, users)
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
    process, out = run_locust(url, users, idle, spawn_rate=min(users, 200))
    wait_connected(out, users)
    time.sleep(3)  # entered, settled
    rss = rss_kib(process.pid)
    stats = finish(process, out)
    assert stats["connect"]["num_requests"] == users, stats["connect"]
    return rss


def load(url: str, relay_pid: int, users: int, steady: int) -> str:
    scenario = ["--cursor-rate", "1", "--reactions-per-minute", "60", "--stay", "30"]
    process, out = run_locust(url, users, scenario, spawn_rate=100)
    wait_connected(out, users)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="100,200,400,600", help="user counts to try")
    parser.add_argument("--steady", type=int, default=20, help="seconds measured under load")
    args = parser.parse_args()
    counts = [int(n) for n in args.users.split(",")]
    relay, url = start_relay()
    try:
        print(f"relay {url}; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}")
        print("\nconnect rate (all users spawned at once)")
        print(" users  connects  span s  connects/s  floor s  ratio")
        for n in counts:
            print(connect_rate(url, n), flush=True)

        print("\nmemory (idle users, documents of 10)")
        base = memory(url, GROUP)
        _, floor_base = floor(url, GROUP)
        print(f" users  RSS MiB  KiB/user  floor KiB/user  ratio   (above {GROUP} users)")
        for n in counts:
            rss = memory(url, n)
            per_user = (rss - base) / (n - GROUP)
            per_client = (floor(url, n)[1] - floor_base) / (n - GROUP)
            print(
                f"{n:6d} {rss / 1024:8.1f} {per_user:9.1f} {per_client:15.1f} "
                f"{per_user / per_client:6.2f}",
                flush=True,
            )

        print(f"\nload (documents of {GROUP}; 1 cursor move + 1 reaction per user per second)")
        print(" users  sent/s  target  recv'd/s  p50ms  p95ms  p99ms  fails  locust  relay")
        for n in counts:
            print(load(url, relay.pid, n, args.steady), flush=True)
    finally:
        relay.terminate()
        relay.wait(10)


if __name__ == "__main__":
    main()
