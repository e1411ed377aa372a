#!/usr/bin/env python
"""How long a resume takes on another relay of a cluster, against a plain auth.

    python benchmarks/resume_across.py [--rounds 30]
    python -m benchmarks.resume_across ...

Starts a redis-server and two relays (``a``, ``b``) joined to it, each with
``resume_grace = 15``, then, ``--rounds`` times, with bare WebSockets (no
client library in the timing):

1. a resumable anonymous peer authenticates on ``a`` and joins a document;
2. its TCP connection is cut without a close frame (``transport.abort()``);
3. **cross-relay resume**: a new WebSocket to ``b`` sends ``auth`` with
   ``resume: {peerId, secret}``; timed from before the WebSocket connects to
   the ``auth_ok`` (``resumed: true``): the claim to ``a`` through Redis,
   the handover back, the adoption;
4. **floor**: a new WebSocket to ``b`` with a plain anonymous ``auth`` (a new
   peer), timed the same way, in the same round;
5. **same-relay resume**, for reference: steps 1-3 against ``a`` alone.

Prints the median and 90th percentile of each in milliseconds and the ratio
of each median to the floor's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import cbor2

from benchmarks.harness import Redis, Relay, pct

DOC = "bench-resume"


async def _open(http: aiohttp.ClientSession, url: str, auth: dict[str, Any]) -> tuple[Any, dict]:
    ws = await http.ws_connect(url)
    await ws.send_bytes(cbor2.dumps({"type": "auth", **auth}))
    msg = await asyncio.wait_for(ws.receive(), 10)
    return ws, cbor2.loads(msg.data)


async def held_peer(http: aiohttp.ClientSession, url: str) -> tuple[str, str]:
    """A resumable peer present in DOC on ``url``, then cut off: (peer id, secret)."""
    ws, ok = await _open(http, url, {"anonymous": True, "resume": True})
    peer = ok["clientPeerId"]
    join = {"type": "presence", "status": "join", "documentId": DOC}
    frame = {
        "type": "ephemeral",
        "senderId": peer,
        "targetId": "",
        "documentId": DOC,
        "count": 1,
        "sessionId": f"s-{peer}",
        "data": cbor2.dumps(join),
    }
    await ws.send_bytes(cbor2.dumps(frame))
    while True:  # joined once its doc_presence_state is in
        msg = await asyncio.wait_for(ws.receive(), 10)
        if cbor2.loads(msg.data).get("type") == "doc_presence_state":
            break
    ws._response.connection.transport.abort()  # no close frame
    return peer, ok["resumeSecret"]


async def cluster_ready(http: aiohttp.ClientSession, relays: list[Relay]) -> None:
    """Until every relay's Redis link is up and sees the other (``/health``)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        healths = []
        for relay in relays:
            async with http.get(f"{relay.http_url}/health") as response:
                healths.append(await response.json())
        if all(h.get("redis") == "up" and h.get("nodes") == len(relays) for h in healths):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the relays did not form a cluster: {healths}")


async def timed(http: aiohttp.ClientSession, url: str, auth: dict[str, Any]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    ws, ok = await _open(http, url, auth)
    took = time.perf_counter() - t0
    await ws.close()
    return took, ok


async def main(rounds: int) -> int:
    redis = Redis()
    await redis.start()
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write("open = true\nresume_grace = 15.0\n")
    config = Path(f.name)
    relays = [
        Relay("ours", use_uvloop=False, extra=["--redis", redis.url(), "--config", str(config)])
        for _ in range(2)
    ]
    try:
        for relay in relays:
            await relay.start()
        a, b = (f"{r.url}" for r in relays)
        results: dict[str, list[float]] = {"floor": [], "across": [], "same": []}
        async with aiohttp.ClientSession() as http:
            await cluster_ready(http, relays)
            for _ in range(rounds):
                peer, secret = await held_peer(http, a)
                took, ok = await timed(
                    http, b, {"anonymous": True, "resume": {"peerId": peer, "secret": secret}}
                )
                if not ok.get("resumed") or ok["clientPeerId"] != peer:
                    print(f"not resumed across relays: {ok}", file=sys.stderr)
                    return 1
                results["across"].append(took)
                floor, _ = await timed(http, b, {"anonymous": True})
                results["floor"].append(floor)
                peer, secret = await held_peer(http, a)
                same, ok = await timed(
                    http, a, {"anonymous": True, "resume": {"peerId": peer, "secret": secret}}
                )
                if not ok.get("resumed"):
                    print(f"not resumed on the same relay: {ok}", file=sys.stderr)
                    return 1
                results["same"].append(same)
        floor = statistics.median(results["floor"])
        print(f"{rounds} rounds; WebSocket connect + auth -> auth_ok, ms")
        for name, label in (
            ("floor", "new peer on b (floor)"),
            ("same", "resume on the same relay"),
            ("across", "resume on another relay"),
        ):
            samples = results[name]
            median = statistics.median(samples)
            print(
                f"  {label:28} median {median * 1000:6.1f}  p90 {pct(samples, 90) * 1000:6.1f}"
                f"  ratio {median / floor:5.2f}"
            )
        return 0
    finally:
        for relay in relays:
            relay.close()
        redis.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(config)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    sys.exit(asyncio.run(main(parser.parse_args().rounds)))
