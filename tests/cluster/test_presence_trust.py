"""Issue 22 across relays: a silent watcher on another relay learns the state of
peers it shares a document with, and a brief drop resumed on the same relay is
seen by nobody, on any relay (real Redis, relay processes, real clients)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from ratatoskr_client import Peer, RatatoskrClient
from ratatoskr_client.testing import TEST_BACKOFF

from ..integration.fakeserver import Recorder, abort_transport
from .conftest import Cluster
from .world import states_within

TIMEOUT = 10.0


@pytest.fixture
async def cluster(cluster3: Cluster) -> Cluster:
    await cluster3.ready()
    return cluster3


async def test_a_silent_watcher_on_another_relay_learns_every_state(cluster: Cluster) -> None:
    doc = f"watch-{uuid.uuid4().hex[:8]}"
    sharers = [RatatoskrClient(cluster.a.url, name=f"bot-{i}") for i in range(2)]
    sharers.append(RatatoskrClient(cluster.c.url, name="bot-2"))
    watchers: list[RatatoskrClient] = []
    try:
        for i, bot in enumerate(sharers):
            await bot.connect()
            await bot.enter_document(doc)
            await bot.set_state(doc, "cursor", [i, i])
        expected = {
            bot.me.peer_id: {"name": f"bot-{i}", "cursor": [i, i]} for i, bot in enumerate(sharers)
        }
        await states_within(sharers[0], doc, expected, TIMEOUT)
        # The first watcher on relay b (not subscribed to the document yet), then a second.
        for _ in range(2):
            watcher = RatatoskrClient(cluster.b.url)
            watchers.append(watcher)
            await watcher.connect()
            loop = asyncio.get_running_loop()
            entered = loop.time()
            await watcher.enter_document(doc)
            await states_within(watcher, doc, expected, 1.5)
            assert loop.time() - entered < 1.5
    finally:
        for client in (*watchers, *sharers):
            await client.close()


async def test_a_drop_resumed_on_the_same_relay_is_seen_by_nobody(cluster: Cluster) -> None:
    doc = f"resume-{uuid.uuid4().hex[:8]}"
    bot = RatatoskrClient(cluster.a.url, backoff=TEST_BACKOFF)
    other = RatatoskrClient(cluster.b.url)
    try:
        for client in (bot, other):
            await client.connect()
            await client.enter_document(doc)
        await other.wait_for_presence(doc, lambda p: len(p) == 2, timeout=TIMEOUT)
        before = bot.me
        seen = Recorder(other, ("peer-left", "peer-joined", "peer-disconnected"))
        reconnected = asyncio.Event()
        bot.on("connected", lambda me: reconnected.set())
        abort_transport(bot)
        await asyncio.wait_for(reconnected.wait(), TIMEOUT)
        assert bot.me == before
        got: asyncio.Future[Peer] = asyncio.get_running_loop().create_future()
        other.on("ephemeral-message", lambda d, s, p: got.done() or got.set_result(s))
        await bot.wait_for_presence(doc, lambda p: len(p) == 2, timeout=TIMEOUT)
        await bot.send_ephemeral(doc, "after the resume")
        assert await asyncio.wait_for(got, TIMEOUT) == before
        assert seen.events == []
    finally:
        await bot.close()
        await other.close()
