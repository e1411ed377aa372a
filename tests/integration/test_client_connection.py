"""RatatoskrClient's connection life: auth, state, close, abrupt loss, relay
restarts, heartbeats, exact frames, and servers without presence or that never
answer. Real sockets throughout: the in-process relay, or a scripted fake server
where the relay cannot stage the situation."""

from __future__ import annotations

import asyncio
import gc
import socket
import warnings

import cbor2
import pytest
from aiohttp import web

from ratatoskr_client import (
    AuthError,
    Backoff,
    ConnectError,
    ConnectionClosed,
    ConnectionState,
    LimitExceeded,
    OperationTimeout,
    Peer,
    PresenceUnsupported,
    ProtocolError,
    RatatoskrClient,
)
from ratatoskr_client.core.client import ClientCore
from ratatoskr_client.testing import TEST_BACKOFF

from .fakeserver import FULL_FEATURES, FakeServer, Recorder, abort_transport, ratatoskr_tasks

USERS = [{"token": "alice-secret", "id": "alice", "name": "Alice"}]


def ids(peers: tuple[Peer, ...]) -> list[str]:
    return [p.peer_id for p in peers]


async def tasks_finish(timeout: float = 5.0) -> None:
    """Wait for every task the library started to end by itself."""
    pending = ratatoskr_tasks()
    if pending:
        await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), timeout)


# --------------------------------------------------------------------------- auth


@pytest.mark.ratatoskr_relay(users=USERS, documents=[])
async def test_auth_failure_raises_and_is_never_retried(ratatoskr_client, ratatoskr_relay):
    client = await ratatoskr_client("wrong-token", connect=False)
    rec = Recorder(client)
    with pytest.raises(AuthError) as info:
        await client.connect()
    assert info.value.code == "invalid_token"
    assert not client.is_connected
    assert client.connection_state is not ConnectionState.CONNECTED
    assert ratatoskr_tasks() == []  # no receive loop, nothing that could retry
    assert rec.of("connected") == rec.of("reconnecting") == []
    # Trying again is the application's call, and fails the same way.
    with pytest.raises(AuthError):
        await client.connect()
    ok = await ratatoskr_client("alice-secret")
    assert ok.me.user_id == "alice"


async def test_auth_refused_on_reconnect_closes_the_client():
    async with FakeServer() as server:
        client = RatatoskrClient(server.url, token="tok", backoff=TEST_BACKOFF)
        rec = Recorder(client)
        await client.connect()
        server.refuse_auth = True
        await server.drop(server.conns[0])
        (err,) = await rec.wait("error")
        assert isinstance(err, AuthError)
        await tasks_finish()
        assert client.connection_state is ConnectionState.CLOSED
        assert not client.is_connected
        assert server.auth_attempts == 2  # the first auth, and one refused retry
        assert len(rec.of("reconnecting")) == 1
        await client.close()


async def test_an_unreachable_server_raises_connect_error():
    # Bound but not listening while the client connects: refused, and no other
    # test's server can take the port meanwhile.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        client = RatatoskrClient(f"http://127.0.0.1:{port}")
        with pytest.raises(ConnectError) as info:
            await client.connect()
    assert ratatoskr_tasks() == []
    await client.close()
    # The operating system's reason, not aiohttp's connector internals
    # ("Cannot connect to host 127.0.0.1:N ssl:default [Connect call failed ...]").
    assert str(info.value) == f"cannot connect to ws://127.0.0.1:{port}/sync: connection refused"


@pytest.mark.parametrize("suffix", ["", "/", "/sync", "/sync/"])
@pytest.mark.parametrize("scheme", ["http", "ws"])
async def test_http_and_ws_urls_reach_the_sync_socket(ratatoskr_relay, scheme, suffix):
    url = f"{scheme}://127.0.0.1:{ratatoskr_relay.port}{suffix}"
    async with RatatoskrClient(url) as client:
        assert client.is_connected
        assert await client.enter_document("doc") == (client.me,)
    assert client.connection_state is ConnectionState.CLOSED


# --------------------------------------------------------------------------- state


async def test_state_is_true_to_the_socket(ratatoskr_client, ratatoskr_relay):
    client = await ratatoskr_client(connect=False)
    rec = Recorder(client)
    assert client.connection_state is ConnectionState.IDLE
    assert not client.is_connected
    await client.connect()
    assert client.connection_state is ConnectionState.CONNECTED
    assert client.is_connected

    await ratatoskr_relay.stop()
    # The relay waited for our close reply: the socket is closed now.
    assert not client.is_connected
    assert client.connection_state is ConnectionState.RECONNECTING
    await ratatoskr_relay.start()
    await rec.wait("connected", lambda me: me != rec.of("connected")[0][0])
    assert client.is_connected
    assert client.connection_state is ConnectionState.CONNECTED

    await client.close()
    assert client.connection_state is ConnectionState.CLOSED
    assert not client.is_connected


async def test_without_reconnect_a_lost_connection_closes_the_client(
    ratatoskr_client, ratatoskr_relay
):
    client = await ratatoskr_client(reconnect=False)
    rec = Recorder(client)
    await client.enter_document("doc")
    await ratatoskr_relay.stop()
    assert client.connection_state is ConnectionState.CLOSED
    (reason,) = await rec.wait("disconnected")
    assert isinstance(reason, ConnectionClosed)
    await tasks_finish()
    assert rec.of("reconnecting") == []
    assert client.connection_state is ConnectionState.CLOSED
    assert client.presence("doc") == ()
    with pytest.raises(ConnectionClosed):
        await client.enter_document("doc")


async def test_connect_and_close_are_idempotent_and_a_closed_client_can_reconnect(
    ratatoskr_client,
):
    client = await ratatoskr_client()
    first = client.me
    await client.connect()  # already connected: nothing happens
    assert client.me == first
    await client.enter_document("doc")
    await client.close()
    await client.close()
    assert client.connection_state is ConnectionState.CLOSED
    await client.connect()
    assert client.is_connected
    assert client.me.peer_id != first.peer_id
    assert client.entered_documents == ()  # nothing entered after a close
    assert await client.enter_document("doc") == (client.me,)


# --------------------------------------------------------------------------- close


@pytest.mark.ratatoskr_relay(identity_scope="global")  # b hears a disconnect after its leaves
async def test_close_leaves_every_document_and_stops_every_task(ratatoskr_client):
    a = await ratatoskr_client()
    b = await ratatoskr_client()
    rec_a, rec_b = Recorder(a), Recorder(b)
    slow_started = asyncio.Event()

    async def slow_callback(doc: str, sender: Peer, payload: object) -> None:
        slow_started.set()
        await asyncio.Event().wait()  # still running when close() comes

    a.on("ephemeral-message", slow_callback)
    for doc in ("d1", "d2"):
        await a.enter_document(doc)
        await b.enter_document(doc)
        await a.wait_for_presence(doc, lambda p: len(p) == 2, timeout=5)
    await b.send_ephemeral("d1", "keep a busy")
    await asyncio.wait_for(slow_started.wait(), 5)
    assert {t.get_name() for t in ratatoskr_tasks()} >= {"ratatoskr-receive"}

    a_me = a.me
    mark = rec_a.mark()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await a.close()
        gc.collect()
    assert caught == []

    # a's task is gone (b's is still running), its timer too, and its callback
    # was cancelled.
    assert [t.get_name() for t in ratatoskr_tasks()] == ["ratatoskr-receive"]
    stats = a.stats()
    assert (stats.tasks, stats.timers, stats.callbacks) == ((), 0, 0)
    assert (stats.waiters, stats.watchers, stats.paced_sends) == (0, 0, 0)
    assert (stats.peers, stats.peer_states) == (0, 0)
    assert a.connection_state is ConnectionState.CLOSED
    assert a.presence("d1") == a.presence("d2") == ()
    assert a.entered_documents == ()
    emitted = rec_a.events[mark:]
    assert ("presence-changed", ("d1", ())) in emitted
    assert ("presence-changed", ("d2", ())) in emitted
    assert emitted[-1][0] == "disconnected"
    assert isinstance(emitted[-1][1][0], ConnectionClosed)

    # b saw a leave each document before a disconnected.
    await rec_b.wait("peer-disconnected")
    order = [
        (name, args) for name, args in rec_b.events if name in ("peer-left", "peer-disconnected")
    ]
    assert order == [
        ("peer-left", ("d1", a_me)),
        ("peer-left", ("d2", a_me)),
        ("peer-disconnected", (a_me,)),
    ]


async def test_close_while_reconnecting(ratatoskr_client, ratatoskr_relay):
    a = await ratatoskr_client()
    rec = Recorder(a)
    await a.enter_document("doc")
    await ratatoskr_relay.stop()
    await rec.wait("reconnecting")
    await asyncio.wait_for(a.close(), 5)
    assert a.connection_state is ConnectionState.CLOSED
    assert ratatoskr_tasks() == []


async def test_an_enter_pending_at_close_fails_with_connection_closed():
    async with FakeServer(answer_joins=False) as server:
        client = RatatoskrClient(server.url)
        await client.connect()
        entering = asyncio.create_task(client.enter_document("doc", timeout=5))
        await server.wait_for(lambda r: r.frame.get("type") == "ephemeral")
        await client.close()
        with pytest.raises(ConnectionClosed):
            await entering


# --------------------------------------------------------------------------- abrupt loss


async def test_an_abruptly_killed_client_disappears_from_presence(
    ratatoskr_client, ratatoskr_relay
):
    a, b = await ratatoskr_client(), await ratatoskr_client()
    victim = await ratatoskr_client(reconnect=False)
    rec_a = Recorder(a)
    for doc in ("d1", "d2"):
        for c in (a, b, victim):
            await c.enter_document(doc)
        await a.wait_for_presence(doc, lambda p: len(p) == 3, timeout=5)
    gone = victim.me

    abort_transport(victim)  # no close frame, no leave: as if its process died
    expected = [a.me.peer_id, b.me.peer_id]
    for doc in ("d1", "d2"):
        for c in (a, b):
            await c.wait_for_presence(doc, lambda p: ids(p) == expected, timeout=5)
        assert list(ratatoskr_relay.core.presence(doc)) == expected
    await rec_a.wait("peer-disconnected", lambda p: p == gone)
    assert gone.peer_id not in a.peers
    assert rec_a.of("peer-left") == [("d1", gone), ("d2", gone)]


async def test_a_killed_client_that_reconnects_leaves_no_ghost(ratatoskr_client, ratatoskr_relay):
    # Without resuming (#22: with it, b comes back as the same peer, unseen).
    a, b = await ratatoskr_client(), await ratatoskr_client(resume=False)
    await a.enter_document("doc")
    await b.enter_document("doc")
    old = b.me
    abort_transport(b)
    rec_b = Recorder(b)
    await rec_b.wait("connected")
    new = b.me
    assert new.peer_id != old.peer_id
    await a.wait_for_presence("doc", lambda p: ids(p) == [a.me.peer_id, new.peer_id], timeout=5)
    await b.wait_for_presence("doc", lambda p: ids(p) == [a.me.peer_id, new.peer_id], timeout=5)
    rec_a = Recorder(a)
    await rec_a.until(lambda: old.peer_id not in a.peers)
    assert set(a.peers) == set(b.peers) == {a.me.peer_id, new.peer_id}


# --------------------------------------------------------------------------- relay restart


@pytest.mark.ratatoskr_relay(users=USERS, open=True)
async def test_relay_restart_every_client_reconnects_re_enters_and_converges(
    ratatoskr_client, ratatoskr_relay
):
    alice = await ratatoskr_client("alice-secret")
    b = await ratatoskr_client()
    c = await ratatoskr_client()
    clients = (alice, b, c)
    entered = {alice: ("d1", "d2"), b: ("d1", "d2"), c: ("d1",)}
    for client, docs in entered.items():
        for doc in docs:
            await client.enter_document(doc)
    await alice.wait_for_presence("d1", lambda p: len(p) == 3, timeout=5)
    await alice.wait_for_presence("d2", lambda p: len(p) == 2, timeout=5)
    old_ids = {cl.me.peer_id for cl in clients}
    recs = {cl: Recorder(cl) for cl in clients}

    await ratatoskr_relay.stop()
    await asyncio.gather(*(recs[cl].wait("disconnected") for cl in clients))
    for cl in clients:
        assert not cl.is_connected
        for doc in entered[cl]:
            assert cl.presence(doc) == ()
        assert dict(cl.peers) == {}
    # An enter while disconnected waits for the reconnect.
    late_enter = asyncio.create_task(c.enter_document("d3", timeout=10))

    await ratatoskr_relay.start()
    await asyncio.gather(*(recs[cl].wait("connected") for cl in clients))
    new_ids = {cl.me.peer_id for cl in clients}
    assert new_ids.isdisjoint(old_ids)
    assert alice.me.user_id == "alice"  # the same account, a new connection

    d1 = await asyncio.gather(
        *(cl.wait_for_presence("d1", lambda p: {x.peer_id for x in p} == new_ids) for cl in clients)
    )
    assert d1[0] == d1[1] == d1[2]
    assert len(d1[0]) == 3  # no duplicates
    d2_ids = {alice.me.peer_id, b.me.peer_id}
    d2 = await asyncio.gather(
        *(
            cl.wait_for_presence("d2", lambda p: {x.peer_id for x in p} == d2_ids, timeout=5)
            for cl in (alice, b)
        )
    )
    assert d2[0] == d2[1]
    assert len(d2[0]) == 2
    assert ids(await asyncio.wait_for(late_enter, 5))[-1] == c.me.peer_id
    assert set(ratatoskr_relay.core.presence("d1")) == new_ids
    assert set(ratatoskr_relay.core.presence("d2")) == d2_ids

    # No ghost identities: everyone knows exactly the three new connections.
    await asyncio.gather(
        *(recs[cl].until(lambda cl=cl: set(cl.peers) == new_ids) for cl in clients)
    )

    for cl in clients:
        events = recs[cl].events
        connected_at = next(i for i, (name, _) in enumerate(events) if name == "connected")
        before = events[:connected_at]
        # While disconnected: exactly one empty presence-changed per entered document.
        changes = [args for name, args in before if name == "presence-changed"]
        assert sorted(changes) == sorted((doc, ()) for doc in entered[cl])
        assert [name for name, _ in before].count("disconnected") == 1
        attempts = [args for name, args in before if name == "reconnecting"]
        assert [n for n, _ in attempts] == list(range(1, len(attempts) + 1))
        for n, delay in attempts:
            assert 0.0 <= delay < TEST_BACKOFF.window(n - 1)
        assert cl.entered_documents == entered[cl] + (("d3",) if cl is c else ())


# --------------------------------------------------------------------------- heartbeats


@pytest.mark.ratatoskr_relay(presence_ttl=0.6)
async def test_heartbeats_keep_a_client_present_well_beyond_the_ttl(
    ratatoskr_client, ratatoskr_relay
):
    observer = await ratatoskr_client(heartbeat_interval=0.2)
    steady = await ratatoskr_client(heartbeat_interval=0.2)
    lazy = await ratatoskr_client(heartbeat_interval=30)
    rec = Recorder(observer)
    loop = asyncio.get_running_loop()
    await observer.enter_document("doc")
    await steady.enter_document("doc")
    joined = loop.time()
    await lazy.enter_document("doc")

    # The TTL is real: the client that does not heartbeat is expired...
    await rec.wait("peer-left", lambda doc, p: p == lazy.me, timeout=3)
    # ...and, told so by the relay, joins again by itself.
    await rec.wait("peer-joined", lambda doc, p: p == lazy.me, since=rec.mark() - 1, timeout=3)
    await lazy.wait_for_presence("doc", lambda p: lazy.me in p, timeout=3)

    # The heartbeating client stays, three TTLs long (this test is about the timer).
    await asyncio.sleep(max(0.0, joined + 1.8 - loop.time()))
    assert all(p != steady.me for _, p in rec.of("peer-left"))
    assert steady.me.peer_id in ratatoskr_relay.core.presence("doc")
    assert steady.me in observer.presence("doc")
    assert rec.of("error") == []  # no heartbeat was refused either


async def test_one_heartbeat_per_entered_document_per_interval():
    interval = 0.1
    loop = asyncio.get_running_loop()
    async with FakeServer() as server:
        client = RatatoskrClient(server.url, heartbeat_interval=interval)
        await client.connect()
        started = loop.time()
        for doc in ("a", "b", "c"):
            await client.enter_document(doc)
        await asyncio.sleep(0.35)  # the heartbeat timer is what is under test
        await client.leave_document("c")
        await asyncio.sleep(0.35)
        await client.close()
        elapsed = loop.time() - started

    beats: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    c_left = False
    for r in server.ephemerals():
        payload = r.payload
        assert payload["documentId"] == r.frame["documentId"]
        if payload["status"] == "leave" and payload["documentId"] == "c":
            c_left = True
        if payload["status"] == "heartbeat":
            assert not (c_left and payload["documentId"] == "c"), "heartbeat after leave"
            beats[payload["documentId"]].append(r.at)
    # Every tick beats for every entered document: a and b always together.
    assert len(beats["a"]) == len(beats["b"])
    assert all(abs(x - y) < 0.05 for x, y in zip(beats["a"], beats["b"], strict=True))
    # One per interval: never two within an interval, and no more than the time allows.
    gaps = [y - x for x, y in zip(beats["a"], beats["a"][1:], strict=False)]
    assert all(g >= interval / 2 for g in gaps), gaps
    assert 3 <= len(beats["a"]) <= elapsed / interval, (beats, elapsed)
    assert 1 <= len(beats["c"]) <= 4, beats
    assert all(any(abs(x - y) < 0.05 for y in beats["a"]) for x in beats["c"])


# --------------------------------------------------------------------------- frames


async def test_frames_are_exactly_as_the_protocol_says():
    async with FakeServer() as server:
        client = RatatoskrClient(server.url, token="tok", backoff=TEST_BACKOFF)
        rec = Recorder(client)
        await client.connect()
        await client.enter_document("d1")
        await client.enter_document("d2")
        await client.send_ephemeral("d1", {"n": 1})
        await client.send_ephemeral("d2", {"n": 2})
        await client.send_ephemeral("d1", b"\x01\x02")
        await client.leave_document("d2")
        await server.wait_for(
            lambda r: r.frame.get("documentId") == "d2" and len(r.conn.frames) == 7
        )
        await server.drop(server.conns[0])
        await rec.wait("connected", since=1)
        await client.wait_for_presence("d1", lambda p: client.me in p, timeout=5)
        await client.send_ephemeral("d1", "again")
        await client.close()

    first, second = server.conns
    assert first.frames[0] == {"type": "auth", "token": "tok", "resume": True}  # (#22)
    assert list(first.frames[0]) == ["type", "token", "resume"]
    assert second.frames[0] == {"type": "auth", "token": "tok", "resume": True}

    def check(conn, expected_payloads):
        frames = conn.frames[1:]
        for f in frames:
            assert list(f) == [
                "type",
                "senderId",
                "targetId",
                "documentId",
                "count",
                "sessionId",
                "data",
            ]
            assert f["type"] == "ephemeral"
            assert f["senderId"] == conn.peer_id
            assert f["targetId"] == "server-1"
            assert type(f["data"]) is bytes  # a CBOR byte string, not a list of ints
        sessions = {f["sessionId"] for f in frames}
        assert len(sessions) == 1  # one sessionId per connection
        counts = [f["count"] for f in frames]
        assert counts == list(range(counts[0], counts[0] + len(counts)))  # +1 each, across docs
        payloads = [(f["documentId"], cbor2.loads(f["data"])) for f in frames]
        assert payloads == expected_payloads
        return sessions.pop(), counts

    def presence(status, doc):
        return (doc, {"type": "presence", "status": status, "documentId": doc})

    s1, c1 = check(
        first,
        [
            presence("join", "d1"),
            presence("join", "d2"),
            ("d1", {"n": 1}),
            ("d2", {"n": 2}),
            ("d1", b"\x01\x02"),
            presence("leave", "d2"),
        ],
    )
    s2, c2 = check(second, [presence("join", "d1"), ("d1", "again"), presence("leave", "d1")])
    assert s1 != s2  # a new session for the new connection
    assert c2[0] > c1[-1]


async def test_anonymous_auth_frame():
    async with FakeServer() as server, RatatoskrClient(server.url) as client:
        assert client.me == Peer("client-1", None, "client-1", True)
        first = await server.wait_for(lambda r: True)
    assert first.frame == {"type": "auth", "anonymous": True, "resume": True}  # (#22)


async def test_frames_carrying_our_own_session_are_dropped():
    async with FakeServer() as server, RatatoskrClient(server.url) as client:
        rec = Recorder(client)
        await client.enter_document("doc")
        join = await server.wait_for(lambda r: r.frame.get("type") == "ephemeral")
        own = join.frame["sessionId"]
        conn = server.conns[0]
        base = {"type": "ephemeral", "senderId": "client-9", "targetId": conn.peer_id}
        for session, text in ((own, "echo of my own"), ("someone-else", "real")):
            await server.send(
                conn,
                {
                    **base,
                    "documentId": "doc",
                    "count": 1,
                    "sessionId": session,
                    "data": cbor2.dumps(text),
                },
            )
        await rec.wait("ephemeral-message")
        assert rec.of("ephemeral-message") == [("doc", Peer.unknown("client-9"), "real")]


async def test_bad_frames_from_the_server_are_reported_and_skipped():
    async with FakeServer() as server, RatatoskrClient(server.url) as client:
        rec = Recorder(client)
        await client.enter_document("doc")
        conn = server.conns[0]
        await conn.ws.send_bytes(b"\xff\xfe")
        await conn.ws.send_str("text is not allowed")
        await conn.ws.send_bytes(cbor2.dumps({"type": "peer_joined_doc"}))
        await server.send(conn, {"type": "from_the_future", "x": 1})
        await server.send(
            conn,
            {
                "type": "ephemeral",
                "senderId": "client-9",
                "targetId": conn.peer_id,
                "documentId": "doc",
                "count": 1,
                "sessionId": "s",
                "data": b"\xff",
            },
        )
        await server.send(conn, {"type": "peer_joined_doc", "documentId": "doc", "peerId": "p9"})
        await rec.wait("peer-joined")
        errors = [args[0] for args in rec.of("error")]
        assert len(errors) == 4
        assert all(isinstance(e, ProtocolError) for e in errors)
        assert client.is_connected
        assert ids(client.presence("doc")) == ["client-1", "p9"]


# --------------------------------------------------------------------------- other servers


async def test_a_server_without_features_carries_ephemeral_and_enters_peer_to_peer():
    async with FakeServer(features=None) as server:
        async with RatatoskrClient(server.url) as a, RatatoskrClient(server.url) as b:
            rec_b = Recorder(b)
            assert a.is_connected
            assert not a.server_presence
            assert a.features == ()
            # Sidecars cannot work on such a server: a clear error, nothing entered.
            with pytest.raises(PresenceUnsupported, match="eph:chat-doc"):
                await a.enter_document("eph:chat-doc")
            assert a.entered_documents == ()
            # Not entered yet: b drops the document's messages (upstream sends a
            # document's messages only to subscribers; after a leave they go on).
            await a.send_ephemeral("doc", {"n": "before"})
            # Once the server has it, it has forwarded it to b ahead of anything else.
            await server.wait_for(
                lambda r: r.frame.get("type") == "ephemeral" and r.conn.peer_id == a.me.peer_id
            )
            # A document is entered with automerge-repo's empty-document request,
            # and confirmed by the server's sync answer.
            entering = asyncio.create_task(b.enter_document("doc", timeout=5))
            request = await server.wait_for(
                lambda r: r.frame.get("type") == "request" and r.conn.peer_id == b.me.peer_id
            )
            assert request.frame["documentId"] == "doc"
            assert request.frame["data"] == bytes.fromhex("42000001000000020102")
            await server.send(
                request.conn,
                {
                    "type": "sync",
                    "senderId": "server",
                    "targetId": b.me.peer_id,
                    "documentId": "doc",
                    "data": b"\x42",
                },
            )
            assert await asyncio.wait_for(entering, 5) == (b.me,)
            await a.send_ephemeral("doc", {"n": "after"})
            await rec_b.wait("ephemeral-message")
            assert [p for _, _, p in rec_b.of("ephemeral-message")] == [{"n": "after"}]
            assert rec_b.of("ephemeral-message")[0][1] == Peer.unknown(a.me.peer_id)
        # Nothing presence-shaped was ever sent: no server here would consume it.
        assert server.presence_messages() == []


async def test_upstream_style_auth_ok_with_a_user_id_only():
    async with (
        FakeServer(features=None, user={"id": "test-alice"}) as server,
        RatatoskrClient(server.url, token="t") as client,
    ):
        assert client.me == Peer("client-1", "test-alice", "test-alice", False)


async def test_enter_document_times_out_when_the_server_never_answers():
    async with FakeServer(answer_joins=False) as server:
        async with RatatoskrClient(server.url, request_timeout=0.2) as client:
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(OperationTimeout, match="doc"):
                await client.enter_document("doc")
            assert 0.15 <= loop.time() - start < 2
            with pytest.raises(TimeoutError):
                await client.enter_document("other", timeout=0.1)
            assert client.entered_documents == ()
            assert client.is_connected
            await server.wait_for(
                lambda r: (
                    r.frame["type"] == "ephemeral" and r.payload == _presence("leave", "other")
                )
            )
        statuses = [
            (r.payload["status"], r.payload["documentId"]) for r in server.presence_messages()
        ]
        assert statuses == [
            ("join", "doc"),
            ("leave", "doc"),
            ("join", "other"),
            ("leave", "other"),
        ]


def _presence(status: str, doc: str) -> dict[str, str]:
    return {"type": "presence", "status": status, "documentId": doc}


# ------------------------------------------------------------------- waiting for a connection


async def test_wait_connected(ratatoskr_client, ratatoskr_relay):
    client = await ratatoskr_client()
    await asyncio.wait_for(client.wait_connected(), 1)  # already connected
    rec = Recorder(client)
    await ratatoskr_relay.stop()
    await rec.wait("disconnected")
    with pytest.raises(OperationTimeout):
        await client.wait_connected(timeout=0.1)
    waiting = asyncio.create_task(client.wait_connected(timeout=5))
    await ratatoskr_relay.start()
    await waiting
    assert client.is_connected


async def test_wait_connected_ends_when_the_client_closes(ratatoskr_client, ratatoskr_relay):
    client = await ratatoskr_client()
    rec = Recorder(client)
    await ratatoskr_relay.stop()
    await rec.wait("reconnecting")
    waiting = asyncio.create_task(client.wait_connected())  # no timeout
    closing: list[asyncio.Task[None]] = []
    waiters_at_close: list[int] = []

    def close_now(attempt: int, delay: float) -> None:
        # The next retry, long after wait_connected() started waiting.
        waiters_at_close.append(client.stats().waiters)
        closing.append(asyncio.ensure_future(client.close()))

    client.once("reconnecting", close_now)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(waiting, 3)
    await closing[0]
    assert waiters_at_close == [1]
    assert client.connection_state is ConnectionState.CLOSED


async def test_connect_times_out_when_auth_is_never_answered():
    hold = asyncio.Event()
    async with FakeServer(hold_auth=hold) as server:
        client = RatatoskrClient(server.url, connect_timeout=0.2)
        with pytest.raises(OperationTimeout, match="auth"):
            await client.connect()
        assert client.connection_state is not ConnectionState.CONNECTED
        assert ratatoskr_tasks() == []
        hold.set()
        await client.close()


async def test_close_during_connect_wins():
    hold = asyncio.Event()
    async with FakeServer(hold_auth=hold) as server:
        client = RatatoskrClient(server.url)
        connecting = asyncio.create_task(client.connect())
        await server.wait_for(lambda r: r.frame.get("type") == "auth")
        await client.close()
        assert client.connection_state is ConnectionState.CLOSED
        hold.set()  # the server answers now, too late
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(connecting, 5)
        assert client.connection_state is ConnectionState.CLOSED
        assert not client.is_connected
        assert ratatoskr_tasks() == []


# ------------------------------------------------------------------- reconnect policy


async def test_a_hung_server_is_noticed_by_ping_and_the_client_reconnects():
    async with FakeServer() as server:
        client = RatatoskrClient(server.url, ping_interval=0.2, backoff=TEST_BACKOFF)
        rec = Recorder(client)
        await client.connect()
        await client.enter_document("doc")
        first = server.conns[0]
        server.freeze(first)
        await client.send_ephemeral("doc", "the last frame it reads")
        (reason,) = await rec.wait("disconnected", timeout=3)
        assert isinstance(reason, ConnectionClosed)
        assert not client.is_connected
        await rec.wait("connected", since=1, timeout=3)
        await client.wait_for_presence("doc", lambda p: client.me in p, timeout=3)
        assert client.me.peer_id == "client-2"
        await client.close()


async def test_a_rate_limited_reconnect_waits_for_retry_after():
    async with FakeServer() as server:
        client = RatatoskrClient(server.url, backoff=TEST_BACKOFF)
        rec = Recorder(client)
        await client.connect()
        server.auth_replies.append(
            {"type": "error", "error": "rate_limited", "message": "slow", "retryAfter": 0.3}
        )
        await server.drop(server.conns[0])
        await rec.wait("connected", since=1, timeout=5)
        attempts = rec.of("reconnecting")
        assert [n for n, _ in attempts] == [1, 2]
        assert attempts[0][1] < TEST_BACKOFF.window(0)
        assert attempts[1][1] >= 0.3  # the server's retryAfter, not the short backoff
        assert server.auth_attempts == 3
        await client.close()


async def test_reconnect_gives_up_after_max_attempts(ratatoskr_client, ratatoskr_relay):
    backoff = Backoff(base_delay=0.01, max_delay=0.02, max_attempts=3)
    client = await ratatoskr_client(backoff=backoff)
    rec = Recorder(client)
    await client.enter_document("doc")
    waiting = asyncio.create_task(client.wait_for_presence("doc", lambda p: len(p) == 9))
    ended = asyncio.Event()

    async def watch() -> None:
        async for _ in client.watch_presence("doc"):
            pass
        ended.set()

    watcher = asyncio.create_task(watch())
    await ratatoskr_relay.stop()
    (err,) = await rec.wait("error", timeout=5)
    assert isinstance(err, ConnectionClosed)
    assert "gave up" in str(err)
    await tasks_finish()
    assert [n for n, _ in rec.of("reconnecting")] == [1, 2, 3]
    assert client.connection_state is ConnectionState.CLOSED
    assert client.entered_documents == ()
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(waiting, 2)
    await asyncio.wait_for(ended.wait(), 2)
    await watcher


async def test_a_document_refused_on_re_entry_is_reported_and_dropped():
    async with FakeServer() as server:
        client = RatatoskrClient(server.url, backoff=TEST_BACKOFF)
        rec = Recorder(client)
        await client.connect()
        await client.enter_document("keep")
        await client.enter_document("revoked")
        server.deny.add("revoked")
        await server.drop(server.conns[0])
        (err,) = await rec.wait("error", timeout=5)
        assert err.document_id == "revoked"
        assert err.code == "permission_denied"
        await client.wait_for_presence("keep", lambda p: client.me in p, timeout=5)
        assert client.entered_documents == ("keep",)
        assert client.presence("revoked") == ()
        await client.close()


async def test_leaving_while_disconnected_is_not_undone_by_the_reconnect(
    ratatoskr_client, ratatoskr_relay
):
    a = await ratatoskr_client()
    rec = Recorder(a)
    await a.enter_document("stay")
    await a.enter_document("go")
    await ratatoskr_relay.stop()
    await rec.wait("disconnected")
    await a.leave_document("go")
    await ratatoskr_relay.start()
    await a.wait_for_presence("stay", lambda p: a.me in p, timeout=5)
    assert a.entered_documents == ("stay",)
    assert ratatoskr_relay.core.presence("go") == ()
    assert a.presence("go") == ()


@pytest.mark.ratatoskr_relay(max_documents_per_peer=2)
async def test_too_many_documents_is_refused(ratatoskr_client):
    a = await ratatoskr_client()
    await a.enter_document("one")
    await a.enter_document("two")
    with pytest.raises(LimitExceeded) as info:
        await a.enter_document("three")
    assert info.value.document_id == "three"
    assert a.entered_documents == ("one", "two")


@pytest.mark.parametrize("features", [FULL_FEATURES, None])
async def test_enter_document_while_the_first_connect_is_in_progress(features):
    hold = asyncio.Event()
    async with FakeServer(hold_auth=hold, features=features) as server:
        client = RatatoskrClient(server.url)
        connecting = asyncio.create_task(client.connect())
        await server.wait_for(lambda r: r.frame.get("type") == "auth")
        assert client.connection_state is ConnectionState.CONNECTING
        # Without server-side presence only sidecars are refused (after auth_ok).
        doc = "doc" if features else "eph:chat-doc"
        entering = asyncio.create_task(client.enter_document(doc, timeout=5))
        hold.set()
        await asyncio.wait_for(connecting, 5)
        if features is None:
            with pytest.raises(PresenceUnsupported):
                await asyncio.wait_for(entering, 5)
            assert client.entered_documents == ()
        else:
            assert await asyncio.wait_for(entering, 5) == (client.me,)
        await client.close()


async def test_cancelled_enter_document_does_not_stay_entered():
    async with FakeServer(answer_joins=False) as server, RatatoskrClient(server.url) as client:
        with pytest.raises(TimeoutError):
            # The caller's own timeout cancels the enter: the client leaves.
            await asyncio.wait_for(client.enter_document("doc"), 0.2)
        leave = await server.wait_for(
            lambda r: r.frame.get("type") == "ephemeral" and r.payload.get("status") == "leave"
        )
        assert leave.payload["documentId"] == "doc"
        assert client.entered_documents == ()


async def test_close_wakes_a_sender_waiting_out_a_rate_limit_pause():
    async with FakeServer() as server:
        client = RatatoskrClient(server.url)
        rec = Recorder(client)
        await client.connect()
        # A server's retryAfter: the client pauses its sends for a minute.
        await server.send(
            server.conns[0],
            {"type": "error", "error": "rate_limited", "message": "m", "retryAfter": 60},
        )
        await rec.wait("error")
        sending = asyncio.create_task(client.send_ephemeral("doc", "late"))
        await asyncio.sleep(0)  # the task runs up to its wait for a token
        assert client.stats().paced_sends == 1
        loop = asyncio.get_running_loop()
        start = loop.time()
        await client.close()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(sending, 5)
        assert loop.time() - start < 0.1


async def test_an_internal_failure_on_a_frame_costs_that_frame_only(ratatoskr_client, monkeypatch):
    real = ClientCore.receive
    victims: list[ClientCore] = []

    def broken(core: ClientCore, data: bytes, now: float) -> None:
        # A bug injected into the core (white box: there is no public way to make
        # the client fail on a frame). Patched before connecting: the receive
        # loop looks the method up once.
        if core in victims:
            victims.remove(core)
            raise RuntimeError("a bug in frame handling")
        real(core, data, now)

    monkeypatch.setattr(ClientCore, "receive", broken)
    client = await ratatoskr_client()
    rec = Recorder(client)
    await client.enter_document("doc")
    victims.append(client._core)
    other = await ratatoskr_client()
    await other.enter_document("doc")  # its identity frame hits the bug...
    await rec.wait("error")
    (error,) = rec.of("error")[0]
    assert isinstance(error.__cause__, RuntimeError)
    # ...and the frames after it are handled: the join arrives, still connected.
    await client.wait_for_presence("doc", lambda p: len(p) == 2, timeout=5)
    assert client.is_connected


async def test_an_internal_failure_outside_frames_closes_the_client_instead_of_hanging(
    ratatoskr_client, monkeypatch
):
    client = await ratatoskr_client()
    await client.enter_document("doc")
    waiting = asyncio.create_task(client.wait_for_presence("doc", lambda p: len(p) == 5))

    def broken(core: ClientCore, reason: object, now: float) -> None:
        raise RuntimeError("a bug in disconnect handling")

    monkeypatch.setattr(ClientCore, "connection_lost", broken)
    abort_transport(client)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(waiting, 5)
    assert client.connection_state is ConnectionState.CLOSED
    assert client.stats().tasks == ()


# --------------------------------------------------------------------------- what errors say


async def test_an_ordinary_http_server_is_no_ratatoskr_websocket():
    async def home(request: web.Request) -> web.Response:
        return web.Response(text="just a web site")

    app = web.Application()
    app.router.add_get("/", home)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        client = RatatoskrClient(f"http://127.0.0.1:{port}")
        with pytest.raises(ConnectError) as info:
            await client.connect()
        assert info.value.status == 404
        message = str(info.value)
        assert f"no Ratatoskr WebSocket at ws://127.0.0.1:{port}/sync" in message
        assert "404" in message
        assert "Invalid response status" not in message.split(":", 1)[0]
        await client.close()
    finally:
        await runner.cleanup()


async def test_silent_tcp_and_silent_auth_raise_the_same_timeout():
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts the connection, says nothing, ever
        writer.close()

    silent = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        client = RatatoskrClient(f"http://127.0.0.1:{port}", connect_timeout=0.2)
        with pytest.raises(OperationTimeout, match="no answer") as tcp:
            await client.connect()
        await client.close()
    finally:
        silent.close()
        await silent.wait_closed()
    hold = asyncio.Event()
    async with FakeServer(hold_auth=hold) as server:
        client = RatatoskrClient(server.url, connect_timeout=0.2)
        with pytest.raises(OperationTimeout, match="no answer") as auth:
            await client.connect()
        hold.set()
        await client.close()
    assert type(tcp.value) is type(auth.value) is OperationTimeout
    assert isinstance(tcp.value, TimeoutError)


async def test_frames_keep_their_order_on_the_fallback_write_path():
    # On an aiohttp without the synchronous frame write (or a compressed socket),
    # frames go through send_bytes from one task: still in order, counts growing.
    async with FakeServer() as server, RatatoskrClient(server.url, rate_limit=None) as client:
        writer = client._driver.writer  # white box: force the fallback path
        assert writer is not None
        writer._fast = None
        await asyncio.gather(*(client.send_ephemeral("doc", n) for n in range(50)))
        await server.wait_for(lambda r: r.frame.get("type") == "ephemeral" and r.payload == 49)
        frames = server.ephemerals()
        assert [r.payload for r in frames] == list(range(50))
        counts = [r.frame["count"] for r in frames]
        assert counts == sorted(counts)


async def test_stats_follow_a_document_through_its_membership_states():
    async with FakeServer(answer_joins=False) as server:
        client = RatatoskrClient(server.url)
        rec = Recorder(client)
        await client.connect()
        conn = server.conns[0]
        entering = asyncio.create_task(client.enter_document("doc", timeout=5))
        await server.wait_for(lambda r: r.frame.get("type") == "ephemeral")
        stats = client.stats()
        assert stats.documents == {
            "entering": ("doc",),
            "present": (),
            "leaving": (),
            "refused": (),
        }
        assert (stats.waiters, stats.tasks, stats.timers) == (1, ("receive",), 1)
        await server.send(
            conn, {"type": "doc_presence_state", "documentId": "doc", "peers": [conn.peer_id]}
        )
        await entering
        assert client.stats().documents["present"] == ("doc",)
        # A goodbye waiting for pacing keeps the document LEAVING until it is out.
        await client.set_state("doc", "cursor", 1)
        await server.send(
            conn, {"type": "error", "error": "rate_limited", "message": "m", "retryAfter": 60}
        )
        await rec.wait("error")
        await client.leave_document("doc")
        stats = client.stats()
        assert stats.documents == {
            "entering": (),
            "present": (),
            "leaving": ("doc",),
            "refused": (),
        }
        assert stats.paced_sends == 2  # the goodbye, then the leave behind it
        assert client.entered_documents == ()
        await client.close()
        stats = client.stats()
        assert stats.documents == {"entering": (), "present": (), "leaving": (), "refused": ()}
        assert (stats.paced_sends, stats.tasks, stats.timers, stats.waiters) == (0, (), 0, 0)


async def test_clients_of_a_process_share_a_refusal_and_all_come_back(
    ratatoskr_client, ratatoskr_relay, monkeypatch
):
    # While the relay is down, a client does not make an attempt that another
    # client of the process saw refused moments ago (core/refusals.py): with
    # many clients, refused attempts were most of the process's CPU.
    from ratatoskr_client.asyncio import driver

    backoff = Backoff(base_delay=0.02, max_delay=0.04)
    clients = [await ratatoskr_client(backoff=backoff) for _ in range(12)]
    recs = [Recorder(c) for c in clients]
    opened = [0]
    real_open = driver.open_socket

    async def counting(*args, **kwargs):
        opened[0] += 1
        return await real_open(*args, **kwargs)

    monkeypatch.setattr(driver, "open_socket", counting)
    await ratatoskr_relay.stop()
    await asyncio.gather(
        *(rec.until(lambda rec=rec: len(rec.of("reconnecting")) >= 10) for rec in recs)
    )
    attempts = sum(len(rec.of("reconnecting")) for rec in recs) - len(clients)  # made or skipped
    assert opened[0] <= attempts / 2, (opened[0], attempts)

    await ratatoskr_relay.start()
    await asyncio.gather(*(c.wait_connected(timeout=5) for c in clients))
    assert all(c.is_connected for c in clients)
