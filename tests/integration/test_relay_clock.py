"""The relay on a clock the test moves: its timer rules in fake time.

A relay given a :class:`~ratatoskr_client.server.ManualClock` (``RelayServer(clock=...)``,
or the plugin's ``manual_clock=True``) runs presence expiry, the liveness rule,
auth deadlines and held presence changes when the clock is advanced, at once:
these tests move it by minutes and take a fraction of a second, over real
sockets with real clients.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ratatoskr_client import RatatoskrClient
from ratatoskr_client.server import ManualClock, RelayServer

from ..relay_thread import RelayThread
from .rawpeer import RawPeers, is_frame, settle
from .test_metrics import scrape

TTL = 90.0


@pytest.mark.ratatoskr_relay(manual_clock=True, presence_ttl=TTL, ping_interval=600)
async def test_presence_expires_when_the_clock_passes_the_ttl(
    ratatoskr_relay: RelayServer, ratatoskr_relay_clock: ManualClock, ratatoskr_client: Any
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    first: RatatoskrClient = await ratatoskr_client()
    second: RatatoskrClient = await ratatoskr_client()
    await first.enter_document("doc")
    await second.enter_document("doc")
    await second.wait_for_presence("doc", lambda ps: len(ps) == 2, timeout=5)
    saw_first_leave = asyncio.Event()
    second.on("peer-left", lambda doc, peer: saw_first_leave.set() if peer == first.me else None)
    both = {first.me.peer_id, second.me.peer_id}

    ratatoskr_relay_clock.advance(TTL - 1)  # short of the TTL: nobody expires
    assert set(ratatoskr_relay.core.presence("doc")) == both
    # Past it (no heartbeat came: their timers run on real time), the sweep
    # runs inside advance(): both are removed, in the order they connected.
    ratatoskr_relay_clock.advance(2)
    assert ratatoskr_relay.core.presence("doc") == ()
    await asyncio.wait_for(saw_first_leave.wait(), 5)
    # Each was told it expired too, and comes back with a heartbeat.
    for client in (first, second):
        await client.wait_for_presence("doc", lambda ps: len(ps) == 2, timeout=5)
    assert set(ratatoskr_relay.core.presence("doc")) == both
    assert loop.time() - started < TTL / 10  # minutes of relay time, seconds of ours


async def test_the_auth_deadline_passes_in_fake_time_and_is_counted() -> None:
    pytest.importorskip("prometheus_client")
    clock = ManualClock()
    async with (
        RelayServer(port=0, auth_timeout=10, clock=clock) as relay,
        RawPeers(relay.ws_url) as peers,
    ):
        authed = await peers()
        idle = await peers.connect()
        chatty = await peers.connect()
        await chatty.send({"type": "hello"})  # not auth: it does not move the deadline
        await chatty.recv_type("error", error="not_authenticated")
        clock.advance(9.999)  # (the sweep ran inside advance(): this loop is the relay's)
        await chatty.send({"type": "hello"})  # a round trip: still open
        await chatty.recv_type("error", error="not_authenticated")
        clock.advance(0.001)
        for peer in (idle, chatty):
            err = await peer.recv_type("error", error="auth_timeout")
            assert err["message"] == "no auth within 10 s"
            assert await peer.wait_closed() == 1008
        assert [f["error"] for f in idle.frames] == ["auth_timeout"]
        await settle(authed)
        assert authed.errors() == []
        after = await scrape(relay)
    # Refused authentications: chatty's two not_authenticated and the two timeouts.
    assert after['ratatoskr_refused_total{reason="auth"}'] == 4


def test_a_relay_on_another_thread_is_woken_in_its_own_loop() -> None:
    clock = ManualClock()

    async def idle_then_timed_out(url: str) -> list[str]:
        async with RawPeers(url) as peers:
            idle = await peers.connect()
            await idle.send({"type": "hello"})  # answered: the relay has opened it
            await idle.recv_type("error", error="not_authenticated")
            clock.advance(10)  # from this thread: the relay runs its sweep in its own
            await idle.recv_until(is_frame("error", error="auth_timeout"))
            assert await idle.wait_closed() == 1008
            return [f["error"] for f in idle.frames]

    with RelayThread(auth_timeout=10, clock=clock) as relay:
        errors = asyncio.run(idle_then_timed_out(relay.server.ws_url))
    assert errors == ["not_authenticated", "auth_timeout"]
