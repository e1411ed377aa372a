"""The operator's rules, pure: the roster (joins, users, membership events,
shared state), the admin API's answers and refusals, the webhooks'
signatures and queue. A fake outbox and clock (``test_relay_core``'s)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ratatoskr_client.protocol import EphemeralFrame, ErrorFrame, PeerLeftDocFrame
from ratatoskr_client.server import RelayConfig, UserSpec
from ratatoskr_client.server.core import admin
from ratatoskr_client.server.core.roster import MembershipEvent
from ratatoskr_client.server.core.states import MAX_STATE_BYTES
from ratatoskr_client.server.core.webhooks import (
    MAX_BATCH,
    REPLAY_WINDOW,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    EventQueue,
    WebhookStats,
    retry_delay,
    sign,
    verify,
)

from .test_relay_core import SERVER_ID, Relay

USERS = (UserSpec("alice-secret", "alice", "Alice"), UserSpec("bob-secret", "bob", "Bob"))


@pytest.fixture
def relay() -> Relay:
    return Relay(RelayConfig(open=True, users=USERS, admin_token="admin-token"))


def test_without_admin_or_webhooks_the_roster_keeps_nothing() -> None:
    plain = Relay(RelayConfig(open=True))
    seen = events(plain)
    a = plain.peer()
    a.join("doc")
    a.ephemeral("doc", state("doc", type="update", channel="cursor", value=[1, 2]))
    assert seen == [] and plain.core.roster.documents() == 0
    assert plain.core.roster.since("doc") == {} and plain.core.roster.users("doc") == {}
    hooked = Relay(RelayConfig(open=True, webhook_url="http://h/", webhook_secret="s"))
    assert hooked.core.roster.active


def events(relay: Relay) -> list[MembershipEvent]:
    seen: list[MembershipEvent] = []
    relay.core.roster.on_event = seen.append
    return seen


def kinds(seen: list[MembershipEvent]) -> list[tuple[str, str, str | None]]:
    return [(e.kind, e.document_id, e.user) for e in seen]


# --------------------------------------------------------------------------- roster


def test_membership_events_follow_the_cores_joins_and_leaves(relay: Relay) -> None:
    seen = events(relay)
    alice1, alice2, bob = (
        relay.peer("alice-secret"),
        relay.peer("alice-secret"),
        relay.peer("bob-secret"),
    )
    alice1.join("doc")
    alice2.join("doc")  # the same user again: no user.joined
    bob.join("doc")
    bob.heartbeat("doc")  # a refresh is no event
    assert kinds(seen) == [
        ("document.occupied", "doc", None),
        ("user.joined", "doc", "alice"),
        ("user.joined", "doc", "bob"),
    ]
    seen.clear()
    alice1.leave("doc")  # alice is still present through alice2
    bob.close()  # a closed connection leaves like a leave
    alice2.leave("doc")
    assert kinds(seen) == [
        ("user.left", "doc", "bob"),
        ("user.left", "doc", "alice"),
        ("document.vacated", "doc", None),
    ]
    assert seen[-1].peer_id == alice2.peer_id and seen[-1].name == "Alice"
    assert relay.core.roster.documents() == 0


def test_anonymous_peers_are_each_their_own_user_and_expiry_is_a_leave(relay: Relay) -> None:
    seen = events(relay)
    a, b = relay.peer(), relay.peer()
    a.join("doc")
    b.join("doc")
    users = [e.user for e in seen if e.kind == "user.joined"]
    assert users == [f"anon:{a.peer_id}", f"anon:{b.peer_id}"]
    seen.clear()
    relay.clock.advance(relay.core.config.presence_ttl + 1)
    relay.core.expire()
    assert sorted(kinds(seen)) == sorted(
        [
            ("user.left", "doc", f"anon:{a.peer_id}"),
            ("user.left", "doc", f"anon:{b.peer_id}"),
            ("document.vacated", "doc", None),
        ]
    )


def test_since_is_when_each_peer_joined(relay: Relay) -> None:
    a, b = relay.peer(), relay.peer()
    a.join("doc")
    relay.clock.advance(5)
    b.join("doc")
    relay.clock.advance(5)
    a.heartbeat("doc")  # does not move its "since"
    since = relay.core.roster.since("doc")
    assert since[b.peer_id] - since[a.peer_id] == 5


def state(doc: str, **message: Any) -> dict[str, Any]:
    return {"__presence": message}


def test_peer_states_keep_the_latest_presence_state_of_present_peers(relay: Relay) -> None:
    a, b, outsider = relay.peer(), relay.peer(), relay.peer()
    a.join("doc")
    b.join("doc")
    a.ephemeral("doc", state("doc", type="snapshot", state={"name": "Ada", "cursor": [1, 2]}))
    a.ephemeral("doc", state("doc", type="update", channel="cursor", value=[3, 4]))
    a.ephemeral("doc", state("doc", type="heartbeat"))
    b.ephemeral("doc", state("doc", type="update", channel="cursor", value=[9, 9]))
    b.ephemeral("doc", state("doc", type="goodbye"))
    outsider.ephemeral("doc", state("doc", type="update", channel="cursor", value=[0, 0]))
    a.ephemeral("doc", state("doc", type="update", channel=7, value=1))  # malformed: ignored
    assert relay.core.peer_states("doc") == {a.peer_id: {"name": "Ada", "cursor": [3, 4]}}
    # Relayed all the same: the relay keeps state, it does not judge it.
    assert any(isinstance(f, EphemeralFrame) for f in b.take())
    a.leave("doc")
    assert relay.core.peer_states("doc") == {}


def test_peer_state_is_bounded_in_bytes(relay: Relay) -> None:
    # The one cache of peer states (states.py) is what the operator reads.
    a, b = relay.peer(), relay.peer()
    a.join("doc")
    b.join("doc")
    a.ephemeral("doc", state("doc", type="update", channel="one", value="small"))
    assert relay.core.peer_states("doc") == {a.peer_id: {"one": "small"}}
    big = "x" * MAX_STATE_BYTES
    b.ephemeral("doc", state("doc", type="update", channel="one", value=big))  # beyond it
    assert b.peer_id not in relay.core.peer_states("doc")
    assert relay.core.peer_states("doc")[a.peer_id] == {"one": "small"}


# --------------------------------------------------------------------------- admin rules


def test_the_token_is_checked_in_full() -> None:
    assert admin.authorized("s3cret", "Bearer s3cret")
    assert admin.authorized("s3cret", "bearer s3cret")
    for header in (None, "", "Bearer", "Bearer s3cre", "Bearer s3cret2", "Basic s3cret", "s3cret"):
        assert not admin.authorized("s3cret", header), header
    assert not admin.authorized(None, "Bearer anything")


def wall(t: float) -> float:
    return t + 1_000_000.0


def test_documents_presence_and_connections(relay: Relay) -> None:
    alice, anon = relay.peer("alice-secret"), relay.peer()
    alice.join("doc")
    anon.join("doc")
    alice.join("other")
    alice.ephemeral("doc", state("doc", type="update", channel="cursor", value=[1, 1]))
    docs = admin.documents(relay.core, None)["documents"]
    assert docs == [
        {"id": "doc", "peers": 2, "local": 2, "remote": 0, "users": 2},
        {"id": "other", "peers": 1, "local": 1, "remote": 0, "users": 1},
    ]
    presence = admin.document_presence(relay.core, None, "doc", wall)
    assert [p["peerId"] for p in presence["peers"]] == [alice.peer_id, anon.peer_id]
    first = presence["peers"][0]
    assert first["userId"] == "alice" and first["name"] == "Alice" and not first["anonymous"]
    assert first["since"] == wall(relay.clock.now) and first["node"] == SERVER_ID
    assert presence["users"][0] == {"user": "alice", "name": "Alice", "connections": 1}
    assert presence["state"] == {alice.peer_id: {"cursor": [1, 1]}}
    assert admin.document_presence(relay.core, None, "empty", wall)["peers"] == []
    json.dumps(presence)  # JSON-able as it is

    page = admin.connections(relay.core, None, {"limit": "1"})
    assert page["total"] == 2 and page["next"] == 1 and len(page["connections"]) == 1
    rest = admin.connections(relay.core, None, {"offset": "1"})
    assert rest["next"] is None and rest["connections"][0]["peerId"] == anon.peer_id
    for bad in ({"limit": "0"}, {"limit": "x"}, {"offset": "-1"}, {"limit": "1001"}):
        with pytest.raises(admin.AdminError) as refused:
            admin.connections(relay.core, None, bad)
        assert refused.value.status == 400 and refused.value.code == "invalid_request"


def test_disconnect_tells_the_peer_why_and_whether_to_come_back(relay: Relay) -> None:
    alice1, alice2, bob = (
        relay.peer("alice-secret"),
        relay.peer("alice-secret"),
        relay.peer("bob-secret"),
    )
    for p in (alice1, alice2, bob):
        p.take()
    answer = admin.disconnect(relay.core, {"peerId": bob.peer_id, "reason": "spam"})
    assert answer == {"disconnected": [bob.peer_id]}
    assert bob.take() == [ErrorFrame("disconnected_by_admin", "spam", None, None)]
    assert bob.outbox.closed == (1008, "disconnected_by_admin")

    answer = admin.disconnect(relay.core, {"userId": "alice", "reconnect": True, "retryAfter": 5})
    assert answer == {"disconnected": [alice1.peer_id, alice2.peer_id]}
    for p in (alice1, alice2):
        assert p.take() == [
            ErrorFrame("disconnected_by_admin", "disconnected by the operator", None, 5.0)
        ]

    refusals = [
        ([], 400),
        ({}, 400),
        ({"peerId": "x", "userId": "y"}, 400),
        ({"peerId": "nobody"}, 404),
        ({"userId": "carol"}, 404),
        ({"peerId": bob.peer_id, "reason": 3}, 400),
        ({"peerId": bob.peer_id, "reason": "x" * 201}, 400),
        ({"peerId": bob.peer_id, "reconnect": "yes"}, 400),
        ({"peerId": bob.peer_id, "reconnect": True, "retryAfter": -1}, 400),
        ({"peerId": bob.peer_id, "reconnect": True, "retryAfter": True}, 400),
    ]
    for body, status in refusals:
        with pytest.raises(admin.AdminError) as refused:
            admin.disconnect(relay.core, body)
        assert refused.value.status == status, body


def test_publish_reaches_the_present_peers_from_the_server(relay: Relay) -> None:
    a, b, elsewhere = relay.peer(), relay.peer(), relay.peer()
    a.join("doc")
    b.join("doc")
    elsewhere.join("other")
    for p in (a, b, elsewhere):
        p.take()
    assert admin.publish(relay.core, "doc", {"payload": {"notice": "maintenance at 5"}}) == {
        "documentId": "doc",
        "delivered": 2,
    }
    admin.publish(relay.core, "doc", {"payload": 2})
    for p in (a, b):
        first, second = p.take()
        assert isinstance(first, EphemeralFrame) and isinstance(second, EphemeralFrame)
        assert first.sender_id == SERVER_ID and first.target_id == p.peer_id
        assert second.count > first.count and second.session_id == first.session_id
    assert elsewhere.take() == []
    assert admin.publish(relay.core, "nobody-here", {"payload": 1})["delivered"] == 0
    for body in ({}, [], {"payload": object()}):
        with pytest.raises(admin.AdminError):
            admin.publish(relay.core, "doc", body)
    with pytest.raises(admin.AdminError) as refused:
        admin.publish(relay.core, "doc", {"payload": "x" * 70_000})
    assert refused.value.status == 413


def test_a_disconnected_peer_leaves_when_its_socket_closes(relay: Relay) -> None:
    a, b = relay.peer(), relay.peer()
    a.join("doc")
    b.join("doc")
    b.take()
    relay.core.disconnect(a.peer_id, "bye")
    a.close()  # (what the I/O layer does once the socket is closed)
    assert PeerLeftDocFrame("doc", a.peer_id) in b.take()


# --------------------------------------------------------------------------- webhooks


def test_signatures_verify_and_expire() -> None:
    body = b'{"events":[]}'
    headers = {TIMESTAMP_HEADER: "1000", SIGNATURE_HEADER: sign("k", 1000, body)}
    assert headers[SIGNATURE_HEADER].startswith("v1=")
    assert verify("k", headers, body, 1000 + REPLAY_WINDOW)
    assert not verify("k", headers, body, 1000 + REPLAY_WINDOW + 1)  # a replay, too late
    assert not verify("k", headers, body, 1000 - REPLAY_WINDOW - 1)
    assert not verify("other", headers, body, 1000)
    assert not verify("k", headers, body + b" ", 1000)
    assert not verify("k", {**headers, TIMESTAMP_HEADER: "1001"}, body, 1000)
    assert not verify("k", {**headers, TIMESTAMP_HEADER: "soon"}, body, 1000)
    assert not verify("k", {}, body, 1000)


def test_the_queue_is_bounded_and_counts_what_it_drops() -> None:
    stats = WebhookStats()
    queue = EventQueue(stats, limit=3)
    assert [queue.put({"n": i}) for i in range(5)] == [True, True, True, False, False]
    assert stats.dropped["queue_full"] == 2 and stats.queued == 3
    assert queue.take(2) == [{"n": 0}, {"n": 1}]
    assert queue.take() == [{"n": 2}] and stats.queued == 0
    assert MAX_BATCH == 100


def test_retries_back_off_to_a_ceiling() -> None:
    delays = [retry_delay(n) for n in range(1, 10)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert max(delays) == 30.0 and delays == sorted(delays)


class FakeRemote:
    """What a relay knows of the others: two peers on node-b."""

    node_id = "node-a"

    def __init__(self) -> None:
        from ratatoskr_client.protocol import UserInfo
        from ratatoskr_client.server.cluster.tables import RemotePeer

        self.peers = [
            RemotePeer("node-b", "peer-b1", UserInfo("alice", "Alice", False), b"", {"doc"}),
            RemotePeer("node-b", "peer-b2", UserInfo(None, "Quiet Quokka", True), b"", set()),
        ]

    def nodes(self) -> tuple[str, ...]:
        return ("node-b",)

    def remote_peers(self) -> list[Any]:
        return self.peers


def test_pages_run_through_local_then_remote_connections(relay: Relay) -> None:
    remote = FakeRemote()
    local = [relay.peer("alice-secret"), relay.peer()]
    local[0].join("doc")
    seen = []
    offset: int | None = 0
    while offset is not None:
        page = admin.connections(relay.core, remote, {"offset": str(offset), "limit": "3"})
        assert page["total"] == 4
        seen += [(c["peerId"], c["node"]) for c in page["connections"]]
        offset = page["next"]
    assert seen == [
        (local[0].peer_id, "node-a"),
        (local[1].peer_id, "node-a"),
        ("peer-b1", "node-b"),
        ("peer-b2", "node-b"),
    ]
    only_b = admin.connections(relay.core, remote, {"node": "node-b"})
    assert [c["peerId"] for c in only_b["connections"]] == ["peer-b1", "peer-b2"]
    assert admin.connections(relay.core, remote, {"node": "local"})["total"] == 2
    docs = admin.documents(relay.core, remote)["documents"]
    assert docs == [{"id": "doc", "peers": 2, "local": 1, "remote": 1, "users": 1}]
    presence = admin.document_presence(relay.core, remote, "doc", wall)
    assert [p["node"] for p in presence["peers"]] == ["node-a", "node-b"]
    assert presence["users"] == [{"user": "alice", "name": "Alice", "connections": 2}]
    nodes = admin.nodes(relay.core, remote)["nodes"]
    assert [(n["node"], n["self"], n["peers"]) for n in nodes] == [
        ("node-a", True, 2),
        ("node-b", False, 2),
    ]
    assert admin.remote_targets(remote, {"userId": "alice"}) == ["peer-b1"]
    assert admin.remote_targets(remote, {"peerId": "peer-b2"}) == ["peer-b2"]
    with pytest.raises(admin.AdminError):
        admin.disconnect(relay.core, {"peerId": "nobody"}, remote)
    forwarded = admin.disconnect(relay.core, {"userId": "alice"}, remote)
    assert forwarded == {"disconnected": [local[0].peer_id], "forwarded": ["peer-b1"]}


def test_whatever_a_peer_shares_answers_are_strict_json(relay: Relay) -> None:
    a, b = relay.peer(), relay.peer()
    a.join("doc")
    b.join("doc")
    a.ephemeral(
        "doc",
        state("doc", type="snapshot", state={"cursor": [float("nan"), 1], "blob": b"\x00\xff"}),
    )
    b.ephemeral("doc", state("doc", type="update", channel="cursor", value=[5, 2.5]))
    presence = admin.document_presence(relay.core, None, "doc", wall)
    json.dumps(presence, allow_nan=False)  # raises on NaN, bytes, anything JSON lacks
    assert presence["state"][a.peer_id] == {"cursor": [None, 1], "blob": {"$bytes": "AP8="}}
    board = admin.dashboard(relay.core, None, 0.0, wall)
    json.dumps(board, allow_nan=False)
    cursors = {p["peerId"]: p["cursor"] for p in board["documents"][0]["peers"]}
    assert cursors == {a.peer_id: None, b.peer_id: [5.0, 2.5]}
    assert board["peerCount"] == 2 and board["documentCount"] == 1
