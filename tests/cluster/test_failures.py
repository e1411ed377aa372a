"""Failures of a cluster: a relay killed, Redis restarted, Redis gone for long.

Each test builds its own cluster (a fresh Redis and relays as processes) and
puts SDK clients on it, directly or through a round-robin load balancer. The
bounds asserted are those ``docs/cluster.md`` states; ``-s`` prints the
measured times.
"""

from __future__ import annotations

import asyncio

import pytest

from ratatoskr_client import RatatoskrClient

from .conftest import NODE_TTL, make_cluster
from .support import LoadBalancer, eventually
from .world import World

DOCS = ["doc-1", "doc-2"]
#: How long Redis stays down in the restart test: a quick restart.
OUTAGE = 0.8
#: The restart test's node TTL. The scenario is an outage shorter than T (no one
#: may be seen leaving); what the clients do meanwhile takes a fraction of a
#: second on an idle machine, but seconds on a loaded one, which stretches the
#: outage past NODE_TTL and makes it the other scenario (Redis gone longer than
#: T, test below). Three times NODE_TTL keeps it a short outage.
RESTART_NODE_TTL = 3 * NODE_TTL


@pytest.mark.slow
async def test_a_killed_relay_s_peers_leave_everywhere_within_node_ttl() -> None:
    with make_cluster(3) as cluster:
        await cluster.ready()
        world = World(DOCS)
        try:
            async with LoadBalancer([cluster.b.port]) as lb:
                # Two watchers straight on a and c; three clients that the load
                # balancer puts on b, then spreads over all three once b is gone.
                watchers = [await world.add(cluster.a.url), await world.add(cluster.c.url)]
                victims = [await world.add(lb.url) for _ in range(3)]
                lb.ports = [cluster.a.port, cluster.b.port, cluster.c.port]
                for client in [*watchers, *victims]:
                    await client.enter_document("doc-1")
                await victims[0].enter_document("doc-2")
                await watchers[0].enter_document("doc-2")
                await world.converge(10)
                gone = {v.me.peer_id for v in victims}

                loop = asyncio.get_running_loop()
                killed_at = loop.time()
                cluster.b.kill()
                # Every watcher hears every victim leave its documents and disconnect.
                expected = {
                    (w, kind, doc, peer)
                    for w in range(2)
                    for peer in gone
                    for kind, doc in [("disconnected", None), ("left", "doc-1")]
                }
                expected |= {(0, "left", "doc-2", victims[0].me.peer_id)}

                def heard() -> set[tuple[int, str, str | None, str]]:
                    return {(w, k, d, p) for _, w, k, d, p in world.departures if p in gone}

                await world.changes.until(
                    lambda: expected <= heard(), 3 * NODE_TTL, lambda: f"{expected - heard()}"
                )
                removal = max(t for t, w, k, d, p in world.departures if p in gone) - killed_at
                # The victims reconnect through the load balancer and re-enter.
                await world.converge(15)
                converged = loop.time() - killed_at
                print(
                    f"relay killed: its peers removed everywhere after {removal:.2f} s; "
                    f"its clients back and every view exact after {converged:.2f} s"
                )
                assert removal <= NODE_TTL, removal
                assert {v.me.peer_id for v in victims}.isdisjoint(gone)
                assert all("doc-1" in v.entered_documents for v in victims)
                for node in (cluster.a, cluster.c):
                    metrics = await node.metrics()
                    assert metrics["ratatoskr_cluster_nodes"] == 2
        finally:
            await world.close()


@pytest.mark.slow
async def test_redis_restart_relays_serve_locally_then_converge() -> None:
    with make_cluster(2, "--node-ttl", str(RESTART_NODE_TTL)) as cluster:
        await cluster.ready()
        world = World(DOCS)
        try:
            on_a = [await world.add(cluster.a.url) for _ in range(3)]
            on_b = [await world.add(cluster.b.url) for _ in range(3)]
            for client in [*on_a, *on_b]:
                await client.enter_document("doc-1")
            await on_a[0].enter_document("doc-2")
            await on_b[0].enter_document("doc-2")
            await world.converge(10)

            loop = asyncio.get_running_loop()
            cluster.redis.kill()
            killed_at = loop.time()
            await eventually(
                lambda: _health_is(cluster.a, "down"), 5, lambda: "relay a still says up"
            )
            # Relays keep serving their own peers: a message within relay a,
            # joins and leaves, a newcomer, a departure.
            got: asyncio.Future[object] = loop.create_future()
            on_a[1].on("ephemeral-message", lambda doc, sender, payload: got.set_result(payload))
            await on_a[0].send_ephemeral("doc-1", {"during": "outage"})
            assert await asyncio.wait_for(got, 5) == {"during": "outage"}
            await on_b[0].leave_document("doc-1")
            newcomer = await world.add(cluster.b.url)
            await newcomer.enter_document("doc-2")
            await on_a[2].close()
            world.clients.remove(on_a[2])
            # A restart that takes as long as a quick one does in production
            # (the scenario's length, not a wait for something to happen).
            await asyncio.sleep(max(0.0, OUTAGE - (loop.time() - killed_at)))
            outage = loop.time() - killed_at

            assert outage < RESTART_NODE_TTL, f"not a short outage: {outage:.2f} s"
            cluster.redis.start()
            back_at = loop.time()
            departures = len(world.departures)
            converged = await world.converge(15)
            # Only what changed during the outage is announced: nobody who
            # stayed is seen leaving and coming back.
            stayed = {c.me.peer_id for c in world.clients}
            real = ("left", "doc-1", on_b[0].me.peer_id)  # the leave made during the outage
            flaps = [d for d in world.departures[departures:] if d[4] in stayed and d[2:] != real]
            assert flaps == [], flaps
            print(f"Redis down {outage:.2f} s; views converged {converged:.2f} s after its return")
            assert converged <= RESTART_NODE_TTL + 2
            for node in (cluster.a, cluster.b):
                metrics = await node.metrics()
                assert metrics["ratatoskr_redis_reconnects_total"] == 1
                assert (await node.health())["redis"] == "up"
            assert loop.time() - back_at < 20
        finally:
            await world.close()


async def test_a_relay_cut_off_for_node_ttl_shows_only_its_own_peers_until_redis_returns() -> None:
    with make_cluster(2) as cluster:
        await cluster.ready()
        world = World(["doc-1"])
        try:
            on_a = [await world.add(cluster.a.url) for _ in range(2)]
            on_b = [await world.add(cluster.b.url) for _ in range(2)]
            for client in [*on_a, *on_b]:
                await client.enter_document("doc-1")
            await world.converge(10)

            loop = asyncio.get_running_loop()
            cluster.redis.kill()
            killed_at = loop.time()
            # After node_ttl each relay shows its own peers only.
            await world.changes.until(
                lambda: _local_only(on_a) and _local_only(on_b),
                3 * NODE_TTL,
                world.describe,
            )
            dropped = loop.time() - killed_at
            # node_ttl counts from a relay's last heartbeat, which came up to
            # one beat (node_ttl / 5) before the kill.
            assert NODE_TTL * 4 / 5 <= dropped <= NODE_TTL + 1.5, dropped
            cluster.redis.start()
            converged = await world.converge(15)
            print(
                f"cut off: others dropped after {dropped:.2f} s; together again {converged:.2f} s"
            )
        finally:
            await world.close()


def _local_only(clients: list[RatatoskrClient]) -> bool:
    mine = {c.me.peer_id for c in clients}
    return all(
        {p.peer_id for p in c.presence("doc-1")} == mine and set(c.peers) == mine for c in clients
    )


async def _health_is(node: object, state: str) -> bool:
    return (await node.health())["redis"] == state  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- chaos

CHAOS_CLIENTS = 24
CHAOS_DOCS = [f"chaos-{i}" for i in range(4)]
CHAOS_ROUNDS = 6


@pytest.mark.slow
async def test_chaos_over_three_relays_ends_with_exact_views() -> None:
    from ..integration.fakeserver import abort_transport
    from ..reliability.support import seeded

    rng, seed = seeded("cluster chaos")
    with make_cluster(3) as cluster:
        await cluster.ready()
        world = World(CHAOS_DOCS)
        try:
            ports = [node.port for node in cluster.relays]
            async with LoadBalancer(ports) as lb:
                for _ in range(CHAOS_CLIENTS):
                    client = await world.add(lb.url)
                    for doc in CHAOS_DOCS:
                        if rng.random() < 0.5:
                            await client.enter_document(doc)
                await world.converge(20)
                kill_round = rng.randrange(1, CHAOS_ROUNDS)
                loop = asyncio.get_running_loop()
                figures: list[str] = []
                totals = {"client kills": 0, "toggles": 0, "relay kills": 0}
                for rnd in range(CHAOS_ROUNDS):
                    connected = [c for c in world.clients if c.is_connected]
                    for victim in rng.sample(connected, rng.randint(2, 5)):
                        abort_transport(victim)  # no close frame: a crash
                        totals["client kills"] += 1
                    if rnd == kill_round:
                        victim_relay = rng.choice(cluster.relays)
                        victim_relay.kill()
                        lb.ports.remove(victim_relay.port)
                        totals["relay kills"] += 1
                    entering = []
                    pairs = [(c, d) for c in world.clients for d in CHAOS_DOCS]
                    for client, doc in rng.sample(pairs, rng.randint(6, 14)):
                        totals["toggles"] += 1
                        if doc in client.entered_documents:
                            await client.leave_document(doc)
                        else:
                            entering.append(asyncio.create_task(client.enter_document(doc)))
                    quiet_from = loop.time()
                    await asyncio.wait_for(asyncio.gather(*entering), 30)
                    await world.converge(30)
                    took = loop.time() - quiet_from
                    figures.append(f"{took:.2f}{'*' if rnd == kill_round else ''}")
                    bound = (NODE_TTL if rnd == kill_round else 0) + 4.0
                    assert took <= bound, f"seed {seed}, round {rnd}: {took:.2f} s > {bound}"
                print(f"cluster chaos seed {seed}: {totals}; rounds converged in {figures} s")
                assert not world.problems()
        finally:
            await world.close()
