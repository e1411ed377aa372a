"""What must hold across relays: every rule of ``docs/cluster.md``'s "What holds
across relays", with raw WebSocket peers connected to different relay processes
of one cluster (a real Redis, three relays: ``a``, ``b``, ``c``).

The relays are shared by the module, so every test uses its own document ids
and only asserts about its own peers.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from typing import Any

import cbor2
import pytest

from ratatoskr_client.server.cluster.wire import Joined, Left, Relayed
from ratatoskr_client.server.core.visibility import NUDGE_SESSION

from ..integration.rawpeer import RawPeer, RawPeers, is_frame, settle
from ..reliability.support import assert_never_about
from .conftest import PRESENCE_TTL, RATE_LIMIT, Cluster, make_cluster
from .support import BusSpy, eventually

EPHEMERAL_KEYS = {"type", "senderId", "targetId", "documentId", "count", "sessionId", "data"}


def new_doc(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def ephemerals(peer: RawPeer, doc: str) -> list[dict[str, Any]]:
    """The messages ``peer`` received in ``doc``, but the relays' state nudges
    (a relay whose first peer enters a document asks the others' peers for
    their Presence state with a heartbeat from that peer: issue 22)."""
    return peer.received(
        lambda f: (
            f["type"] == "ephemeral"
            and f["documentId"] == doc
            and not f["sessionId"].startswith(NUDGE_SESSION)
        )
    )


@pytest.fixture
async def cluster(cluster3: Cluster) -> Cluster:
    await cluster3.ready()
    return cluster3


# --------------------------------------------------------------------------- identities


async def test_identities_travel_with_documents_across_relays(cluster: Cluster) -> None:
    """Document identity scope (the default) across relays: an identity reaches
    a peer just before the frame that needs it, whichever relay either is on;
    a connect announces nothing, anywhere."""
    doc = new_doc("ids")
    async with (
        RawPeers(cluster.a.ws_url) as on_a,
        RawPeers(cluster.b.ws_url) as on_b,
        RawPeers(cluster.c.ws_url) as on_c,
    ):
        alice = await on_a("alice-secret")
        anon = await on_b()
        stranger = await on_c()  # in no document: hears nothing about anyone
        await alice.join(doc)
        state = await anon.join(doc)
        assert state["peers"] == [alice.peer_id, anon.peer_id]
        kinds = [(f["type"], f.get("peerId")) for f in anon.frames[1:]]
        assert kinds[:2] == [("peer_identity", alice.peer_id), ("doc_presence_state", None)]
        assert anon.frames[1]["user"] == {"id": "alice", "name": "Alice", "isAnonymous": False}
        await alice.recv_type("peer_joined_doc", peerId=anon.peer_id)
        kinds = [(f["type"], f.get("peerId")) for f in alice.frames[1:]]
        assert ("peer_identity", anon.peer_id) in kinds
        assert (
            kinds.index(("peer_identity", anon.peer_id))
            == kinds.index(("peer_joined_doc", anon.peer_id)) - 1
        )

        # A newcomer on the third relay: nothing after auth_ok; the identities
        # of both others come with its state, before it.
        newcomer = await on_c()
        assert [f["type"] for f in newcomer.frames] == ["auth_ok"]
        await newcomer.join(doc)
        introduced = [f["peerId"] for f in newcomer.frames if f["type"] == "peer_identity"]
        assert set(introduced) == {alice.peer_id, anon.peer_id}
        assert newcomer.frames[-1]["type"] == "doc_presence_state"
        for peer in (alice, anon):
            await peer.recv_type("peer_joined_doc", peerId=newcomer.peer_id)
            assert peer.received(is_frame("peer_identity", peerId=newcomer.peer_id))

        # A connection that closes: its leave, then its disconnect, on every relay.
        await anon.close()
        for peer in (alice, newcomer):
            await peer.recv_type("peer_disconnected", peerId=anon.peer_id)
            about = [f["type"] for f in peer.frames if f.get("peerId") == anon.peer_id]
            assert about[-2:] == ["peer_left_doc", "peer_disconnected"]
        await settle(alice, newcomer, stranger)
        for peer in (alice, newcomer, stranger):
            assert not peer.received(is_frame("peer_identity", peerId=peer.peer_id))
        assert [f for f in stranger.frames if f["type"].startswith("peer_")] == []


async def test_identities_and_the_initial_sync_cover_every_relay_in_global_scope() -> None:
    """The plan's global identity scope across relays: every identity to
    everyone, the initial sync lists every relay's peers, disconnects reach all."""
    with make_cluster(2, "--identity-scope", "global") as cluster:
        await cluster.ready()
        async with RawPeers(cluster.a.ws_url) as on_a, RawPeers(cluster.b.ws_url) as on_b:
            alice = await on_a("alice-secret")
            anon = await on_b()
            # Announced across relays, both ways.
            got = await anon.recv_type("peer_identity", peerId=alice.peer_id)
            assert got["user"] == {"id": "alice", "name": "Alice", "isAnonymous": False}
            got = await alice.recv_type("peer_identity", peerId=anon.peer_id)
            assert got["user"] == anon.user

            # A newcomer: its initial sync, right after auth_ok, lists the
            # peers of both relays.
            newcomer = await on_b.connect()
            ok = await newcomer.auth()
            assert "scoped-identity" not in ok["features"]
            await newcomer.barrier()
            sync = []
            for frame in newcomer.frames[1:]:
                if frame["type"] != "peer_identity":
                    break
                sync.append(frame["peerId"])
            assert {alice.peer_id, anon.peer_id} <= set(sync)
            assert newcomer.peer_id not in sync  # never one's own identity
            for peer in (alice, anon):
                await peer.recv_type("peer_identity", peerId=newcomer.peer_id)

            # A disconnect reaches both relays.
            await anon.close()
            for peer in (alice, newcomer):
                await peer.recv_type("peer_disconnected", peerId=anon.peer_id)
            await settle(alice, newcomer)
            for peer in (alice, newcomer):
                assert not peer.received(is_frame("peer_identity", peerId=peer.peer_id))


# --------------------------------------------------------------------------- presence


@pytest.mark.slow
async def test_presence_join_leave_heartbeat_and_ttl_across_relays(cluster: Cluster) -> None:
    doc = new_doc("presence")
    async with (
        RawPeers(cluster.a.ws_url) as on_a,
        RawPeers(cluster.b.ws_url) as on_b,
        RawPeers(cluster.c.ws_url) as on_c,
    ):
        a, b, c = await on_a(), await on_b(), await on_c()
        assert (await a.join(doc))["peers"] == [a.peer_id]
        # Peers of other relays first, the joiner last.
        assert (await b.join(doc))["peers"] == [a.peer_id, b.peer_id]
        await a.recv_type("peer_joined_doc", documentId=doc, peerId=b.peer_id)
        state = await c.join(doc)
        assert sorted(state["peers"][:2]) == sorted([a.peer_id, b.peer_id])
        assert state["peers"][2] == c.peer_id
        for peer in (a, b):
            await peer.recv_type("peer_joined_doc", documentId=doc, peerId=c.peer_id)

        # A heartbeat refreshes presence and tells nobody anything; joining
        # again answers the joiner only.
        mark = {p.label: len(p.frames) for p in (a, b, c)}
        await b.heartbeat(doc)
        again = await b.join(doc)
        assert sorted(again["peers"]) == sorted([a.peer_id, b.peer_id, c.peer_id])
        await settle(b, a, c)
        for peer in (a, c):
            news = [
                f
                for f in peer.frames[mark[peer.label] :]
                if f.get("documentId") == doc
                and not f.get("sessionId", "").startswith(NUDGE_SESSION)  # (c's, maybe late)
            ]
            assert news == [], news

        await b.leave(doc)
        for peer in (a, c):
            await peer.recv_type("peer_left_doc", documentId=doc, peerId=b.peer_id)

        # TTL: c goes silent; a keeps heartbeating. c's relay expires it and
        # every relay's present peers hear of it (c too: it may re-enter).
        async def keep_alive() -> None:
            while True:
                await a.heartbeat(doc)
                await asyncio.sleep(0.5)

        beat = asyncio.create_task(keep_alive())
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            await a.recv_type("peer_left_doc", documentId=doc, peerId=c.peer_id, timeout=10)
            took = loop.time() - start
            await c.recv_type("peer_left_doc", documentId=doc, peerId=c.peer_id)
        finally:
            beat.cancel()
        assert took <= PRESENCE_TTL + 1.5, took
        assert (await a.join(doc))["peers"] == [a.peer_id]


# --------------------------------------------------------------------------- ephemeral


async def test_messages_reach_present_peers_on_every_relay_with_the_real_sender(
    cluster: Cluster,
) -> None:
    doc = new_doc("messages")
    async with (
        RawPeers(cluster.a.ws_url) as on_a,
        RawPeers(cluster.b.ws_url) as on_b,
        RawPeers(cluster.c.ws_url) as on_c,
    ):
        a, a2, b, c, absent = await on_a(), await on_a(), await on_b(), await on_c(), await on_b()
        for peer in (a, a2, b, c):
            await peer.join(doc)
        await a.recv_type("peer_joined_doc", peerId=c.peer_id)

        sent = await a.ephemeral(doc, {"cursor": [1, 2]}, senderId="peer-forged", targetId="x")
        for peer in (a2, b, c):
            got = await peer.recv_type("ephemeral", documentId=doc, sessionId=sent["sessionId"])
            assert set(got) == EPHEMERAL_KEYS
            assert got["senderId"] == a.peer_id  # stamped by a's relay: cannot be forged
            assert got["targetId"] == peer.peer_id
            assert got["count"] == sent["count"]
            assert got["sessionId"] == sent["sessionId"]
            assert cbor2.loads(got["data"]) == {"cursor": [1, 2]}

        from_c = await c.ephemeral(doc, "from c")
        for peer in (a, a2, b):
            got = await peer.recv_type("ephemeral", documentId=doc, sessionId=from_c["sessionId"])
            assert cbor2.loads(got["data"]) == "from c"

        # Nobody receives its own message; a peer not present receives nothing.
        await settle(a, c, a2, b, absent)
        assert [f["senderId"] for f in ephemerals(a, doc)] == [c.peer_id]
        assert [f["senderId"] for f in ephemerals(c, doc)] == [a.peer_id]
        assert ephemerals(absent, doc) == []


async def test_the_gossip_rule_holds_across_relays(cluster: Cluster) -> None:
    """A sessionId belongs to the connection that used it first and its
    identity, on whichever relay; counts must grow; a stock peer that
    reconnects elsewhere carries on, and nobody else can take its session."""
    doc = new_doc("gossip")
    async with (
        RawPeers(cluster.a.ws_url) as on_a,
        RawPeers(cluster.b.ws_url) as on_b,
        RawPeers(cluster.c.ws_url) as on_c,
    ):
        author, gossip, watcher = await on_a("alice-secret"), await on_b(), await on_c()
        for peer in (author, gossip, watcher):
            await peer.join(doc)
        await author.recv_type("peer_joined_doc", peerId=watcher.peer_id)

        original = await author.ephemeral(doc, {"n": 1})
        # (By sender: a relay's state nudge, also an ephemeral frame in doc,
        # may come first; the author's message crosses the bus after it.)
        copy = await gossip.recv_type("ephemeral", documentId=doc, senderId=author.peer_id)
        await watcher.recv_type("ephemeral", documentId=doc, senderId=author.peer_id)
        # A stock peer on relay b forwards what it received, as automerge-repo
        # does: same sessionId and count, and then a later count too.
        await gossip.send(copy)
        await gossip.ephemeral(doc, {"n": "stolen"}, sessionId=original["sessionId"], count=99)
        # Replays of the author's own message are dropped at its relay.
        await author.send(original)
        await settle(gossip, author, watcher)
        for peer in (author, watcher):
            assert len(ephemerals(peer, doc)) == (1 if peer is watcher else 0)
        assert len(ephemerals(gossip, doc)) == 1

        # The author's connection closes; someone else tries to take its
        # session over meanwhile (dropped on every relay); the same stock peer
        # comes back on another relay with the same session and a higher
        # count: it is its own.
        session, count = original["sessionId"], original["count"]
        await author.close()
        for peer in (gossip, watcher):
            await peer.recv_type("peer_disconnected", peerId=author.peer_id)
        await gossip.ephemeral(doc, {"n": "stolen"}, sessionId=session, count=count + 50)
        back = await on_c("alice-secret")
        await back.join(doc)
        await back.ephemeral(doc, {"n": 2}, sessionId=session, count=count + 5)
        got = await gossip.recv_type("ephemeral", documentId=doc, senderId=back.peer_id)
        assert cbor2.loads(got["data"]) == {"n": 2}
        await settle(gossip, back, watcher)
        assert [cbor2.loads(f["data"]) for f in ephemerals(watcher, doc)] == [{"n": 1}, {"n": 2}]


async def test_rate_limits_stay_per_connection(cluster: Cluster) -> None:
    doc = new_doc("rate")
    async with RawPeers(cluster.a.ws_url) as on_a, RawPeers(cluster.b.ws_url) as on_b:
        flooder, calm, receiver = await on_a(), await on_a(), await on_b()
        for peer in (flooder, calm, receiver):
            await peer.join(doc)
        await flooder.recv_type("peer_joined_doc", peerId=receiver.peer_id)
        extra = 15
        loop = asyncio.get_running_loop()
        started = loop.time()
        for i in range(RATE_LIMIT + extra):
            await flooder.ephemeral(doc, i)
        await calm.ephemeral(doc, "calm")
        await settle(flooder, calm, receiver)
        windows = math.ceil((loop.time() - started) * RATE_LIMIT / 60) + 1
        limited = flooder.received(is_frame("error", error="rate_limited"))
        got = [cbor2.loads(f["data"]) for f in ephemerals(receiver, doc)]
        from_flooder = [v for v in got if v != "calm"]
        # The burst (plus what refilled while sending), in order; the rest
        # refused, answered once per window (until the next token is due).
        assert from_flooder == list(range(len(from_flooder)))
        assert RATE_LIMIT <= len(from_flooder) < RATE_LIMIT + extra
        assert 1 <= len(limited) <= min(windows, RATE_LIMIT + extra - len(from_flooder))
        assert "calm" in got  # another connection on the same relay is not limited
        assert calm.errors() == [] and receiver.errors() == []


# --------------------------------------------------------------------------- security


async def test_nothing_of_an_unreadable_document_crosses_the_bus(cluster: Cluster) -> None:
    """The read check is made where a frame enters; only frames that passed
    every check go on the bus; a relay whose peers may not read a document
    never subscribes to it."""
    vault = "vault"
    names_prefix = "ratatoskr:0"
    spy_bus = BusSpy(cluster.redis)
    await spy_bus.start([f"{names_prefix}:cluster"], [f"{names_prefix}:doc:{vault}"])
    try:
        async with (
            RawPeers(cluster.a.ws_url) as on_a,
            RawPeers(cluster.b.ws_url) as on_b,
            RawPeers(cluster.c.ws_url) as on_c,
        ):
            alice1, alice2 = await on_a("alice-secret"), await on_b("alice-secret")
            spy, bob = await on_c(), await on_c("bob-secret")
            for peer in (alice1, alice2):
                await peer.join(vault)
            await alice1.recv_type("peer_joined_doc", documentId=vault, peerId=alice2.peer_id)

            # Every way in, from relay c: refused there, and nothing is published.
            await spy.presence(vault, "join")
            await spy.presence(vault, "heartbeat")
            await spy.ephemeral(vault, {"inject": 1}, senderId=alice1.peer_id)
            for kind in ("request", "sync"):
                await spy.send(
                    {
                        "type": kind,
                        "senderId": alice1.peer_id,
                        "targetId": "relay",
                        "documentId": vault,
                        "data": bytes.fromhex("42000001000000020102"),
                    }
                )
            await bob.presence(vault, "join")
            # Frames that fail other checks never cross either: undecodable
            # data, a replay, a gossip copy.
            good = await alice1.ephemeral(vault, {"secret": 1})
            await alice1.ephemeral(vault, data=b"\xff\xff")
            await alice1.send(good)
            copy = await alice2.recv_type("ephemeral", documentId=vault)
            await alice2.send(copy)
            await alice2.ephemeral(vault, {"secret": 2})
            await alice1.recv_type("ephemeral", documentId=vault, senderId=alice2.peer_id)
            await settle(spy, bob, alice1, alice2)

            denied = [f["error"] for f in spy.errors()]
            assert denied == ["permission_denied"] * 5, denied
            assert [f["error"] for f in bob.errors()] == ["permission_denied"]
            for peer in (spy, bob):
                assert_never_about(peer.frames, vault)
            for peer in (alice1, alice2):
                senders = {f["senderId"] for f in ephemerals(peer, vault)}
                assert senders <= {alice1.peer_id, alice2.peer_id}

            # The bus: exactly the two accepted messages on the vault's channel,
            # from alice1 and alice2 only; nothing about the spy but its identity.
            relayed = [
                (body.peer_id, cbor2.loads(body.data))
                for channel, _, body in spy_bus.messages
                if isinstance(body, Relayed) and not body.session_id.startswith(NUDGE_SESSION)
            ]
            assert sorted(relayed, key=str) == sorted(
                [(alice1.peer_id, {"secret": 1}), (alice2.peer_id, {"secret": 2})], key=str
            )
            vault_channel = f"{names_prefix}:doc:{vault}"
            about_vault = [
                body
                for channel, _, body in spy_bus.messages
                if channel == vault_channel and isinstance(body, Joined | Left | Relayed)
            ]
            assert {b.peer_id for b in about_vault} <= {alice1.peer_id, alice2.peer_id}
            assert any(channel != vault_channel for channel, _ in spy_bus.raw)
            for channel, raw in spy_bus.raw:
                if channel != vault_channel:
                    assert b"vault" not in raw
            spy_mentions = [
                type(body).__name__
                for _, _, body in spy_bus.messages
                if getattr(body, "peer_id", None) == spy.peer_id
            ]
            assert spy_mentions == ["PeerUp"]

            # Relay c has no reader of the vault: it never subscribed to it.
            # (relays a and b, and this spy)
            assert await cluster.redis.shard_subscribers(vault_channel) == 2 + 1
    finally:
        await spy_bus.close()


async def test_a_relay_subscribes_only_to_documents_with_local_peers(cluster: Cluster) -> None:
    doc = new_doc("subscriptions")
    channel = f"ratatoskr:0:doc:{doc}"

    async def subscribers() -> int:
        return await cluster.redis.shard_subscribers(channel)

    async def received_by_c() -> float:
        return (await cluster.c.metrics())['ratatoskr_cluster_messages_total{direction="received"}']

    async with RawPeers(cluster.a.ws_url) as on_a, RawPeers(cluster.b.ws_url) as on_b:
        assert await subscribers() == 0
        a, b = await on_a(), await on_b()
        await a.join(doc)
        assert await subscribers() == 1  # subscribed before the join was answered
        await b.join(doc)
        assert await subscribers() == 2
        await a.recv_type("peer_joined_doc", peerId=b.peer_id)

        # Relay c has no peer there: the document's traffic never reaches it.
        before = await received_by_c()
        for i in range(30):
            await a.ephemeral(doc, i)
        await b.recv_until(lambda f: f.get("type") == "ephemeral" and f["count"] == a.count)
        await settle(a, b)
        assert await received_by_c() == before

        await a.leave(doc)
        await b.recv_type("peer_left_doc", peerId=a.peer_id)
        await eventually(lambda: _equals(subscribers(), 1), 5)
        await b.close()
        await eventually(lambda: _equals(subscribers(), 0), 5)


async def _equals(value: Any, expected: int) -> bool:
    return await value == expected


# --------------------------------------------------------------------------- operating


async def test_health_and_metrics_describe_the_node(cluster: Cluster) -> None:
    doc = new_doc("metrics")
    health = await cluster.a.health()
    assert health["status"] == "ok"
    assert health["redis"] == "up"
    assert health["nodes"] == 3
    node_ids = {(await n.health())["node"] for n in cluster.relays}
    assert len(node_ids) == 3

    before = await cluster.a.metrics()
    async with RawPeers(cluster.a.ws_url) as on_a, RawPeers(cluster.b.ws_url) as on_b:
        a, b = await on_a(), await on_b()
        await a.join(doc)
        await b.join(doc)
        await a.recv_type("peer_joined_doc", peerId=b.peer_id)
        await b.ephemeral(doc, "hi")
        # b's message itself, not the state nudge b's relay sent first
        await a.recv_until(
            lambda f: (
                f["type"] == "ephemeral"
                and f["documentId"] == doc
                and not f["sessionId"].startswith(NUDGE_SESSION)
            )
        )
        await a.presence("vault", "join")
        await a.recv_type("error", error="permission_denied")
        await a.send(b"\x00not cbor")
        await a.recv_type("error", error="invalid_message")
        during = await cluster.a.metrics()
    assert during["ratatoskr_redis_up"] == 1
    assert during["ratatoskr_cluster_nodes"] == 3
    assert during["ratatoskr_peers"] >= 1
    assert during["ratatoskr_cluster_remote_peers"] >= 1
    assert during["ratatoskr_cluster_remote_memberships"] >= 1

    def grew(key: str) -> float:
        return during.get(key, 0) - before.get(key, 0)

    # b's message, and the state nudge b's relay sent when b was its first peer in
    # the document (issue 22)
    assert grew('ratatoskr_messages_relayed_total{origin="remote"}') == 2
    assert grew('ratatoskr_refused_total{reason="permission"}') == 1
    assert grew('ratatoskr_refused_total{reason="invalid"}') == 1
    assert grew('ratatoskr_frames_received_total{type="auth"}') == 1
    assert grew('ratatoskr_frames_sent_total{type="ephemeral"}') == 2  # (and the nudge)
    assert grew('ratatoskr_frames_sent_total{type="peer_joined_doc"}') >= 1
    assert during["ratatoskr_redis_round_trip_seconds_count"] > 0
    assert grew('ratatoskr_cluster_messages_total{direction="published"}') >= 2  # peer, join
