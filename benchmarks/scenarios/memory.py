"""Memory of idle clients on both sides, and the reconnect storm.

* Ours: n idle clients entered in one document; relay RSS per peer and
  client-process RSS per client (KiB, from /proc). Then the relay is killed
  (SIGKILL) and restarted on the same port: seconds until every client's
  presence shows all of them again.
* The floor: n bare WebSockets to the raw relay, the client side in a child
  process (``python -m benchmarks.scenarios.memory URL N [--uvloop]``, which
  prints its RSS before and after as JSON and waits for a line on stdin).

The clients use the defaults, except that they share one ``aiohttp.ClientSession``
(documented usage) and wait up to 60 s to connect and enter (a busy machine
with 2,000 clients joining at once needs more than the default 10 s).

Keys: ``join_converge_s``, ``relay_kib_per_peer``, ``client_kib_per_client``,
``{relay,client}_rss{,_base}_kib`` (each with ``suffix``); the storm's
``restart_{relay_up,relay_start,converge,all_connected}_s``,
``restart_relay_rss_kib``; the floor's ``raw_{relay,client}_kib_per_conn``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from benchmarks.harness import (
    ROOT,
    BenchmarkError,
    Relay,
    close_all,
    gather_limited,
    log,
    new_session,
    rss_kib,
    run_loop,
    sdk_client,
    settle_rss,
)
from ratatoskr_client import RatatoskrClient

#: seconds a client may take to connect, and to enter, while n others do the same
JOIN_TIMEOUT = 60.0
#: seconds until every presence must be whole, after the join or the restart
CONVERGE_TIMEOUT = 120.0


async def wait_converged(
    clients: Sequence[RatatoskrClient],
    doc: str,
    n: int,
    *,
    timeout: float,
    t0: float | None = None,
    old_ids: frozenset[str] = frozenset(),
) -> float:
    """Poll until every client is connected (with a peer id not in ``old_ids``)
    and sees n peers in ``doc``; returns the seconds since t0 at which the last
    client was connected.

    Raises:
        BenchmarkError: not within ``timeout``.
    """
    start = time.perf_counter() if t0 is None else t0
    deadline = time.perf_counter() + timeout
    all_connected = -1.0
    while True:
        connected = all(c.is_connected and c.me.peer_id not in old_ids for c in clients)
        if connected and all_connected < 0:
            all_connected = time.perf_counter() - start
        if connected and all(len(c.presence(doc)) == n for c in clients):
            return all_connected
        if time.perf_counter() > deadline:
            short = sum(1 for c in clients if len(c.presence(doc)) != n)
            raise BenchmarkError(f"{short} of {n} clients did not converge within {timeout:g} s")
        await asyncio.sleep(0.01)


async def sdk_memory_and_storm(
    results: dict[str, float],
    n: int,
    use_uvloop: bool,
    *,
    storm: bool = True,
    suffix: str = "",
) -> None:
    """n idle clients in one document: memory on both sides; then (``storm``)
    the relay is killed and restarted, and we time until every presence is
    whole again. ``suffix`` is appended to the memory keys. Keys go into
    ``results`` as they are measured: if the storm fails, the memory figures stay."""
    doc = "bench-idle"
    relay = Relay("ours", use_uvloop=use_uvloop)
    clients: list[RatatoskrClient] = []
    try:
        await relay.start()
        async with new_session() as session:
            # Warm-up: one client through the whole path, so that lazily imported
            # code and first-use caches are in both baselines.
            warm = sdk_client(relay.url, session)
            await warm.connect()
            await warm.enter_document(doc)
            await warm.close()
            await asyncio.sleep(0.3)
            gc.collect()
            relay_base = relay.rss_kib()
            client_base = rss_kib()

            clients = [
                sdk_client(relay.url, session, connect_timeout=JOIN_TIMEOUT) for _ in range(n)
            ]
            t0 = time.perf_counter()
            await gather_limited([c.connect() for c in clients], 100)
            await gather_limited(
                [c.enter_document(doc, timeout=JOIN_TIMEOUT) for c in clients], 100
            )
            await wait_converged(clients, doc, n, timeout=CONVERGE_TIMEOUT)
            results["join_converge_s" + suffix] = time.perf_counter() - t0
            gc.collect()
            relay_rss = await settle_rss(relay.rss_kib)
            client_rss = rss_kib()
            results["relay_kib_per_peer" + suffix] = (relay_rss - relay_base) / n
            results["client_kib_per_client" + suffix] = (client_rss - client_base) / n
            results["relay_rss_base_kib" + suffix] = relay_base
            results["relay_rss_kib" + suffix] = relay_rss
            results["client_rss_base_kib" + suffix] = client_base
            results["client_rss_kib" + suffix] = client_rss
            log(
                f"memory: relay {relay_base} -> {relay_rss} KiB, "
                f"client {client_base} -> {client_rss} KiB for {n} clients"
            )

            if storm:
                await reconnect_storm(results, relay, clients, doc)
            # Kill first: closing n connected clients would make the relay fan
            # out n x n departure frames for nothing.
            relay.kill()
            await close_all(clients)
    finally:
        relay.close()
        await close_all(clients)


async def reconnect_storm(
    results: dict[str, float], relay: Relay, clients: Sequence[RatatoskrClient], doc: str
) -> None:
    """Kill the relay, restart it on its port, and time until every client is
    back with a new peer id and sees all the others (and no ghost)."""
    n = len(clients)
    before = frozenset(c.me.peer_id for c in clients)
    t0 = time.perf_counter()
    relay.kill()
    restart = await relay.start()
    up = time.perf_counter() - t0
    connected_at = await wait_converged(
        clients, doc, n, timeout=CONVERGE_TIMEOUT, t0=t0, old_ids=before
    )
    converged = time.perf_counter() - t0
    after = {c.me.peer_id for c in clients}
    if before & after:
        raise BenchmarkError("peer ids must be new after a reconnect")
    for c in clients:
        if {p.peer_id for p in c.presence(doc)} != after:
            raise BenchmarkError("a client's presence shows a ghost or misses a peer")
    results["restart_relay_up_s"] = up
    results["restart_relay_start_s"] = restart
    results["restart_converge_s"] = converged
    results["restart_all_connected_s"] = connected_at
    results["restart_relay_rss_kib"] = relay.rss_kib()


async def raw_memory_worker(url: str, n: int) -> None:
    """Child process: n bare WebSocket connections to the raw relay; prints
    the client RSS before and after, as JSON."""
    async with new_session() as session:
        warm = await session.ws_connect(url)
        await warm.close()
        await asyncio.sleep(0.3)
        gc.collect()
        base = rss_kib()
        conns = [await session.ws_connect(url) for _ in range(n)]
        await asyncio.sleep(1.0)
        gc.collect()
        print(json.dumps({"base": base, "rss": rss_kib()}), flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # the parent has read the relay's RSS
        for ws in conns:
            await ws.close()


async def raw_memory(results: dict[str, float], n: int, use_uvloop: bool) -> None:
    """The floor's memory per bare connection, relay side and client side."""
    relay = Relay("raw", use_uvloop=use_uvloop)
    try:
        await relay.start()
        await asyncio.sleep(0.3)
        relay_base = relay.rss_kib()
        cmd = [sys.executable, "-m", "benchmarks.scenarios.memory", relay.url, str(n)]
        if use_uvloop:
            cmd.append("--uvloop")
        with tempfile.TemporaryFile() as stderr:
            proc = await asyncio.create_subprocess_exec(
                *cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
            )
            try:
                assert proc.stdout is not None
                assert proc.stdin is not None
                line = await asyncio.wait_for(proc.stdout.readline(), 120)
                if not line:
                    status = await proc.wait()
                    stderr.seek(0)
                    last = (stderr.read().decode(errors="replace").strip().splitlines() or [""])[-1]
                    raise BenchmarkError(
                        f"the raw memory worker exited with status {status}: {last}"
                    )
                worker = json.loads(line)
                relay_rss = await settle_rss(relay.rss_kib, 0.2)
                proc.stdin.write(b"done\n")
                await proc.stdin.drain()
                await asyncio.wait_for(proc.wait(), 60)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    finally:
        relay.close()
    results["raw_relay_kib_per_conn"] = (relay_rss - relay_base) / n
    results["raw_client_kib_per_conn"] = (worker["rss"] - worker["base"]) / n


def main(argv: Sequence[str] | None = None) -> int:
    """The floor's client side (run by :func:`raw_memory`)."""
    parser = argparse.ArgumentParser(description="n bare WebSockets; prints their RSS")
    parser.add_argument("url")
    parser.add_argument("n", type=int)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args(argv)
    run_loop(raw_memory_worker(args.url, args.n), use_uvloop=args.uvloop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
