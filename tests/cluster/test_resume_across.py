"""Issue 22: a client whose connection to one relay of a cluster is cut (no
close frame) and that comes back on another relay is the same peer — same
id, same name, its documents and state — and nobody, on any relay, sees it
leave or join. A wrong secret takes nobody over; past the grace, a normal
leave. Real Redis, relays as processes, real clients."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import cbor2
import pytest

from ratatoskr_client import RatatoskrClient
from ratatoskr_client.backoff import Backoff
from ratatoskr_client.testing import TEST_BACKOFF

from ..integration.fakeserver import Recorder, abort_transport
from .conftest import Cluster, make_cluster
from .support import LoadBalancer
from .world import states_within

TIMEOUT = 10.0
#: Short, so that the past-the-grace case takes seconds.
GRACE = 3.0
EVENTS = ("peer-left", "peer-joined", "peer-disconnected")


@pytest.fixture(scope="module")
def grace_cluster() -> Iterator[Cluster]:
    with make_cluster(3, settings=f"resume_grace = {GRACE}\n") as cluster:
        yield cluster


@pytest.fixture
async def cluster(grace_cluster: Cluster) -> Cluster:
    await grace_cluster.ready()
    return grace_cluster


async def setup(
    cluster: Cluster, doc: str, backoff: Backoff = TEST_BACKOFF, **options: Any
) -> tuple[RatatoskrClient, list[RatatoskrClient]]:
    """A bot that may come back on relay a or b (it starts on a) and a
    watcher on each relay, all in ``doc``; the bot shares a cursor."""
    # (Heartbeats well within the cluster's short presence TTL, 3 s.)
    bot = RatatoskrClient(
        [cluster.a.url, cluster.b.url], backoff=backoff, heartbeat_interval=1.0, **options
    )
    watchers = [RatatoskrClient(node.url, heartbeat_interval=1.0) for node in cluster.relays]
    for client in (bot, *watchers):
        await client.connect()
        await client.enter_document(doc)
    await bot.set_state(doc, "cursor", 1)
    expected = {bot.me.peer_id: {"name": bot.me.name, "cursor": 1}}
    for watcher in watchers:
        await watcher.wait_for_presence(doc, lambda p: len(p) == 4, timeout=TIMEOUT)
        await states_within(watcher, doc, expected, TIMEOUT)
    return bot, watchers


async def test_a_peer_cut_off_one_relay_resumes_on_another_unseen(cluster: Cluster) -> None:
    doc = f"across-{uuid.uuid4().hex[:8]}"
    bot, watchers = await setup(cluster, doc)
    try:
        before = bot.me
        seen = [Recorder(w, EVENTS) for w in watchers]
        events = Recorder(bot, ("connected",))
        loop = asyncio.get_running_loop()
        cut = loop.time()
        abort_transport(bot)
        await events.until(lambda: len(events.of("connected")) == 1, timeout=2.0)
        took = loop.time() - cut
        assert bot.me == before  # same peer id, same server-given name
        assert cluster.b.url.split("//")[1] in repr(bot)  # (on the other relay)
        await bot.wait_for_presence(doc, lambda p: len(p) == 4, timeout=TIMEOUT)
        # Its state is intact everywhere, and what it says now comes from it.
        for watcher in watchers:
            assert dict(watcher.state(doc)[before.peer_id]) == {"name": before.name, "cursor": 1}
        await bot.set_state(doc, "cursor", 2)
        got = [asyncio.get_running_loop().create_future() for _ in watchers]
        for watcher, fut in zip(watchers, got, strict=True):
            watcher.on("ephemeral-message", lambda d, s, p, f=fut: f.done() or f.set_result(s))
        await bot.send_ephemeral(doc, "after the resume")
        for watcher, fut in zip(watchers, got, strict=True):
            assert (await asyncio.wait_for(fut, TIMEOUT)).peer_id == before.peer_id
            await states_within(
                watcher, doc, {before.peer_id: {"name": before.name, "cursor": 2}}, TIMEOUT
            )
            assert [p.peer_id for p in watcher.presence(doc)].count(before.peer_id) == 1
        assert [s.events for s in seen] == [[], [], []]
        print(f"cut to resumed auth_ok on the other relay: {took * 1000:.0f} ms")
    finally:
        for client in (bot, *watchers):
            await client.close()


async def resume_raw(url: str, peer_id: str, secret: str) -> dict[str, Any]:
    """An auth with ``resume`` on a bare WebSocket: the ``auth_ok``."""
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url.rstrip("/") + "/sync") as ws,
    ):
        auth = {"type": "auth", "anonymous": True, "resume": {"peerId": peer_id, "secret": secret}}
        await ws.send_bytes(cbor2.dumps(auth))
        msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
        frame: dict[str, Any] = cbor2.loads(msg.data)
        return frame


async def test_a_wrong_secret_on_another_relay_takes_nobody_over(cluster: Cluster) -> None:
    doc = f"thief-{uuid.uuid4().hex[:8]}"
    slow = Backoff(base_delay=1.0, multiplier=1.0, max_delay=1.0)  # back after ~0.5-1 s
    bot, watchers = await setup(cluster, doc, slow)
    try:
        before = bot.me
        seen = [Recorder(w, EVENTS) for w in watchers]
        events = Recorder(bot, ("connected",))
        abort_transport(bot)
        ok = await resume_raw(cluster.b.url, before.peer_id, "not-the-secret")
        assert ok["type"] == "auth_ok" and ok["clientPeerId"] != before.peer_id
        assert "resumed" not in ok
        await events.until(lambda: len(events.of("connected")) == 1, timeout=TIMEOUT)
        assert bot.me == before  # its own client still resumed it
        await bot.wait_for_presence(doc, lambda p: len(p) == 4, timeout=TIMEOUT)
        got = [asyncio.get_running_loop().create_future() for _ in watchers]
        for watcher, fut in zip(watchers, got, strict=True):
            watcher.on("ephemeral-message", lambda d, s, p, f=fut: f.done() or f.set_result(s))
        await bot.send_ephemeral(doc, "still me")
        for fut in got:
            assert (await asyncio.wait_for(fut, TIMEOUT)).peer_id == before.peer_id
        # (The thief's peer never entered the document; the bot never left it.)
        assert [s.events for s in seen] == [[], [], []]
    finally:
        for client in (bot, *watchers):
            await client.close()


async def test_past_the_grace_it_is_a_leave_then_a_join(cluster: Cluster) -> None:
    doc = f"late-{uuid.uuid4().hex[:8]}"
    # Its token provider holds its reconnection back until the test lets it go
    # (a provider that is slow to answer, as a real one may be).
    gate = asyncio.Event()
    gate.set()

    async def token() -> str:
        await gate.wait()
        return "alice-secret"

    bot, watchers = await setup(cluster, doc, token=token)
    try:
        old = bot.me.peer_id
        seen = [Recorder(w, EVENTS) for w in watchers]
        events = Recorder(bot, ("connected",))
        gate.clear()
        abort_transport(bot)

        def about(s: Recorder, event: str, peer_id: str) -> list[Any]:
            return [a for a in s.of(event) if a[-1].peer_id == peer_id]

        for s in seen:
            await s.until(lambda s=s: about(s, "peer-left", old) != [], timeout=GRACE + TIMEOUT)
        gate.set()
        await events.until(lambda: len(events.of("connected")) == 1, timeout=4 * GRACE + TIMEOUT)
        new = bot.me.peer_id
        assert new != old
        for s in seen:
            await s.until(lambda s=s: about(s, "peer-joined", new) != [], timeout=TIMEOUT)
            assert len(about(s, "peer-left", old)) == 1 and len(about(s, "peer-joined", new)) == 1
            assert about(s, "peer-joined", old) == [] and about(s, "peer-left", new) == []
            order = [(e, a[-1].peer_id) for e, a in s.events if a[-1].peer_id in (old, new)]
            assert order.index(("peer-left", old)) < order.index(("peer-joined", new))
    finally:
        for client in (bot, *watchers):
            await client.close()


async def test_behind_a_load_balancer_one_url_does_the_same(cluster: Cluster) -> None:
    # Round robin, no sticky sessions: the reconnection lands on the other relay.
    doc = f"balanced-{uuid.uuid4().hex[:8]}"
    async with LoadBalancer([cluster.a.port, cluster.b.port]) as lb:
        bot = RatatoskrClient(lb.url, backoff=TEST_BACKOFF, heartbeat_interval=1.0)
        watchers = [RatatoskrClient(node.url, heartbeat_interval=1.0) for node in cluster.relays]
        try:
            for client in (bot, *watchers):
                await client.connect()
                await client.enter_document(doc)
            for watcher in watchers:
                await watcher.wait_for_presence(doc, lambda p: len(p) == 4, timeout=TIMEOUT)
            before = bot.me
            seen = [Recorder(w, EVENTS) for w in watchers]
            events = Recorder(bot, ("connected",))
            abort_transport(bot)
            await events.until(lambda: len(events.of("connected")) == 1, timeout=2.0)
            assert bot.me == before  # (the balancer's second connection goes to relay b)
            got = [asyncio.get_running_loop().create_future() for _ in watchers]
            for watcher, fut in zip(watchers, got, strict=True):
                watcher.on("ephemeral-message", lambda d, s, p, f=fut: f.done() or f.set_result(s))
            await bot.wait_for_presence(doc, lambda p: len(p) == 4, timeout=TIMEOUT)
            await bot.send_ephemeral(doc, "via the balancer")
            for fut in got:
                assert (await asyncio.wait_for(fut, TIMEOUT)).peer_id == before.peer_id
            assert [s.events for s in seen] == [[], [], []]
        finally:
            for client in (bot, *watchers):
                await client.close()
