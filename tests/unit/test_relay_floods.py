"""The relay's rules for floods and dead sockets, on the pure core with a fake clock.

* A refusal by a rate limit is answered once per window (``rate_limited`` with
  ``retryAfter``); until that time has passed, further refusals by the same
  limit cost a counter increment and no frame.
* A connection that keeps sending after being told (more than FLOOD_ALLOWANCE
  unanswered refusals, refilled at FLOOD_REFILL per second) is told why and
  closed; one that obeys, or overshoots briefly, never is.
* Liveness: a connection from which no complete frame (nor pong) arrived for
  ``ping_interval`` is pinged, and closed after 1.5 x ``ping_interval``.
"""

from __future__ import annotations

import math

import pytest

from ratatoskr_client.protocol import (
    DocPresenceStateFrame,
    EphemeralFrame,
    ErrorFrame,
    PeerIdentityFrame,
    PeerJoinedDocFrame,
)
from ratatoskr_client.server import RelayConfig
from ratatoskr_client.server.core.limits import (
    FLOOD_ALLOWANCE,
    FLOOD_REFILL,
    LIVENESS_FACTOR,
    PRESENCE_BURST,
    PRESENCE_RATE,
    PRESENCE_WINDOW,
)

from .test_relay_core import FakeOutbox, Peer, Relay, error


def limited_relay(rate_limit: int = 60) -> tuple[Relay, Peer, Peer]:
    """A relay allowing ``rate_limit`` messages a minute; ``a`` has spent its
    whole burst, ``b`` is present to receive."""
    relay = Relay(RelayConfig(open=True, rate_limit=rate_limit))
    a, b = relay.peers(2)
    b.join("doc")
    b.take()
    for i in range(rate_limit):
        a.ephemeral("doc", i)
    # (in document scope each comes after a's identity: a is not present there)
    assert sum(isinstance(f, EphemeralFrame) for f in b.take()) == rate_limit
    assert a.take() == []
    return relay, a, b


# --------------------------------------------------------------------------- once per window


def test_a_rate_limit_refusal_is_answered_once_per_window() -> None:
    relay, a, b = limited_relay(60)  # one token a second
    a.ephemeral("doc", "over")
    err = error(a.take_one())
    assert (err.error, err.retry_after) == ("rate_limited", pytest.approx(1.0))
    # Until the second it was given has passed: refused, unanswered, nothing encoded.
    for _ in range(20):
        relay.clock.advance(0.04)
        a.ephemeral("doc", "still over")
    assert a.outbox.raw == a.outbox.raw[: a._read]  # not one frame more
    assert b.take() == []
    assert relay.core.counters.unanswered == 20
    assert relay.core.counters.refused == {"rate_limit": 1}
    # Once it has passed, the token is there: relayed.
    relay.clock.advance(0.25)
    a.ephemeral("doc", "on time")
    assert [f.data for f in b.take() if isinstance(f, EphemeralFrame)] != []
    # The next refusal opens a new window, and is answered again.
    a.ephemeral("doc", "over again")
    assert error(a.take_one()).error == "rate_limited"
    assert a.outbox.closed is None


def test_presence_refusals_are_answered_once_per_window_and_document() -> None:
    relay = Relay(RelayConfig(open=True))
    a, b = relay.peers(2)
    b.join("doc")
    b.join("other")
    b.take()
    for doc in ("doc", "other"):
        for _ in range(PRESENCE_BURST // 2):
            a.join(doc)
            a.leave(doc)
    a.take()
    b.take()
    a.join("doc")
    told = error(a.take_one())
    assert (told.error, told.document_id) == ("rate_limited", "doc")
    assert told.retry_after == pytest.approx(1 / PRESENCE_RATE, abs=0.001)
    for _ in range(5):
        a.join("doc")
        a.leave("doc")
    assert a.take() == []  # the same document's window: unanswered
    a.join("other")  # another document has a window of its own: answered
    other = error(a.take_one())
    assert (other.error, other.document_id) == ("rate_limited", "other")
    assert b.take() == []  # nothing of it reached anyone
    # The five joins were refused unanswered; each leave after a refused join
    # has nothing to do and is dropped before the bound (neither allowed nor
    # refused: see the order of checks in documents.py).
    assert relay.core.counters.unanswered == 5
    relay.clock.advance(1 / PRESENCE_RATE)
    a.join("doc")
    assert DocPresenceStateFrame in {type(f) for f in a.take()}  # allowed again
    # What b hears of it is the presence budget's: a's last two changes there
    # were announced within the window, so its join waits for the window's end.
    assert b.take() == []
    relay.clock.advance(PRESENCE_WINDOW)
    relay.core.flush_held()
    # (In document scope b no longer knows a: its identity comes first.)
    assert [type(f) for f in b.take()] == [PeerIdentityFrame, PeerJoinedDocFrame]


# --------------------------------------------------------------------------- flooders


def test_a_connection_that_keeps_sending_after_being_told_is_told_why_and_closed() -> None:
    relay, a, b = limited_relay(60)
    a.ephemeral("doc", "over")
    assert error(a.take_one()).error == "rate_limited"
    for _ in range(FLOOD_ALLOWANCE):  # the allowance: unanswered, still open
        a.ephemeral("doc", "flood")
    assert a.take() == []
    assert a.outbox.closed is None
    a.ephemeral("doc", "one too many")
    last = error(a.take_one())
    assert last.error == "rate_limited"
    assert "closed" in last.message
    assert last.retry_after is not None and 0 < last.retry_after <= 1.0
    assert a.outbox.closed == (1008, "rate_limited")
    counters = relay.core.counters
    assert (counters.unanswered, counters.flood_disconnects) == (FLOOD_ALLOWANCE + 1, 1)
    # The relay drops the connection like any other; the others are unaffected.
    relay.core.close(a.session)
    c = relay.peer()
    c.join("doc")
    c.ephemeral("doc", "hello")
    assert [f.data for f in b.take() if isinstance(f, EphemeralFrame)] != []


def test_presence_floods_across_documents_share_one_allowance() -> None:
    relay = Relay(RelayConfig(open=True))
    (a,) = relay.peers(1)
    docs = [f"doc-{i}" for i in range(4)]
    unanswered = 0
    for doc in docs:  # each document: its burst, one answer, then silence
        for _ in range(PRESENCE_BURST + 1):
            a.join(doc)
            a.leave(doc)
        # The burst allows the first PRESENCE_BURST // 2 joins and leaves; of
        # the joins after it, the first is answered, the rest unanswered, and
        # the leave after each refused join is a no-op, dropped before the bound.
        unanswered += (PRESENCE_BURST + 1) - PRESENCE_BURST // 2 - 1
    assert relay.core.counters.unanswered == unanswered < FLOOD_ALLOWANCE
    assert a.outbox.closed is None
    while a.outbox.closed is None:
        a.join(docs[0])
    assert relay.core.counters.unanswered == FLOOD_ALLOWANCE + 1


def test_a_peer_that_obeys_retry_after_is_never_closed() -> None:
    """What a paced client does against a lower server limit: it sends too
    much, is told, sends what was in flight, waits the retryAfter, and so on.
    Ten minutes of it, with as many frames in flight at each refusal as one
    second's refill of the allowance: never closed."""
    relay, a, _ = limited_relay(60)
    in_flight = int(FLOOD_REFILL)
    for _ in range(600):
        a.ephemeral("doc", "over")  # the one refused and answered
        told = error(a.take_one())
        assert told.retry_after is not None
        for _ in range(in_flight):  # sent before the answer arrived
            a.ephemeral("doc", "in flight")
        relay.clock.advance(told.retry_after)  # waits as told
        a.ephemeral("doc", "paced")  # the refilled token
    assert a.outbox.closed is None
    assert relay.core.counters.unanswered == 600 * in_flight


def until_told(peer: Peer) -> ErrorFrame:
    """Send messages until the relay answers one with ``rate_limited``."""
    while True:
        peer.ephemeral("doc", "over")
        frames = peer.take()
        if frames:
            return error(frames[-1])


def test_a_brief_overshoot_is_not_punished_and_the_allowance_refills() -> None:
    relay, a, _ = limited_relay(60)
    for _ in range(3):  # bursts as large as the whole allowance, once it has refilled
        assert until_told(a).error == "rate_limited"
        for _ in range(FLOOD_ALLOWANCE):
            a.ephemeral("doc", "burst")
        relay.clock.advance(FLOOD_ALLOWANCE / FLOOD_REFILL)
    assert a.outbox.closed is None
    assert relay.core.counters.unanswered == 3 * FLOOD_ALLOWANCE


# --------------------------------------------------------------------------- liveness


class PingedOutbox(FakeOutbox):
    def __init__(self) -> None:
        super().__init__()
        self.pings = 0

    def ping(self) -> None:
        assert self.closed is None, "ping after close"
        self.pings += 1


PING = 10.0


def live_relay() -> tuple[Relay, PingedOutbox, object]:
    relay = Relay(RelayConfig(open=True, ping_interval=PING))
    outbox = PingedOutbox()
    conn = relay.core.open(outbox, "192.0.2.1")
    return relay, outbox, conn


def sweep_until(relay: Relay, seconds: float, step: float = PING / 10) -> None:
    """Advance the clock by ``seconds``, sweeping every ``step`` like the app."""
    end = relay.clock.now + seconds
    while relay.clock.now + step <= end + 1e-9:
        relay.clock.advance(step)
        relay.core.check_liveness()


def test_a_silent_connection_is_pinged_then_closed() -> None:
    relay, outbox, _ = live_relay()
    sweep_until(relay, PING - 1)
    assert (outbox.pings, outbox.closed) == (0, None)
    sweep_until(relay, 1)
    assert (outbox.pings, outbox.closed) == (1, None)  # pinged once, after one interval
    sweep_until(relay, PING * (LIVENESS_FACTOR - 1) - 1)
    assert (outbox.pings, outbox.closed) == (1, None)
    sweep_until(relay, 1)
    assert outbox.closed == (1008, "ping_timeout")
    assert relay.core.counters.unresponsive_disconnects == 1
    sweep_until(relay, PING * 2)
    assert relay.core.counters.unresponsive_disconnects == 1  # closed once


def test_complete_frames_and_pongs_keep_a_connection_alive() -> None:
    relay, outbox, conn = live_relay()
    for _ in range(10):  # a frame more often than every interval: never pinged
        sweep_until(relay, PING - 1)
        relay.core.receive(conn, b"\xff")  # even an invalid one is a complete frame
    assert (outbox.pings, outbox.closed) == (0, None)
    for _ in range(10):  # silent, but answering each ping
        # (pinged one interval after the sweep that saw the last frame)
        sweep_until(relay, PING + PING / 10)
        assert outbox.pings == 1
        relay.core.alive(conn)
        outbox.pings = 0
    assert outbox.closed is None


def test_the_deadline_counts_from_the_sweep_that_saw_the_frame() -> None:
    """A frame's arrival is a flag the next sweep turns into a time: the
    deadline is never early, and at most one sweep late."""
    relay, outbox, conn = live_relay()
    relay.clock.advance(PING / 20)  # between two sweeps
    relay.core.receive(conn, b"\xff")
    arrived = relay.clock.now
    step = PING / 10
    closed_at = math.inf
    for _ in range(100):
        relay.clock.advance(step)
        relay.core.check_liveness()
        if outbox.closed is not None:
            closed_at = relay.clock.now
            break
    assert (
        arrived + LIVENESS_FACTOR * PING <= closed_at <= arrived + LIVENESS_FACTOR * PING + 2 * step
    )
