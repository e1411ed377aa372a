#!/usr/bin/env python
"""What the operator's view costs the relay: webhooks to a receiver that is
down, and dashboard tabs open, against the same relay without them.

    python benchmarks/operator_view.py [--rounds 8] [--messages 300] [--tabs 10]
    python benchmarks/operator_view.py --tab-cost [--tabs 10] [--idle 200] [--rounds 4]

Four relay processes run side by side (``python -m ratatoskr_client relay``):

* ``plain``: no admin, no webhooks (the floor of this run);
* ``control``: the same again, to show the run's noise (two identical relays);
* ``hooked``: ``--webhook-url`` pointing at a receiver that accepts TCP
  connections and never answers (the worst kind of "down": every POST waits
  for its timeout, then is retried);
* ``dashboard``: ``--admin-token`` with ``--tabs`` dashboard streams open
  (``GET /admin/api/stream``), each read by this process.

On each relay, five churners enter and leave documents (each cycle makes four
webhook events: occupied, joined, left, vacated, a few hundred a second in
all; and changes what the dashboard shows), and a pair of clients measures one-way A→B latency
(``send_ephemeral`` → ``ephemeral-message``), sequentially, in another
document. Rounds alternate between the relays, so load from elsewhere on the
machine hits all four alike. Printed: p50 and p99 per relay and their ratios
to ``plain``, and each relay's CPU per second of the run (``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:
    # Run as a script: Python put benchmarks/ first on sys.path. Put the
    # repository root there instead (see run.py).
    _here = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0] or ".").resolve() == _here:
        del sys.path[0]
    sys.path.insert(0, str(_here.parent))

import aiohttp

from benchmarks.harness import Relay, cpu_seconds, new_session, now_ns, pct
from ratatoskr_client import RatatoskrClient

TOKEN = "benchmark-admin-token"
#: clients entering and leaving documents on each relay, and their pause
CHURNERS = 5
CHURN_PAUSE = 0.05


async def blackhole() -> tuple[asyncio.Server, int, list[asyncio.StreamWriter]]:
    """A TCP server that accepts and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], held


class Pair:
    """A and B in one document; B timestamps each arrival."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.a = RatatoskrClient(url, session=session, rate_limit=None)
        self.b = RatatoskrClient(url, session=session, rate_limit=None)
        self.arrived: asyncio.Queue[int] = asyncio.Queue()

    async def open(self) -> None:
        await self.a.connect()
        await self.b.connect()
        await self.a.enter_document("latency")
        await self.b.enter_document("latency")
        await self.b.wait_for_presence("latency", lambda peers: len(peers) == 2, timeout=10)
        self.b.on("ephemeral-message", lambda doc, peer, payload: self.arrived.put_nowait(now_ns()))

    async def measure(self, count: int) -> list[float]:
        samples = []
        for i in range(count):
            sent = now_ns()
            await self.a.send_ephemeral("latency", {"seq": i, "cursor": [3, 4]})
            got = await asyncio.wait_for(self.arrived.get(), 5)
            samples.append((got - sent) / 1000)
        return samples

    async def close(self) -> None:
        await self.a.close()
        await self.b.close()


async def churn(url: str, session: aiohttp.ClientSession, stop: asyncio.Event, n: int) -> None:
    """Enter and leave documents in turn (8 of them: the relay allows a
    connection 5 joins or leaves a second per document)."""
    client = RatatoskrClient(url, session=session, rate_limit=None)
    await client.connect()
    try:
        for turn in itertools.count():
            if stop.is_set():
                return
            doc = f"churn-{n}-{turn % 8}"
            await client.enter_document(doc)
            await client.leave_document(doc)
            await asyncio.sleep(CHURN_PAUSE)
    finally:
        await client.close()


async def tab(url: str, session: aiohttp.ClientSession) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with session.get(f"{url}/admin/api/stream", headers=headers) as response:
        async for _ in response.content:
            pass


async def main(args: argparse.Namespace) -> None:
    server, port, held = await blackhole()
    os.environ["RATATOSKR_WEBHOOK_SECRET"] = "benchmark-secret"
    relays = {
        "plain": Relay("ours", use_uvloop=False),
        # The same relay again: how far two identical relays differ in this run.
        "control": Relay("ours", use_uvloop=False),
        "hooked": Relay(
            "ours", use_uvloop=False, extra=["--webhook-url", f"http://127.0.0.1:{port}/hooks"]
        ),
        "dashboard": Relay("ours", use_uvloop=False, extra=["--admin-token", TOKEN]),
    }
    session = new_session()
    stop = asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []
    pairs: dict[str, Pair] = {}
    try:
        for relay in relays.values():
            await relay.start()
        for name, relay in relays.items():
            http = relay.http_url
            pairs[name] = Pair(http, session)
            await pairs[name].open()
            tasks += [asyncio.create_task(churn(http, session, stop, n)) for n in range(CHURNERS)]
        tasks += [
            asyncio.create_task(tab(relays["dashboard"].http_url, session))
            for _ in range(args.tabs)
        ]
        await asyncio.sleep(1.0)  # warm-up: the churn running, the tabs open
        samples: dict[str, list[float]] = {name: [] for name in relays}
        cpu0 = {name: cpu_seconds(r.pid) for name, r in relays.items()}
        t0 = time.monotonic()
        for _ in range(args.rounds):
            for name, pair in pairs.items():
                samples[name] += await pair.measure(args.messages)
        elapsed = time.monotonic() - t0
        cpu = {name: (cpu_seconds(r.pid) - cpu0[name]) / elapsed for name, r in relays.items()}
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for pair in pairs.values():
            with contextlib.suppress(Exception):
                await pair.close()
        await session.close()
        for relay in relays.values():
            relay.close()
        for writer in held:
            writer.close()
        server.close()

    base50, base99 = pct(samples["plain"], 50), pct(samples["plain"], 99)
    print(
        f"{'relay':<10} {'p50 µs':>8} {'p99 µs':>8} {'p50/plain':>10} {'p99/plain':>10} "
        f"{'CPU %':>6}"
    )
    for name, values in samples.items():
        p50, p99 = pct(values, 50), pct(values, 99)
        print(
            f"{name:<10} {p50:8.0f} {p99:8.0f} {p50 / base50:10.2f} {p99 / base99:10.2f} "
            f"{cpu[name] * 100:6.1f}"
        )
    print(
        f"({args.rounds} rounds x {args.messages} messages per relay; {CHURNERS} churners on "
        f"each; {args.tabs} dashboard tabs; webhook receiver never answers)"
    )


async def tab_cost(args: argparse.Namespace) -> None:
    """Relay CPU with 0, 1 and ``--tabs`` dashboard streams open, the churn
    running, in alternating windows of ``--window`` seconds."""
    relay = Relay("ours", use_uvloop=False, extra=["--admin-token", TOKEN])
    session = new_session()
    stop = asyncio.Event()
    await relay.start()
    churners = [
        asyncio.create_task(churn(relay.http_url, session, stop, n)) for n in range(CHURNERS)
    ]
    # Idle peers in a few documents: the dashboard shows them all.
    idle = [RatatoskrClient(relay.http_url, session=session) for _ in range(args.idle)]
    cpu: dict[int, list[float]] = {0: [], 1: [], args.tabs: []}
    try:
        for i, client in enumerate(idle):
            await client.connect()
            await client.enter_document(f"idle-{i % 10}")
            await client.set_state(f"idle-{i % 10}", "cursor", [i % 80, i % 40])
        await asyncio.sleep(1.0)
        for _ in range(args.rounds):
            for count in cpu:
                tabs = [asyncio.create_task(tab(relay.http_url, session)) for _ in range(count)]
                await asyncio.sleep(0.5)  # (the streams open)
                before, t0 = cpu_seconds(relay.pid), time.monotonic()
                await asyncio.sleep(args.window)
                cpu[count].append((cpu_seconds(relay.pid) - before) / (time.monotonic() - t0))
                for task in tabs:
                    task.cancel()
                await asyncio.gather(*tabs, return_exceptions=True)
    finally:
        stop.set()
        await asyncio.gather(*churners, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in idle), return_exceptions=True)
        await session.close()
        relay.close()
    print(f"{'tabs':>5} {'relay CPU % (median)':>22}")
    for count, values in cpu.items():
        print(f"{count:>5} {pct(values, 50) * 100:22.1f}")
    print(
        f"({args.rounds} windows of {args.window:g} s each; {CHURNERS} churners, "
        f"{args.idle} idle peers sharing a cursor in 10 documents)"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--tabs", type=int, default=10)
    parser.add_argument(
        "--tab-cost", action="store_true", help="measure the relay's CPU per dashboard tab instead"
    )
    parser.add_argument("--window", type=float, default=3.0, help="--tab-cost: seconds per window")
    parser.add_argument("--idle", type=int, default=200, help="--tab-cost: idle peers shown")
    return parser.parse_args()


if __name__ == "__main__":
    options = parse_args()
    asyncio.run(tab_cost(options) if options.tab_cost else main(options))
