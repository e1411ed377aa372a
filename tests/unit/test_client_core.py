"""ClientCore without sockets: reconnects, TTLs, heartbeats, coalescing, pacing,
the late-join rule and the one teardown, in simulated time (see coreharness.py).
"""

from __future__ import annotations

import itertools
from typing import Any

import cbor2
import pytest

from ratatoskr_client import (
    AuthError,
    ConnectionClosed,
    PermissionDenied,
    ProtocolError,
    RateLimited,
)
from ratatoskr_client.core.membership import SHARE_AFTER
from ratatoskr_client.core.outbox import Ping
from ratatoskr_client.core.pacing import TokenBucket
from ratatoskr_client.core.peer_to_peer import TRUST_AFTER
from ratatoskr_client.errors import OperationTimeout
from ratatoskr_client.status import ConnectionState

from .coreharness import Backoff, Harness, unshared


def presence_payloads(frames: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [
        (f["payload"]["status"], f["documentId"])
        for f in frames
        if f["type"] == "ephemeral"
        and isinstance(f["payload"], dict)
        and f["payload"].get("type") == "presence"
    ]


def state_payloads(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        f["payload"]["__presence"]
        for f in frames
        if f["type"] == "ephemeral"
        and isinstance(f["payload"], dict)
        and "__presence" in f["payload"]
    ]


# --------------------------------------------------------------------------- connecting


def test_handshake_then_joins_for_every_entered_document():
    h = Harness()
    h.core.connect_started()
    waiter = h.core.enter("doc", h.now)  # entered while connecting: joined once connected
    assert h.sent(h.take()) == []
    effects = h.connect()
    assert h.events(effects, "connected") == [("connected", h.core.me)]
    assert presence_payloads(h.sent(effects)) == [("join", "doc")]
    done = h.finished(
        h.server({"type": "doc_presence_state", "documentId": "doc", "peers": ["me-1"]})
    )
    assert done == {waiter: (h.core.me,)}
    assert h.core.docs.by_state()["present"] == ("doc",)


def test_auth_errors_map_to_exceptions():
    h = Harness()
    h.core.connect_started()
    h.core.auth_frame(h.now)
    with pytest.raises(AuthError) as info:
        h.core.handshake(cbor2.dumps({"type": "auth_error", "error": "invalid_token"}), h.now)
    assert info.value.code == "invalid_token"
    with pytest.raises(RateLimited) as limited:
        h.core.handshake(
            cbor2.dumps({"type": "error", "error": "rate_limited", "retryAfter": 1e9}), h.now
        )
    assert limited.value.retry_after == 60  # capped


def test_reconnect_in_simulated_time():
    h = Harness(backoff=Backoff(base_delay=1.0, multiplier=2.0, max_delay=4.0, max_attempts=4))
    h.connect()
    h.enter("doc")
    h.core.connection_lost(ConnectionClosed("gone"), h.now)
    effects = h.take()
    assert h.core.state is ConnectionState.RECONNECTING
    assert ("presence-changed", "doc") in h.events(effects)
    assert h.events(effects, "disconnected")[0][1].args == ("gone",)
    assert h.core.docs.by_state()["entering"] == ("doc",)  # to be entered again
    # rand() is 0.5: each delay is half its window; a retryAfter is a floor.
    assert h.core.next_attempt(h.now) == 0.5
    h.core.attempt_failed(RateLimited(retry_after=3.0), h.now)
    assert h.core.next_attempt(h.now) == 3.0
    h.core.attempt_failed(OperationTimeout("no answer"), h.now)
    assert h.core.next_attempt(h.now) == 2.0
    assert [e[1:] for e in h.events(h.take(), "reconnecting")] == [(1, 0.5), (2, 3.0), (3, 2.0)]
    effects = h.connect()  # attempt 3 worked: the document is joined again
    assert presence_payloads(h.sent(effects)) == [("join", "doc")]
    assert h.core.connection.attempt == 0


def test_reconnect_gives_up_and_tears_down_once():
    h = Harness(backoff=Backoff(base_delay=0.1, max_attempts=2))
    h.connect()
    h.enter("doc")
    waiter = h.core.wait_presence("doc")
    h.core.connection_lost(ConnectionClosed("gone"), h.now)
    assert h.core.next_attempt(h.now) is not None
    assert h.core.next_attempt(h.now) is not None
    assert h.core.next_attempt(h.now) is None  # gave up
    effects = h.take()
    assert h.core.state is ConnectionState.CLOSED
    errors = [e[1] for e in h.events(effects, "error")]
    assert len(errors) == 1 and "gave up" in str(errors[0])
    assert isinstance(h.finished(effects)[waiter][-1], ConnectionClosed)  # the wait ends
    assert h.core.docs.entered() == ()


def test_without_reconnect_a_lost_connection_is_announced_once_with_its_cause():
    h = Harness(reconnect=False)
    h.connect()
    h.enter("doc")
    waiter = h.core.wait_presence("doc")
    h.core.connection_lost(ConnectionClosed("gone"), h.now)
    effects = h.take()
    assert [str(e[1]) for e in h.events(effects, "disconnected")] == ["gone"]
    assert h.core.state is ConnectionState.CLOSED
    assert isinstance(h.finished(effects)[waiter][-1], ConnectionClosed)  # the wait ends


def test_auth_refused_on_reconnect_is_fatal():
    h = Harness()
    h.connect()
    h.core.connection_lost(ConnectionClosed("gone"), h.now)
    connect_waiter = h.core.wait_connected(socket_closed=True)
    h.core.next_attempt(h.now)
    h.core.attempt_failed(AuthError("invalid_token"), h.now)
    effects = h.take()
    assert h.core.state is ConnectionState.CLOSED
    assert isinstance(h.events(effects, "error")[0][1], AuthError)
    assert isinstance(h.finished(effects)[connect_waiter], ConnectionClosed)
    assert h.core.next_attempt(h.now) is None


def test_auth_timeout_on_reconnect_is_retried():
    # The client sent auth at once: a server that did not read it within its
    # timeout was overloaded (a reconnect storm), the credentials are fine.
    h = Harness(backoff=Backoff(base_delay=1.0, multiplier=2.0, max_delay=4.0))
    h.connect()
    h.enter("doc")
    h.core.connection_lost(ConnectionClosed("gone"), h.now)
    assert h.core.next_attempt(h.now) == 0.5
    h.core.attempt_failed(AuthError("auth_timeout", "no auth within 10 s"), h.now)
    effects = h.take()
    assert h.core.state is ConnectionState.RECONNECTING
    assert h.events(effects, "error") == []
    assert h.core.next_attempt(h.now) == 1.0  # the next window, as after any failure
    effects = h.connect()
    assert presence_payloads(h.sent(effects)) == [("join", "doc")]


# --------------------------------------------------------------------------- timers


def test_presence_heartbeats_every_interval_for_every_entered_document():
    h = Harness(heartbeat_interval=30)
    h.connect()
    h.enter("a")
    h.enter("b")
    frames = h.sent(h.advance(95))
    assert presence_payloads(frames) == [("heartbeat", "a"), ("heartbeat", "b")] * 3
    h.core.leave("b", h.now)
    frames = h.sent(h.advance(30))
    assert presence_payloads(frames) == [("leave", "b"), ("heartbeat", "a")]


def test_an_idle_client_has_only_its_heartbeat_timer():
    h = Harness(heartbeat_interval=30, ping_interval=None)
    h.connect()
    h.take()
    assert h.wake == h.now + 30  # one timer, nothing else
    p2p = Harness(ping_interval=None)
    p2p.connect(features=None)  # without server-side presence: nothing to wake for
    p2p.advance(100)
    assert p2p.wake == float("inf")
    # With pings (the default), the same one timer serves the ping rule too.
    pinging = Harness(heartbeat_interval=30, ping_interval=20)
    pinging.connect()
    pinging.take()
    assert pinging.wake == pinging.now + 20


def test_state_ttl_expiry_in_peer_to_peer_mode():
    h = Harness(state_ttl=45, state_heartbeat=15)
    h.connect(features=None)
    h.enter("doc")
    h.server(
        {
            "type": "sync",
            "senderId": "server",
            "targetId": "me-1",
            "documentId": "doc",
            "data": b"x",
        }
    )
    h.advance(TRUST_AFTER)  # (before it, a sender is not trusted: see the tests below)
    h.ephemeral(
        "js-a", "sa", 1, "doc", {"__presence": {"type": "snapshot", "state": {"name": "A"}}}
    )
    assert h.presence_ids("doc") == ["me-1", "js-a"]
    h.advance(10)
    h.ephemeral("js-a", "sa", 2, "doc", {"__presence": {"type": "heartbeat"}})
    effects = h.advance(44)  # 44 s after its heartbeat: still there
    assert h.presence_ids("doc") == ["me-1", "js-a"]
    effects = h.advance(2)
    assert h.presence_ids("doc") == ["me-1"]
    left = h.events(effects, "peer-left")
    assert [(e[1], e[2].peer_id) for e in left] == [("doc", "js-a")]
    assert ("state-changed", "doc", left[0][2], {}) in [
        (e[0], e[1], e[2], dict(e[3])) for e in h.events(effects, "state-changed")
    ]


def test_state_heartbeats_and_coalescing_in_simulated_time():
    h = Harness(state_interval=0.05, state_heartbeat=15)
    h.connect()
    h.enter("doc")
    h.core.set_state("doc", "cursor", -1, h.now)
    first = state_payloads(h.sent(h.take()))
    assert first == [{"type": "snapshot", "state": {"name": "me-1", "cursor": -1}}]
    sent: list[tuple[float, Any]] = []
    for i in range(200):  # a cursor at 200 Hz for one second
        h.core.set_state("doc", "cursor", i, h.now)
        for _ in range(5):  # the clock in 1 ms steps, to time each message
            for msg in state_payloads(h.sent(h.advance(0.001))):
                sent.append((h.now, msg["value"]))
    for msg in state_payloads(h.sent(h.advance(0.1))):
        sent.append((h.now, msg["value"]))
    values = [v for _, v in sent]
    assert values[-1] == 199  # the last value always goes out
    assert values == sorted(values)
    assert 15 <= len(values) <= 22  # at most one per 50 ms, and it streams
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(sent)]
    assert min(gaps) >= 0.05 - 0.001 - 1e-9  # the clock's step
    # Quiet for 15 s: one state heartbeat.
    frames = state_payloads(h.sent(h.advance(15.1)))
    assert frames == [{"type": "heartbeat"}]


def test_reannounce_once_per_delay_when_strangers_arrive():
    h = Harness()
    h.connect()
    h.enter("doc")
    h.core.set_state("doc", "name", "bot", h.now)
    h.take()
    for n, peer in enumerate(("p1", "p2", "p3"), start=1):
        h.ephemeral(peer, f"s{n}", 1, "doc", {"__presence": {"type": "heartbeat"}})
    frames = state_payloads(h.sent(h.advance(0.49)))
    assert frames == []
    frames = state_payloads(h.sent(h.advance(0.02)))
    assert frames == [{"type": "snapshot", "state": {"name": "bot"}}]


# --------------------------------------------------------------------------- pacing


def test_sends_beyond_the_burst_wait_for_tokens_in_call_order():
    h = Harness(rate_limit=60, rate_burst=5)  # one per second after a burst of 5
    h.connect()
    waiters = [h.core.send_ephemeral("doc", n, h.now) for n in range(8)]
    assert waiters[:5] == [None] * 5
    assert all(isinstance(w, int) for w in waiters[5:])
    assert [f["payload"] for f in h.sent(h.take())] == [0, 1, 2, 3, 4]
    effects = h.advance(1.0)
    assert [f["payload"] for f in h.sent(effects)] == [5]
    assert list(h.finished(effects)) == [waiters[5]]
    effects = h.advance(2.0)
    assert [f["payload"] for f in h.sent(effects)] == [6, 7]
    counts = [f["count"] for f in h.sent(h.log)]
    assert counts == sorted(counts)  # counts follow the order frames leave in


def test_retry_after_pauses_every_send():
    h = Harness(rate_limit=600, rate_burst=100)
    h.connect()
    h.server({"type": "error", "error": "rate_limited", "message": "m", "retryAfter": 2.0})
    waiter = h.core.send_ephemeral("doc", "late", h.now)
    assert isinstance(waiter, int)
    assert h.sent(h.advance(1.9)) == []
    effects = h.advance(0.2)
    assert [f["payload"] for f in h.sent(effects)] == ["late"]
    assert waiter in h.finished(effects)


def _upstream_run(pacer_factory: Any = None) -> tuple[int, float, list[float]]:
    """Send 300 messages as fast as the client allows on a server without
    features, as an anonymous client, and count them the way upstream does
    (100 frames per fixed 60 s window from the first frame, the auth frame
    included; frames arrive 20 ms after they are sent). Returns (refused,
    when the last one arrived, arrival times)."""
    h = Harness()
    h.connect(features=None)
    if pacer_factory is not None:
        h.core.out.pacer = pacer_factory(h.now)
    arrivals = [h.now + 0.02]  # the auth frame
    waiting = [h.core.send_ephemeral("doc", n, h.now) for n in range(300)]
    assert waiting.count(None) < 300
    sent = 0
    while sent < 300:
        effects = h.advance(0.5)
        for _ in h.sent(effects):
            arrivals.append(h.now + 0.02)
        sent = len(h.sent(h.log))
        assert h.now < 1000 + 600, "stuck"
    refused = 0
    window_end, used = float("-inf"), 0
    for at in arrivals:
        if at >= window_end:
            window_end, used = at + 60, 0
        used += 1
        refused += used > 100
    return refused, arrivals[-1], arrivals


def test_an_anonymous_client_on_upstream_is_never_refused_and_as_fast_as_the_window():
    refused, last, arrivals = _upstream_run()
    assert refused == 0
    # 301 frames in windows of 100: the fourth window starts after three of 60 s
    # (plus our guard of 1 s each), and no earlier.
    assert 3 * 60 < last - arrivals[0] < 3 * 61 + 1
    first_window = [a for a in arrivals if a < arrivals[0] + 60]
    assert len(first_window) == 100


def test_the_old_token_bucket_pacing_would_be_refused_by_upstream():
    # The control for the test above: 90/min with a burst of 15 lets 105 through
    # in the first minute (what the client did before), so upstream refuses some.
    from ratatoskr_client.core.pacing import Pacer

    refused, _, _ = _upstream_run(lambda now: Pacer(TokenBucket.per_minute(90, now, burst=15)))
    assert refused > 0


# --------------------------------------------------------------------------- late join


def snapshot(state: dict[str, Any]) -> dict[str, Any]:
    return {"__presence": {"type": "snapshot", "state": state}}


def update(channel: str, value: Any) -> dict[str, Any]:
    return {"__presence": {"type": "update", "channel": channel, "value": value}}


def joined_late() -> Harness:
    """A client on upstream that entered 'doc' after A's message 7 and before
    B's relabelled copy of it arrived: it sees the copy first."""
    h = Harness()
    h.connect(features=None)
    h.enter("doc")
    h.server(
        {
            "type": "sync",
            "senderId": "server",
            "targetId": "me-1",
            "documentId": "doc",
            "data": b"x",
        }
    )
    # B forwards A's update 7 (A's session "sa"), relabelled by upstream as B's.
    h.ephemeral("js-b", "sa", 7, "doc", update("cursor", [7, 7]))
    return h


def test_a_relabelled_copy_seen_first_is_never_shown():
    # (#22: it used to be shown as B's until A's next message corrected it.)
    h = joined_late()
    effects = h.take()
    assert h.presence_ids("doc") == ["me-1"]  # kept, not shown: the sender is not certain
    assert h.states("doc") == {}
    assert h.events(effects, "state-changed") == []
    h.advance(TRUST_AFTER)
    assert h.states("doc") == {}  # time alone shows nothing
    # A's next message (an update here; a heartbeat works too): A is the sender.
    effects = h.ephemeral("js-a", "sa", 8, "doc", update("cursor", [8, 8]))
    h.ephemeral("js-b", "sa", 8, "doc", update("cursor", [8, 8]))  # B's copy of it
    assert h.presence_ids("doc") == ["me-1", "js-a"]
    assert h.states("doc")["js-a"] == {"cursor": [8, 8]}
    assert "js-b" not in h.states("doc")
    assert [(e[2].peer_id, dict(e[3])) for e in h.events(effects, "state-changed")] == [
        ("js-a", {"cursor": [8, 8]})
    ]
    assert h.events(effects, "peer-left") == []
    # From then on B's copies change nothing, and B shows only what B says.
    h.ephemeral("js-b", "sa", 9, "doc", update("cursor", [9, 9]))  # a copy ahead of A?
    h.ephemeral("js-a", "sa", 10, "doc", update("cursor", [10, 10]))
    h.ephemeral("js-b", "sb", 1, "doc", snapshot({"name": "js-bob"}))
    assert h.states("doc") == {"js-a": {"cursor": [10, 10]}, "js-b": {"name": "js-bob"}}
    assert h.presence_ids("doc") == ["me-1", "js-a", "js-b"]


def test_a_heartbeat_is_enough_to_show_the_sender():
    h = joined_late()
    h.advance(TRUST_AFTER)
    h.ephemeral("js-a", "sa", 8, "doc", {"__presence": {"type": "heartbeat"}})
    assert h.presence_ids("doc") == ["me-1", "js-a"]
    assert h.states("doc") == {"js-a": {"cursor": [7, 7]}}


def test_gossip_copies_and_replays_are_dropped_without_a_trace():
    h = Harness()
    h.connect(features=None)
    h.enter("doc")
    h.server(
        {
            "type": "sync",
            "senderId": "server",
            "targetId": "me-1",
            "documentId": "doc",
            "data": b"x",
        }
    )
    got = h.ephemeral("js-a", "sa", 1, "doc", {"text": "hi"})
    assert h.events(got, "ephemeral-message")[0][3] == {"text": "hi"}
    assert h.ephemeral("js-b", "sa", 1, "doc", {"text": "hi"}) == []  # a relabelled copy
    assert h.ephemeral("js-a", "sa", 1, "doc", {"text": "hi"}) == []  # a replay
    assert h.ephemeral("js-c", "session-1", 5, "doc", {"text": "mine"}) == []  # our own
    assert len(h.core.p2p or ()) == 1


# --------------------------------------------------------------------------- control messages


def test_presence_messages_never_reach_ephemeral_message():
    h = Harness()
    h.connect()
    h.enter("doc", ["me-1", "p"])
    messages = [
        snapshot({"name": "P"}),
        update("cursor", [1, 2]),
        {"__presence": {"type": "heartbeat"}},
        {"__presence": {"type": "goodbye"}},
    ]
    effects = []
    for n, payload in enumerate(messages, start=1):
        effects += h.ephemeral("p", "sp", n, "doc", payload)
    effects += h.ephemeral("p", "sp", 5, "doc", {"chat": "hello"})
    assert [e[3] for e in h.events(effects, "ephemeral-message")] == [{"chat": "hello"}]
    assert len(h.events(effects, "state-changed")) == 3  # snapshot, update, goodbye


# --------------------------------------------------------------------------- teardown


def test_one_teardown_releases_every_waiter():
    h = Harness(rate_limit=60, rate_burst=1)
    h.connect()
    enter = h.core.enter("slow", h.now)
    presence = h.core.wait_presence("slow")
    watcher = h.core.watch("slow")
    h.core.send_ephemeral("doc", 1, h.now)
    paced = h.core.send_ephemeral("doc", 2, h.now)
    h.take()
    h.core.shutdown(ConnectionClosed("client stopped reconnecting"), h.now)
    done = h.finished(h.take())
    for waiter in (enter, paced):
        assert isinstance(done[waiter], ConnectionClosed), waiter
    # The presence wait and the watch end (with the teardown's reason).
    assert [str(v) for v in done[presence]] == ["client stopped reconnecting"]
    assert [str(v) for v in done[watcher]] == ["client stopped reconnecting"]
    assert h.core.state is ConnectionState.CLOSED
    assert h.core.waiters.count() == 0
    assert not h.core.out.queue


def test_a_refused_membership_fails_the_enter_and_drops_the_record():
    h = Harness()
    h.connect()
    waiter = h.core.enter("secret", h.now)
    effects = h.server(
        {"type": "error", "error": "permission_denied", "documentId": "secret", "message": "no"}
    )
    assert isinstance(h.finished(effects)[waiter], PermissionDenied)
    assert h.events(effects, "error") == []  # answered the awaited call instead
    assert "secret" not in h.core.docs


def test_an_enter_given_up_is_left_even_when_its_confirmation_came_in_the_same_instant():
    h = Harness()
    h.connect()
    waiter = h.core.enter("doc", h.now)
    h.take()
    # The caller gives up (Ctrl-C, a timeout) before the server answered.
    h.core.enter_abandoned("doc", waiter, h.now)
    assert presence_payloads(h.sent(h.take())) == [("leave", "doc")]
    assert "doc" not in h.core.docs

    # The cancellation and the answer came in one turn of the event loop: the
    # confirmation resolved the call, but its caller never saw it.
    waiter = h.core.enter("doc", h.now)
    h.take()
    confirmation = {"type": "doc_presence_state", "documentId": "doc", "peers": ["me-1"]}
    assert waiter in h.finished(h.server(confirmation))
    h.core.enter_abandoned("doc", waiter, h.now)
    assert presence_payloads(h.sent(h.take())) == [("leave", "doc")]
    assert "doc" not in h.core.docs

    # Another call still waiting keeps the document, and gets the answer.
    first, second = h.core.enter("doc", h.now), h.core.enter("doc", h.now)
    h.core.enter_abandoned("doc", first, h.now)
    assert "doc" in h.core.docs
    assert second in h.finished(h.server(confirmation))
    assert h.core.docs.is_present("doc")


# --------------------------------------------------------------------------- names


def test_chosen_names_server_mode_and_peer_to_peer():
    h = Harness(name="alpha")
    h.connect(user={"id": None, "name": "Gentle Jackal", "isAnonymous": True})
    me = h.core.me
    assert me is not None and (me.name, me.chosen_name) == ("Gentle Jackal", "alpha")
    h.server(
        {
            "type": "peer_identity",
            "peerId": "p",
            "user": {"id": None, "name": "Neon Narwhal", "isAnonymous": True},
        }
    )
    h.enter("doc", ["me-1", "p"])
    effects = h.ephemeral("p", "sp", 1, "doc", snapshot({"name": "beta"}))
    peer = h.core.store.identities["p"]
    assert (peer.name, peer.chosen_name) == ("Neon Narwhal", "beta")
    assert h.events(effects, "presence-changed") == []  # not an identity change
    assert h.events(effects, "state-changed")[0][2].chosen_name == "beta"

    p2p = Harness(name="alpha")
    p2p.connect(features=None)
    assert (p2p.core.me.name, p2p.core.me.chosen_name) == ("alpha", "alpha")  # type: ignore[union-attr]


def test_tables_changed_by_a_chosen_name_are_shared_again_once_quiet():
    h = Harness()
    h.connect()
    h.server(
        {
            "type": "peer_identity",
            "peerId": "p",
            "user": {"id": None, "name": "Neon Narwhal", "isAnonymous": True},
        }
    )
    h.enter("doc", ["me-1", "p"])
    h.advance(SHARE_AFTER + 0.1)
    assert not unshared(h.core.store)
    h.ephemeral("p", "sp", 1, "doc", snapshot({"name": "beta"}))  # a copy of its own now
    assert unshared(h.core.store)
    h.advance(SHARE_AFTER + 0.1)
    assert not unshared(h.core.store)


def test_a_forwarder_credited_with_a_quiet_session_shows_its_own_state():
    h = joined_late()  # B was credited with A's session "sa" (not shown)
    h.advance(TRUST_AFTER)
    h.ephemeral("js-b", "sb", 1, "doc", snapshot({"name": "js-bob"}))  # B's own, newer
    assert h.states("doc") == {"js-b": {"name": "js-bob"}}
    # A has not spoken since: B shows its own state, A is not shown yet.
    h.ephemeral("js-a", "sa", 8, "doc", {"__presence": {"type": "heartbeat"}})
    assert h.states("doc") == {"js-b": {"name": "js-bob"}, "js-a": {"cursor": [7, 7]}}


def test_a_closed_client_that_connects_again_arms_its_timer_again():
    h = Harness(heartbeat_interval=30)
    h.connect()
    h.enter("doc")
    h.core.close(h.now)
    h.take()
    h.wake = float("inf")  # the driver cancels its timer with the teardown
    h.connect()
    h.enter("doc")
    frames = h.sent(h.advance(31))
    assert presence_payloads(frames) == [("heartbeat", "doc")]


def test_leaving_forgets_the_peers_known_only_from_that_document():
    h = Harness()
    h.connect(features=None)
    for doc in ("a", "b"):
        h.enter(doc)
        h.server(
            {"type": "sync", "senderId": "s", "targetId": "me-1", "documentId": doc, "data": b"x"}
        )
    h.advance(TRUST_AFTER)
    h.ephemeral("p", "sp", 1, "a", snapshot({"name": "only-in-a"}))
    h.ephemeral("q", "sq", 1, "a", snapshot({"name": "Q"}))
    h.ephemeral("q", "sq", 2, "b", snapshot({"name": "Q"}))
    h.core.leave("a", h.now)
    gone = [e[1].peer_id for e in h.events(h.take(), "peer-disconnected")]
    assert gone == ["p"]
    assert set(h.core.store.identities) == {"me-1", "q"}


def test_membership_tables_are_shared_once_quiet_for_a_moment():
    # (see ratatoskr_client.core.peer_tables: the clients of one process share them)
    h = Harness(heartbeat_interval=30)
    h.connect()
    h.enter("doc")
    h.server({"type": "doc_presence_state", "documentId": "doc", "peers": ["me-1", "peer-x"]})
    h.server(
        {
            "type": "peer_identity",
            "peerId": "peer-x",
            "user": {"id": None, "name": "X", "isAnonymous": True},
        }
    )
    assert unshared(h.core.store)
    h.advance(0.3)
    h.server({"type": "peer_joined_doc", "documentId": "doc", "peerId": "peer-y"})
    h.advance(0.3)  # 0.6 s since the first change, but only 0.3 s of quiet
    assert unshared(h.core.store)
    h.advance(0.3)
    assert not unshared(h.core.store)
    assert [p.peer_id for p in h.core.presence("doc")] == ["me-1", "peer-x", "peer-y"]
    # A change makes them this client's own again, until the next quiet moment.
    h.server({"type": "peer_left_doc", "documentId": "doc", "peerId": "peer-y"})
    assert unshared(h.core.store)
    assert [p.peer_id for p in h.core.presence("doc")] == ["me-1", "peer-x"]
    h.advance(1)
    assert not unshared(h.core.store)


# --------------------------------------------------------------------------- output


def test_events_nobody_listens_to_make_no_effect_and_messages_are_recorded_not_delivered():
    h = Harness()
    h.connect()
    h.enter("doc")
    for event in ("peer-joined", "peer-identity", "presence-changed"):
        h.core.listening(event, False)
    h.core.listening("ephemeral-message", False)  # (always recorded: it is the application's)
    quiet = h.batch(
        {
            "type": "peer_identity",
            "peerId": "p",
            "user": {"id": None, "name": "P", "isAnonymous": True},
        },
        {"type": "peer_joined_doc", "documentId": "doc", "peerId": "p"},
    )
    assert h.events(quiet) == []
    assert h.presence_ids("doc") == ["me-1", "p"]  # the change itself is made
    h.core.listening("peer-joined", True)
    h.core.listening("presence-changed", True)
    heard = h.server({"type": "peer_joined_doc", "documentId": "doc", "peerId": "q"})
    assert [e[0] for e in h.events(heard)] == ["peer-joined", "presence-changed"]
    # A message is an effect in the outbox, in order: the core calls nothing.
    got = h.ephemeral("p", "sp", 1, "doc", {"text": "hi"})
    assert [(e[0], e[1], e[2].peer_id, e[3]) for e in h.events(got)] == [
        ("ephemeral-message", "doc", "p", {"text": "hi"})
    ]


def test_a_text_frame_is_a_protocol_error_and_proves_the_connection_alive():
    h = Harness(ping_interval=10)
    h.connect()
    h.advance(9)
    h.core.receive_text(h.now)
    (error,) = [e[1] for e in h.events(h.take(), "error")]
    assert isinstance(error, ProtocolError) and "text frame" in str(error)
    assert not any(type(e) is Ping for e in h.advance(9.5))  # heard 9.5 s ago: no ping yet


def test_unheard_event_sets_are_held_once_for_every_client():
    a, b = Harness(), Harness()
    assert a.core._unheard is b.core._unheard
    for core in (a.core, b.core):
        core.listening("peer-joined", True)
        core.listening("presence-changed", False)
    assert a.core._unheard is b.core._unheard
    assert "presence-changed" in a.core._unheard and "peer-joined" not in a.core._unheard
    a.core.listening("peer-joined", False)
    assert "peer-joined" in a.core._unheard and "peer-joined" not in b.core._unheard


def test_the_send_queue_is_given_up_once_drained():
    """Messages that waited for a token go out in order; the drained queue is
    the empty tuple again, not an empty deque (0.6 KiB of every idle client)."""
    h = Harness(rate_limit=60, rate_burst=1)
    h.connect()
    h.core.send_ephemeral("doc", 1, h.now)
    h.core.send_ephemeral("doc", 2, h.now)  # waits for the next token
    h.take()
    assert len(h.core.out.queue) == 1
    h.advance(2.0)
    assert h.core.out.queue == ()
    h.core.send_ephemeral("doc", 3, h.now)  # and a new wait makes a new one
    h.core.send_ephemeral("doc", 4, h.now)
    assert len(h.core.out.queue) == 1
