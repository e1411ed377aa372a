"""Leaks: 1,000 connect/enter/close cycles, and 200 abrupt reconnects of one client.

After the cycles every relay table (``RelayServer.stats()``) is back where it
started — with one honest exception, ``session_tombstones``: the relay keeps a
closed connection's sessionIds for 60 s (against late gossip copies), bounded
at 100,000. The test checks that exactly one tombstone per cycle exists, then
runs the relay's sweep with a clock 60 s ahead and checks they are all gone.

Client side: no task of the library survives, no ``RatatoskrClient`` object
stays reachable, every aiohttp session is closed, and neither asyncio nor
aiohttp reports an unclosed session, connector or transport (the loop's
exception handler and ``ResourceWarning`` are both watched).

An anonymous observer records every frame meanwhile: it receives exactly one
identity, one join, one leave and one disconnect per cycle, and nothing about
the protected document the token users also enter.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import time
import warnings
import weakref
from typing import Any

import aiohttp
import pytest

from ratatoskr_client import Backoff, ClientStats, ConnectionState, RatatoskrClient
from ratatoskr_client.core.membership import _INTERNED
from ratatoskr_client.server import RelayServer
from ratatoskr_client.server.core.relay import MAX_SESSION_TOMBSTONES, SESSION_TOMBSTONE_TTL

from ..integration.fakeserver import Recorder, abort_transport, ratatoskr_tasks
from .support import RecordingPeer, assert_never_about

CYCLES = 1000
PARALLEL = 8
#: What a closed client holds: nothing.
CLOSED_STATS = ClientStats(
    connection_state=ConnectionState.CLOSED,
    documents={"entering": (), "present": (), "leaving": (), "refused": ()},
    tasks=(),
    callbacks=0,
    timers=0,
    paced_sends=0,
    waiters=0,
    watchers=0,
    peers=0,
    peer_states=0,
    gossip_sessions=0,
)
USERS = [{"token": "alice-secret", "id": "alice", "name": "Alice"}]
DOCUMENTS = [
    {"id": "lobby", "acl": [{"principal": "public"}]},
    {"id": "vault", "owner": "alice"},
]


class LoopProblems:
    """Collects what asyncio and aiohttp report through the loop's exception
    handler (unclosed sessions and connectors, unretrieved task exceptions)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.reports: list[dict[str, Any]] = []
        self._previous = loop.get_exception_handler()

    def __enter__(self) -> LoopProblems:
        self.loop.set_exception_handler(lambda loop, ctx: self.reports.append(ctx))
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.set_exception_handler(self._previous)


def by_type(frames: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [f for f in frames if f.get("type") == kind]


# A long TTL: the sweep run with a clock 61 s ahead must expire tombstones only.
@pytest.mark.slow
@pytest.mark.ratatoskr_relay(users=USERS, documents=DOCUMENTS, presence_ttl=600)
async def test_a_thousand_connect_enter_close_cycles_leave_nothing_behind(
    ratatoskr_relay: RelayServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Captured DEBUG records hold references to Peers (their log arguments): log
    # only what production would show, so that the Peer leak check means something.
    caplog.set_level(logging.WARNING, logger="ratatoskr_client")
    loop = asyncio.get_running_loop()
    observer = await RecordingPeer.open(ratatoskr_relay.ws_url, "observer")
    try:
        await observer.join("lobby")
        gc.collect()
        baseline = ratatoskr_relay.stats()
        tasks_before = asyncio.all_tasks()
        interned_before = len(_INTERNED)
        started = loop.time()

        clients: weakref.WeakSet[RatatoskrClient] = weakref.WeakSet()
        sessions: weakref.WeakSet[aiohttp.ClientSession] = weakref.WeakSet()
        unclosed: list[str] = []
        real_session = aiohttp.ClientSession
        made: list[int] = []

        def tracked_session(*args: Any, **kwargs: Any) -> aiohttp.ClientSession:
            session = real_session(*args, **kwargs)  # every session a client makes
            sessions.add(session)
            made.append(1)
            return session

        monkeypatch.setattr(aiohttp, "ClientSession", tracked_session)

        async def cycle(n: int) -> None:
            token = "alice-secret" if n % 2 else None
            client = RatatoskrClient(ratatoskr_relay.url, token=token)
            clients.add(client)
            await client.connect()
            await client.enter_document("lobby")
            if token is not None:
                await client.enter_document("vault")
                await client.send_ephemeral("vault", {"n": n})
            await client.send_ephemeral("lobby", {"n": n})
            await client.close()
            if client.stats() != CLOSED_STATS:
                unclosed.append(f"cycle {n}: {client.stats()}")

        leaves = 0

        def last_leave(frame: dict[str, Any]) -> bool:
            nonlocal leaves
            leaves += frame.get("type") == "peer_left_doc"
            return leaves == CYCLES

        with LoopProblems(loop) as problems, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for first in range(0, CYCLES, PARALLEL):
                await asyncio.gather(*(cycle(n) for n in range(first, first + PARALLEL)))
            took = loop.time() - started
            # The observer hears every leave (each cycle spoke in the lobby, so
            # its join, even if held by the presence budget, was announced).
            await observer.wait_for(last_leave)
            # Whatever the cycles started (client tasks, the relay's handlers) ends.
            leftover = asyncio.all_tasks() - tasks_before - {asyncio.current_task()}
            if leftover:
                _, pending = await asyncio.wait(leftover, timeout=10)
                assert pending == set(), pending
            gc.collect()
        assert problems.reports == []
        assert [str(w.message) for w in caught] == []
        assert unclosed == []
        assert len(made) == CYCLES  # one session per client, each closed (no warning)
        assert ratatoskr_tasks() == []
        assert len(clients) == 0  # no client object kept alive by anything
        assert len(sessions) == 0
        assert len(_INTERNED) <= interned_before  # nor any Peer

        # Relay tables: as before, except one remembered sessionId per cycle...
        after = ratatoskr_relay.stats()
        print(
            f"{CYCLES} cycles in {took:.1f} s; relay before {baseline}; after {after}; "
            f"observer got {len(observer.frames)} frames"
        )
        assert after == dataclasses.replace(baseline, session_tombstones=CYCLES)
        assert CYCLES < MAX_SESSION_TOMBSTONES
        # ...which the sweep forgets once they are older than their TTL.
        ratatoskr_relay.core.expire(now=time.monotonic() + SESSION_TOMBSTONE_TTL + 1)
        assert ratatoskr_relay.stats() == baseline
    finally:
        await observer.close()

    # Exactly the frames each cycle causes, and nothing about the vault. A
    # polite close leaves first: peer_disconnected only when that leave was
    # held by the presence budget until the connection closed, then right after it.
    assert len(by_type(observer.frames, "peer_identity")) == CYCLES
    frames = observer.frames
    for i, frame in enumerate(frames):
        if frame["type"] == "peer_disconnected":
            assert frames[i - 1] == {
                "type": "peer_left_doc",
                "documentId": "lobby",
                "peerId": frame["peerId"],
            }
    assert len(by_type(observer.frames, "peer_joined_doc")) == CYCLES
    assert len(by_type(observer.frames, "peer_left_doc")) == CYCLES
    assert len(by_type(observer.frames, "ephemeral")) == CYCLES
    assert assert_never_about(observer.frames, "vault") == {}


@pytest.mark.ratatoskr_relay(users=USERS, documents=DOCUMENTS)
async def test_two_hundred_abrupt_reconnects_grow_nothing(ratatoskr_relay: RelayServer) -> None:
    fast = Backoff(base_delay=0.005, multiplier=2.0, max_delay=0.05)
    client = RatatoskrClient(ratatoskr_relay.url, token="alice-secret", backoff=fast)
    rec = Recorder(client, events=("connected",))
    try:
        await client.connect()
        await client.enter_document("lobby")
        await client.enter_document("vault")
        await client.enter_document("eph:side")
        baseline = ratatoskr_relay.stats()
        tasks = {t.get_name() for t in ratatoskr_tasks()}
        assert tasks == {"ratatoskr-receive"}
        before = client.stats()
        for _ in range(200):
            mark = rec.mark()
            abort_transport(client)
            await rec.wait("connected", since=mark, timeout=20)
            await client.wait_for_presence(
                "eph:side", lambda p: client.me in p and len(p) == 1, timeout=20
            )
        # Every document re-entered on the last connection, nothing else held.
        for doc in ("lobby", "vault", "eph:side"):
            await client.wait_for_presence(doc, lambda p: p == (client.me,), timeout=20)
        assert ratatoskr_relay.stats().peers == 1
        assert ratatoskr_relay.stats().memberships == 3
        # The client holds what it held before the 200 losses, nothing more.
        assert client.stats() == before
        assert {t.get_name() for t in ratatoskr_tasks()} == tasks
        after = ratatoskr_relay.stats()
        # One tombstone per dropped connection (each had a sessionId), nothing else grew.
        assert after == dataclasses.replace(baseline, session_tombstones=200)
    finally:
        await client.close()
    assert ratatoskr_tasks() == []
