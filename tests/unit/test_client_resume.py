"""The client core's side of a resume (issue 22), with a fake clock and server:
after a resumed ``auth_ok`` the client and the relay agree at once on the
peer's documents (those left while away are left, those entered are joined)
and on its state (the latest, not the one the relay held)."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest

from ratatoskr_client.errors import ConnectionClosed

from .coreharness import FULL, Harness
from .test_client_core import presence_payloads, state_payloads

FEATURES = [*FULL, "resume"]


def handshake(h: Harness, peer: str, secret: str, **extra: Any) -> tuple[dict[str, Any], list[Any]]:
    """Connect; the server answers with ``extra`` in ``auth_ok``. Returns the
    auth frame the client sent and the effects."""
    core = h.core
    if core.state.value in ("idle", "closed"):
        core.connect_started()
    auth = cbor2.loads(core.auth_frame(h.now))
    auth_ok = {
        "type": "auth_ok",
        "peerId": "server",
        "clientPeerId": peer,
        "user": {"id": None, "name": "Rustic Pelican", "isAnonymous": True},
        "features": FEATURES,
        "resumeSecret": secret,
        **extra,
    }
    assert core.handshake(cbor2.dumps(auth_ok), h.now)
    return auth, h.take()


def confirm(h: Harness, doc: str) -> list[Any]:
    return h.server({"type": "doc_presence_state", "documentId": doc, "peers": ["me"]})


def connected_in(h: Harness, *docs: str) -> None:
    handshake(h, "me", "s1")
    for doc in docs:
        h.core.enter(doc, h.now)
        h.take()
        confirm(h, doc)


def test_documents_left_while_away_are_left_at_once_and_entered_ones_joined() -> None:
    h = Harness()
    connected_in(h, "kept", "left-away", "left-before")
    h.core.leave("left-before", h.now)  # (its leave dies with the socket)
    h.core.connection_lost(ConnectionClosed("gone"), h.now)
    h.take()
    h.core.leave("left-away", h.now)
    h.core.enter("new", h.now)
    h.advance(1.0)

    auth, effects = handshake(
        h, "me", "s2", resumed=True, documents=["kept", "left-away", "left-before"]
    )
    assert auth["resume"] == {"peerId": "me", "secret": "s1"}
    sent = presence_payloads(h.sent(effects))
    # The leaves first (nobody sees us linger), then a join for each entered document.
    assert sent == [
        ("leave", "left-away"),
        ("leave", "left-before"),
        ("join", "kept"),
        ("join", "new"),
    ]
    assert h.core.entered() == ("kept", "new")


def test_without_a_resume_or_a_list_nothing_is_left() -> None:
    for extra in ({}, {"resumed": True}):  # a new peer; a relay that did not say
        h = Harness()
        connected_in(h, "kept", "gone")
        h.core.connection_lost(ConnectionClosed("gone"), h.now)
        h.core.leave("gone", h.now)
        h.take()
        _, effects = handshake(h, "me", "s2", **extra)
        assert presence_payloads(h.sent(effects)) == [("join", "kept")]


def test_state_set_while_away_is_what_the_resumed_peer_shows() -> None:
    h = Harness()
    connected_in(h, "doc")
    h.core.set_state("doc", "cursor", 1, h.now)
    h.advance(1.0)
    h.core.connection_lost(ConnectionClosed("gone"), h.now)
    h.take()
    h.core.set_state("doc", "cursor", 2, h.now)  # while away
    h.core.set_state("doc", "color", "red", h.now)
    h.advance(1.0)
    _, effects = handshake(h, "me", "s2", resumed=True, documents=["doc"])
    assert state_payloads(h.sent(effects)) == []  # not before the relay confirmed us
    effects = confirm(h, "doc")
    snapshots = [p for p in state_payloads(h.sent(effects)) if p.get("type") == "snapshot"]
    assert snapshots, h.sent(effects)
    assert snapshots[0]["state"] == {"name": "Rustic Pelican", "cursor": 2, "color": "red"}


def test_several_urls_are_tried_in_turn_after_each_loss_or_failure() -> None:
    from ratatoskr_client.core.settings import Settings
    from ratatoskr_client.errors import ConnectError

    urls = ("http://relay.test", "http://b.test", "http://c.test")  # (the harness: url first)
    h = Harness(urls=urls)
    assert h.core.url == urls[0]
    connected_in(h, "doc")
    assert h.core.url == urls[0]  # (it stays while connected)
    h.core.connection_lost(ConnectionClosed("gone"), h.now)
    assert h.core.url == urls[1]  # a cut: the next relay of the cluster
    h.core.attempt_failed(ConnectError("refused"), h.now)
    assert h.core.url == urls[2]
    h.core.attempt_failed(ConnectError("refused"), h.now)
    assert h.core.url == urls[0]
    assert Settings.from_options(list(urls), {}).urls == urls
    assert Settings.from_options("http://a.test", {}).urls == ("http://a.test",)
    with pytest.raises(ValueError, match="start with url"):
        Settings("http://a.test", urls=("http://b.test",))
    for bad in ([], ["http://a.test", 5], ["ftp://x"]):
        with pytest.raises(ValueError, match="URL"):
            Settings.from_options(bad, {})  # type: ignore[list-item]
