"""What one connection cycle costs the relay, with N idle peers connected.

An attacker's cycle is the one of issue #19: connect, authenticate
anonymously, send a ``request`` for a document nobody else is in, reset the
TCP connection. With 0, 500 and 1,500 idle peers connected (anonymous, each
present in one of ten documents the attacker never touches), this prints, per
identity scope, what a cycle costs:

* the relay's CPU time (``utime + stime`` of its process, from ``/proc``);
* the frames it wrote (``ratatoskr_frames_sent_total`` from ``/metrics``);
* the frames each idle peer received, on average;
* cycles per second (sequential cycles, one at a time).

    python benchmarks/churn.py [--idle 0,500,1500] [--cycles 300] [--scope both]

The relay runs as its own process (``python -m ratatoskr_client relay``), so
its CPU time is its own; needs the ``metrics`` extra (``prometheus-client``).
The anonymous-connection limit does not apply: every connection comes from
127.0.0.1, which is exempt. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import cbor2

LISTENING = re.compile(rb"listening on ws://([^:]+):(\d+)/sync")
SENT = re.compile(r'^ratatoskr_frames_sent_total\{type="[^"]*"\} ([0-9.e+]+)$', re.M)
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Relay:
    proc: asyncio.subprocess.Process
    url: str

    def cpu(self) -> float:
        """Seconds of CPU the relay process has used."""
        with open(f"/proc/{self.proc.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    async def frames_sent(self, http: aiohttp.ClientSession) -> int:
        async with http.get(f"{self.url}/metrics") as resp:
            text = await resp.text()
        return int(sum(float(v) for v in SENT.findall(text)))


@contextlib.asynccontextmanager
async def relay(scope: str) -> AsyncIterator[Relay]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ratatoskr_client", "relay", "--port", "0",
        "--identity-scope", scope,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        match = LISTENING.search(line)
        assert match, line
        yield Relay(proc, f"http://{match[1].decode()}:{int(match[2])}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        await proc.wait()


class Idle:
    """An idle peer: connected, present in one document, counting what it receives."""

    def __init__(self) -> None:
        self.received = 0
        self.task: asyncio.Task[None] | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def start(self, http: aiohttp.ClientSession, url: str, doc: str) -> None:
        ws = await http.ws_connect(f"{url}/sync", max_msg_size=0)
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


def transport_of(ws: aiohttp.ClientWebSocketResponse) -> Any:
    transport = getattr(getattr(ws, "_writer", None), "transport", None)
    return transport or ws._response.connection.transport  # type: ignore[union-attr]


async def cycle(http: aiohttp.ClientSession, url: str) -> None:
    """connect -> anonymous auth -> request -> reset."""
    ws = await http.ws_connect(f"{url}/sync", max_msg_size=0)
    await ws.send_bytes(cbor2.dumps({"type": "auth", "anonymous": True}))
    await ws.receive()  # auth_ok
    request = {"type": "request", "senderId": "", "targetId": "", "documentId": "churn",
               "data": bytes.fromhex("42000001000000020102")}  # fmt: skip
    await ws.send_bytes(cbor2.dumps(request))
    await ws.receive()  # doc-unavailable (and in global scope the initial sync before it)
    transport_of(ws).abort()
    with contextlib.suppress(Exception):
        await ws.close()


async def measure(scope: str, idle_count: int, cycles: int) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=0)
    async with relay(scope) as r, aiohttp.ClientSession(connector=connector) as http:
        idle = [Idle() for _ in range(idle_count)]
        for i in range(0, idle_count, 50):
            await asyncio.gather(
                *(p.start(http, r.url, f"idle-{n % 10}") for n, p in enumerate(idle[i : i + 50]))
            )
        for _ in range(20):  # warm-up
            await cycle(http, r.url)
        # Quiet first: the idle peers' own joins may still be going out (the
        # presence budget spreads 150 joins per document over 3 s).
        last = -1
        while (total := sum(p.received for p in idle)) != last:
            last = total
            await asyncio.sleep(1.0)
        got_before = sum(p.received for p in idle)
        cpu_before, sent_before = r.cpu(), await r.frames_sent(http)
        started = time.perf_counter()
        for _ in range(cycles):
            await cycle(http, r.url)
        wall = time.perf_counter() - started
        await asyncio.sleep(0.5)  # the last closes are handled
        cpu, sent = r.cpu() - cpu_before, await r.frames_sent(http) - sent_before
        got = sum(p.received for p in idle) - got_before
        await asyncio.gather(*(p.close() for p in idle))
        return {
            "cpu_ms_per_cycle": 1000 * cpu / cycles,
            "frames_per_cycle": sent / cycles,
            "frames_per_idle_peer_per_cycle": got / cycles / idle_count if idle_count else 0.0,
            "cycles_per_s": cycles / wall,
        }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", default="0,500,1500", help="idle peer counts (0,500,1500)")
    parser.add_argument("--cycles", type=int, default=300, help="cycles per measurement (300)")
    parser.add_argument("--scope", choices=["document", "global", "both"], default="both")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1,500 idle peers need the fds
    scopes = ["global", "document"] if args.scope == "both" else [args.scope]
    print("scope     idle  cpu_ms/cycle  frames/cycle  frames/idle peer/cycle  cycles/s")
    for scope in scopes:
        for n in (int(x) for x in args.idle.split(",")):
            m = await measure(scope, n, args.cycles)
            print(
                f"{scope:8} {n:5}  {m['cpu_ms_per_cycle']:12.2f}  {m['frames_per_cycle']:12.1f}"
                f"  {m['frames_per_idle_peer_per_cycle']:22.2f}  {m['cycles_per_s']:8.0f}",
                flush=True,
            )


if __name__ == "__main__":
    asyncio.run(main())
