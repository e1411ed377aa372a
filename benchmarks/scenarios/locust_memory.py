"""What one simulated Locust user is made of (``benchmarks/locust_memory.py``).

A reference relay runs in its own process; a child process runs Locust in
process (its ``Environment`` and local runner, the users of
``examples/locustfile.py`` idle in documents of 10 as in the memory phase of
``benchmarks/locust_capacity.py``: entered, one cursor set, then nothing),
first with 10 users, then with N. What each added user costs is read twice,
in two children:

* **RSS**: ``VmRSS`` with N users minus with 10, per added user;
* **live Python heap**: ``tracemalloc`` snapshots at the same two moments,
  compared by file and grouped into parts (aiohttp and its helpers, asyncio,
  gevent and greenlet, Locust, pyee, each module of this package, the rest).
  tracemalloc sees what Python's allocators hand out, not what they keep
  (RSS is that plus pymalloc's free blocks, the C stacks of greenlets
  copied to the heap and the C libraries' own memory).

``python benchmarks/locust_memory.py [--users 2000]`` prints both; ``--top N``
lists the N largest files (``--lines``: source lines).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from collections import defaultdict
from typing import Any

from benchmarks.harness import ROOT, BenchmarkError, Relay

GROUP = 10  # users per document, as locust_capacity's memory phase
BASE = 10  # users of the first reading

CHILD = r"""
import gc, json, sys, time, tracemalloc, types
from pathlib import Path

import gevent
import locust
from locust.env import Environment

sys.path.insert(0, str(Path(sys.argv[1]) / "examples"))
import locustfile

url, (users, base, group), key = sys.argv[2], map(int, sys.argv[3:6]), sys.argv[6]
trace = key != "-"
options = types.SimpleNamespace(
    documents=max(1, users // group), document_prefix="mem-", document_ids="",
    create_documents=0, tokens_file="", cursor_rate=0.01, reactions_per_minute=0.0, stay=0.0,
)
env = Environment(
    user_classes=[locustfile.Participant], host=url, parsed_options=options, events=locust.events
)
entered = [0]
failures = []

def on_request(name, exception, **_):
    if exception is not None:
        failures.append(f"{name}: {exception!r}")
    elif name == "set_state":  # the first tick: connected, entered, cursor set
        entered[0] += 1

env.events.request.add_listener(on_request)
runner = env.create_local_runner()
env.events.init.fire(environment=env, runner=runner, web_ui=None)

def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

def reach(n, timeout=180.0):
    runner.start(n, spawn_rate=200)
    deadline = time.monotonic() + timeout
    while entered[0] < n:
        if failures:
            raise SystemExit(f"a user failed: {failures[0]}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{entered[0]} of {n} users entered within {timeout:g} s")
        gevent.sleep(0.2)
    gevent.sleep(3.0)  # settled: the peer tables are shared after 0.5 s of quiet
    gc.collect()

if trace:
    tracemalloc.start()
reach(base)
before = (rss(), tracemalloc.take_snapshot() if trace else None)
reach(users)
after = (rss(), tracemalloc.take_snapshot() if trace else None)
files = {}
if trace:
    for stat in after[1].compare_to(before[1], key):
        frame = stat.traceback[0]
        where = frame.filename if key == "filename" else f"{frame.filename}:{frame.lineno}"
        files[where] = files.get(where, 0) + stat.size_diff
print(json.dumps({"rss_base": before[0], "rss": after[0], "files": files}), flush=True)
runner.quit()
"""

#: (part, substring of the file's path); the first match names the part
PARTS = [
    ("aiohttp and helpers (multidict, yarl, aiohappyeyeballs...)", "/aiohttp/"),
    ("aiohttp and helpers (multidict, yarl, aiohappyeyeballs...)", "/multidict/"),
    ("aiohttp and helpers (multidict, yarl, aiohappyeyeballs...)", "/yarl/"),
    ("aiohttp and helpers (multidict, yarl, aiohappyeyeballs...)", "/aiohappyeyeballs/"),
    ("aiohttp and helpers (multidict, yarl, aiohappyeyeballs...)", "/propcache/"),
    ("aiohttp and helpers (multidict, yarl, aiohappyeyeballs...)", "/frozenlist/"),
    ("aiohttp and helpers (multidict, yarl, aiohappyeyeballs...)", "/aiosignal/"),
    ("aiohttp and helpers (multidict, yarl, aiohappyeyeballs...)", "http/cookiejar"),
    ("gevent and greenlet", "/gevent/"),
    ("gevent and greenlet", "/greenlet/"),
    ("pyee", "/pyee/"),
    ("ratatoskr_client.locust", "ratatoskr_client/locust/"),
    ("ratatoskr_client.sync", "ratatoskr_client/sync/"),
    ("ratatoskr_client.asyncio", "ratatoskr_client/asyncio/"),
    ("ratatoskr_client.core: peers, presence, state", "ratatoskr_client/core/peer"),
    ("ratatoskr_client.core: peers, presence, state", "ratatoskr_client/core/membership"),
    ("ratatoskr_client.core: peers, presence, state", "ratatoskr_client/core/users"),
    ("ratatoskr_client.core: peers, presence, state", "ratatoskr_client/core/sharing"),
    ("ratatoskr_client.core: the rest", "ratatoskr_client/core/"),
    ("ratatoskr_client.protocol", "ratatoskr_client/protocol/"),
    ("ratatoskr_client (other)", "ratatoskr_client/"),
    ("Locust", "/locust/"),
    ("the example locustfile", "locustfile.py"),
    ("asyncio", "/asyncio/"),
]


def part_of(filename: str) -> str:
    for part, marker in PARTS:
        if marker in filename:
            return part
    return "the rest (standard library, interpreter)"


def measure(url: str, users: int, trace: str) -> dict[str, Any]:
    """One child's readings; ``trace``: ``-`` (RSS only), or tracemalloc's
    grouping (``filename`` or ``lineno``)."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), url, str(users), str(BASE), str(GROUP),
         trace],
        capture_output=True, text=True, timeout=900, check=False, cwd=ROOT,
    )  # fmt: skip
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchmarkError(f"the Locust process with {users} users failed: {last}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="What one idle simulated Locust user costs: RSS and live heap by part."
    )
    parser.add_argument("--users", type=int, default=2000, help="users of the second reading")
    parser.add_argument("--top", type=int, default=0, help="also list the N largest files")
    parser.add_argument(
        "--lines", action="store_true", help="--top lists source lines instead of files"
    )
    args = parser.parse_args(argv)
    if args.users <= BASE:
        parser.error(f"--users must be above {BASE}")
    relay = Relay(
        "ours", use_uvloop=importlib.util.find_spec("uvloop") is not None, rate_limit=None
    )
    try:
        relay.start_blocking()
        url = relay.http_url
        added = args.users - BASE
        plain = measure(url, args.users, "-")
        traced = measure(url, args.users, "lineno" if args.lines else "filename")
    except BenchmarkError as exc:
        print(f"locust_memory: {exc}", file=sys.stderr)
        return 1
    finally:
        relay.close()
    print(
        f"{args.users} idle users in documents of {GROUP}, one Locust process; "
        f"per user added above {BASE}:"
    )
    print(
        f"RSS {plain['rss'] / 1024:.1f} MiB: {(plain['rss'] - plain['rss_base']) / added:.1f} "
        "KiB per user"
    )
    parts: dict[str, int] = defaultdict(int)
    for filename, size in traced["files"].items():
        parts[part_of(filename)] += size
    total = sum(parts.values())
    print(f"live Python heap (tracemalloc): {total / 1024 / added:.1f} KiB per user")
    for part, size in sorted(parts.items(), key=lambda item: -item[1]):
        print(f"  {size / 1024 / added:6.2f}  {part}")
    if args.top:
        print(f"the {args.top} largest {'lines' if args.lines else 'files'} (KiB per user):")
        ranked = sorted(traced["files"].items(), key=lambda item: -item[1])[: args.top]
        for filename, size in ranked:
            print(f"  {size / 1024 / added:6.2f}  {filename}")
    return 0
