"""The cluster's message format, names and liveness rules: pure functions and
tables, with time as an argument."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest

from ratatoskr_client.errors import ConfigError, ProtocolError
from ratatoskr_client.protocol import MAX_COUNT, UserInfo
from ratatoskr_client.server import RelayConfig, RelayCore
from ratatoskr_client.server.cluster.registry import (
    ROUND_TRIP_BUCKETS,
    LinkWatch,
    NodeRegistry,
    PingWatch,
    RoundTrips,
    Timing,
    own_deadline_passed,
)
from ratatoskr_client.server.cluster.wire import (
    Bye,
    Claim,
    Handover,
    Hello,
    Joined,
    Left,
    Moved,
    Names,
    PeerGone,
    PeerUp,
    Refusal,
    Relayed,
    belongs_on,
    decode_members,
    decode_message,
    decode_peer,
    decode_user,
    encode_batch,
    encode_body,
    encode_members,
    encode_message,
    encode_user,
    header,
    is_node_id,
    new_node_id,
)
from ratatoskr_client.server.config import database_of
from ratatoskr_client.server.core.resume import HandedPeer, HandedState

NODE = "0123456789ab"

# --------------------------------------------------------------------------- wire


@pytest.mark.parametrize(
    "message",
    [
        Hello(),
        Bye(),
        PeerUp("peer-1", UserInfo("alice", "Alice", False)),
        PeerUp("peer-2", UserInfo(None, "Neon Narwhal", True)),
        PeerUp("peer-3", UserInfo("alice", "Alice", False), "user:alice"),
        PeerUp("peer-4", UserInfo(None, "Neon Narwhal", True), "anon:" + "0f" * 16),
        PeerGone("peer-1"),
        Joined("peer-1"),
        Left("peer-1"),
        Left("peer-1", gone=True),
        Relayed("peer-1", 7, "session-x", b"\xa1ax\x01"),
        Relayed("peer-1", MAX_COUNT, "session-x", b"\x01"),
        Claim(NODE, "req-1", "peer-1", b"\x07" * 32, None),
        Claim(NODE, "req-1", "peer-1", b"\x07" * 32, "alice"),
        Handover(
            NODE, "req-1", HandedPeer("peer-1", UserInfo(None, "Neon Narwhal", True), "anon:0f", ())
        ),
        Handover(
            NODE,
            "req-2",
            HandedPeer(
                "peer-1",
                UserInfo("alice", "Alice", False),
                "user:alice",
                ("doc-1", "doc-2"),
                (HandedState("doc-2", "session-x", 9, {"cursor": [1, 2], "name": "A"}),),
            ),
        ),
        Refusal(NODE, "req-1"),
        Moved("peer-1", NODE),
    ],
)
def test_every_message_round_trips(message: object) -> None:
    data = encode_message(NODE, message)  # type: ignore[arg-type]
    assert data.startswith(header(NODE))
    assert decode_message(data) == (NODE, [message])


HEAD = b"\x01" + NODE.encode()


def batch(*maps: object) -> bytes:
    return HEAD + cbor2.dumps(list(maps))


#: A well-formed handover (the tests spoil one field of it at a time).
HANDOVER: dict[str, object] = {
    "t": "handover",
    "to": NODE,
    "r": "r",
    "p": "x",
    "u": None,
    "n": "N",
    "a": True,
    "i": "anon:0f",
    "d": ["doc"],
    "s": [],
}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        HEAD,  # header only
        b"\x02" + NODE.encode() + cbor2.dumps([{"t": "hello"}]),  # another version
        b"\x01" + b"NOT-A-NODE!!" + cbor2.dumps([{"t": "hello"}]),
        HEAD + b"\xff",
        HEAD + cbor2.dumps({"t": "hello"}),  # not an array
        batch(),
        batch("t", "hello"),
        batch({"t": "shout"}),
        batch({"t": "join"}),
        batch({"t": "join", "p": ""}),
        batch({"t": "msg", "p": "x", "c": -1, "s": "s", "d": b""}),
        batch({"t": "msg", "p": "x", "c": 1, "s": "s", "d": "t"}),
        batch({"t": "msg", "p": "x", "c": MAX_COUNT + 1, "s": "s", "d": b""}),
        batch({"t": "msg", "p": "x", "c": 2**64, "s": "s", "d": b""}),
        batch({"t": "peer", "p": "x", "u": None, "n": "N", "a": True, "i": 5}),
        batch({"t": "peer", "p": "x", "u": None, "n": "N", "a": True, "i": ""}),
        batch({"t": "peer", "p": "x", "u": None, "n": "N", "a": True, "i": "x" * 600}),
        batch({"t": "peer", "p": "x", "u": 1, "n": "N", "a": 1}),
        batch({"t": "gone", "p": "x" * 200}),
        batch({"t": "hello"}, {"t": "join"}),  # one bad message spoils the batch
        batch({"t": "claim", "to": NODE, "r": "r", "p": "x", "h": b"short", "u": None}),
        batch({"t": "claim", "to": "nobody", "r": "r", "p": "x", "h": b"\x00" * 32, "u": None}),
        batch({"t": "refused", "to": NODE}),
        batch({"t": "moved", "p": "x", "o": "not-a-node"}),
        batch({**HANDOVER, "d": "doc"}),  # documents not a list
        batch({**HANDOVER, "s": [["doc", "s", -1, {}]]}),  # a negative count
        batch({k: v for k, v in HANDOVER.items() if k != "i"}),  # no identity key
    ],
)
def test_malformed_messages_are_protocol_errors(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_message(data)


def test_the_handover_the_malformed_ones_spoil_is_well_formed() -> None:
    node, (message,) = decode_message(batch(HANDOVER))
    assert node == NODE
    assert type(message).__name__ == "Handover"


def test_a_batch_carries_several_messages_in_order() -> None:
    bodies = [
        encode_body(Joined("p1")),
        encode_body(Relayed("p1", 2, "s", b"\x01")),
        encode_body(Left("p1")),
    ]
    assert decode_message(encode_batch(NODE, bodies)) == (
        NODE,
        [Joined("p1"), Relayed("p1", 2, "s", b"\x01"), Left("p1")],
    )
    many = [encode_body(Joined(f"p{i}")) for i in range(300)]  # a two-byte array head
    assert len(decode_message(encode_batch(NODE, many))[1]) == 300


def test_a_leave_says_gone_only_with_g_true() -> None:
    # A relay of a version before document scope sends no "g"; anything but
    # true is not a closed connection.
    for extra, gone in (({}, False), ({"g": True}, True), ({"g": 1}, False)):
        assert decode_message(batch({"t": "leave", "p": "peer-1", **extra})) == (
            NODE,
            [Left("peer-1", gone)],
        )
    # The two optional fields of the two branches of #19 travel side by side.
    both = [PeerUp("peer-1", UserInfo("alice", "Alice", False), "user:alice"), Left("p", True)]
    assert decode_message(encode_batch(NODE, [encode_body(m) for m in both])) == (NODE, both)


def test_a_peer_announced_without_an_identity_still_decodes() -> None:
    # What a relay of a version before identities sends and stores.
    old = {"t": "peer", "p": "peer-1", "u": "bob", "n": "Bob", "a": False}
    user = UserInfo("bob", "Bob", False)
    assert decode_message(batch(old)) == (NODE, [PeerUp("peer-1", user)])
    assert decode_peer(cbor2.dumps({"u": "bob", "n": "Bob", "a": False})) == (user, None)


def test_hash_values_round_trip_and_refuse_garbage() -> None:
    user = UserInfo("bob", "Bob", False)
    assert decode_user(encode_user(user)) == user
    assert decode_peer(encode_user(user, "user:bob")) == (user, "user:bob")
    assert decode_user(encode_user(user, "user:bob")) == user
    assert decode_members(encode_members(("p1", "p2"))) == ("p1", "p2")
    for bad in (b"\xff", cbor2.dumps([1, 2]), cbor2.dumps(["ok", ""]), cbor2.dumps("p1")):
        with pytest.raises(ProtocolError):
            decode_members(bad)
    with pytest.raises(ProtocolError):
        decode_user(cbor2.dumps(["not", "a", "map"]))


def test_names_are_per_database_and_documents_come_back_from_channels() -> None:
    assert database_of("redis://h:6379") == 0
    assert database_of("redis://h:6379/3") == 3
    assert database_of("redis://h/0?db=5") == 5
    assert database_of("unix:///tmp/redis.sock?db=2") == 2
    names = Names.for_url("redis://h:6379/3")
    assert names.cluster_channel == "ratatoskr:3:cluster"
    assert names.nodes_key == "ratatoskr:3:nodes"
    assert names.peers_key(NODE) == f"ratatoskr:3:node:{NODE}:peers"
    assert names.docs_key(NODE) == f"ratatoskr:3:node:{NODE}:docs"
    channel = names.doc_channel("eph:chat-doc:1")
    assert names.document_of(channel) == "eph:chat-doc:1"
    assert names.document_of(channel.encode()) == "eph:chat-doc:1"
    assert names.document_of(names.cluster_channel) is None
    assert names.document_of("ratatoskr:4:doc:x") is None  # another cluster's


def test_node_ids() -> None:
    ids = {new_node_id() for _ in range(50)}
    assert len(ids) == 50 and all(is_node_id(i) for i in ids)
    assert not is_node_id("0123456789AB") and not is_node_id("abc") and not is_node_id(12)


# --------------------------------------------------------------------------- liveness


def test_timing_follows_the_node_ttl() -> None:
    t = Timing(10.0)
    assert t.beat == 2.0
    assert t.window_ms == 6000
    assert t.window_ms + t.beat * 1000 <= 10_000  # a dead node is noticed within the TTL
    assert t.key_ttl_ms == 20_000
    assert t.command_timeout == 5.0
    assert t.max_backoff == 2.0
    assert Timing(1.0).max_backoff == 0.2


def test_a_node_is_dead_once_its_deadline_passes_not_when_it_is_missing() -> None:
    reg = NodeRegistry("me", window_ms=600)
    reg.introduce("b")  # heard of before the first read of the table: a full window
    assert reg.sweep(1000, {"me": 1600, "b": 1500}) == []
    assert "b" in reg
    assert reg.sweep(1100, {"b": 1700}) == []  # its own, later deadline
    # Missing from the table (a Redis restart emptied it): alive until 1700.
    assert reg.sweep(1700, {}) == []
    assert reg.sweep(1701, {}) == ["b"]
    assert "b" not in reg and reg.sweep(3000, {}) == []  # reported once
    # Nodes the view never heard of are not tracked.
    assert reg.sweep(3000, {"stranger": 1}) == []
    # A fresh introduction gets a full window from the last server time.
    reg.introduce("c")
    assert reg.sweep(3500, {}) == []
    assert reg.sweep(3601, {}) == ["c"]
    reg.introduce("d")
    reg.forget("d")
    assert len(reg) == 0


def test_after_an_outage_every_known_node_gets_a_full_window() -> None:
    reg = NodeRegistry("me", window_ms=600)
    reg.introduce("b")
    assert reg.sweep(1000, {"b": 1100}) == []
    # Redis was down from 1000 to 5000: b's deadline passed meanwhile, but b
    # could not write itself either. It gets until 5600 to do so.
    reg.extend(5000)
    assert reg.sweep(5500, {}) == []
    assert reg.sweep(5601, {}) == ["b"]


def test_the_link_watch_fires_once_after_the_grace() -> None:
    watch = LinkWatch(2.0)
    assert not watch.due(100.0) and watch.remaining(100.0) is None
    watch.down(10.0)
    watch.down(11.0)  # still down since 10
    assert watch.is_down and watch.remaining(11.0) == 1.0
    assert not watch.due(11.9)
    assert watch.due(12.0)
    assert not watch.due(20.0) and watch.remaining(20.0) is None
    watch.up()
    assert not watch.is_down
    watch.down(30.0)
    assert watch.due(32.5)


def test_the_subscription_connection_stalls_after_two_unanswered_beats() -> None:
    pings = PingWatch(Timing(10.0).beat)  # a beat every 2 s: 4 s of patience
    pings.sent("1", 100.0)
    assert not pings.stalled(104.0)
    pings.sent("2", 102.0)
    pings.answered("1")
    assert not pings.stalled(105.0)
    assert pings.stalled(106.1)  # "2" unanswered for more than two beats
    pings.clear()  # a new connection
    assert not pings.stalled(1000.0)


def test_a_node_whose_own_deadline_passed_announces_itself_again() -> None:
    assert not own_deadline_passed(previous_ms=5600, now_ms=5000)
    assert not own_deadline_passed(previous_ms=5000, now_ms=5000)
    assert own_deadline_passed(previous_ms=4999, now_ms=5000)
    assert own_deadline_passed(previous_ms=-1, now_ms=5000)  # no entry in the table


@pytest.mark.parametrize(
    ("message", "on_document"),
    [
        (Joined("p"), True),
        (Left("p", gone=True), True),
        (Relayed("p", 1, "s", b"\x01"), True),
        (Hello(), False),
        (Bye(), False),
        (PeerUp("p", UserInfo(None, "N", True)), False),
        (PeerGone("p"), False),
        (Claim(NODE, "r", "p", b"\x00" * 32, None), False),
        (Refusal(NODE, "r"), False),
        (Moved("p", NODE), False),
    ],
)
def test_each_kind_of_message_belongs_on_one_kind_of_channel(
    message: Any, on_document: bool
) -> None:
    assert belongs_on(message, "doc" if on_document else None)
    assert not belongs_on(message, None if on_document else "doc")


def test_round_trips_histogram() -> None:
    trips = RoundTrips()
    for seconds in (0.0004, 0.0004, 0.003, 2.0):
        trips.observe(seconds)
    cumulative = dict(trips.cumulative())
    assert cumulative["0.0005"] == 2
    assert cumulative["0.005"] == 3
    assert cumulative["+Inf"] == 4 == trips.total
    assert len(cumulative) == len(ROUND_TRIP_BUCKETS) + 1
    assert trips.sum == pytest.approx(2.0038)


# --------------------------------------------------------------------------- wiring


def test_without_the_redis_package_the_cluster_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ratatoskr_client.server.cluster import Cluster

    monkeypatch.setitem(__import__("sys").modules, "redis.asyncio", None)
    config = RelayConfig(open=True, redis_url="redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[cluster\]"'):
        Cluster(RelayCore(config), config)


def test_config_validates_cluster_settings() -> None:
    with pytest.raises(ConfigError, match="node_ttl must be at least 1"):
        RelayConfig(node_ttl=0.5)
    with pytest.raises(ConfigError, match="redis_url must start with"):
        RelayConfig(redis_url="http://x")
    with pytest.raises(ConfigError, match="names no host"):
        RelayConfig(redis_url="redis://:6379/0")
    with pytest.raises(ConfigError) as info:
        RelayConfig(redis_url="redis://user:hunter2@h:notaport/0")
    assert "hunter2" not in str(info.value)  # a password never reaches a message
    assert RelayConfig(redis_url="unix:///run/redis.sock").redis_url
