"""PeerStates and Coalescer: automerge-repo Presence semantics, without I/O."""

import contextlib
import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ratatoskr_client.core.peer_state import (
    Coalescer,
    PeerStates,
    StateMessage,
    goodbye_payload,
    heartbeat_payload,
    parse_state_payload,
    snapshot_payload,
    update_payload,
)
from ratatoskr_client.errors import ProtocolError


def msg(payload):
    parsed = parse_state_payload(payload)
    assert parsed is not None
    return parsed


# --------------------------------------------------------------------------- parsing


def test_payload_builders_have_automerge_repo_shapes():
    assert snapshot_payload({"name": "py"}) == {
        "__presence": {"type": "snapshot", "state": {"name": "py"}}
    }
    assert update_payload("cursor", [1, 2]) == {
        "__presence": {"type": "update", "channel": "cursor", "value": [1, 2]}
    }
    assert heartbeat_payload() == {"__presence": {"type": "heartbeat"}}
    assert goodbye_payload() == {"__presence": {"type": "goodbye"}}


@pytest.mark.parametrize(
    "payload",
    [
        snapshot_payload({"a": 1}),
        update_payload("cursor", None),
        heartbeat_payload(),
        goodbye_payload(),
    ],
)
def test_round_trip(payload):
    parsed = msg(payload)
    assert parsed.type == payload["__presence"]["type"]


@pytest.mark.parametrize("payload", [{"cursor": [1]}, "text", 3, None, [1], {"type": "presence"}])
def test_non_presence_payloads_are_not_state(payload):
    assert parse_state_payload(payload) is None


@pytest.mark.parametrize(
    "payload",
    [
        {"__presence": "snapshot"},
        {"__presence": {"type": "dance"}},
        {"__presence": {"type": "snapshot"}},
        {"__presence": {"type": "snapshot", "state": [1]}},
        {"__presence": {"type": "snapshot", "state": {1: "x"}}},
        {"__presence": {"type": "update", "value": 1}},
        {"__presence": {"type": "update", "channel": 3, "value": 1}},
    ],
)
def test_malformed_presence_payloads_raise_protocol_error(payload):
    with pytest.raises(ProtocolError):
        parse_state_payload(payload)


@given(
    st.recursive(
        st.none() | st.integers() | st.text(), lambda c: st.lists(c) | st.dictionaries(st.text(), c)
    )
)
def test_parse_never_raises_anything_but_protocol_error(value):
    with contextlib.suppress(ProtocolError):
        parse_state_payload({"__presence": value})


# --------------------------------------------------------------------------- PeerStates


def test_snapshot_makes_a_peer_appear_and_asks_for_reannounce():
    states = PeerStates(ttl=45)
    out = states.receive("d", "p1", msg(snapshot_payload({"name": "js", "cursor": [0, 0]})), 1.0)
    assert out.appeared and out.changed and out.unknown_sender
    assert dict(states.state("d")["p1"]) == {"name": "js", "cursor": [0, 0]}


def test_update_sets_one_channel_and_snapshot_merges_like_automerge_repo():
    states = PeerStates()
    states.receive("d", "p1", msg(snapshot_payload({"name": "js", "cursor": [0, 0]})), 1.0)
    out = states.receive("d", "p1", msg(update_payload("cursor", [7, 8])), 2.0)
    assert out.changed and not out.appeared and not out.unknown_sender
    # a snapshot without "cursor" keeps it: automerge-repo merges snapshots
    states.receive("d", "p1", msg(snapshot_payload({"name": "renamed"})), 3.0)
    assert dict(states.state("d")["p1"]) == {"name": "renamed", "cursor": [7, 8]}


def test_repeating_the_same_value_is_not_a_change():
    states = PeerStates()
    states.receive("d", "p1", msg(update_payload("c", 1)), 1.0)
    assert not states.receive("d", "p1", msg(update_payload("c", 1)), 2.0).changed


def test_update_from_unknown_peer_creates_state():
    states = PeerStates()
    out = states.receive("d", "p9", msg(update_payload("cursor", [1, 1])), 1.0)
    assert out.appeared and out.unknown_sender
    assert dict(states.state("d")["p9"]) == {"cursor": [1, 1]}


def test_heartbeat_from_unknown_peer_is_ignored_but_triggers_reannounce():
    states = PeerStates()
    out = states.receive("d", "p1", msg(heartbeat_payload()), 1.0)
    assert out.unknown_sender and not out.appeared and not out.changed
    assert dict(states.state("d")) == {}


def test_goodbye_forgets_and_ttl_prunes_silent_peers():
    states = PeerStates(ttl=10)
    states.receive("d", "p1", msg(snapshot_payload({})), 0.0)
    states.receive("d", "p2", msg(snapshot_payload({})), 0.0)
    states.receive("d", "p2", msg(heartbeat_payload()), 8.0)  # p2 stays alive
    assert states.prune(10.5) == [("d", "p1")]
    assert states.peers("d") == ("p2",)
    out = states.receive("d", "p2", msg(goodbye_payload()), 11.0)
    assert out.removed and out.changed
    assert states.peers("d") == ()


def test_local_state_merge_and_defaults():
    states = PeerStates()
    states.init_local("d", {"name": "bot"})
    assert states.set_local("d", "cursor", [1, 2])
    assert not states.set_local("d", "cursor", [1, 2])
    states.init_local("d", {"name": "other", "status": "idle"})  # never overrides
    assert dict(states.local("d")) == {"name": "bot", "cursor": [1, 2], "status": "idle"}
    states.forget("d")
    assert dict(states.local("d")) == {}


def test_forget_peer_and_clear_peers_keep_local_state():
    states = PeerStates()
    states.set_local("d", "c", 1)
    states.receive("d", "p1", msg(snapshot_payload({})), 0.0)
    assert states.forget_peer("d", "p1")
    assert not states.forget_peer("d", "p1")
    states.receive("d", "p2", msg(snapshot_payload({})), 0.0)
    states.clear_peers()
    assert states.peers("d") == ()
    assert dict(states.local("d")) == {"c": 1}


def test_state_views_are_read_only():
    states = PeerStates()
    states.receive("d", "p1", msg(snapshot_payload({"a": 1})), 0.0)
    with pytest.raises(TypeError):
        states.state("d")["p1"]["a"] = 2  # type: ignore[index]


def test_state_message_defaults():
    assert StateMessage("heartbeat").state is None


# --------------------------------------------------------------------------- Coalescer


def take(c: Coalescer, document_id: str, now: float) -> list[tuple[str, Any]]:
    """Every pending (channel, value) pair, taken one message at a time as the
    send queue does (``take_one`` until it says the flush is done)."""
    out = []
    while (item := c.take_one(document_id, now)) is not None:
        out.append(item)
    return out


def test_first_offer_flushes_now_then_at_most_once_per_interval():
    c = Coalescer(interval=0.05)
    assert c.offer("d", "cursor", 1, now=0.0) == 0.0
    assert take(c, "d", now=0.0) == [("cursor", 1)]
    assert c.offer("d", "cursor", 2, now=0.01) == pytest.approx(0.04)
    assert c.offer("d", "cursor", 3, now=0.02) is None  # already scheduled
    assert take(c, "d", now=0.05) == [("cursor", 3)]  # only the latest value


def test_two_hundred_offers_a_second_send_at_most_one_per_interval_and_the_last_value():
    c = Coalescer(interval=0.05)
    sent = []
    due: float | None = None
    for i in range(200):
        now = i / 200
        delay = c.offer("d", "cursor", i, now)
        if delay is not None:
            due = now + delay
        if due is not None and now >= due:
            sent.extend((now, v) for _, v in take(c, "d", now))
            due = None
    if due is not None:
        sent.extend((due, v) for _, v in take(c, "d", due))
    assert sent[-1][1] == 199
    assert len(sent) <= 1 / 0.05 + 1
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(sent)]
    assert min(gaps) >= 0.05 - 1e-9


def test_channels_are_coalesced_independently_within_a_document():
    c = Coalescer(interval=0.1)
    c.offer("d", "cursor", 1, 0.0)
    take(c, "d", 0.0)
    c.offer("d", "cursor", 2, 0.01)
    c.offer("d", "status", "typing", 0.02)
    assert sorted(take(c, "d", 0.1)) == [("cursor", 2), ("status", "typing")]


def test_forget_drops_pending_values():
    c = Coalescer(interval=0.1)
    c.offer("d", "cursor", 1, 0.0)
    c.forget("d")
    assert take(c, "d", 1.0) == []
    assert c.offer("d", "cursor", 2, 1.0) == 0.0


def test_a_snapshot_received_by_two_clients_is_one_dict_until_one_of_them_changes():
    """The clients of a process decode a peer's snapshot once and keep that
    dict (copy on write): an update copies it for the client it reaches only."""
    snapshot = msg(snapshot_payload({"name": "Ada", "cursor": [1, 2]}))
    mine, theirs = PeerStates(), PeerStates()
    for states in (mine, theirs):
        assert states.receive("doc", "ada", snapshot, now=0.0).changed
    assert snapshot.state is not None
    assert mine._peers["doc"]["ada"].state is theirs._peers["doc"]["ada"].state
    assert not mine.receive("doc", "ada", snapshot, now=1.0).changed  # same again: kept
    assert mine._peers["doc"]["ada"].state is snapshot.state
    assert mine.receive("doc", "ada", msg(update_payload("cursor", [5, 6])), now=2.0).changed
    assert mine.peer_state("doc", "ada") == {"name": "Ada", "cursor": [5, 6]}
    assert theirs.peer_state("doc", "ada") == {"name": "Ada", "cursor": [1, 2]}
    assert snapshot.state == {"name": "Ada", "cursor": [1, 2]}  # never written
    # A snapshot merges into the copy (keys it lacks are kept), the shared dict untouched.
    assert mine.receive("doc", "ada", msg(snapshot_payload({"status": "away"})), now=3.0).changed
    assert mine.peer_state("doc", "ada") == {"name": "Ada", "cursor": [5, 6], "status": "away"}
    assert snapshot.state == {"name": "Ada", "cursor": [1, 2]}
