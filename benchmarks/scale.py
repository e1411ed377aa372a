#!/usr/bin/env python
"""Scale: connect rate, and ten thousand participants on one machine.

    python benchmarks/scale.py connect [--connections 500] [--rounds 3] [--uvloop]
                                       [--upstream URL --upstream-token TOKEN]
    python benchmarks/scale.py storm [--participants 10000] [--documents 1000]
                                     [--processes 2] [--move-every 3] [--moving 10]
                                     [--uvloop] [--workers N] [--redis]

``connect``: how many WebSocket connections per second a relay opens when
``--connections`` clients ask at once, each through the whole handshake: the
HTTP upgrade, then on ours (and upstream's) an ``auth`` frame answered by
``auth_ok``. The raw floor (``benchmarks/raw_relay.py``) only upgrades. The
relays take turns, ``--rounds`` times, so a burst of load elsewhere on the
machine hits each; every connection of a round is closed before the next.
``--upstream`` adds the upstream server (``ws://HOST:PORT/sync``, started by
hand; it limits anonymous connections to 5 a minute, so give it a session
token with ``--upstream-token``).

``storm``: one relay with ``--participants`` authenticated users (a generated
configuration: one token per user, documents in open mode), ``--documents``
documents with the same number of participants each. The clients are SDK
clients (``RatatoskrClient``, default options but ``connect_timeout``) in
``--processes`` load-generator processes, each holding whole documents (so it
can check their presence exactly) and one shared ``aiohttp.ClientSession``.
Reported:

* the fresh connect storm: from the go until every participant is connected,
  has entered its document, and every presence of every document is exact
  (the peer ids of its participants, no ghost, none missing);
* cursors: every participant shares a cursor (``set_state``) and moves it every
  ``--move-every`` seconds (uniform jitter) for ``--moving`` seconds; delivery
  latency p50/p99 (the move's ``time.monotonic()`` in the value, read by the
  receivers of the same process: one clock), the moves delivered, and the
  relay's CPU time per delivered move;
* the restart storm: the relay is killed (SIGKILL) and started again on its
  port; the SDK reconnects with its default backoff. Seconds from the kill
  until every participant is back (a new peer id) with exact presence
  (the target: 15 s for 10,000), and how many were lost (not back at all);
* relay RSS per participant and load-generator RSS per participant (the
  processes summed, minus their RSS before the clients).

The machine's cores are shared by the relay, the load generators and whatever
else runs: on a 2-core machine, two load generators and the relay compete for
two cores, so the connect storms are bound by the sum of their CPU and the
figures are an upper bound of what the relay alone needs. The soft limit on
open files is raised to the hard limit in every process (``resource``), and
the run stops with a message if that is below what it needs.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:
    _here = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0] or ".").resolve() == _here:
        del sys.path[0]
    sys.path.insert(0, str(_here.parent))

import argparse
import asyncio
import contextlib
import cProfile
import gc
import json
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import cbor2

from benchmarks.harness import (
    BenchmarkError,
    Redis,
    Relay,
    cpu_seconds,
    gather_limited,
    log,
    machine,
    new_session,
    pct,
    process_tree_rss_kib,
    rss_kib,
    run_loop,
    workers_of,
)
from ratatoskr_client.errors import AuthError, ConnectError, OperationTimeout

#: seconds a storm may take before the run calls it failed
STORM_TIMEOUT = 120.0
#: connections opened at once by one load generator in the fresh storm
CONNECT_CONCURRENCY = 500


def raise_open_files(needed: int) -> int:
    """Raise this process's soft limit on open files to its hard limit; returns it.

    Raises:
        BenchmarkError: the hard limit is below ``needed``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise BenchmarkError(
            f"{needed} open files needed, the limit is {soft} (raise it with ulimit -Hn)"
        )
    return soft


# --------------------------------------------------------------------------- connect


async def _open(
    session: aiohttp.ClientSession, url: str, auth: dict[str, Any] | None
) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(url)
    if auth is None:
        return ws
    await ws.send_bytes(cbor2.dumps(auth))
    while True:
        msg = await ws.receive()
        if msg.type != aiohttp.WSMsgType.BINARY:
            raise BenchmarkError(f"{url}: no auth_ok, got {msg.type.name}")
        frame = cbor2.loads(msg.data)
        kind = frame.get("type") if isinstance(frame, dict) else None
        if kind == "auth_ok":
            return ws
        if kind in ("auth_error", "error"):
            raise BenchmarkError(f"{url}: auth refused: {frame}")


async def connect_rate(url: str, n: int, auth: dict[str, Any] | None) -> float:
    """Connections per second: n opened at once (handshake and auth), all of them."""
    async with new_session() as session:
        t0 = time.perf_counter()
        conns = await asyncio.gather(*(_open(session, url, auth) for _ in range(n)))
        rate = n / (time.perf_counter() - t0)
        await asyncio.gather(*(ws.close() for ws in conns))
    return rate


async def run_connect(args: argparse.Namespace) -> dict[str, Any]:
    raise_open_files(2 * args.connections + 100)
    raw = Relay("raw", use_uvloop=args.uvloop)
    ours = Relay("ours", use_uvloop=args.uvloop)
    targets: list[tuple[str, str, dict[str, Any] | None]] = []
    rates: dict[str, list[float]] = {}
    try:
        await raw.start()
        await ours.start()
        targets = [("raw", raw.url, None), ("ours", ours.url, {"type": "auth", "anonymous": True})]
        if args.upstream:
            token = args.upstream_token
            upstream_auth: dict[str, Any] = {"type": "auth"}
            upstream_auth.update({"token": token} if token else {"anonymous": True})
            targets.append(("upstream", args.upstream, upstream_auth))
        # One unmeasured round each: first-use costs (imports, JIT warm-up) out.
        for _, url, auth in targets:
            await connect_rate(url, min(50, args.connections), auth)
        for r in range(args.rounds):
            order = targets if r % 2 == 0 else targets[::-1]
            for name, url, auth in order:
                rate = await connect_rate(url, args.connections, auth)
                rates.setdefault(name, []).append(rate)
                log(f"connect round {r + 1}: {name} {rate:,.0f}/s")
    finally:
        raw.close()
        ours.close()
    out: dict[str, Any] = {"connections": args.connections, "rounds": args.rounds}
    for name, values in rates.items():
        out[f"{name}_per_s"] = statistics.median(values)
        out[f"{name}_per_s_all"] = values
    if "upstream" in rates:
        pairs = [o / u for o, u in zip(rates["ours"], rates["upstream"], strict=True)]
        out["ours_over_upstream"] = statistics.median(pairs)
        out["ours_over_upstream_all"] = pairs
    out["ours_over_raw"] = statistics.median(
        o / r for o, r in zip(rates["ours"], rates["raw"], strict=True)
    )
    return out


# --------------------------------------------------------------------------- storm: generator


class Generator:
    """One load-generator process: whole documents' participants, driven by
    commands on stdin (one word a line), answering one JSON line each."""

    def __init__(self, url: str, first: int, docs: Sequence[int], per_doc: int) -> None:
        from ratatoskr_client import RatatoskrClient

        self.url = url
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.members: dict[str, list[RatatoskrClient]] = {}
        self.clients: list[RatatoskrClient] = []
        self.latencies: list[float] = []
        self.delivered = 0
        for d in docs:
            doc = f"doc-{d}"
            group = []
            for k in range(per_doc):
                user = d * per_doc + k
                # The SDK's defaults (backoff, connect_timeout) but the shared session.
                c = RatatoskrClient(url, token=f"user-{user}-token", session=self.session)
                c.on("state-changed", self._receiver(c))
                group.append(c)
            self.members[doc] = group
            self.clients += group
        self.base_rss = rss_kib()
        self.moving = False

    def _receiver(self, client: Any) -> Any:
        def on_state(document_id: str, peer: Any, state: Any) -> None:
            if not self.moving or peer.peer_id == client.me.peer_id:
                return
            cursor = state.get("cursor")
            if isinstance(cursor, dict) and cursor.get("t"):
                self.latencies.append(time.monotonic() - cursor["t"])
                self.delivered += 1

        return on_state

    def exact(self, old: frozenset[str]) -> int:
        """Participants whose document's presence is not exactly its members
        (connected, with a peer id not in ``old``)."""
        wrong = 0
        for doc, group in self.members.items():
            ids = set()
            for c in group:
                if not c.is_connected or c.me.peer_id in old:
                    return len(self.clients)
                ids.add(c.me.peer_id)
            for c in group:
                if {p.peer_id for p in c.presence(doc)} != ids:
                    wrong += 1
        return wrong

    def describe(self, old: frozenset[str]) -> str:
        """What is missing: for a failed storm's message."""
        states: dict[str, int] = {}
        for c in self.clients:
            key = c.connection_state.value
            if c.is_connected and c.me.peer_id in old:
                key += " (old peer id)"
            states[key] = states.get(key, 0) + 1
        wrong = sum(
            1
            for doc, group in self.members.items()
            for c in group
            if c.is_connected
            and {p.peer_id for p in c.presence(doc)}
            != {m.me.peer_id for m in group if m.is_connected}
        )
        return f"{states}, {wrong} connected with a presence unlike their document's members"

    async def converge(self, old: frozenset[str]) -> float:
        """Until every presence is exact; returns ``time.monotonic()`` then.
        Meanwhile notes when each participant was connected (a new peer id)."""
        deadline = time.monotonic() + STORM_TIMEOUT
        self.connected_at: dict[int, float] = {}
        while True:
            now = time.monotonic()
            for i, c in enumerate(self.clients):
                if i not in self.connected_at and c.is_connected and c.me.peer_id not in old:
                    self.connected_at[i] = now
            if len(self.connected_at) == len(self.clients) and not self.exact(old):
                return now
            if now > deadline:
                raise BenchmarkError(f"not converged: {self.describe(old)}")
            await asyncio.sleep(0.02)

    async def join(self) -> dict[str, Any]:
        async def one(doc: str, c: Any) -> None:
            # connect() makes one attempt: in a storm of thousands some time out
            # (the default 10 s) and are made again, the way an application would.
            deadline = time.monotonic() + STORM_TIMEOUT
            while True:
                try:
                    await c.connect()
                    break
                except (ConnectError, OperationTimeout, AuthError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(random.uniform(0, 1))
            await c.enter_document(doc, timeout=STORM_TIMEOUT)
            await c.set_state(doc, "cursor", {"x": 0, "y": 0, "t": 0.0})

        await gather_limited(
            [one(doc, c) for doc, group in self.members.items() for c in group],
            CONNECT_CONCURRENCY,
        )
        done = await self.converge(frozenset())
        gc.collect()
        return {
            "converged_at": done,
            "rss_kib": rss_kib(),
            "base_rss_kib": self.base_rss,
            "cpu_s": time.process_time(),
        }

    async def move(self, seconds: float, every: float) -> dict[str, Any]:
        self.latencies.clear()
        self.delivered = 0
        self.moving = True
        sent = 0
        end = time.monotonic() + seconds

        async def mover(doc: str, c: Any) -> None:
            nonlocal sent
            await asyncio.sleep(random.uniform(0, every))
            while time.monotonic() < end:
                x = random.randint(0, 1000)
                await c.set_state(doc, "cursor", {"x": x, "y": x, "t": time.monotonic()})
                sent += 1
                await asyncio.sleep(random.uniform(0.5 * every, 1.5 * every))

        await asyncio.gather(*(mover(d, c) for d, g in self.members.items() for c in g))
        await asyncio.sleep(1.0)  # the last moves arrive
        self.moving = False
        lat = self.latencies
        return {"sent": sent, "delivered": self.delivered, "latencies": _sample(lat, 20_000)}

    async def restart(self, old: frozenset[str]) -> dict[str, Any]:
        done = await self.converge(old)
        return {
            "converged_at": done,
            "cpu_s": time.process_time(),
            "connected_at": sorted(self.connected_at.values()),
        }

    def ids(self) -> list[str]:
        return [c.me.peer_id for c in self.clients if c.is_connected]

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)
        await self.session.close()


def _sample(values: list[float], n: int) -> list[float]:
    return values if len(values) <= n else random.sample(values, n)


async def generator_main(url: str, first: int, docs: list[int], per_doc: int) -> None:
    raise_open_files(len(docs) * per_doc + 100)
    gen = Generator(url, first, docs, per_doc)
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def answer(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    old: frozenset[str] = frozenset()
    try:
        while line := (await reader.readline()).decode().strip():
            cmd, _, arg = line.partition(" ")
            try:
                if cmd == "join":
                    answer(await gen.join())
                elif cmd == "move":
                    seconds, every = (float(v) for v in arg.split())
                    answer(await gen.move(seconds, every))
                elif cmd == "ids":
                    old = frozenset(gen.ids())
                    answer({"n": len(old)})
                elif cmd == "restart":
                    # SCALE_PROFILE_DIR: profile each generator through the restart storm
                    profile_dir = os.environ.get("SCALE_PROFILE_DIR")
                    profiler = cProfile.Profile() if profile_dir else None
                    if profiler is not None:
                        profiler.enable()
                    reply = await gen.restart(old)
                    if profiler is not None:
                        profiler.disable()
                        profiler.dump_stats(f"{profile_dir}/restart-{docs[0]}.prof")
                    answer(reply)
                elif cmd == "rss":
                    answer({"rss_kib": rss_kib(), "cpu_s": time.process_time()})
                elif cmd == "quit":
                    break
            except BenchmarkError as exc:
                answer({"error": str(exc), "lost": gen.exact(old)})
    finally:
        await gen.close()
        answer({"closed": True})


# --------------------------------------------------------------------------- storm: parent


class Child:
    def __init__(self, url: str, docs: list[int], per_doc: int, use_uvloop: bool) -> None:
        cmd = [sys.executable, "-m", "benchmarks.scale", "_generator", url, str(per_doc)]
        cmd += [",".join(map(str, docs))]
        if use_uvloop:
            cmd.append("--uvloop")
        root = Path(__file__).resolve().parent.parent
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root
        )

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    async def reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.to_thread(self.proc.stdout.readline)
        if not line:
            raise BenchmarkError(f"load generator {self.proc.pid} exited")
        out: dict[str, Any] = json.loads(line)
        if "error" in out:
            raise BenchmarkError(f"load generator {self.proc.pid}: {out['error']}")
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.send("quit")
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def ask(children: Sequence[Child], line: str) -> list[dict[str, Any]]:
    for child in children:
        child.send(line)
    return list(await asyncio.gather(*(c.reply() for c in children)))


def write_config(path: Path, participants: int) -> None:
    lines = ["open = true", ""]
    for u in range(participants):
        lines += ["[[users]]", f'token = "user-{u}-token"', f'id = "user-{u}"', ""]
    path.write_text("\n".join(lines))


async def run_storm(args: argparse.Namespace) -> dict[str, Any]:
    n, n_docs, procs = args.participants, args.documents, args.processes
    if n % n_docs:
        raise BenchmarkError("--participants must be a multiple of --documents")
    per_doc = n // n_docs
    raise_open_files(n + 200)
    out: dict[str, Any] = {
        "participants": n,
        "documents": n_docs,
        "processes": procs,
        "workers": args.workers,
        "redis": int(args.redis),
        "uvloop": int(args.uvloop),
        "machine": machine(),
    }
    tmp = Path(tempfile.mkdtemp(prefix="ratatoskr-scale-"))
    config = tmp / "relay.toml"
    write_config(config, n)
    extra = ["--config", str(config)]
    redis: Redis | None = None
    relays: list[Relay] = []
    children: list[Child] = []
    try:
        workers = ["--workers", str(args.workers)] if args.workers > 1 else []
        if args.redis or workers:  # workers share presence through Redis too
            redis = Redis()
            await redis.start()
            extra += ["--redis", redis.url()]
        nodes = 2 if args.redis else 1
        relays = [
            Relay("ours", use_uvloop=args.uvloop, extra=[*extra, *workers]) for _ in range(nodes)
        ]
        for relay in relays:
            relay.rate_limit = None  # the relay's default: cursors stay well below it
            await relay.start()
        await asyncio.sleep(0.5)
        relay_base = sum(process_tree_rss_kib(r.pid) for r in relays)
        # Whole documents per process, round robin over the relays (a cluster:
        # each generator's participants on one node, documents spread over both).
        for p in range(procs):
            docs = list(range(p, n_docs, procs))
            children.append(Child(relays[p % len(relays)].url, docs, per_doc, args.uvloop))
        rss0 = await ask(children, "rss")
        log(f"storm: {n} participants in {n_docs} documents, {procs} load generators")
        pids = [pid for r in relays for pid in [r.pid, *workers_of(r.pid)]]
        cpu0 = sum(cpu_seconds(p) for p in pids)
        t0 = time.monotonic()
        joined = await ask(children, "join")
        out["fresh_storm_s"] = max(j["converged_at"] for j in joined) - t0
        out["fresh_relay_cpu_s"] = sum(cpu_seconds(p) for p in pids) - cpu0
        out["fresh_generators_cpu_s"] = sum(
            j["cpu_s"] - r["cpu_s"] for j, r in zip(joined, rss0, strict=True)
        )
        log(f"storm: fresh, all {n} in with exact presence after {out['fresh_storm_s']:.1f} s")
        await asyncio.sleep(1.0)
        relay_rss = sum(process_tree_rss_kib(r.pid) for r in relays)
        out["relay_kib_per_participant"] = (relay_rss - relay_base) / n
        gen_rss = sum(j["rss_kib"] for j in joined)
        gen_base = sum(r["rss_kib"] for r in rss0)
        out["generator_kib_per_participant"] = (gen_rss - gen_base) / n
        out["relay_rss_kib"] = relay_rss
        out["generator_rss_kib"] = gen_rss

        pids = [pid for r in relays for pid in [r.pid, *workers_of(r.pid)]]
        cpu0 = sum(cpu_seconds(p) for p in pids)
        moved = await ask(children, f"move {args.moving} {args.move_every}")
        cpu = sum(cpu_seconds(p) for p in pids) - cpu0
        lat = [x for m in moved for x in m["latencies"]]
        delivered = sum(m["delivered"] for m in moved)
        out["moves_sent"] = sum(m["sent"] for m in moved)
        out["moves_delivered"] = delivered
        out["latency_p50_ms"] = pct(lat, 50) * 1000
        out["latency_p99_ms"] = pct(lat, 99) * 1000
        out["relay_cpu_us_per_delivery"] = cpu / max(delivered, 1) * 1e6
        log(
            f"storm: {out['moves_sent']} moves, {delivered} deliveries, p50 "
            f"{out['latency_p50_ms']:.1f} ms p99 {out['latency_p99_ms']:.1f} ms, relay "
            f"{out['relay_cpu_us_per_delivery']:.1f} µs CPU per delivery"
        )

        before = await ask(children, "rss")
        await ask(children, "ids")
        t_kill = time.monotonic()
        for relay in relays:
            relay.kill()
        for relay in relays:
            await relay.start()
        out["restart_relay_up_s"] = time.monotonic() - t_kill
        try:
            back = await ask(children, "restart")
        except BenchmarkError as exc:
            dead = [r.death_notice() for r in relays if r.exit_status() is not None]
            raise BenchmarkError(f"{exc}; relays: {dead or 'alive'}") from exc
        out["restart_storm_s"] = max(b["converged_at"] for b in back) - t_kill
        connected = [t - t_kill for b in back for t in b["connected_at"]]
        for q in (50, 90, 100):
            out[f"restart_connected_p{q}_s"] = pct(connected, q)
        pids = [pid for r in relays for pid in [r.pid, *workers_of(r.pid)]]
        out["restart_relay_cpu_s"] = sum(cpu_seconds(p) for p in pids)
        out["restart_generators_cpu_s"] = sum(
            b["cpu_s"] - r["cpu_s"] for b, r in zip(back, before, strict=True)
        )
        out["restart_lost"] = 0
        log(
            f"storm: after the restart, all {n} back with exact presence in "
            f"{out['restart_storm_s']:.1f} s"
        )
    finally:
        for child in children:
            child.close()
        for relay in relays:
            relay.close()
        if redis is not None:
            redis.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- main


def render_connect(out: dict[str, Any]) -> str:
    rows = [f"{out['connections']} connections opened at once, {out['rounds']} rounds (median)"]
    for name in ("raw", "ours", "upstream"):
        if f"{name}_per_s" in out:
            each = ", ".join(f"{v:,.0f}" for v in out[f"{name}_per_s_all"])
            rows.append(f"  {name:9s} {out[f'{name}_per_s']:8,.0f}/s   ({each})")
    rows.append(f"  ours / raw floor: {out['ours_over_raw']:.2f}")
    if "ours_over_upstream" in out:
        each = ", ".join(f"{v:.2f}" for v in out["ours_over_upstream_all"])
        rows.append(f"  ours / upstream:  {out['ours_over_upstream']:.2f}   ({each})")
    return "\n".join(rows)


def render_storm(out: dict[str, Any]) -> str:
    keys = [k for k in out if k != "machine"]
    return "\n".join(
        f"  {k:32s} {out[k]:,.2f}" if isinstance(out[k], float) else f"  {k:32s} {out[k]}"
        for k in keys
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("connect", help="connections opened per second: floor, ours, upstream")
    c.add_argument("--connections", type=int, default=500)
    c.add_argument("--rounds", type=int, default=3)
    c.add_argument("--upstream", metavar="URL", help="the upstream server, ws://HOST:PORT/sync")
    c.add_argument("--upstream-token", metavar="TOKEN", help="a session token for it")
    s = sub.add_parser("storm", help="N participants: connect storms, cursors, restart")
    s.add_argument("--participants", type=int, default=10_000)
    s.add_argument("--documents", type=int, default=1_000)
    s.add_argument("--processes", type=int, default=2, help="load-generator processes")
    s.add_argument("--move-every", type=float, default=3.0, help="seconds between moves")
    s.add_argument("--moving", type=float, default=10.0, help="seconds of cursor moves")
    s.add_argument(
        "--workers", type=int, default=1, help="relay --workers (with a Redis it starts)"
    )
    s.add_argument("--redis", action="store_true", help="two relays in a Redis cluster")
    for p in (c, s):
        p.add_argument("--uvloop", action="store_true")
        p.add_argument("--json", metavar="PATH")
    g = sub.add_parser("_generator")  # internal: one load-generator process
    g.add_argument("url")
    g.add_argument("per_doc", type=int)
    g.add_argument("docs")
    g.add_argument("--uvloop", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "_generator":
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
        docs = [int(d) for d in args.docs.split(",")]
        run_loop(generator_main(args.url, 0, docs, args.per_doc), use_uvloop=args.uvloop)
        return 0
    try:
        if args.command == "connect":
            out = run_loop(run_connect(args), use_uvloop=args.uvloop)
            print(render_connect(out))
        else:
            out = run_loop(run_storm(args), use_uvloop=args.uvloop)
            print(render_storm(out))
    except BenchmarkError as exc:
        log(f"failed: {exc}")
        return 1
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
