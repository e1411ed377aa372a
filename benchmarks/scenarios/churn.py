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

The relay runs as its own process (``python -m ratatoskr_client relay``, its
default rate limit), so its CPU time is its own; needs the ``metrics`` extra
(``prometheus-client``). The anonymous-connection limit does not apply: every
connection comes from 127.0.0.1, which is exempt. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import time
from collections.abc import Sequence

import aiohttp
import cbor2

from benchmarks.harness import Relay, cpu_seconds, log, new_session
from ratatoskr_client.server.asyncio.metrics import MAX_AGE

__all__ = ["main", "measure"]

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
            idle = [Idle() for _ in range(idle_count)]
            for i in range(0, idle_count, 50):
                await asyncio.gather(
                    *(
                        p.start(http, relay.url, f"idle-{n % IDLE_DOCUMENTS}")
                        for n, p in enumerate(idle[i : i + 50])
                    )
                )
            for _ in range(20):  # warm-up
                await cycle(http, relay.url)
            # Quiet first: the idle peers' own joins may still be going out
            # (the presence budget paces a document's announcements).
            last = -1
            while (total := sum(p.received for p in idle)) != last:
                last = total
                await asyncio.sleep(1.0)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="What one connection cycle costs the relay, with N idle peers connected."
    )
    parser.add_argument(
        "--idle", type=_counts, default="0,500,1500", help="idle peer counts (0,500,1500)"
    )
    parser.add_argument("--cycles", type=int, default=300, help="cycles per measurement (300)")
    parser.add_argument("--scope", choices=["document", "global", "both"], default="both")
    args = parser.parse_args(argv)
    if args.cycles <= 0:
        parser.error(f"--cycles must be positive, got {args.cycles}")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1,500 idle peers need the fds
    scopes = ["global", "document"] if args.scope == "both" else [args.scope]
    asyncio.run(_run(scopes, args.idle, args.cycles))
    return 0
