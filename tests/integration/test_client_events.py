"""Every client event with its documented arguments, coroutine callbacks, and
callbacks that raise, against the in-process relay over real sockets."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ratatoskr_client import (
    CallbackError,
    ConnectionClosed,
    Peer,
    PermissionDenied,
    RatatoskrClient,
    RatatoskrError,
)

from .fakeserver import FakeServer, Recorder, abort_transport

USERS = [{"token": "alice-secret", "id": "alice", "name": "Alice"}]
DOCUMENTS = [
    {"id": "doc-1", "owner": "alice", "acl": [{"principal": "public", "permission": "read"}]},
    {"id": "secret", "owner": "alice"},
]


@pytest.mark.ratatoskr_relay(users=USERS, documents=DOCUMENTS)
async def test_every_event_with_its_documented_arguments(ratatoskr_client, ratatoskr_relay):
    a = await ratatoskr_client(connect=False)
    rec = Recorder(a)
    await a.connect()
    # (resume=False: b's drop below must be seen as a leave and a join, #22)
    b = await ratatoskr_client("alice-secret", resume=False)

    # connected(me)
    assert rec.of("connected") == [(a.me,)]

    # presence-changed(doc, peers), peer-identity(peer) and peer-joined(doc, peer)
    await a.enter_document("doc-1")
    assert rec.of("presence-changed") == [("doc-1", (a.me,))]
    assert rec.of("peer-identity") == []  # the relay scopes identities to documents
    mark = rec.mark()
    await b.enter_document("doc-1")
    assert await rec.wait("peer-joined", since=mark) == ("doc-1", b.me)
    await rec.wait("presence-changed", lambda d, p: p == (a.me, b.me))
    ((peer,),) = rec.of("peer-identity", mark)  # b shares a document now: its identity first
    assert peer == b.me == Peer(b.me.peer_id, "alice", "Alice", False)
    names = rec.names()[mark:]
    assert names.index("peer-identity") < names.index("peer-joined")

    # ephemeral-message(doc, sender, payload)
    await b.send_ephemeral("doc-1", {"cursor": [3, 4]})
    doc, sender, payload = await rec.wait("ephemeral-message")
    assert (doc, sender, payload) == ("doc-1", b.me, {"cursor": [3, 4]})
    assert isinstance(sender, Peer)

    # peer-left(doc, peer)
    await b.leave_document("doc-1")
    assert await rec.wait("peer-left") == ("doc-1", b.me)
    # user-left(doc, user): b was alice's only peer there, so alice left, after
    # the presence-changed that shows it (#22; user-joined is checked below).
    ((doc, alice),) = rec.of("user-left")
    assert rec.events[-2] == ("presence-changed", ("doc-1", (a.me,)))
    assert rec.events[-1][0] == "user-left"
    assert (doc, alice.key, alice.user_id, alice.peers) == ("doc-1", "alice", "alice", (b.me,))
    joined = [(d, u.key) for d, u in rec.of("user-joined")]
    assert joined == [("doc-1", a.me.peer_id), ("doc-1", "alice")]

    # error(error): a server error answering no awaited call
    await a.send_ephemeral("secret", {"x": 1})
    (err,) = await rec.wait("error")
    assert isinstance(err, PermissionDenied)
    assert err.document_id == "secret"

    # peer-disconnected(peer): b's connection dies while it shares doc-1 with a
    mark = rec.mark()
    await b.enter_document("doc-1")
    # (b's third change there within a second: a hears it within the window)
    await rec.wait("presence-changed", lambda d, p: p == (a.me, b.me), since=mark)
    b_me = b.me
    abort_transport(b)  # (a polite close() leaves doc-1 first: a sees only peer-left)
    assert await rec.wait("peer-disconnected") == (b_me,)
    await b.close()

    # disconnected(reason), reconnecting(attempt, delay), connected(new me)
    old_me = a.me
    mark = rec.mark()
    await ratatoskr_relay.stop()
    (reason,) = await rec.wait("disconnected", since=mark)
    assert isinstance(reason, ConnectionClosed)
    assert isinstance(reason, RatatoskrError)
    attempt, delay = await rec.wait("reconnecting", since=mark)
    assert attempt == 1
    assert isinstance(delay, float)
    assert 0.0 <= delay < 0.05  # the first window of the test backoff
    await ratatoskr_relay.start()
    (me,) = await rec.wait("connected", since=mark)
    assert me == a.me
    assert me.peer_id != old_me.peer_id
    attempts = [args[0] for args in rec.of("reconnecting", mark)]
    assert attempts == list(range(1, len(attempts) + 1))  # 1-based, counting up

    # Every event name was seen, and nothing else.
    assert set(rec.names()) == {
        "connected",
        "disconnected",
        "reconnecting",
        "peer-identity",
        "peer-disconnected",
        "peer-joined",
        "peer-left",
        "presence-changed",
        "user-joined",
        "user-left",
        "ephemeral-message",
        "error",
    }


async def test_coroutine_callbacks_are_run(ratatoskr_client):
    a, b = await ratatoskr_client(), await ratatoskr_client()
    got: asyncio.Queue[tuple[str, object]] = asyncio.Queue()

    async def on_joined(doc: str, peer: Peer) -> None:
        await asyncio.sleep(0)
        await got.put(("joined", (doc, peer)))

    async def on_message(doc: str, sender: Peer, payload: object) -> None:
        await got.put(("message", (doc, sender, payload)))

    a.on("peer-joined", on_joined)
    a.on("ephemeral-message", on_message)
    await a.enter_document("doc")
    await b.enter_document("doc")
    assert await asyncio.wait_for(got.get(), 5) == ("joined", ("doc", b.me))
    await b.send_ephemeral("doc", "hello")
    assert await asyncio.wait_for(got.get(), 5) == ("message", ("doc", b.me, "hello"))


async def test_once_and_off(ratatoskr_client):
    a, b = await ratatoskr_client(), await ratatoskr_client()
    once: list[object] = []
    always: list[object] = []
    removed: list[object] = []

    def unwanted(doc: str, sender: Peer, payload: object) -> None:
        removed.append(payload)

    a.once("ephemeral-message", lambda *args: once.append(args[2]))
    a.on("ephemeral-message", lambda *args: always.append(args[2]))
    a.on("ephemeral-message", unwanted)
    a.off("ephemeral-message", unwanted)
    a.off("ephemeral-message", unwanted)  # removing twice is harmless
    await a.enter_document("doc")
    await b.enter_document("doc")
    await a.wait_for_presence("doc", lambda p: len(p) == 2, timeout=5)
    rec = Recorder(a)
    for n in range(3):
        await b.send_ephemeral("doc", n)
    await rec.until(lambda: len(always) == 3)
    assert once == [0]
    assert always == [0, 1, 2]
    assert removed == []


@pytest.mark.ratatoskr_relay(presence_ttl=0.6)
async def test_raising_callbacks_are_reported_and_nothing_else_breaks(
    ratatoskr_client, ratatoskr_relay, caplog
):
    a = await ratatoskr_client(heartbeat_interval=0.2)
    b = await ratatoskr_client(heartbeat_interval=0.2)
    rec = Recorder(a)
    good: list[object] = []

    def bad_sync(doc: str, sender: Peer, payload: object) -> None:
        raise ValueError(f"sync callback broke on {payload!r}")

    async def bad_async(doc: str, sender: Peer, payload: object) -> None:
        raise KeyError(f"async callback broke on {payload!r}")

    a.on("ephemeral-message", bad_sync)
    a.on("ephemeral-message", bad_async)
    a.on("ephemeral-message", lambda doc, sender, payload: good.append(payload))
    a.on("presence-changed", lambda doc, peers: 1 / 0)

    await a.enter_document("doc")
    await b.enter_document("doc")
    await a.wait_for_presence("doc", lambda p: len(p) == 2, timeout=5)
    for n in range(3):
        await b.send_ephemeral("doc", n)
    await rec.until(lambda: len(good) == 3 and len(rec.of("error")) >= 8)

    errors = [args[0] for args in rec.of("error")]
    assert all(isinstance(e, CallbackError) for e in errors), errors
    by_cause = {(e.event, type(e.__cause__)) for e in errors}
    assert by_cause == {
        ("ephemeral-message", ValueError),
        ("ephemeral-message", KeyError),
        ("presence-changed", ZeroDivisionError),
    }
    assert sum(1 for e in errors if isinstance(e.__cause__, ValueError)) == 3
    assert sum(1 for e in errors if isinstance(e.__cause__, KeyError)) == 3
    assert good == [0, 1, 2]  # the other callback of the same event still ran
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)

    # The receive loop still works, and so do heartbeats: well past the relay's
    # presence TTL, a is still present (sleeping here is the point of the test).
    await asyncio.sleep(1.8)
    assert a.is_connected
    assert ratatoskr_relay.core.presence("doc") == (a.me.peer_id, b.me.peer_id)
    assert rec.of("peer-left") == []
    assert all(isinstance(args[0], CallbackError) for args in rec.of("error"))
    await b.send_ephemeral("doc", "still alive")
    await rec.until(lambda: good[-1:] == ["still alive"])


async def test_an_error_callback_that_raises_does_not_loop(ratatoskr_client):
    a, b = await ratatoskr_client(), await ratatoskr_client()
    calls: list[BaseException] = []

    def bad_error_handler(err: BaseException) -> None:
        calls.append(err)
        raise RuntimeError("error handler broke")

    a.on("error", bad_error_handler)
    a.on("ephemeral-message", lambda *args: 1 / 0)
    received: list[object] = []
    a.on("ephemeral-message", lambda doc, sender, payload: received.append(payload))
    rec = Recorder(a)
    await a.enter_document("doc")
    await b.enter_document("doc")
    await a.wait_for_presence("doc", lambda p: len(p) == 2, timeout=5)
    await b.send_ephemeral("doc", 1)
    await b.send_ephemeral("doc", 2)
    await rec.until(lambda: received == [1, 2])
    assert len(calls) == 2
    assert a.is_connected


async def test_a_callback_may_close_the_client(ratatoskr_client):
    a, b = await ratatoskr_client(), await ratatoskr_client()
    closed = asyncio.Event()

    async def close_on_message(doc: str, sender: Peer, payload: object) -> None:
        await a.close()
        closed.set()

    a.on("ephemeral-message", close_on_message)
    await a.enter_document("doc")
    await b.enter_document("doc")
    await a.wait_for_presence("doc", lambda p: len(p) == 2, timeout=5)
    await b.send_ephemeral("doc", "bye")
    await asyncio.wait_for(closed.wait(), 5)
    assert not a.is_connected
    await b.wait_for_presence("doc", lambda p: p == (b.me,), timeout=5)


async def test_abrupt_loss_emits_disconnected_then_reconnects(ratatoskr_client):
    a = await ratatoskr_client(resume=False)  # (a new peer after the drop: #22 made it opt-out)
    rec = Recorder(a)
    await a.enter_document("doc")
    old = a.me
    abort_transport(a)
    (reason,) = await rec.wait("disconnected")
    assert isinstance(reason, ConnectionClosed)
    await rec.wait("connected")
    await a.wait_for_presence("doc", lambda p: p == (a.me,), timeout=5)
    assert a.me.peer_id != old.peer_id
    names = rec.names()
    first = names.index("disconnected")
    assert names[first:].index("reconnecting") < names[first:].index("connected")


async def test_on_works_as_a_decorator_and_off_removes():
    async with FakeServer() as server, RatatoskrClient(server.url) as client:
        calls: list[object] = []

        @client.on("error")
        def handler(err: RatatoskrError) -> None:
            calls.append(err)

        assert callable(handler)  # the decorator returns the function itself
        rec = Recorder(client)
        conn = server.conns[0]
        await server.send(conn, {"type": "error", "error": "x_first", "message": ""})
        await rec.wait("error")
        client.off("error", handler)
        client.off("error", handler)  # removing twice is harmless
        await server.send(conn, {"type": "error", "error": "x_second", "message": ""})
        await rec.until(lambda: len(rec.of("error")) == 2)
        assert [e.code for e in calls] == ["x_first"]  # type: ignore[attr-defined]
