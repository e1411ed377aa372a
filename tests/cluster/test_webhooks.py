"""Webhooks from a two-relay cluster (a real Redis, two relay processes): a
receiver gets each membership event once, from whichever relay made the
change, with a valid signature."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from ratatoskr_client import RatatoskrClient
from ratatoskr_client.server.cluster.wire import Names
from ratatoskr_client.server.core.webhooks import DELIVERY_HEADER, verify

from .conftest import Cluster, make_cluster
from .support import LoadBalancer, eventually, start_relays

SECRET = "webhook-test-secret"


class Receiver:
    """A webhook receiver on a free loopback port that checks every signature."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.deliveries: list[str] = []
        self.bad = 0
        self.changed = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(SECRET, request.headers, body, time.time()):
            self.bad += 1
            return web.Response(status=401)
        self.deliveries.append(request.headers[DELIVERY_HEADER])
        self.events += json.loads(body)["events"]
        self.changed.set()
        return web.json_response({"ok": True})

    async def wait_for(self, predicate: Any, timeout: float = 15.0) -> None:
        async def check() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(check(), timeout)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hooks = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", hooks.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hooks.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hooks"
    yield hooks
    await runner.cleanup()


def summary(events: list[dict[str, Any]], doc: str) -> Counter[tuple[str, str | None]]:
    return Counter((e["type"], e.get("user")) for e in events if e["documentId"] == doc)


async def test_each_event_once_across_two_relays(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RATATOSKR_WEBHOOK_SECRET", SECRET)
    with make_cluster(2, "--webhook-url", receiver.url) as cluster:
        await cluster.ready()
        doc = f"hooked-{uuid.uuid4().hex[:8]}"
        # Alice on both relays, Bob on the second: one occupied, one joined
        # each, whichever relay their first connection is on.
        alice_a = RatatoskrClient(cluster.a.url, token="alice-secret")
        alice_b = RatatoskrClient(cluster.b.url, token="alice-secret")
        bob_b = RatatoskrClient(cluster.b.url, token="bob-secret")
        clients = (alice_a, alice_b, bob_b)
        try:
            await asyncio.gather(*(c.connect() for c in clients))
            await asyncio.gather(*(c.enter_document(doc) for c in clients))
            await receiver.wait_for(
                lambda: (
                    summary(receiver.events, doc)
                    == Counter(
                        {
                            ("document.occupied", None): 1,
                            ("user.joined", "alice"): 1,
                            ("user.joined", "bob"): 1,
                        }
                    )
                )
            )
            await alice_a.leave_document(doc)  # Alice is still there on b: no event
            await bob_b.close()
            await alice_b.close()
            await receiver.wait_for(
                lambda: ("document.vacated", None) in summary(receiver.events, doc)
            )
        finally:
            for client in clients:
                await client.close()

        # Nothing more is on its way: both relays' queues are empty and what
        # they delivered is what arrived (a duplicate would be counted there).
        async def settled() -> bool:
            pages = [await node.metrics() for node in cluster.relays]
            queued = sum(p.get("ratatoskr_webhook_queued_events", 0) for p in pages)
            sent = sum(p.get("ratatoskr_webhook_events_delivered_total", 0) for p in pages)
            return queued == 0 and sent == len(receiver.events)

        await eventually(settled, 10.0, lambda: f"events received: {receiver.events}")
        assert summary(receiver.events, doc) == Counter(
            {
                ("document.occupied", None): 1,
                ("user.joined", "alice"): 1,
                ("user.joined", "bob"): 1,
                ("user.left", "alice"): 1,
                ("user.left", "bob"): 1,
                ("document.vacated", None): 1,
            }
        )
        assert receiver.bad == 0
        assert len(set(receiver.deliveries)) == len(receiver.deliveries)
        order = [e["type"] for e in receiver.events if e["documentId"] == doc]
        assert order.index("document.occupied") < order.index("document.vacated")


async def test_a_dead_relays_share_is_swept_once(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bob's relay dies: the surviving relay sends his user.left (and nothing
    twice); the document stays occupied by Alice until she leaves."""
    monkeypatch.setenv("RATATOSKR_WEBHOOK_SECRET", SECRET)
    with make_cluster(2, "--webhook-url", receiver.url) as cluster:
        await cluster.ready()
        doc = f"swept-{uuid.uuid4().hex[:8]}"
        alice = RatatoskrClient(cluster.a.url, token="alice-secret")
        bob = RatatoskrClient(cluster.b.url, token="bob-secret", reconnect=False)
        try:
            await alice.connect()
            await bob.connect()
            await alice.enter_document(doc)
            await bob.enter_document(doc)
            await receiver.wait_for(
                lambda: (
                    ("user.joined", "bob") in summary(receiver.events, doc)
                    and ("user.joined", "alice") in summary(receiver.events, doc)
                )
            )
            cluster.b.kill()  # SIGKILL: b says goodbye to nobody
            await receiver.wait_for(lambda: ("user.left", "bob") in summary(receiver.events, doc))
            (gone,) = [
                e for e in receiver.events if e.get("user") == "bob" and e["type"] == "user.left"
            ]
            assert gone["reason"] == "node_gone"
            await alice.leave_document(doc)
            await receiver.wait_for(
                lambda: ("document.vacated", None) in summary(receiver.events, doc)
            )
        finally:
            await alice.close()
            await bob.close()
        assert summary(receiver.events, doc) == Counter(
            {
                ("document.occupied", None): 1,
                ("user.joined", "alice"): 1,
                ("user.joined", "bob"): 1,
                ("user.left", "bob"): 1,
                ("user.left", "alice"): 1,
                ("document.vacated", None): 1,
            }
        )
        assert receiver.bad == 0


#: What a receiver gets for Bob's document when his relay died with him in it.
SWEPT = Counter(
    {
        ("document.occupied", None): 1,
        ("user.joined", "bob"): 1,
        ("user.left", "bob"): 1,
        ("document.vacated", None): 1,
    }
)


async def bob_present_when_the_only_relay_dies(
    cluster: Cluster, receiver: Receiver, prefix: str
) -> str:
    """Bob enters a new document on the cluster's one relay, which is then
    killed (SIGKILL: no goodbye) and removed; the document's id."""
    doc = f"{prefix}-{uuid.uuid4().hex[:8]}"
    bob = RatatoskrClient(cluster.a.url, token="bob-secret", reconnect=False)
    try:
        await bob.connect()
        await bob.enter_document(doc)
        await receiver.wait_for(lambda: ("user.joined", "bob") in summary(receiver.events, doc))
        cluster.a.kill()
    finally:
        await bob.close()
    cluster.relays.pop(0).close()
    return doc


async def test_a_relay_that_died_alone_is_swept_by_the_next_one_to_start(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole cluster (one relay) dies with Bob present: the next relay to
    start sends his user.left and the document's vacated, once."""
    monkeypatch.setenv("RATATOSKR_WEBHOOK_SECRET", SECRET)
    # (The shortest node TTL: the dead relay's deadline passes in a second.)
    with make_cluster(1, "--webhook-url", receiver.url, "--node-ttl", "1") as cluster:
        await cluster.ready()
        doc = await bob_present_when_the_only_relay_dies(cluster, receiver, "restart")
        cluster.add_relay("after")
        await receiver.wait_for(
            lambda: ("document.vacated", None) in summary(receiver.events, doc), timeout=20.0
        )
        assert summary(receiver.events, doc) == SWEPT
        assert {
            e.get("reason") for e in receiver.events if e["type"].endswith(("left", "vacated"))
        } == {"node_gone"}


async def test_a_relay_that_starts_before_redis_answers_sweeps_the_dead_once_it_does(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole cluster (one relay) dies with Bob present, and the next relay
    starts while Redis does not answer it yet: once Redis answers, it sends
    Bob's user.left and the document's vacated, once. (It used to look for
    dead relays only as it started, and never again after Redis failed it.)"""
    monkeypatch.setenv("RATATOSKR_WEBHOOK_SECRET", SECRET)
    with make_cluster(1, "--webhook-url", receiver.url, "--node-ttl", "1") as cluster:
        await cluster.ready()
        doc = await bob_present_when_the_only_relay_dies(cluster, receiver, "late")
        nodes_key = Names.for_url(cluster.redis.url).nodes_key

        async def dead_relays_deadline_passed() -> bool:
            async with cluster.redis.client() as redis:
                seconds, micros = await redis.time()
                now_ms = int(seconds) * 1000 + int(micros) // 1000
                return not await redis.zrangebyscore(nodes_key, now_ms, "+inf")

        # Redis behind a gate that refuses every connection until opened.
        async with LoadBalancer([]) as gate:
            args = [
                f"redis://127.0.0.1:{gate.port}/0" if a == cluster.redis.url else a
                for a in cluster.args
            ]
            (after,) = start_relays(1, args, ["after"])
            cluster.relays.append(after)  # (closed with the cluster)
            assert (await after.health())["redis"] == "down"
            # Dead for the node table before the new relay's first read of it.
            await eventually(
                dead_relays_deadline_passed, 10, lambda: "relay a still counts as alive"
            )
            gate.ports = [cluster.redis.port]
            await receiver.wait_for(
                lambda: ("document.vacated", None) in summary(receiver.events, doc), timeout=20.0
            )
        assert summary(receiver.events, doc) == SWEPT
        assert receiver.bad == 0
