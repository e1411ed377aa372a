"""Presence that long-lived bots can trust (issue 22), between real clients on
the in-process relay: silent watchers learn everyone's state at once (the
relay's state replay), a brief drop is resumed without anyone seeing a leave
or a join, and a drop past the grace is an ordinary leave.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from ratatoskr_client import Peer, RatatoskrClient
from ratatoskr_client.backoff import Backoff
from ratatoskr_client.server import ManualClock

from .fakeserver import Recorder, abort_transport

TIMEOUT = 5.0


async def wait_states(
    client: RatatoskrClient, doc: str, expected: Mapping[str, Mapping[str, Any]], timeout: float
) -> None:
    """Wait, on state-changed events, until client.state(doc) has ``expected``
    (peer id -> state) for each of those peers."""

    def ok() -> bool:
        states = client.state(doc)
        return all(dict(states.get(p) or {}) == dict(s) for p, s in expected.items())

    if ok():
        return
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def check(doc_id: str, peer: Peer, state: Mapping[str, Any]) -> None:
        if doc_id == doc and not done.done() and ok():
            done.set_result(None)

    client.on("state-changed", check)
    try:
        await asyncio.wait_for(done, timeout)
    except TimeoutError:
        raise AssertionError(f"states never matched: {dict(client.state(doc))}") from None
    finally:
        client.off("state-changed", check)


async def test_a_silent_watcher_learns_every_state_within_a_second(ratatoskr_client):
    sharers = [await ratatoskr_client(name=f"bot-{i}") for i in range(3)]
    for i, bot in enumerate(sharers):
        await bot.enter_document("doc")
        await bot.set_state("doc", "color", f"#00{i}")
        for x in range(5):  # a moving cursor: the watcher must still see name and color
            await bot.set_state("doc", "cursor", [x, i])
    expected = {
        bot.me.peer_id: {"name": f"bot-{i}", "color": f"#00{i}", "cursor": [4, i]}
        for i, bot in enumerate(sharers)
    }
    await wait_states(sharers[0], "doc", expected, TIMEOUT)  # everything has been relayed

    watcher = await ratatoskr_client()
    loop = asyncio.get_running_loop()
    entered = loop.time()
    await watcher.enter_document("doc")
    await wait_states(watcher, "doc", expected, 1.5)
    assert loop.time() - entered < 1.5


async def test_the_relay_forgets_the_state_of_a_peer_that_left(ratatoskr_client):
    a = await ratatoskr_client()
    b = await ratatoskr_client()
    await a.enter_document("doc")
    await a.set_state("doc", "cursor", 1)
    await b.enter_document("doc")
    await wait_states(b, "doc", {a.me.peer_id: {"name": a.me.name, "cursor": 1}}, TIMEOUT)
    await a.leave_document("doc")
    await b.wait_for_presence("doc", lambda p: len(p) == 1, timeout=TIMEOUT)
    late = await ratatoskr_client()
    await late.enter_document("doc")
    # The presence frame and any replay come together: an empty state is final.
    assert late.state("doc") == {}


@pytest.mark.ratatoskr_relay(resume_grace=5.0)
async def test_a_brief_drop_is_resumed_unseen(ratatoskr_client):
    bot = await ratatoskr_client()
    other = await ratatoskr_client()
    await bot.enter_document("doc")
    await bot.set_state("doc", "cursor", 7)
    await other.enter_document("doc")
    await wait_states(other, "doc", {bot.me.peer_id: {"name": bot.me.name, "cursor": 7}}, TIMEOUT)
    before = bot.me
    seen = Recorder(other, ("peer-left", "peer-joined", "peer-disconnected"))
    reconnected = asyncio.Event()
    bot.on("connected", lambda me: reconnected.set())

    abort_transport(bot)
    await asyncio.wait_for(reconnected.wait(), TIMEOUT)
    assert bot.me == before  # same peer id, same server-given name
    await bot.wait_for_presence("doc", lambda p: len(p) == 2, timeout=TIMEOUT)
    # A message after the resume arrives after anything the relay said before it.
    got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    other.on("ephemeral-message", lambda d, s, p: got.done() or got.set_result((s, p)))
    await bot.send_ephemeral("doc", {"after": "resume"})
    sender, payload = await asyncio.wait_for(got, TIMEOUT)
    assert sender.peer_id == before.peer_id and payload == {"after": "resume"}
    assert seen.events == []
    assert [p.peer_id for p in other.presence("doc")] == [bot.me.peer_id, other.me.peer_id]
    assert dict(other.state("doc")[bot.me.peer_id]) == {"name": bot.me.name, "cursor": 7}
    # The resumed client has its document and everyone's state again.
    await wait_states(bot, "doc", {}, TIMEOUT)
    assert bot.presence("doc") == other.presence("doc")


@pytest.mark.ratatoskr_relay(resume_grace=5.0, presence_ttl=30.0)
async def test_what_changed_while_away_is_what_the_resumed_peer_shows(ratatoskr_client):
    # Left while disconnected: the others see it leave as soon as it is back
    # (not after the presence TTL); state set meanwhile replaces the held one.
    slow = Backoff(base_delay=0.3, multiplier=1.0, max_delay=0.3)
    bot = await ratatoskr_client(backoff=slow)
    other = await ratatoskr_client()
    for doc in ("kept", "left"):
        await bot.enter_document(doc)
        await other.enter_document(doc)
    await bot.set_state("kept", "cursor", 1)
    await wait_states(other, "kept", {bot.me.peer_id: {"name": bot.me.name, "cursor": 1}}, TIMEOUT)
    before = bot.me
    seen = Recorder(other, ("peer-left", "peer-joined", "peer-disconnected"))
    events = Recorder(bot, ("disconnected", "connected"))

    abort_transport(bot)
    await events.until(lambda: len(events.of("disconnected")) == 1)
    await bot.leave_document("left")
    await bot.set_state("kept", "cursor", 2)
    entering = asyncio.ensure_future(bot.enter_document("new"))  # answered once back
    await events.until(lambda: len(events.of("connected")) == 1)
    assert bot.me == before
    await seen.until(lambda: len(seen.events) == 1)  # well within the 30 s TTL
    ((doc, peer),) = seen.of("peer-left")
    assert (doc, peer.peer_id) == ("left", before.peer_id)
    await wait_states(other, "kept", {before.peer_id: {"name": before.name, "cursor": 2}}, TIMEOUT)
    assert [p.peer_id for p in other.presence("kept")] == [before.peer_id, other.me.peer_id]
    assert [p.peer_id for p in other.presence("left")] == [other.me.peer_id]
    assert seen.names() == ["peer-left"]
    assert [p.peer_id for p in await asyncio.wait_for(entering, TIMEOUT)] == [before.peer_id]


@pytest.mark.ratatoskr_relay(resume_grace=2.0, manual_clock=True)
async def test_a_drop_past_the_grace_is_a_leave_then_a_join(
    ratatoskr_client, ratatoskr_relay, ratatoskr_relay_clock
):
    clock: ManualClock = ratatoskr_relay_clock
    slow = Backoff(base_delay=0.6, multiplier=1.0, max_delay=0.6)  # ~0.3-0.6 s of real time
    bot = await ratatoskr_client(backoff=slow)
    other = await ratatoskr_client()
    await bot.enter_document("doc")
    await other.enter_document("doc")
    await other.wait_for_presence("doc", lambda p: len(p) == 2, timeout=TIMEOUT)
    old = bot.me.peer_id
    left = asyncio.Event()
    joined: asyncio.Future[Peer] = asyncio.get_running_loop().create_future()
    other.on("peer-left", lambda d, p: p.peer_id == old and left.set())
    other.on("peer-joined", lambda d, p: joined.done() or joined.set_result(p))
    reconnecting = asyncio.Event()
    bot.on("reconnecting", lambda attempt, delay: reconnecting.set())

    abort_transport(bot)
    await asyncio.wait_for(reconnecting.wait(), TIMEOUT)
    # The relay notices the drop when its socket closes; once the grace is
    # over by its clock, the peer leaves.
    for _ in range(100):
        if old not in [p.peer_id for p in ratatoskr_relay.core.peers()] or left.is_set():
            break
        clock.advance(2.5)
        await asyncio.sleep(0.01)
    await asyncio.wait_for(left.wait(), TIMEOUT)
    newcomer = await asyncio.wait_for(joined, TIMEOUT)
    assert newcomer.peer_id != old and newcomer.peer_id == bot.me.peer_id


# --------------------------------------------------------------------------- people


USERS = [{"token": "alice-secret", "id": "alice", "name": "Alice"}]


@pytest.mark.ratatoskr_relay(users=USERS, open=True)
async def test_two_clients_of_one_user_are_one_user(ratatoskr_client):
    watcher = await ratatoskr_client()
    await watcher.enter_document("doc")
    events = Recorder(watcher, ("user-joined", "user-left", "peer-left"))
    tab1 = await ratatoskr_client("alice-secret")
    tab2 = await ratatoskr_client("alice-secret")
    await tab1.enter_document("doc")
    await tab2.enter_document("doc")
    await watcher.wait_for_presence("doc", lambda p: len(p) == 3, timeout=TIMEOUT)

    users = watcher.users("doc")
    assert [u.key for u in users] == [watcher.me.peer_id, "alice"]
    alice = users[1]
    assert (alice.user_id, alice.name, alice.is_anonymous) == ("alice", "Alice", False)
    assert alice.peers == (tab1.me, tab2.me)
    assert watcher.users("doc")[0].peers == (watcher.me,)  # anonymous: its own user
    assert [(d, u.key) for d, u in events.of("user-joined")] == [("doc", "alice")]

    await tab1.close()
    await events.until(lambda: len(events.of("peer-left")) == 1)
    assert events.of("user-left") == []  # alice is still here, in her other tab
    assert [u.peers for u in watcher.users("doc")][1] == (tab2.me,)

    await tab2.close()
    await events.until(lambda: len(events.of("user-left")) == 1)
    ((doc, gone),) = events.of("user-left")
    assert (doc, gone.key, gone.peers) == ("doc", "alice", (tab2.me,))
    assert [u.key for u in watcher.users("doc")] == [watcher.me.peer_id]
    assert len(events.of("user-joined")) == 1


@pytest.mark.ratatoskr_relay(users=USERS, open=True)
async def test_user_events_start_from_who_is_there_when_first_listened(ratatoskr_client):
    watcher = await ratatoskr_client()
    tab1 = await ratatoskr_client("alice-secret")
    await watcher.enter_document("doc")
    await tab1.enter_document("doc")
    await watcher.wait_for_presence("doc", lambda p: len(p) == 2, timeout=TIMEOUT)
    events = Recorder(watcher, ("user-joined", "user-left"))  # alice is already here
    tab2 = await ratatoskr_client("alice-secret")
    await tab2.enter_document("doc")
    await watcher.wait_for_presence("doc", lambda p: len(p) == 3, timeout=TIMEOUT)
    assert events.events == []  # a second tab is no new user
    await tab1.close()
    await tab2.close()
    await events.until(lambda: len(events.of("user-left")) == 1)
    assert events.of("user-joined") == []


async def test_a_new_peer_after_a_drop_moves_its_own_state_to_its_new_id(ratatoskr_client):
    # Without resuming, the reconnection is a new peer: the application's map of
    # states by peer id gets an empty state for the old id (issue 22, item 2).
    bot = await ratatoskr_client(resume=False)
    await bot.enter_document("doc")
    await bot.set_state("doc", "cursor", 1)
    old = bot.me
    events = Recorder(bot, ("state-changed", "connected"))
    abort_transport(bot)
    await events.until(lambda: len(events.of("connected")) == 1)
    new = bot.me
    assert new.peer_id != old.peer_id
    await events.until(lambda: new.peer_id in bot.state("doc"))
    mine = [(p.peer_id, dict(s).get("cursor")) for d, p, s in events.of("state-changed")]
    assert mine == [(old.peer_id, None), (new.peer_id, 1)]
    assert list(bot.state("doc")) == [new.peer_id]
