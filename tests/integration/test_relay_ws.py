"""The reference relay over real WebSockets, driven by raw aiohttp clients (not the SDK).

Every rule of the wire contract (``docs/protocol.md``) is exercised here against
a :class:`~ratatoskr_client.server.RelayServer` listening on a free port (the
``ratatoskr_relay`` fixture, configured per test with its marker).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import cbor2
import pytest

from ratatoskr_client.server import RelayServer, RelayStats

from .rawpeer import RawPeer, RawPeers, is_frame, settle

USERS = [
    {"token": "alice-secret", "id": "alice", "name": "Alice"},
    {"token": "bob-secret", "id": "bob", "name": "Bob"},
]
DOCUMENTS = [
    {"id": "classified", "owner": "alice"},
    {"id": "shared", "owner": "alice", "acl": [{"principal": "bob", "permission": "write"}]},
    {"id": "lobby", "acl": [{"principal": "public", "permission": "read"}]},
]
with_acl = pytest.mark.ratatoskr_relay(users=USERS, documents=DOCUMENTS)
#: The plan's global identity scope: every identity to every connected peer
#: (the default, document scope, has its own tests in test_relay_scope.py).
global_scope = pytest.mark.ratatoskr_relay(identity_scope="global")
with_acl_global = pytest.mark.ratatoskr_relay(
    users=USERS, documents=DOCUMENTS, identity_scope="global"
)

NAME = re.compile(r"^[A-Z][a-z]+ [A-Z][a-z]+$")
EPHEMERAL_KEYS = {"type", "senderId", "targetId", "documentId", "count", "sessionId", "data"}


@pytest.fixture
async def peers(ratatoskr_relay: RelayServer) -> AsyncIterator[RawPeers]:
    async with RawPeers(ratatoskr_relay.ws_url) as factory:
        yield factory


@pytest.fixture(autouse=True)
def _nothing_logged_above_warning(caplog: pytest.LogCaptureFixture) -> Any:
    yield
    loud = [
        r
        for when in ("setup", "call", "teardown")
        for r in caplog.get_records(when)
        if r.levelno > logging.WARNING
    ]
    assert not loud, [r.getMessage() for r in loud]


def loud_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno > logging.WARNING]


def ephemerals(peer: RawPeer, document_id: str | None = None) -> list[dict[str, Any]]:
    return peer.received(
        lambda f: (
            f["type"] == "ephemeral" and (document_id is None or f["documentId"] == document_id)
        )
    )


# --------------------------------------------------------------------------- HTTP


async def test_health(ratatoskr_relay: RelayServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{ratatoskr_relay.url}/health") as resp:
            assert resp.status == 200
            assert await resp.json() == {"status": "ok"}
        # /sync is for WebSockets only.
        async with http.get(f"{ratatoskr_relay.url}/sync") as resp:
            assert resp.status == 400
        async with http.get(f"{ratatoskr_relay.url}/nope") as resp:
            assert resp.status == 404


# --------------------------------------------------------------------------- auth


@with_acl
async def test_auth_ok_for_token_and_anonymous(peers: RawPeers) -> None:
    alice = await peers.connect()
    ok = await alice.auth("alice-secret")
    assert set(ok) == {"type", "peerId", "clientPeerId", "user", "features"}
    assert ok["user"] == {"id": "alice", "name": "Alice", "isAnonymous": False}
    assert ok["features"] == [
        "identity",
        "presence",
        "ephemeral",
        "scoped-identity",
        "reauth",
        "state-replay",
        "resume",
    ]  # (#21 added reauth, #22 the last two)

    anon = await peers.connect()
    ok2 = await anon.auth()
    assert ok2["user"]["id"] is None
    assert ok2["user"]["isAnonymous"] is True
    assert NAME.match(ok2["user"]["name"])
    # One server peer id; a fresh, server-generated id per connection.
    assert ok["peerId"] == ok2["peerId"]
    alice2 = await peers("alice-secret")
    ids = {ok["clientPeerId"], ok2["clientPeerId"], alice2.peer_id, ok["peerId"]}
    assert len(ids) == 4
    assert all(isinstance(i, str) and i for i in ids)


async def test_anonymous_names_are_unique(peers: RawPeers) -> None:
    crowd = [await peers() for _ in range(15)]
    names = [p.user["name"] for p in crowd if p.user]
    assert len(names) == 15
    assert len(set(names)) == 15
    assert all(NAME.match(n) for n in names)


@with_acl
@pytest.mark.parametrize(
    ("auth", "code"),
    [
        ({"type": "auth", "token": "wrong"}, "invalid_token"),
        ({"type": "auth"}, "missing_credentials"),
        ({"type": "auth", "anonymous": False}, "missing_credentials"),
    ],
)
async def test_auth_failure_then_close(peers: RawPeers, auth: dict[str, Any], code: str) -> None:
    watcher = await peers()
    peer = await peers.connect()
    await peer.send(auth)
    refused = await peer.recv_type("auth_error")
    assert refused["error"] == code
    assert isinstance(refused["message"], str)
    assert refused["message"]
    await peer.wait_closed()
    assert peer.frames == [refused]
    await settle(watcher)
    assert watcher.received(is_frame("peer_identity")) == []


@pytest.mark.ratatoskr_relay(auth_timeout=0.3)
async def test_auth_timeout(peers: RawPeers) -> None:
    authed = await peers()
    idle = await peers.connect()
    chatty = await peers.connect()
    await chatty.send({"type": "hello"})  # not auth: does not reset the deadline
    await chatty.recv_type("error", error="not_authenticated")
    for peer in (idle, chatty):
        err = await peer.recv_type("error", error="auth_timeout", timeout=5)
        assert err["message"]
        await peer.wait_closed()
    # An authenticated connection is not subject to the timeout.
    await settle(authed)
    assert authed.errors() == []


@with_acl
async def test_not_authenticated_keeps_socket_open(peers: RawPeers) -> None:
    peer = await peers.connect()
    for frame in (
        peer.ephemeral_frame(
            "lobby", {"type": "presence", "status": "join", "documentId": "lobby"}
        ),
        {
            "type": "peer_identity",
            "peerId": "x",
            "user": {"id": None, "name": "X", "isAnonymous": True},
        },
        {"type": "request", "documentId": "lobby", "data": b""},
    ):
        await peer.send(frame)
        err = await peer.recv_type("error")
        assert err["error"] == "not_authenticated"
    assert not peer.closed
    ok = await peer.auth("bob-secret")
    assert ok["user"]["id"] == "bob"
    assert (await peer.join("lobby"))["peers"] == [peer.peer_id]


@with_acl
async def test_already_authenticated(peers: RawPeers) -> None:
    watcher = await peers()
    alice = await peers("alice-secret")
    await watcher.join("lobby")
    await alice.join("lobby")
    await watcher.recv_type("peer_identity", peerId=alice.peer_id)
    # A second auth is a re-authentication (docs/protocol.md): for another
    # user, or without a token, it is refused and changes nothing.
    await alice.send({"type": "auth", "token": "bob-secret"})
    err = await alice.recv_type("error")
    assert err["error"] == "user_mismatch"
    await alice.send({"type": "auth", "anonymous": True})
    assert (await alice.recv_type("error"))["error"] == "invalid_message"
    # The same user's token again is accepted: same peer id, nobody told.
    await alice.send({"type": "auth", "token": "alice-secret"})
    again = await alice.recv_type("auth_ok")
    assert again["clientPeerId"] == alice.peer_id
    await settle(alice, watcher)
    # Nothing changed: no second identity announced, alice still reads her document.
    assert len(watcher.received(is_frame("peer_identity"))) == 1
    assert (await alice.join("classified"))["peers"] == [alice.peer_id]


# --------------------------------------------------------------------------- identity


@with_acl_global
async def test_identity_broadcast_and_initial_sync(peers: RawPeers) -> None:
    alice = await peers("alice-secret")
    anon = await peers()
    bob = await peers.connect()
    await bob.auth("bob-secret")
    # bob: auth_ok, then one peer_identity per peer already connected, in order.
    await bob.recv_type("peer_identity", peerId=anon.peer_id)
    assert [f["type"] for f in bob.frames] == ["auth_ok", "peer_identity", "peer_identity"]
    assert bob.frames[1] == {
        "type": "peer_identity",
        "peerId": alice.peer_id,
        "user": {"id": "alice", "name": "Alice", "isAnonymous": False},
    }
    assert bob.frames[2]["user"] == anon.user
    # Everyone already connected hears about bob.
    bob_identity = {
        "type": "peer_identity",
        "peerId": bob.peer_id,
        "user": {"id": "bob", "name": "Bob", "isAnonymous": False},
    }
    assert await alice.recv_type("peer_identity", peerId=bob.peer_id) == bob_identity
    assert await anon.recv_type("peer_identity", peerId=bob.peer_id) == bob_identity
    # Nobody is told about themselves.
    await settle(alice, anon, bob)
    for p in (alice, anon, bob):
        assert p.received(is_frame("peer_identity", peerId=p.peer_id)) == []


@global_scope
async def test_peer_disconnected(peers: RawPeers) -> None:
    a, b, c = await peers(), await peers(), await peers()
    await b.close()
    for p in (a, c):
        frame = await p.recv_type("peer_disconnected", peerId=b.peer_id)
        assert frame == {"type": "peer_disconnected", "peerId": b.peer_id}


# --------------------------------------------------------------------------- presence


async def test_join_leave(peers: RawPeers) -> None:
    a, b, c, outsider = [await peers() for _ in range(4)]
    state = await a.join("doc")
    assert state == {"type": "doc_presence_state", "documentId": "doc", "peers": [a.peer_id]}
    assert (await c.join("doc"))["peers"] == [a.peer_id, c.peer_id]
    assert (await b.join("doc"))["peers"] == [a.peer_id, c.peer_id, b.peer_id]  # join order
    joined = await a.recv_type("peer_joined_doc", peerId=c.peer_id)
    assert joined == {"type": "peer_joined_doc", "documentId": "doc", "peerId": c.peer_id}
    await a.recv_type("peer_joined_doc", peerId=b.peer_id)
    await c.recv_type("peer_joined_doc", peerId=b.peer_id)

    await c.leave("doc")
    for p in (a, b):
        left = await p.recv_type("peer_left_doc", peerId=c.peer_id)
        assert left == {"type": "peer_left_doc", "documentId": "doc", "peerId": c.peer_id}
    await settle(c, a, b, outsider)
    assert c.received(is_frame("peer_left_doc")) == []  # the leaver is not told
    assert c.received(is_frame("peer_joined_doc")) == [
        {"type": "peer_joined_doc", "documentId": "doc", "peerId": b.peer_id}
    ]
    # The outsider never heard anything about "doc".
    assert [f for f in outsider.frames if f.get("documentId") == "doc"] == []
    assert (await outsider.join("doc"))["peers"] == [a.peer_id, b.peer_id, outsider.peer_id]


async def test_heartbeat_for_a_doc_not_joined_counts_as_join(peers: RawPeers) -> None:
    a, b = await peers(), await peers()
    await a.join("doc")
    await b.heartbeat("doc")
    state = await b.recv_type("doc_presence_state", documentId="doc")
    assert state["peers"] == [a.peer_id, b.peer_id]
    await a.recv_type("peer_joined_doc", peerId=b.peer_id)
    # A heartbeat in a joined document is answered with nothing.
    await b.heartbeat("doc")
    await settle(b, a)
    assert len(b.received(is_frame("doc_presence_state", documentId="doc"))) == 1
    assert len(a.received(is_frame("peer_joined_doc", documentId="doc"))) == 1


@pytest.mark.ratatoskr_relay(presence_ttl=0.5)
async def test_ttl_expiry(peers: RawPeers) -> None:
    loop = asyncio.get_running_loop()
    a, b = await peers(), await peers()
    await b.join("doc")
    sent_at = loop.time()  # the relay's clock is the same monotonic clock
    await a.join("doc")

    async def keep_alive() -> None:
        while True:  # b heartbeats well within the TTL; a stays silent
            await asyncio.sleep(0.1)
            await b.heartbeat("doc")

    beat = asyncio.create_task(keep_alive())
    try:
        left = await b.recv_type("peer_left_doc", peerId=a.peer_id, timeout=5)
        assert loop.time() - sent_at >= 0.5  # not before the TTL
        assert left["documentId"] == "doc"
        # The expired peer is told too, so that it can re-join.
        await a.recv_type("peer_left_doc", peerId=a.peer_id)
        # b, heartbeating, is still present; a re-joins with a heartbeat.
        await a.heartbeat("doc")
        state = await a.recv_type("doc_presence_state", documentId="doc")
        assert state["peers"] == [b.peer_id, a.peer_id]
    finally:
        beat.cancel()
    # Without heartbeats b expires too (a, silent since its heartbeat, has gone again).
    await b.recv_type("peer_left_doc", peerId=b.peer_id, timeout=5)
    assert b.received(is_frame("peer_left_doc", peerId=b.peer_id)) == [
        {"type": "peer_left_doc", "documentId": "doc", "peerId": b.peer_id}
    ]


@global_scope
async def test_disconnect_cleanup(peers: RawPeers, ratatoskr_relay: RelayServer) -> None:
    a, b, c = await peers(), await peers(), await peers()
    for doc in ("d1", "d2"):
        await a.join(doc)
        await b.join(doc)
    await a.close()
    await b.recv_type("peer_disconnected", peerId=a.peer_id)
    about_a = [f for f in b.frames if f.get("peerId") == a.peer_id and f["type"] != "peer_identity"]
    assert about_a == [
        {"type": "peer_left_doc", "documentId": "d1", "peerId": a.peer_id},
        {"type": "peer_left_doc", "documentId": "d2", "peerId": a.peer_id},
        {"type": "peer_disconnected", "peerId": a.peer_id},
    ]
    await c.recv_type("peer_disconnected", peerId=a.peer_id)
    assert [f for f in c.frames if "documentId" in f] == []
    assert ratatoskr_relay.core.presence("d1") == (b.peer_id,)


async def test_abrupt_disconnect_cleanup(peers: RawPeers) -> None:
    a, b = await peers(), await peers()
    await a.join("doc")
    await b.join("doc")
    await a.abort()  # no close handshake
    await b.recv_type("peer_left_doc", peerId=a.peer_id)
    await b.recv_type("peer_disconnected", peerId=a.peer_id)
    c = await peers()
    assert (await c.join("doc"))["peers"] == [b.peer_id, c.peer_id]


async def test_stats_after_everyone_leaves(peers: RawPeers, ratatoskr_relay: RelayServer) -> None:
    observer = await peers()
    await observer.join("doc")  # so that it hears each one go
    crowd = [await peers() for _ in range(4)]
    for i, p in enumerate(crowd):
        await p.join("doc")
        await p.join(f"eph:side-{i}")
        await p.ephemeral("doc", {"hello": i})
    busy = ratatoskr_relay.stats()
    assert busy.peers == 5
    assert busy.memberships == 9
    for p in crowd:
        await p.close()
        await observer.recv_type("peer_disconnected", peerId=p.peer_id)
    # Only the observer's own footprint is left (its session, its membership),
    # plus the closed connections' sessionIds, kept a while against late gossip copies.
    assert ratatoskr_relay.stats() == RelayStats(
        connections=1,
        peers=1,
        documents=1,
        memberships=1,
        gossip_sessions=1,
        session_tombstones=4,
        rate_buckets=1,
        anonymous_names=1,
    )


# --------------------------------------------------------------------------- ephemeral


async def test_ephemeral_relay(peers: RawPeers) -> None:
    a, b, c, outsider = [await peers() for _ in range(4)]
    for p in (a, b, c):
        await p.join("doc")
    payload = {"cursor": [3, 4], "bytes": b"\x00\x01", "text": "hé"}
    # senderId/targetId set to other real peers' ids: the relay overwrites both.
    sent = await a.ephemeral("doc", payload, senderId=b.peer_id, targetId=c.peer_id)
    for recipient in (b, c):
        got = await recipient.recv_type("ephemeral", documentId="doc")
        assert set(got) == EPHEMERAL_KEYS
        assert got["senderId"] == a.peer_id
        assert got["targetId"] == recipient.peer_id
        assert got["count"] == sent["count"]
        assert got["sessionId"] == a.session_id
        assert type(got["data"]) is bytes
        assert got["data"] == sent["data"]
        assert cbor2.loads(got["data"]) == payload
    await settle(a, b, c, outsider)
    assert ephemerals(a) == []  # never echoed to the sender
    assert ephemerals(outsider) == []  # not present
    assert len(ephemerals(b)) == len(ephemerals(c)) == 1


async def test_sender_need_not_be_present(peers: RawPeers) -> None:
    a, b = await peers(), await peers()
    await b.join("doc")
    await a.ephemeral("doc", "drive-by")
    got = await b.recv_type("ephemeral")
    assert got["senderId"] == a.peer_id
    assert cbor2.loads(got["data"]) == "drive-by"


@with_acl
async def test_gossip_copies_are_dropped(peers: RawPeers) -> None:
    # a is alice; b and c are anonymous: other identities than a's.
    a, b, c = await peers("alice-secret"), await peers(), await peers()
    doc = "lobby"
    for p in (a, b, c):
        await p.join(doc)
    sent = await a.ephemeral(doc, "original")
    await b.recv_type("ephemeral", sessionId=a.session_id)
    await c.recv_type("ephemeral", sessionId=a.session_id)
    # b forwards a's message back, as a stock automerge-repo peer does: dropped;
    # with a higher count (not a copy: an attempt to take a's session over), too.
    await b.send(dict(sent))
    await b.send({**sent, "count": sent["count"] + 5, "senderId": b.peer_id})
    # a replays an old count: dropped.
    await a.send(dict(sent))
    await a.ephemeral(doc, "replay", count=sent["count"])
    await settle(a, b, c)
    assert len(ephemerals(c)) == 1
    assert ephemerals(a) == []
    assert a.errors() == b.errors() == []  # silently
    # Both still send normally (a's next count is below the one b tried).
    await a.ephemeral(doc, "new")
    await b.ephemeral(doc, "mine")
    got = await c.recv_until(lambda f: f["type"] == "ephemeral" and f["senderId"] == b.peer_id)
    assert cbor2.loads(got["data"]) == "mine"
    assert [cbor2.loads(f["data"]) for f in ephemerals(c) if f["senderId"] == a.peer_id] == [
        "original",
        "new",
    ]


@pytest.mark.ratatoskr_relay(rate_limit=3)
async def test_rate_limit(peers: RawPeers) -> None:
    a, b = await peers(), await peers()
    await b.join("doc")
    for i in range(3):
        await a.ephemeral("doc", i)
    await a.ephemeral("doc", "one too many")
    err = await a.recv_type("error", error="rate_limited")
    assert set(err) == {"type", "error", "message", "retryAfter"}
    assert 0 < err["retryAfter"] <= 20.0  # one message per 60/3 s
    # Presence is not rate limited.
    assert (await a.join("doc"))["peers"] == [b.peer_id, a.peer_id]
    await a.heartbeat("doc")
    await settle(a, b)
    assert [cbor2.loads(f["data"]) for f in ephemerals(b)] == [0, 1, 2]
    assert len(a.received(is_frame("error", error="rate_limited"))) == 1
    assert not a.closed


# --------------------------------------------------------------------------- access control


@with_acl
async def test_eph_sidecar_channels_are_public(peers: RawPeers) -> None:
    alice, anon = await peers("alice-secret"), await peers()
    channel = "eph:chat-classified"
    assert (await anon.join(channel))["peers"] == [anon.peer_id]
    await alice.join(channel)
    await alice.ephemeral(channel, {"text": "hello"})
    got = await anon.recv_type("ephemeral", documentId=channel)
    assert got["senderId"] == alice.peer_id
    await anon.ephemeral(channel, {"text": "hi back"})
    got = await alice.recv_type("ephemeral", documentId=channel)
    assert got["senderId"] == anon.peer_id
    # ...while the main document stays protected.
    await anon.presence("classified", "join")
    err = await anon.recv_type("error")
    assert (err["error"], err["documentId"]) == ("permission_denied", "classified")


@with_acl
async def test_unknown_document(peers: RawPeers) -> None:
    alice = await peers("alice-secret")
    for send in (alice.presence("no-such-doc", "join"), alice.ephemeral("no-such-doc", 1)):
        await send
        err = await alice.recv_type("error")
        assert err["error"] == "document_not_found"
        assert err["documentId"] == "no-such-doc"
        assert err["message"]


@with_acl
async def test_protected_document_never_leaks(peers: RawPeers) -> None:
    doc = "classified"
    alice = await peers("alice-secret")
    bob = await peers("bob-secret")
    anon = await peers()
    alice2 = await peers("alice-secret")
    observers = (bob, anon)

    # Activity in the protected document...
    await alice.join(doc)
    await alice2.join(doc)
    await alice.recv_type("peer_joined_doc", peerId=alice2.peer_id)
    await alice.ephemeral(doc, {"secret": 1})
    await alice2.recv_type("ephemeral", documentId=doc)
    await alice2.heartbeat(doc)
    await alice2.leave(doc)
    await alice2.join(doc)

    # ...and every way in, tried by peers without read permission.
    for spy in observers:
        await spy.presence(doc, "join")
        await spy.presence(doc, "heartbeat")
        await spy.presence(doc, "leave")  # not present: silently nothing
        await spy.ephemeral(doc, {"inject": spy.label})
        await spy.send({"type": "request", "documentId": doc, "data": b""})
        await spy.send({"type": "sync", "documentId": doc, "data": b""})
    await alice2.close()  # (its rejoin was held by the presence budget: alice heard it leave)
    await settle(alice, bob, anon)

    for spy in observers:
        denied = spy.received(is_frame("error", error="permission_denied", documentId=doc))
        assert len(denied) == 5  # join, heartbeat, ephemeral, request, sync
        for frame in spy.frames:
            if frame in denied:
                continue
            # Nothing else may mention the document, in any field.
            assert doc not in repr(frame), frame
        assert spy.received(lambda f: f["type"] in ("peer_joined_doc", "peer_left_doc")) == []
    # The injections reached nobody.
    assert [f for f in ephemerals(alice, doc) if f["senderId"] != alice2.peer_id] == []
    assert (
        alice.received(
            lambda f: f.get("peerId") in (bob.peer_id, anon.peer_id) and "documentId" in f
        )
        == []
    )


@with_acl
async def test_read_and_write_permissions(peers: RawPeers) -> None:
    alice, bob, anon = await peers("alice-secret"), await peers("bob-secret"), await peers()
    await alice.join("shared")
    assert (await bob.join("shared"))["peers"] == [alice.peer_id, bob.peer_id]  # write ⊇ read
    await bob.ephemeral("shared", "from bob")
    assert (await alice.recv_type("ephemeral"))["senderId"] == bob.peer_id
    assert (await anon.join("lobby"))["peers"] == [anon.peer_id]  # public
    await anon.presence("shared", "join")
    assert (await anon.recv_type("error"))["error"] == "permission_denied"


@with_acl
async def test_sender_id_cannot_be_forged(peers: RawPeers) -> None:
    alice, bob = await peers("alice-secret"), await peers("bob-secret")
    await alice.join("shared")
    await bob.join("shared")
    # bob pretends to be alice, and reuses nothing of hers but her peer id.
    await bob.ephemeral("shared", "I am alice", senderId=alice.peer_id, targetId=alice.peer_id)
    got = await alice.recv_type("ephemeral")
    assert got["senderId"] == bob.peer_id
    assert got["targetId"] == alice.peer_id


SERVER_ONLY: list[dict[str, Any]] = [
    {"type": "auth_ok", "peerId": "relay", "clientPeerId": "{a}", "user": None},
    {"type": "auth_error", "error": "invalid_token", "message": "forged"},
    {"type": "error", "error": "permission_denied", "message": "forged", "documentId": "doc"},
    {
        "type": "peer_identity",
        "peerId": "{a}",
        "user": {"id": "alice", "name": "Alice", "isAnonymous": False},
    },
    {"type": "peer_disconnected", "peerId": "{a}"},
    {"type": "peer_joined_doc", "documentId": "doc", "peerId": "{c}"},
    {"type": "peer_left_doc", "documentId": "doc", "peerId": "{a}"},
    {"type": "doc_presence_state", "documentId": "doc", "peers": ["{c}"]},
]


async def test_server_only_frames_are_rejected(
    peers: RawPeers, ratatoskr_relay: RelayServer
) -> None:
    a, b, c = [await peers() for _ in range(3)]
    await a.join("doc")
    await b.join("doc")
    before = ratatoskr_relay.stats()

    def fill(value: Any) -> Any:  # aim the forged frames at real peers
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, str):
            return value.format(a=a.peer_id, c=c.peer_id)
        return value

    for template in SERVER_ONLY:
        forged = {k: fill(v) for k, v in template.items()}
        await c.send(forged)
        err = await c.recv_type("error")
        assert err["error"] == "invalid_message", forged
        assert forged["type"] in err["message"]
    # Every forged frame has been answered, and no table changed.
    assert ratatoskr_relay.stats() == before
    await settle(c, a, b)
    for p in (a, b):
        about_c = p.received(lambda f: f.get("peerId") == c.peer_id)
        assert about_c == []  # c shares no document with them
        assert p.received(is_frame("peer_left_doc")) == []
        assert p.received(is_frame("peer_disconnected")) == []
    d = await peers()
    assert (await d.join("doc"))["peers"] == [a.peer_id, b.peer_id, d.peer_id]


# --------------------------------------------------------------------------- bad input


def _bad_inputs(doc: str) -> list[tuple[str, Any]]:
    good = {
        "type": "ephemeral",
        "senderId": "",
        "targetId": "",
        "documentId": doc,
        "sessionId": "bad-input-session",
        "data": cbor2.dumps("x"),
    }
    counter = iter(range(1, 1000))

    def eph(**changes: Any) -> dict[str, Any]:
        frame = {**good, "count": next(counter), **changes}
        return {k: v for k, v in frame.items() if v is not _DROP}

    return [
        ("garbage", b"\xff\xfe\xfd\x00garbage"),
        ("empty", b""),
        ("text frame", "hello relay"),
        ("text CBOR", cbor2.dumps({"type": "auth"}).decode("latin-1")),
        ("null", cbor2.dumps(None)),
        ("int", cbor2.dumps(42)),
        ("array", cbor2.dumps([1, 2, 3])),
        ("string", cbor2.dumps("ephemeral")),
        ("truncated map", cbor2.dumps(good)[:-3]),
        ("trailing bytes", cbor2.dumps(eph()) + b"\x00"),
        ("no type", cbor2.dumps({"documentId": doc})),
        ("int type", cbor2.dumps({"type": 7})),
        ("unknown type", cbor2.dumps({"type": "subscribe", "documentId": doc})),
        ("missing documentId", cbor2.dumps(eph(documentId=_DROP))),
        ("missing count", cbor2.dumps({**good})),
        ("count is text", cbor2.dumps(eph(count="1"))),
        ("negative count", cbor2.dumps(eph(count=-1))),
        ("sessionId is int", cbor2.dumps(eph(sessionId=5))),
        ("data is text", cbor2.dumps(eph(data="not bytes"))),
        ("data is a list of ints", cbor2.dumps(eph(data=list(b"\xa0")))),
        ("data is not CBOR", cbor2.dumps(eph(data=b"\xff\xff"))),
        ("data has trailing bytes", cbor2.dumps(eph(data=cbor2.dumps(1) + b"\x01"))),
        ("data is empty", cbor2.dumps(eph(data=b""))),
        (
            "presence with unhashable status",
            cbor2.dumps(
                eph(data=cbor2.dumps({"type": "presence", "status": ["join"], "documentId": doc}))
            ),
        ),
        (
            "presence for another document",
            cbor2.dumps(
                eph(data=cbor2.dumps({"type": "presence", "status": "join", "documentId": "x"}))
            ),
        ),
        ("auth with int token", cbor2.dumps({"type": "auth", "token": 5})),
        ("deep nesting", b"\x81" * 3000 + b"\x00"),
        ("oversized", cbor2.dumps(eph(data=cbor2.dumps(b"x" * 5000)))),
    ]


_DROP = object()


@pytest.mark.ratatoskr_relay(max_frame_size=4096)
async def test_bad_input_gets_invalid_message(
    peers: RawPeers, ratatoskr_relay: RelayServer, caplog: pytest.LogCaptureFixture
) -> None:
    a, b, c = [await peers() for _ in range(3)]
    await b.join("doc")
    await c.join("doc")
    for i, (what, bad) in enumerate(_bad_inputs("doc")):
        await b.send(bad)
        err = await b.recv_type("error")
        assert err["error"] == "invalid_message", (what, err)
        assert isinstance(err["message"], str), what
        assert err["message"], what
        # b's socket is still open and every other peer is unaffected.
        await a.ephemeral("doc", i)
        for p in (b, c):
            got = await p.recv_type("ephemeral", count=a.count)
            assert cbor2.loads(got["data"]) == i, what
    await settle(b, c)
    assert not b.closed
    assert len(b.errors()) == len(_bad_inputs("doc"))
    assert a.errors() == c.errors() == []
    assert ratatoskr_relay.core.presence("doc") == (b.peer_id, c.peer_id)
    assert loud_records(caplog) == []
    async with aiohttp.ClientSession() as http, http.get(f"{ratatoskr_relay.url}/health") as r:
        assert r.status == 200


async def test_bad_input_before_auth(peers: RawPeers, caplog: pytest.LogCaptureFixture) -> None:
    peer = await peers.connect()
    for bad in (
        b"\xff",
        "text",
        cbor2.dumps(None),
        cbor2.dumps({"type": "auth", "anonymous": "yes"}),
    ):
        await peer.send(bad)
        assert (await peer.recv_type("error"))["error"] == "invalid_message"
    await peer.auth()
    assert not peer.closed
    assert loud_records(caplog) == []


@pytest.mark.ratatoskr_relay(max_frame_size=1024)
async def test_frame_beyond_16x_the_limit_closes_with_1009(
    peers: RawPeers, ratatoskr_relay: RelayServer, caplog: pytest.LogCaptureFixture
) -> None:
    a, b, c = [await peers() for _ in range(3)]
    await c.join("doc")
    # Up to 16x the limit: an error frame, socket open.
    await b.send(b"\x00" * (16 * 1024))
    err = await b.recv_type("error")
    assert err["error"] == "invalid_message"
    assert "1024-byte limit" in err["message"]
    # Beyond: the WebSocket layer closes the socket with 1009 (message too big).
    await b.send(b"\x00" * (16 * 1024 + 1))
    assert await b.wait_closed() == 1009
    await settle(c)
    assert ratatoskr_relay.stats().peers == 2
    await a.ephemeral("doc", "still fine")
    assert cbor2.loads((await c.recv_type("ephemeral"))["data"]) == "still fine"
    assert loud_records(caplog) == []


@pytest.mark.ratatoskr_relay(max_documents_per_peer=3)
async def test_max_documents_per_peer(peers: RawPeers) -> None:
    a, b = await peers(), await peers()
    for doc in ("d1", "d2", "eph:d3"):
        await a.join(doc)
    for status in ("join", "heartbeat"):
        await a.presence("d4", status)
        err = await a.recv_type("error")
        assert (err["error"], err["documentId"]) == ("too_many_documents", "d4")
        assert "3" in err["message"]
    # Other peers are unaffected, and a may still send into d4 without joining it.
    assert (await b.join("d4"))["peers"] == [b.peer_id]
    await a.ephemeral("d4", "hello")
    assert (await b.recv_type("ephemeral"))["senderId"] == a.peer_id
    # Re-joining a held document is fine; after a leave there is room again.
    assert (await a.join("d1"))["peers"] == [a.peer_id]
    await a.leave("d1")
    assert (await a.join("d4"))["peers"] == [b.peer_id, a.peer_id]
    assert len(a.received(is_frame("error", error="too_many_documents"))) == 2


async def test_automerge_request_counts_as_join(peers: RawPeers) -> None:
    a, b = await peers(), await peers()
    await a.join("doc")
    await b.send(
        {
            "type": "request",
            "senderId": b.peer_id,
            "targetId": "server",
            "documentId": "doc",
            "data": bytes.fromhex("42000001000000020102"),
        }
    )
    state = await b.recv_type("doc_presence_state", documentId="doc")
    assert state["peers"] == [a.peer_id, b.peer_id]
    unavailable = await b.recv_type("doc-unavailable")
    assert unavailable["documentId"] == "doc"
    assert unavailable["targetId"] == b.peer_id
    await a.recv_type("peer_joined_doc", peerId=b.peer_id)
