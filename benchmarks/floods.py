#!/usr/bin/env python
"""Hostile load against our relay, and what it costs everyone else.

    python benchmarks/floods.py togglers [--togglers 200] [--duration 20] [--mode flood]
    python benchmarks/floods.py relay-cost [--receivers 100] [--messages 6000]
    python benchmarks/floods.py scrapes [--rate 400] [--duration 10] [--idle 1000]
                                        [--token-file FILE] [--unauthorized]
                                        [--metrics-listen HOST:PORT]

Each scenario starts our relay as a separate process (``python -m
ratatoskr_client relay``, open mode), the attackers in another process, and
measures, in this process, a victim pair of ``RatatoskrClient``s talking in a
document of their own: every message's one-way latency (send ->
``ephemeral-message`` callback) and whether it arrived.

* ``togglers``: N raw peers join and leave one document as fast as they can
  (``tests/reliability/togglers.py``; ``--mode obey``: each pauses for the
  ``retryAfter`` of every ``rate_limited`` it receives; ``--documents own``:
  each toggles a document of its own, so no join or leave is fanned out).
  Reported: the victims' delivery and latency (and the worst of each second),
  the ``rate_limited`` frames each toggler received, how many the relay
  closed and when, the refusals it answered and those it did not (from its
  ``/metrics``), and its CPU time.
* ``scrapes``: ``GET /metrics`` as often as ``--rate`` per second (0: none,
  the baseline) while the victims talk, with ``--idle`` other peers
  connected. Reported: the victims' latency, scrapes answered by status, and
  the relay's CPU time per scrape.

* ``relay-cost``: raw clients only: the relay's CPU per delivery while one
  peer sends ``--messages`` messages to ``--receivers`` others, and the
  one-way latency of sequential messages between two peers. To compare with
  another version of the package, run it with that version first on
  ``PYTHONPATH`` (``git archive <commit> | tar -x -C /tmp/before``, then
  ``PYTHONPATH=/tmp/before python benchmarks/floods.py relay-cost``): the
  relay process inherits it.

The figures in docs/reliability.md ("Rate limits and fairness", "The metrics
endpoint") come
from these runs; ``--json PATH`` writes them.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:
    # Run as a script: import this package's modules as benchmarks.* (see run.py).
    _here = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0] or ".").resolve() == _here:
        del sys.path[0]
    sys.path.insert(0, str(_here.parent))

import argparse
import asyncio
import contextlib
import json
import time
from typing import Any

import aiohttp
import cbor2

from benchmarks.harness import Relay, Victims, cpu_seconds, pct

HERE = Path(__file__).resolve()
#: the attackers' script, shared with the reliability suite
TOGGLERS = HERE.parent.parent / "tests" / "reliability" / "togglers.py"
#: concurrent scrapers sharing the asked scrape rate
SCRAPERS = 4


# --------------------------------------------------------------------------- togglers


async def relay_metrics(relay: Relay, token: str | None = None) -> dict[str, float]:
    """The relay's ``ratatoskr_*`` samples."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"http://{relay.host}:{relay.port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        text = await resp.text()
    return {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("ratatoskr_")
    }


async def scenario_togglers(args: argparse.Namespace) -> dict[str, Any]:
    relay = Relay("ours", use_uvloop=False, extra=args.relay_option)
    await relay.start()
    victims = Victims(f"http://{relay.host}:{relay.port}")
    document = "toggle-room-{i}" if args.documents == "own" else "toggle-room"
    attackers = await asyncio.create_subprocess_exec(
        sys.executable,
        str(TOGGLERS),
        relay.url,
        str(args.togglers),
        document,
        str(args.duration),
        *(["obey"] if args.mode == "obey" else []),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        limit=1 << 26,  # the report is one line (a toggler told often makes it long)
    )
    try:
        assert attackers.stdin is not None
        assert attackers.stdout is not None
        assert await attackers.stdout.readline() == b"ready\n"
        await victims.open()
        cpu0 = cpu_seconds(relay.pid)
        attackers.stdin.write(b"go\n")
        await attackers.stdin.drain()
        await victims.talk(args.duration)
        report = json.loads(await attackers.stdout.readline())
        await attackers.wait()
        await victims.settle()
        cpu = cpu_seconds(relay.pid) - cpu0
        metrics = await relay_metrics(relay)
        told = sorted(len(t["limited"]) for t in report)
        # Closed by the relay: 1008 with its close frame, or 1006 when the TCP
        # reset (the relay closed a socket with frames it had not read) overtook
        # that frame. A toggler that stops on its own closes with 1000.
        ended = sorted(t["ended_at"] for t in report if t["close_code"] in (1008, 1006))
        codes: dict[str, int] = {}
        for t in report:
            codes[str(t["close_code"])] = codes.get(str(t["close_code"]), 0) + 1
        return {
            "togglers": args.togglers,
            "mode": args.mode,
            "documents": args.documents,
            "duration_s": args.duration,
            **victims.report(),
            "toggler_frames_sent": sum(t["sent"] for t in report),
            "rate_limited_per_toggler_median": told[len(told) // 2],
            "rate_limited_per_toggler_max": told[-1],
            "togglers_closed_by_relay": len(ended),
            "toggler_close_codes": codes,
            "relay_flooders_disconnected": metrics.get("ratatoskr_flooders_disconnected_total"),
            "closed_after_s_median": round(ended[len(ended) // 2], 2) if ended else None,
            "closed_after_s_max": round(ended[-1], 2) if ended else None,
            "relay_refused_answered": metrics.get('ratatoskr_refused_total{reason="rate_limit"}'),
            "relay_refused_unanswered": metrics.get("ratatoskr_refused_unanswered_total"),
            "relay_cpu_s": round(cpu, 2),
        }
    finally:
        if attackers.returncode is None:
            attackers.kill()
            await attackers.wait()
        await victims.close()
        relay.close()


# --------------------------------------------------------------------------- scrapes


async def scenario_scrapes(args: argparse.Namespace) -> dict[str, Any]:
    extra = list(args.relay_option)
    if args.token_file:
        extra += ["--metrics-token-file", args.token_file]
    if args.metrics_listen:
        extra += ["--metrics-listen", args.metrics_listen]
    relay = Relay("ours", use_uvloop=False, extra=extra)
    await relay.start()
    victims = Victims(f"http://{relay.host}:{relay.port}")
    where = args.metrics_listen or f"{relay.host}:{relay.port}"
    metrics_url = f"http://{where}/metrics"
    token = None if args.unauthorized else args.token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answered: dict[int, int] = {}
    idle = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    try:
        # Idle peers: what a scrape of the old relay cost grew with them (the
        # process metrics list every open file descriptor).
        for _ in range(args.idle):
            ws = await idle.ws_connect(relay.url, max_msg_size=0)
            await ws.send_bytes(b"\xa2dtypedauthianonymous\xf5")  # {type: auth, anonymous: true}
            await ws.receive()
        await victims.open()
        cpu0 = cpu_seconds(relay.pid)
        loop = asyncio.get_running_loop()

        async def scraper(stop: asyncio.Event, rate: float) -> None:
            next_at = loop.time()
            async with aiohttp.ClientSession() as http:
                while not stop.is_set():
                    next_at += 1 / rate
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(metrics_url, headers=headers) as resp:
                            await resp.read()
                            answered[resp.status] = answered.get(resp.status, 0) + 1
                    await asyncio.sleep(max(0.0, next_at - loop.time()))

        stop = asyncio.Event()
        scrapers = [
            asyncio.create_task(scraper(stop, args.rate / SCRAPERS))
            for _ in range(SCRAPERS if args.rate > 0 else 0)
        ]
        t0 = time.monotonic()
        await victims.talk(args.duration)
        stop.set()
        await asyncio.gather(*scrapers)
        took = time.monotonic() - t0
        await victims.settle()
        cpu = cpu_seconds(relay.pid) - cpu0
        scrapes = sum(answered.values())
        return {
            "scrape_rate_asked": args.rate,
            "idle_peers": args.idle,
            "scrapes_per_s": round(scrapes / took, 1),
            "answers": answered,
            **victims.report(),
            "relay_cpu_s": round(cpu, 2),
            "relay_cpu_ms_per_scrape": round(cpu * 1000 / scrapes, 3) if scrapes else None,
        }
    finally:
        await victims.close()
        await idle.close()
        relay.close()


# --------------------------------------------------------------------------- relay cost


async def _raw_peer(http: aiohttp.ClientSession, url: str) -> tuple[Any, str]:
    """A raw peer, authenticated and present in "d"."""
    ws = await http.ws_connect(url, max_msg_size=0)
    await ws.send_bytes(cbor2.dumps({"type": "auth", "anonymous": True}))
    peer_id = cbor2.loads((await ws.receive()).data)["clientPeerId"]
    join = {"type": "presence", "status": "join", "documentId": "d"}
    await ws.send_bytes(_eph(peer_id, 1, cbor2.dumps(join)))
    while cbor2.loads((await ws.receive()).data).get("type") != "doc_presence_state":
        pass
    return ws, peer_id


def _eph(session: str, count: int, data: bytes) -> bytes:
    return cbor2.dumps(
        {
            "type": "ephemeral",
            "senderId": "",
            "targetId": "",
            "documentId": "d",
            "count": count,
            "sessionId": session,
            "data": data,
        }
    )


async def scenario_relay_cost(args: argparse.Namespace) -> dict[str, Any]:
    """What the relay's per-turn bound and liveness rule cost on the hot paths,
    with raw clients (no SDK): relay CPU per delivery in a fan-out, and one-way
    latency of sequential messages between two peers."""
    relay = Relay("ours", use_uvloop=False, extra=args.relay_option)
    await relay.start()
    connector = aiohttp.TCPConnector(limit=0)
    result: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession(connector=connector) as http:
            # Fan-out: one sender, RECEIVERS receivers, the sender at most 500 ahead.
            receivers = [await _raw_peer(http, relay.url) for _ in range(args.receivers)]
            sender, session = await _raw_peer(http, relay.url)
            got = [0] * len(receivers)
            progress = asyncio.Event()
            n = args.messages

            async def read(i: int, ws: Any) -> None:
                async for msg in ws:
                    if cbor2.loads(msg.data).get("type") == "ephemeral":
                        got[i] += 1
                        progress.set()
                        if got[i] == n:
                            return

            readers = [asyncio.create_task(read(i, ws)) for i, (ws, _) in enumerate(receivers)]
            frames = [_eph(session, k + 2, cbor2.dumps(k)) for k in range(n)]
            cpu0, t0 = cpu_seconds(relay.pid), time.monotonic()
            for k, frame in enumerate(frames):
                await sender.send_bytes(frame)
                while k - min(got) > 500:
                    progress.clear()
                    await progress.wait()
            await asyncio.gather(*readers)
            took, cpu = time.monotonic() - t0, cpu_seconds(relay.pid) - cpu0
            deliveries = n * len(receivers)
            result["fanout_relay_cpu_us_per_delivery"] = round(cpu * 1e6 / deliveries, 3)
            result["fanout_deliveries_per_s"] = round(deliveries / took)
            for ws, _ in (*receivers, (sender, session)):
                await ws.close()
            # 1:1 latency: a sends, b receives, one message at a time.
            a, session = await _raw_peer(http, relay.url)
            b, _ = await _raw_peer(http, relay.url)
            while cbor2.loads((await a.receive()).data).get("type") != "peer_joined_doc":
                pass
            latencies = []
            for k in range(args.messages // 2):
                t = time.perf_counter()
                await a.send_bytes(_eph(session, k + 2, b"\x01"))
                await b.receive()
                latencies.append(time.perf_counter() - t)
            latencies = latencies[len(latencies) // 10 :]  # after a warm-up
            result["one_to_one_p50_us"] = round(pct(latencies, 50) * 1e6, 1)
            result["one_to_one_p90_us"] = round(pct(latencies, 90) * 1e6, 1)
    finally:
        relay.close()
    return result


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="scenario", required=True)
    tog = sub.add_parser("togglers", help="presence togglers on one document")
    tog.add_argument("--togglers", type=int, default=200)
    tog.add_argument("--duration", type=float, default=20.0)
    tog.add_argument("--mode", choices=["flood", "obey"], default="flood")
    tog.add_argument(
        "--documents",
        choices=["one", "own"],
        default="one",
        help="all togglers in one document (default), or each in its own",
    )
    scr = sub.add_parser("scrapes", help="GET /metrics at a high rate")
    scr.add_argument("--rate", type=float, default=400.0)
    scr.add_argument("--duration", type=float, default=10.0)
    scr.add_argument("--token-file", help="start the relay with --metrics-token-file FILE")
    scr.add_argument(
        "--unauthorized", action="store_true", help="scrape without the token (401 answers)"
    )
    scr.add_argument("--metrics-listen", metavar="HOST:PORT", help="serve /metrics there")
    scr.add_argument("--idle", type=int, default=1000, help="idle peers connected (1000)")
    cost = sub.add_parser(
        "relay-cost", help="relay CPU per delivery in a fan-out, and 1:1 latency (raw clients)"
    )
    cost.add_argument("--receivers", type=int, default=100)
    cost.add_argument("--messages", type=int, default=6000)
    for p in (tog, scr, cost):
        p.add_argument(
            "--relay-option",
            action="append",
            default=[],
            help="extra option for the relay command (repeat; e.g. --relay-option=--uvloop)",
        )
        p.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()
    if args.scenario == "scrapes":
        args.token = Path(args.token_file).read_text().strip() if args.token_file else None
    scenario = {
        "togglers": scenario_togglers,
        "scrapes": scenario_scrapes,
        "relay-cost": scenario_relay_cost,
    }[args.scenario]
    result = asyncio.run(scenario(args))
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
