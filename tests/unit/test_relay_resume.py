"""The relay core's resuming and state replay (issue 22), with a fake outbox
and clock: who may resume a peer, what the others hear (nothing), what happens
when the grace runs out, and the per-peer state a joiner is replayed."""

from __future__ import annotations

from typing import Any

import pytest

from ratatoskr_client.protocol import (
    AuthFrame,
    AuthOkFrame,
    DocPresenceStateFrame,
    EphemeralFrame,
    PeerDisconnectedFrame,
    PeerIdentityFrame,
    PeerLeftDocFrame,
    decode_payload,
)
from ratatoskr_client.server import RelayConfig
from ratatoskr_client.server.core.states import MAX_STATE_BYTES

from .test_relay_core import USERS, Peer, Relay

GRACE = 15.0


def kinds(frames: list[Any]) -> list[str]:
    return [type(f).__name__ for f in frames]


def resumable(relay: Relay, token: str | None = None) -> tuple[Peer, str]:
    """A peer that asked to be resumable, and its secret."""
    peer = relay.peer(auth=False)
    peer.send(AuthFrame(token, token is None, True))
    ok = peer.take()[0]
    assert isinstance(ok, AuthOkFrame) and ok.resume_secret is not None
    assert not ok.resumed
    peer.peer_id = ok.client_peer_id
    return peer, ok.resume_secret


def resume(relay: Relay, peer_id: str, secret: str, token: str | None = None) -> Peer:
    new = relay.peer(auth=False, address="203.0.113.9")
    new.send(AuthFrame(token, token is None, True, peer_id, secret))
    if new.session.successor is not None:  # (what the aiohttp layer does)
        new.session = new.session.successor
    return new


def dropped(relay: Relay, peer: Peer) -> None:
    """Its connection is lost without a close frame."""
    relay.core.close(peer.session, clean=False, outbox=peer.outbox)


@pytest.fixture
def relay() -> Relay:
    return Relay(RelayConfig(open=True, users=USERS, resume_grace=GRACE))


def test_a_dropped_peer_resumes_unseen_with_its_id_name_documents_and_state(
    relay: Relay,
) -> None:
    bot, secret = resumable(relay)
    other = relay.peer()
    bot.join("doc")
    bot.ephemeral("doc", {"__presence": {"type": "snapshot", "state": {"cursor": 1}}})
    other.join("doc")
    other.take()
    name = relay.core.auth.peers[bot.peer_id].name

    dropped(relay, bot)
    relay.clock.advance(GRACE - 1)
    relay.core.on_timer()
    assert other.take() == []  # held: nobody hears anything
    assert bot.peer_id in relay.core.presence("doc")

    back = resume(relay, bot.peer_id, secret)
    ok = back.take()[0]
    assert isinstance(ok, AuthOkFrame)
    assert (ok.client_peer_id, ok.resumed) == (bot.peer_id, True)
    assert ok.user is not None and ok.user.name == name
    assert ok.resume_secret not in (None, secret)  # a new secret each time
    assert relay.core.counters.resumes == {"here": 1}
    back.session_id = "a-new-session"  # (a new connection: the client's new session)
    back.join("doc")  # its client re-enters: told who is there, and the states
    frames = back.take()
    assert kinds(frames) == ["PeerIdentityFrame", "DocPresenceStateFrame"], frames
    assert isinstance(frames[0], PeerIdentityFrame) and frames[0].peer_id == other.peer_id
    back.ephemeral("doc", {"hello": 1})
    (message,) = other.take()  # nothing but the message, from the same peer id
    assert isinstance(message, EphemeralFrame) and message.sender_id == bot.peer_id
    relay.clock.advance(GRACE * 2)
    relay.core.on_timer()
    assert other.take() == []  # its grace is over, but it is back: nothing
    assert relay.stats().connections == 2


def test_past_the_grace_the_peer_leaves_and_its_secret_is_worthless(relay: Relay) -> None:
    bot, secret = resumable(relay)
    other = relay.peer()
    bot.join("doc")
    other.join("doc")
    other.take()
    dropped(relay, bot)
    relay.clock.advance(GRACE + 0.1)
    relay.core.on_timer()
    assert kinds(other.take()) == ["PeerLeftDocFrame", "PeerDisconnectedFrame"]
    late = resume(relay, bot.peer_id, secret)
    ok = late.take()[0]
    assert isinstance(ok, AuthOkFrame)
    assert ok.client_peer_id != bot.peer_id and not ok.resumed  # a new peer
    assert relay.stats().peers == 2


@pytest.mark.parametrize(
    ("secret", "token"),
    [("wrong-secret", None), (None, "alice-secret")],
    ids=["a wrong secret", "other credentials"],
)
def test_nobody_else_takes_a_peer_over(relay: Relay, secret: str | None, token: str | None) -> None:
    bot, real = resumable(relay)  # anonymous
    bot.join("doc")
    dropped(relay, bot)
    thief = resume(relay, bot.peer_id, secret or real, token)
    ok = thief.take()[0]
    assert isinstance(ok, AuthOkFrame) and ok.client_peer_id != bot.peer_id
    assert not ok.resumed
    # The real client still can.
    back = resume(relay, bot.peer_id, real)
    ok = back.take()[0]
    assert isinstance(ok, AuthOkFrame) and ok.resumed and ok.client_peer_id == bot.peer_id


def test_a_token_user_resumes_only_with_its_own_token(relay: Relay) -> None:
    bot, secret = resumable(relay, "alice-secret")
    bot.join("doc")
    dropped(relay, bot)
    wrong = resume(relay, bot.peer_id, secret, "bob-secret")
    assert wrong.take()[0].client_peer_id != bot.peer_id  # type: ignore[attr-defined]
    right = resume(relay, bot.peer_id, secret, "alice-secret")
    ok = right.take()[0]
    assert isinstance(ok, AuthOkFrame) and ok.resumed


def test_a_clean_close_leaves_at_once(relay: Relay) -> None:
    bot, secret = resumable(relay)
    other = relay.peer()
    bot.join("doc")
    other.join("doc")
    other.take()
    relay.core.close(bot.session, clean=True)
    assert kinds(other.take()) == ["PeerLeftDocFrame", "PeerDisconnectedFrame"]
    ok = resume(relay, bot.peer_id, secret).take()[0]
    assert isinstance(ok, AuthOkFrame) and not ok.resumed


def test_a_peer_that_did_not_ask_or_is_in_no_document_is_not_held(relay: Relay) -> None:
    plain = relay.peer()  # no resume: true (a stock peer)
    plain.join("doc")
    idle, _ = resumable(relay)  # in no document
    other = relay.peer()
    other.join("doc")
    other.take()
    dropped(relay, plain)
    dropped(relay, idle)
    assert [type(f) for f in other.take()] == [PeerLeftDocFrame, PeerDisconnectedFrame]
    assert relay.stats().peers == 1  # both gone at once


def test_resuming_a_peer_whose_old_socket_is_still_open_closes_that_socket(
    relay: Relay,
) -> None:
    bot, secret = resumable(relay)
    other = relay.peer()
    bot.join("doc")
    other.join("doc")
    other.take()
    back = resume(relay, bot.peer_id, secret)  # the relay has not noticed the drop yet
    ok = back.take()[0]
    assert isinstance(ok, AuthOkFrame) and ok.resumed
    assert bot.outbox.closed == (1000, "resumed")
    relay.core.close(bot.session, clean=False, outbox=bot.outbox)  # its socket ends
    assert other.take() == []
    assert bot.peer_id in relay.core.presence("doc")
    assert relay.stats().connections == 2


def test_without_a_grace_nothing_is_held_nor_offered() -> None:
    relay = Relay(RelayConfig(open=True, resume_grace=0))
    peer = relay.peer(auth=False)
    peer.send(AuthFrame(None, True, True))
    ok = peer.take()[0]
    assert isinstance(ok, AuthOkFrame) and ok.resume_secret is None
    assert ok.features is not None and "resume" not in ok.features


# --------------------------------------------------------------------------- state replay


def presence(payload: dict[str, Any]) -> dict[str, Any]:
    return {"__presence": payload}


def test_a_joiner_is_replayed_every_present_peers_merged_state(relay: Relay) -> None:
    a, b = relay.peer(), relay.peer()
    for p in (a, b):
        p.join("doc")
    a.ephemeral("doc", presence({"type": "snapshot", "state": {"name": "A", "color": "red"}}))
    a.ephemeral("doc", presence({"type": "update", "channel": "cursor", "value": [1, 2]}))
    a.ephemeral("doc", presence({"type": "heartbeat"}))
    b.ephemeral("doc", presence({"type": "snapshot", "state": {"name": "B"}}))
    b.ephemeral("doc", presence({"type": "goodbye"}))  # B forgot its state
    watcher = relay.peer()
    watcher.join("doc")
    frames = [f for f in watcher.take() if not isinstance(f, PeerIdentityFrame)]
    assert [type(f) for f in frames] == [DocPresenceStateFrame, EphemeralFrame]
    replay = frames[1]
    assert isinstance(replay, EphemeralFrame)
    assert (replay.sender_id, replay.target_id) == (a.peer_id, watcher.peer_id)
    assert (replay.session_id, replay.count) == (a.session_id, a.count)  # its latest count
    assert decode_payload(replay.data) == presence(
        {"type": "snapshot", "state": {"name": "A", "color": "red", "cursor": [1, 2]}}
    )
    a.leave("doc")
    late = relay.peer()
    late.join("doc")
    assert [type(f) for f in late.take()] == [PeerIdentityFrame] * 2 + [DocPresenceStateFrame]


def test_a_state_beyond_the_bound_is_not_kept(relay: Relay) -> None:
    a = relay.peer()
    a.join("doc")
    a.ephemeral("doc", presence({"type": "snapshot", "state": {"blob": "x" * MAX_STATE_BYTES}}))
    watcher = relay.peer()
    watcher.join("doc")
    assert [type(f) for f in watcher.take()] == [PeerIdentityFrame, DocPresenceStateFrame]
    assert relay.core.visibility.states.documents() == 0


def test_the_core_answers_who_is_there_by_user_with_states_and_who_is_away(relay: Relay) -> None:
    # (the queries an admin API reads)
    tab1, secret = resumable(relay, "alice-secret")
    tab2 = relay.peer("alice-secret")
    anon = relay.peer()
    for p in (tab1, tab2, anon):
        p.join("doc")
    tab1.ephemeral("doc", presence({"type": "snapshot", "state": {"name": "A"}}))
    assert relay.core.users("doc") == {
        "alice": (tab1.peer_id, tab2.peer_id),
        anon.peer_id: (anon.peer_id,),
    }
    assert relay.core.peer_states("doc") == {tab1.peer_id: {"name": "A"}}
    dropped(relay, tab1)
    assert relay.core.away() == (tab1.peer_id,)
    assert relay.core.users("doc")["alice"] == (tab1.peer_id, tab2.peer_id)  # still there
    resume(relay, tab1.peer_id, secret, "alice-secret")
    assert relay.core.away() == ()


def test_a_resumed_peer_is_told_identities_again_until_it_rejoined_where_it_knew_them(
    relay: Relay,
) -> None:
    # Its client forgot everyone when its socket dropped: a document it has not
    # joined again does not count as where it knows someone from.
    bot, secret = resumable(relay)
    x = relay.peer()
    for doc in ("d1", "d2"):
        bot.join(doc)
    x.join("d1")
    dropped(relay, bot)
    back = resume(relay, bot.peer_id, secret)
    back.session_id = "new-session"
    back.take()
    back.join("d2")  # d2 first; d1 (where it knew x) not yet
    back.take()
    x.join("d2")
    frames = back.take()
    assert [type(f) for f in frames] == [PeerIdentityFrame, type(frames[1])]
    assert isinstance(frames[0], PeerIdentityFrame) and frames[0].peer_id == x.peer_id
    assert type(frames[1]).__name__ == "PeerJoinedDocFrame"
    back.join("d1")  # told again with d1's presence
    assert [type(f).__name__ for f in back.take()] == ["PeerIdentityFrame", "DocPresenceStateFrame"]


def test_a_resumed_auth_ok_lists_the_documents_the_peer_is_held_in(relay: Relay) -> None:
    # Its client leaves at once those it left while away: the others hear that
    # leave, not a linger until the presence TTL.
    bot, secret = resumable(relay)
    other = relay.peer()
    for doc in ("kept", "left-away"):
        bot.join(doc)
        other.join(doc)
    other.take()
    dropped(relay, bot)
    back = resume(relay, bot.peer_id, secret)
    ok = back.take()[0]
    assert isinstance(ok, AuthOkFrame) and ok.resumed
    assert ok.documents == ("kept", "left-away")
    back.leave("left-away")
    (left,) = other.take()
    assert isinstance(left, PeerLeftDocFrame) and left.document_id == "left-away"
    assert relay.core.presence("kept") == (bot.peer_id, other.peer_id)
