"""What one connection cycle costs the relay, with N idle peers connected
(``benchmarks/churn.py``).

An attacker's cycle is the one of issue #19: connect, authenticate
anonymously, send a ``request`` for a document nobody else is in, reset the
TCP connection. With 0, 500 and 1,500 idle peers connected (anonymous, each
present in one of ten documents the attacker never touches), this prints, per
identity scope, what a cycle costs:

* the relay's CPU time (``utime + stime`` of its process, from ``/proc``);
* the frames it wrote (``ratatoskr_frames_sent_total`` from ``/metrics``);
* the frames each idle peer received, on average;
* cycles per second (sequential cycles, one at a time).

With ``--duration SECONDS`` it measures the attack as issue #19 states its
acceptance instead: one attacker, in a process of its own, cycles as fast as
it can for that long, while the idle peers count what they receive and a
victim pair (two ``RatatoskrClient`` in a document of their own, 10
messages a second each, :class:`~benchmarks.harness.Victims`) measures its
one-way latency. Printed per scope: the attacker's cycles, the frames each
idle peer received per second on average, the relay's CPU time, and the
pair's deliveries and latency.

The relay runs as its own process (``python -m ratatoskr_client relay``, its
default rate limit), so its CPU time is its own; needs the ``metrics`` extra
(``prometheus-client``). The anonymous-connection limit does not apply: every
connection comes from 127.0.0.1, which is exempt. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import cbor2

from benchmarks.harness import ROOT, Relay, Victims, cpu_seconds, log, new_session
from ratatoskr_client.server.asyncio.metrics import MAX_AGE

__all__ = ["main", "measure", "measure_attack"]

SENT = re.compile(r'^ratatoskr_frames_sent_total\{type="[^"]*"\} ([0-9.e+]+)$', re.M)
#: the documents the idle peers are in (the attacker's is another)
IDLE_DOCUMENTS = 10


async def frames_sent(relay: Relay, http: aiohttp.ClientSession) -> int:
    """Every frame the relay has written so far (its ``/metrics``, which
    serves a page again for MAX_AGE: read it no more often)."""
    async with http.get(f"{relay.http_url}/metrics") as resp:
        text = await resp.text()
    return int(sum(float(v) for v in SENT.findall(text)))


class Idle:
    """An idle peer: connected, present in one document, counting what it receives."""

    def __init__(self) -> None:
        self.received = 0
        self.task: asyncio.Task[None] | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def start(self, http: aiohttp.ClientSession, url: str, doc: str) -> None:
        ws = await http.ws_connect(url, max_msg_size=0)
        await ws.send_bytes(cbor2.dumps({"type": "auth", "anonymous": True}))
        await ws.receive()  # auth_ok
        payload = {"type": "presence", "status": "join", "documentId": doc}
        frame = {
            "type": "ephemeral", "senderId": "", "targetId": "", "documentId": doc,
            "count": 1, "sessionId": os.urandom(8).hex(), "data": cbor2.dumps(payload),
        }  # fmt: skip
        await ws.send_bytes(cbor2.dumps(frame))
        self.ws = ws
        self.task = asyncio.create_task(self._read(ws))

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.ws is not None:
            await self.ws.close()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                self.received += 1


def _transport(ws: aiohttp.ClientWebSocketResponse) -> asyncio.BaseTransport:
    transport = getattr(getattr(ws, "_writer", None), "transport", None)
    return transport or ws._response.connection.transport  # type: ignore[union-attr]


async def cycle(http: aiohttp.ClientSession, url: str) -> None:
    """connect -> anonymous auth -> request -> reset."""
    ws = await http.ws_connect(url, max_msg_size=0)
    await ws.send_bytes(cbor2.dumps({"type": "auth", "anonymous": True}))
    await ws.receive()  # auth_ok
    request = {"type": "request", "senderId": "", "targetId": "", "documentId": "churn",
               "data": bytes.fromhex("42000001000000020102")}  # fmt: skip
    await ws.send_bytes(cbor2.dumps(request))
    await ws.receive()  # doc-unavailable (and in global scope the initial sync before it)
    _transport(ws).abort()
    with contextlib.suppress(Exception):
        await ws.close()


async def measure(scope: str, idle_count: int, cycles: int) -> dict[str, float]:
    """One relay in ``scope``, ``idle_count`` idle peers, ``cycles`` cycles."""
    relay = Relay("ours", use_uvloop=False, extra=["--identity-scope", scope], rate_limit=None)
    await relay.start()
    try:
        async with new_session() as http:
            idle = await _start_idle(http, relay.url, idle_count)
            for _ in range(20):  # warm-up
                await cycle(http, relay.url)
            await _quiet(idle)
            got_before = sum(p.received for p in idle)
            sent_before = await frames_sent(relay, http)
            cpu_before = cpu_seconds(relay.pid)
            started = time.perf_counter()
            for _ in range(cycles):
                await cycle(http, relay.url)
            wall = time.perf_counter() - started
            await asyncio.sleep(MAX_AGE)  # the last closes handled; /metrics renders anew
            cpu = cpu_seconds(relay.pid) - cpu_before
            sent = await frames_sent(relay, http) - sent_before
            got = sum(p.received for p in idle) - got_before
            await asyncio.gather(*(p.close() for p in idle))
    finally:
        relay.close()
    return {
        "cpu_ms_per_cycle": 1000 * cpu / cycles,
        "frames_per_cycle": sent / cycles,
        "frames_per_idle_peer_per_cycle": got / cycles / idle_count if idle_count else 0.0,
        "cycles_per_s": cycles / wall,
    }


async def _start_idle(http: aiohttp.ClientSession, url: str, idle_count: int) -> list[Idle]:
    idle = [Idle() for _ in range(idle_count)]
    for i in range(0, idle_count, 50):
        await asyncio.gather(
            *(
                p.start(http, url, f"idle-{n % IDLE_DOCUMENTS}")
                for n, p in enumerate(idle[i : i + 50], start=i)
            )
        )
    return idle


async def _quiet(idle: Sequence[Idle]) -> None:
    """Until the idle peers stop receiving (their own joins may still be going
    out: the presence budget paces a document's announcements)."""
    last = -1
    while (total := sum(p.received for p in idle)) != last:
        last = total
        await asyncio.sleep(1.0)


async def attack(url: str, seconds: float) -> tuple[int, float]:
    """Cycles, one after the other, for ``seconds``; returns how many, and
    how long they took."""
    done = 0
    async with new_session() as http:
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            await cycle(http, url)
            done += 1
        return done, time.perf_counter() - started


async def measure_attack(scope: str, idle_count: int, seconds: float) -> dict[str, Any]:
    """One relay in ``scope``, ``idle_count`` idle peers and a victim pair, and
    one attacker in a process of its own cycling for ``seconds``."""
    relay = Relay("ours", use_uvloop=False, extra=["--identity-scope", scope], rate_limit=None)
    await relay.start()
    victims = Victims(relay.http_url)
    try:
        async with new_session() as http:
            idle = await _start_idle(http, relay.url, idle_count)
            await victims.open()
            await _quiet(idle)
            attacker = await asyncio.create_subprocess_exec(
                sys.executable,
                str(ROOT / "benchmarks" / "churn.py"),
                "--attack",
                relay.url,
                "--duration",
                str(seconds),
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
            )
            got_before = sum(p.received for p in idle)
            cpu_before = cpu_seconds(relay.pid)
            await victims.talk(seconds)
            out, _ = await attacker.communicate()
            await victims.settle()
            await asyncio.sleep(MAX_AGE)  # the last closes handled
            cpu = cpu_seconds(relay.pid) - cpu_before
            got = sum(p.received for p in idle) - got_before
            cycles, attacked = json.loads(out) if out.strip() else (0, seconds)
            await asyncio.gather(*(p.close() for p in idle))
    finally:
        await victims.close()
        relay.close()
    return {
        "scope": scope,
        "idle_peers": idle_count,
        "duration_s": seconds,
        "attacker_cycles": cycles,
        "attacker_cycles_per_s": round(cycles / attacked, 1),
        "frames_per_idle_peer_per_s": round(got / idle_count / attacked, 3) if idle_count else 0.0,
        "relay_cpu_s": round(cpu, 2),
        **victims.report(),
    }


def _counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",")]
    except ValueError:
        problem = f"expected numbers like 0,500,1500, got {text!r}"
        raise argparse.ArgumentTypeError(problem) from None
    if any(n < 0 for n in counts):
        raise argparse.ArgumentTypeError(f"idle peer counts cannot be negative: {text!r}")
    return counts


async def _run(scopes: Sequence[str], idle_counts: Sequence[int], cycles: int) -> None:
    print("scope     idle  cpu_ms/cycle  frames/cycle  frames/idle peer/cycle  cycles/s")
    for scope in scopes:
        for n in idle_counts:
            log(f"{scope} scope, {n} idle peers: {cycles} cycles")
            m = await measure(scope, n, cycles)
            print(
                f"{scope:8} {n:5}  {m['cpu_ms_per_cycle']:12.2f}  {m['frames_per_cycle']:12.1f}"
                f"  {m['frames_per_idle_peer_per_cycle']:22.2f}  {m['cycles_per_s']:8.0f}",
                flush=True,
            )


async def _run_attack(
    scopes: Sequence[str], idle_counts: Sequence[int], seconds: float
) -> list[dict[str, Any]]:
    results = []
    for scope in scopes:
        for n in idle_counts:
            log(f"{scope} scope, {n} idle peers, a victim pair: one attacker for {seconds:g} s")
            results.append(await measure_attack(scope, n, seconds))
            print(json.dumps(results[-1], indent=2), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="What one connection cycle costs the relay, with N idle peers connected."
    )
    parser.add_argument(
        "--idle", type=_counts, default="0,500,1500", help="idle peer counts (0,500,1500)"
    )
    parser.add_argument("--cycles", type=int, default=300, help="cycles per measurement (300)")
    parser.add_argument("--scope", choices=["document", "global", "both"], default="both")
    parser.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="instead of --cycles: one attacker in its own process cycles for SECONDS "
        "while a victim pair talks; prints the frames per idle peer per second and "
        "the pair's latency",
    )
    parser.add_argument("--json", metavar="PATH", help="with --duration: also write the results")
    parser.add_argument("--attack", metavar="URL", help=argparse.SUPPRESS)  # the attacker's process
    args = parser.parse_args(argv)
    if args.cycles <= 0:
        parser.error(f"--cycles must be positive, got {args.cycles}")
    if args.duration is not None and args.duration <= 0:
        parser.error(f"--duration must be positive, got {args.duration:g}")
    if args.attack is not None:
        print(json.dumps(asyncio.run(attack(args.attack, args.duration or 10.0))), flush=True)
        return 0
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1,500 idle peers need the fds
    scopes = ["global", "document"] if args.scope == "both" else [args.scope]
    if args.duration is not None:
        results = asyncio.run(_run_attack(scopes, args.idle, args.duration))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    else:
        asyncio.run(_run(scopes, args.idle, args.cycles))
    return 0
