"""Who is told about whom, and when (``RelayCore`` with a fake outbox and clock):
document identity scope, the per-document presence budget, and the
anonymous-connection budget per source address.

The plan's global scope is what ``test_relay_core.py`` checks; here the
relay runs with its defaults unless a test says otherwise.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from ratatoskr_client.errors import ConfigError
from ratatoskr_client.protocol import (
    FEATURES,
    AuthFrame,
    AuthOkFrame,
    DocPresenceStateFrame,
    EphemeralFrame,
    ErrorFrame,
    Frame,
    PeerDisconnectedFrame,
    PeerIdentityFrame,
    PeerJoinedDocFrame,
    PeerLeftDocFrame,
    UserInfo,
)
from ratatoskr_client.server import RelayConfig, UserSpec
from ratatoskr_client.server.core.relay import (
    PRESENCE_BURST,
    PRESENCE_DOC_BURST,
    PRESENCE_DOC_RATE,
    PRESENCE_HOLD,
    PRESENCE_WINDOW,
)

from .test_relay_core import Peer, Relay

USERS = (UserSpec("alice-secret", "alice", "Alice"),)


def kinds(frames: list[Frame]) -> list[tuple[str, str | None]]:
    """(type, the peer id it is about) for each frame."""
    out: list[tuple[str, str | None]] = []
    for f in frames:
        if isinstance(
            f, PeerIdentityFrame | PeerJoinedDocFrame | PeerLeftDocFrame | PeerDisconnectedFrame
        ):
            out.append((f.TYPE, f.peer_id))
        elif isinstance(f, EphemeralFrame):
            out.append((f.TYPE, f.sender_id))
        else:
            out.append((f.TYPE or "?", None))
    return out


class Scoped(Relay):
    """A relay in document scope whose flush timer is recorded, not run."""

    def __init__(self, **options: Any) -> None:
        # (The harness's peers share one non-loopback address.)
        options.setdefault("anonymous_connection_limit", 100_000)
        super().__init__(RelayConfig(open=True, users=USERS, **options))
        self.wakes: list[float] = []
        self.core.wake_at = self.wakes.append

    def crowd(self, n: int, doc: str | None = None) -> list[Peer]:
        made = self.peers(n)
        if doc is not None:
            for p in made:
                p.join(doc)
            self.drain(made)
        return made

    @staticmethod
    def drain(peers: list[Peer]) -> None:
        for p in peers:
            p.take()

    def flush_due(self) -> float:
        """Move the clock to the next flush the core asked for and run it."""
        due = min(self.wakes)
        self.wakes.clear()
        self.clock.now = max(self.clock.now, due)
        nxt = self.core.flush_held()
        if nxt < math.inf:
            self.wakes.append(nxt)
        return nxt


@pytest.fixture
def relay() -> Scoped:
    return Scoped()


# --------------------------------------------------------------------------- identity scope


def test_a_connect_sends_auth_ok_with_the_feature_and_nothing_else(relay: Scoped) -> None:
    idle = relay.crowd(20)
    newcomer = relay.peer("alice-secret")
    (ok,) = [*newcomer.auth_frames]
    assert isinstance(ok, AuthOkFrame)
    assert ok.features == (*FEATURES, "scoped-identity", "reauth", "state-replay", "resume")
    assert ok.user == UserInfo("alice", "Alice", False)
    newcomer.close()
    # Nobody heard it come or go.
    assert [p.take() for p in idle] == [[]] * 20


def test_identities_travel_just_before_the_frame_that_needs_them(relay: Scoped) -> None:
    a, b, outsider = relay.crowd(3)
    a.join("doc")
    assert kinds(a.take()) == [("doc_presence_state", None)]
    b.join("doc")
    assert kinds(b.take()) == [("peer_identity", a.peer_id), ("doc_presence_state", None)]
    assert kinds(a.take()) == [("peer_identity", b.peer_id), ("peer_joined_doc", b.peer_id)]
    assert outsider.take() == []
    # Sharing a second document: already known, so no identity either way.
    a.join("other")
    a.take()
    b.join("other")
    assert kinds(b.take()) == [("doc_presence_state", None)]
    assert kinds(a.take()) == [("peer_joined_doc", b.peer_id)]


def test_the_joiner_is_told_only_the_identities_it_lacks(relay: Scoped) -> None:
    a, b, c = relay.crowd(3)
    for p in (a, b):
        p.join("d1")
    c.join("d2")
    a.join("d2")
    relay.drain([a, b, c])
    c.join("d1")  # c knows a (d2), not b
    assert kinds(c.take()) == [("peer_identity", b.peer_id), ("doc_presence_state", None)]


def test_a_leave_tells_no_disconnect_and_a_later_join_reintroduces(relay: Scoped) -> None:
    a, b = relay.crowd(2, "doc")
    relay.clock.advance(PRESENCE_WINDOW)  # (b's join is not recent: its leave goes out at once)
    b.leave("doc")
    assert kinds(a.take()) == [("peer_left_doc", b.peer_id)]  # a forgets b now, silently
    relay.clock.advance(PRESENCE_WINDOW)
    b.join("doc")
    assert kinds(a.take()) == [("peer_identity", b.peer_id), ("peer_joined_doc", b.peer_id)]
    assert kinds(b.take()) == [("peer_identity", a.peer_id), ("doc_presence_state", None)]
    # A polite client leaves before closing: nobody shares a document with it any more.
    relay.clock.advance(PRESENCE_WINDOW)
    b.leave("doc")
    a.take()
    b.close()
    assert a.take() == []


def test_a_close_tells_the_peers_sharing_a_document_after_their_last_leave(
    relay: Scoped,
) -> None:
    a, b, c, stranger = relay.crowd(4)
    for p, docs in ((a, ["d1", "d2"]), (b, ["d1", "d2"]), (c, ["d2"]), (stranger, ["d3"])):
        for d in docs:
            p.join(d)
    relay.drain([a, b, c, stranger])
    a.close()
    assert kinds(b.take()) == [
        ("peer_left_doc", a.peer_id),
        ("peer_left_doc", a.peer_id),
        ("peer_disconnected", a.peer_id),
    ]
    assert kinds(c.take()) == [("peer_left_doc", a.peer_id), ("peer_disconnected", a.peer_id)]
    assert stranger.take() == []


def test_a_sender_not_present_is_introduced_to_those_who_do_not_know_it(relay: Scoped) -> None:
    a, b, sender = relay.crowd(3)
    a.join("doc")
    b.join("doc")
    b.join("side")
    sender.join("side")  # b knows sender through "side"; a does not
    relay.drain([a, b, sender])
    for n in range(2):
        sender.ephemeral("doc", {"n": n})  # not present in "doc"
    assert kinds(a.take()) == [
        ("peer_identity", sender.peer_id),
        ("ephemeral", sender.peer_id),
        ("peer_identity", sender.peer_id),  # each time: a still shares nothing with it
        ("ephemeral", sender.peer_id),
    ]
    assert kinds(b.take()) == [("ephemeral", sender.peer_id)] * 2
    sender.close()
    assert a.take() == []  # a never knew it through a document
    assert kinds(b.take()) == [
        ("peer_left_doc", sender.peer_id),
        ("peer_disconnected", sender.peer_id),
    ]


def test_expiry_tells_the_expired_peer_and_a_rejoin_reintroduces(relay: Scoped) -> None:
    a, b = relay.crowd(2, "doc")
    relay.clock.advance(relay.core.config.presence_ttl / 2)
    b.heartbeat("doc")
    relay.clock.advance(relay.core.config.presence_ttl / 2 + 1)
    assert relay.core.expire() == 1
    assert kinds(a.take()) == [("peer_left_doc", a.peer_id)]
    assert kinds(b.take()) == [("peer_left_doc", a.peer_id)]
    a.heartbeat("doc")  # back: a forgot everyone in "doc" when it was told it was out
    assert kinds(a.take()) == [("peer_identity", b.peer_id), ("doc_presence_state", None)]


def test_global_scope_keeps_the_broadcast(relay: Scoped) -> None:
    glob = Relay(RelayConfig(open=True, identity_scope="global"))
    a = glob.peer()
    b = glob.peer()
    ok = b.auth_frames[0]
    assert isinstance(ok, AuthOkFrame)
    assert ok.features == (*FEATURES, "reauth", "state-replay", "resume")
    assert kinds(a.take()) == [("peer_identity", b.peer_id)]
    b.close()
    assert kinds(a.take()) == [("peer_disconnected", b.peer_id)]


# --------------------------------------------------------------------------- presence budget


def changes(frames: list[Frame]) -> list[tuple[str, str | None]]:
    return [k for k in kinds(frames) if k[0] in ("peer_joined_doc", "peer_left_doc")]


def test_a_crowds_first_joins_go_out_at_once(relay: Scoped) -> None:
    (watcher,) = relay.crowd(1, "doc")
    joiners = relay.crowd(100)
    for p in joiners:
        p.join("doc")
    assert len(changes(watcher.take())) == 100
    assert relay.core.held_documents() == 0 and relay.wakes == []


def test_a_quick_visit_goes_out_at_once(relay: Scoped) -> None:
    (watcher,) = relay.crowd(1, "doc")
    (visitor,) = relay.crowd(1)
    visitor.join("doc")
    visitor.leave("doc")
    assert changes(watcher.take()) == [
        ("peer_joined_doc", visitor.peer_id),
        ("peer_left_doc", visitor.peer_id),
    ]
    assert relay.core.held_documents() == 0


def test_a_peers_third_change_within_its_window_is_held_and_coalesced(relay: Scoped) -> None:
    (watcher,) = relay.crowd(1, "doc")
    (toggler,) = relay.crowd(1)
    toggler.join("doc")
    toggler.leave("doc")
    watcher.take()
    toggler.join("doc")  # a third change within the window: held...
    toggler.leave("doc")  # ...undone: nothing to tell
    toggler.join("doc")  # held again
    assert watcher.take() == []
    assert toggler.peer_id in relay.core.presence("doc")  # it gets the messages...
    assert toggler.peer_id not in relay.core.presence_shown("doc")  # ...not yet announced
    assert relay.wakes and min(relay.wakes) == pytest.approx(1000.0 + PRESENCE_HOLD)
    relay.clock.advance(PRESENCE_WINDOW / 2)
    relay.core.flush_held()
    assert watcher.take() == []  # its window is not over
    relay.clock.advance(PRESENCE_WINDOW / 2)
    relay.core.flush_held()
    assert kinds(watcher.take()) == [
        ("peer_identity", toggler.peer_id),  # (the watcher forgot it when it left)
        ("peer_joined_doc", toggler.peer_id),
    ]
    assert relay.core.held_documents() == 0


def held_leave(relay: Scoped, p: Peer) -> None:
    """Make ``p`` (not in "doc") present there with its next leave held: its
    last two changes announced within the window."""
    p.join("doc")
    relay.clock.advance(PRESENCE_WINDOW * 0.5)
    p.leave("doc")
    relay.clock.advance(PRESENCE_WINDOW * 0.5)
    p.join("doc")  # (the first join is a window old: this one goes out)
    relay.clock.advance(PRESENCE_WINDOW * 0.1)  # the last two changes: within the window


def test_a_peer_that_left_and_came_back_is_never_seen_to_leave(relay: Scoped) -> None:
    (watcher,) = relay.crowd(1, "doc")
    a, b = relay.crowd(2)
    held_leave(relay, a)
    b.join("doc")
    watcher.take()
    order = relay.core.presence("doc")
    a.leave("doc")  # held
    a.join("doc")  # back
    relay.clock.advance(2 * PRESENCE_WINDOW)
    relay.core.flush_held()
    assert watcher.take() == []
    assert relay.core.presence("doc") == order  # it kept its place
    assert relay.core.held_documents() == 0


def test_a_held_joiner_sees_itself_and_speaks_only_after_its_join(relay: Scoped) -> None:
    (watcher,) = relay.crowd(1, "doc")
    (p,) = relay.crowd(1)
    p.join("doc")
    p.leave("doc")
    watcher.take()
    p.join("doc")  # held
    assert p.peer_id in relay.core.presence("doc")
    assert p.peer_id not in relay.core.presence_shown("doc")
    (state,) = [f for f in p.take() if isinstance(f, DocPresenceStateFrame)][-1:]
    assert state.peers == (watcher.peer_id, p.peer_id)  # itself last
    p.ephemeral("doc", "hello")
    assert kinds(watcher.take()) == [
        ("peer_identity", p.peer_id),
        ("peer_joined_doc", p.peer_id),
        ("ephemeral", p.peer_id),
    ]
    assert relay.core.held_documents() == 0


def test_a_closing_peer_leaves_at_once_even_when_its_leave_was_held(relay: Scoped) -> None:
    (watcher,) = relay.crowd(1, "doc")
    (leaver,) = relay.crowd(1)
    held_leave(relay, leaver)
    watcher.take()
    leaver.leave("doc")  # held: the watcher still sees it
    assert watcher.take() == []
    leaver.close()
    assert kinds(watcher.take()) == [
        ("peer_left_doc", leaver.peer_id),
        ("peer_disconnected", leaver.peer_id),
    ]
    # A peer whose join was held and that closes is never heard of again.
    (ghost,) = relay.crowd(1)
    ghost.join("doc")
    ghost.leave("doc")
    watcher.take()
    ghost.join("doc")  # held
    ghost.close()
    relay.clock.advance(2 * PRESENCE_WINDOW)
    relay.core.flush_held()
    assert watcher.take() == []
    assert relay.core.held_documents() == 0


def test_the_documents_budget_caps_everyone_together(relay: Scoped) -> None:
    (watcher,) = relay.crowd(1, "doc")
    crowd = relay.crowd(PRESENCE_DOC_BURST + 100)
    for p in crowd:
        p.join("doc")
    assert len(changes(watcher.take())) == PRESENCE_DOC_BURST
    told = PRESENCE_DOC_BURST
    start = relay.clock.now
    while relay.wakes:
        relay.flush_due()
        told += len(changes(watcher.take()))
        assert told <= PRESENCE_DOC_BURST + PRESENCE_DOC_RATE * (relay.clock.now - start) + 1
    assert told == len(crowd)  # all announced in the end, oldest first
    assert relay.core.presence_shown("doc") == relay.core.presence("doc")


def test_join_and_leave_churn_is_bounded_per_peer(relay: Scoped) -> None:
    """Peers toggling as fast as their own bound allows: each adds at most two
    changes per window to what the document's members hear."""
    (watcher,) = relay.crowd(1, "doc")
    togglers = relay.crowd(40)
    heard = 0
    seconds = 10
    for _ in range(seconds * 20):  # every 50 ms, each toggler toggles once
        for t in togglers:
            t.leave("doc") if "doc" in t.session.docs else t.join("doc")
            t.take()
        relay.clock.advance(0.05)
        while relay.wakes and min(relay.wakes) <= relay.clock.now:
            relay.flush_due()
        heard += len(changes(watcher.take()))
    assert heard <= len(togglers) * 2 * (seconds / PRESENCE_WINDOW + 1)
    # Each toggler alone could make 5 per second (its own bound).
    assert heard < len(togglers) * 5 * seconds / 2


def test_the_budget_applies_in_global_scope_too() -> None:
    glob = Relay(RelayConfig(open=True, identity_scope="global"))
    wakes: list[float] = []
    glob.core.wake_at = wakes.append
    watcher, toggler = glob.peer(), glob.peer()
    watcher.join("doc")
    toggler.join("doc")
    toggler.leave("doc")
    toggler.join("doc")  # the third change within the window: held
    watcher.take()
    assert toggler.peer_id not in glob.core.presence_shown("doc")
    assert wakes


def test_presence_bound_per_connection_is_unchanged(relay: Scoped) -> None:
    (p,) = relay.crowd(1)
    for _ in range(PRESENCE_BURST // 2):
        p.join("doc")
        p.leave("doc")
    errors = [f for f in p.take() if isinstance(f, ErrorFrame)]
    assert errors == []
    p.join("doc")
    (err,) = [f for f in p.take() if isinstance(f, ErrorFrame)]
    assert err.error == "rate_limited" and err.document_id == "doc"


# --------------------------------------------------------------------------- connections


def anonymous(relay: Relay, address: str) -> tuple[Peer, list[Frame]]:
    peer = Peer(relay, address)
    peer.send(AuthFrame(anonymous=True))
    return peer, peer.take()


def test_anonymous_connections_per_address_are_limited() -> None:
    relay = Scoped(anonymous_connection_limit=3)
    for _ in range(3):
        _, (ok,) = anonymous(relay, "198.51.100.7")
        assert isinstance(ok, AuthOkFrame)
    refused, (err,) = anonymous(relay, "198.51.100.7")
    assert isinstance(err, ErrorFrame) and err.error == "rate_limited"
    assert err.retry_after == pytest.approx(20.0, abs=0.01)  # 3 per minute
    assert refused.outbox.closed == (1008, "rate_limited")
    assert not refused.session.authenticated
    # Others are not affected: another address, or a token user from this one.
    _, (ok,) = anonymous(relay, "198.51.100.8")
    assert isinstance(ok, AuthOkFrame)
    user = Peer(relay, "198.51.100.7")
    user.send(AuthFrame(token="alice-secret"))
    assert isinstance(user.take()[0], AuthOkFrame)
    assert relay.stats().connection_addresses == 2
    relay.clock.advance(20.0)
    _, (ok,) = anonymous(relay, "198.51.100.7")
    assert isinstance(ok, AuthOkFrame)
    relay.clock.advance(61.0)
    relay.core.expire()
    assert relay.stats().connection_addresses == 0


@pytest.mark.parametrize("address", ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1", ""])
def test_loopback_and_unknown_addresses_are_exempt(address: str) -> None:
    relay = Scoped(anonymous_connection_limit=1)
    for _ in range(10):
        _, (ok,) = anonymous(relay, address)
        assert isinstance(ok, AuthOkFrame)
    assert relay.stats().connection_addresses == 0


def test_exempt_networks_are_configurable() -> None:
    relay = Scoped(anonymous_connection_limit=1, connection_limit_exempt=["10.0.0.0/8"])
    for _ in range(3):
        assert isinstance(anonymous(relay, "10.1.2.3")[1][0], AuthOkFrame)
    assert isinstance(anonymous(relay, "127.0.0.1")[1][0], AuthOkFrame)
    assert isinstance(anonymous(relay, "127.0.0.1")[1][0], ErrorFrame)  # no longer exempt


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"identity_scope": "everyone"}, "identity_scope"),
        ({"anonymous_connection_limit": 0}, "anonymous_connection_limit"),
        ({"connection_limit_exempt": ["not a network"]}, "not a network"),
        ({"connection_limit_exempt": [7]}, "connection_limit_exempt"),
        ({"connection_limit_exempt": "127.0.0.0/8"}, "list of networks"),
    ],
)
def test_bad_settings_are_config_errors(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        RelayConfig(**options)
