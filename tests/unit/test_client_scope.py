"""ClientCore under both identity scopes (no socket, fake clock).

With ``"scoped-identity"`` in ``auth_ok`` the server sends identities just
before the frame that needs them and ``peer_disconnected`` only for peers the
client knew; the client keeps an identity exactly while its peer is in one of
the client's documents. Without it every identity is kept until its
``peer_disconnected``. The same application code works under both.
"""

from __future__ import annotations

from typing import Any

import pytest

from ratatoskr_client import Peer

from .coreharness import FULL, Harness

SCOPED = [*FULL, "scoped-identity"]


def identity(pid: str, name: str, user_id: str | None = None) -> dict[str, Any]:
    return {
        "type": "peer_identity",
        "peerId": pid,
        "user": {"id": user_id, "name": name, "isAnonymous": user_id is None},
    }


def joined(doc: str, pid: str) -> dict[str, Any]:
    return {"type": "peer_joined_doc", "documentId": doc, "peerId": pid}


def left(doc: str, pid: str) -> dict[str, Any]:
    return {"type": "peer_left_doc", "documentId": doc, "peerId": pid}


def gone(pid: str) -> dict[str, Any]:
    return {"type": "peer_disconnected", "peerId": pid}


def connected(features: list[str]) -> Harness:
    h = Harness()
    h.connect(features=features)
    return h


def peers(h: Harness) -> set[str]:
    return set(h.core.store.identities)


def test_the_feature_is_shown_and_nobody_else_is_known() -> None:
    h = connected(SCOPED)
    assert "scoped-identity" in (h.core.features or ())
    assert h.core.store.scoped
    assert peers(h) == {"me-1"}
    assert not connected(FULL).core.store.scoped


def test_identity_then_join_keeps_the_identity_with_its_events_in_order() -> None:
    h = connected(SCOPED)
    h.enter("doc")
    effects = h.server(identity("p1", "Bob", "bob"))
    assert h.events(effects) == []  # not ours until the frame that needs it
    effects = h.server(joined("doc", "p1"))
    bob = Peer("p1", "bob", "Bob", False)
    assert h.events(effects) == [
        ("peer-identity", bob),
        ("peer-joined", "doc", bob),
        ("presence-changed", "doc"),
    ]
    assert peers(h) == {"me-1", "p1"}


def test_a_state_adopts_the_identities_sent_before_it() -> None:
    h = connected(SCOPED)
    h.core.enter("doc", h.now)
    h.take()
    h.server(identity("p1", "Bob"))
    h.server(identity("p2", "Eve"))
    effects = h.server(
        {"type": "doc_presence_state", "documentId": "doc", "peers": ["p1", "p2", "me-1"]}
    )
    assert [e[1].peer_id for e in h.events(effects, "peer-identity")] == ["p1", "p2"]
    assert [p.name for p in h.core.presence("doc")] == ["Bob", "Eve", h.core.me.name]  # type: ignore[union-attr]
    assert peers(h) == {"me-1", "p1", "p2"}


def test_a_peer_leaving_our_last_shared_document_is_forgotten_silently() -> None:
    h = connected(SCOPED)
    h.enter("d1")
    h.enter("d2")
    for frame in (identity("p1", "Bob"), joined("d1", "p1"), joined("d2", "p1")):
        h.server(frame)
    h.server(left("d1", "p1"))
    assert "p1" in peers(h)  # still in d2 with us
    effects = h.server(left("d2", "p1"))
    assert "p1" not in peers(h)
    assert h.events(effects, "peer-disconnected") == []
    h.server({"type": "doc_presence_state", "documentId": "d1", "peers": ["me-1"]})  # any frame
    assert h.events(h.log, "peer-disconnected") == []


def test_a_disconnect_right_after_the_last_leave_is_reported() -> None:
    h = connected(SCOPED)
    h.enter("doc")
    h.server(identity("p1", "Bob"))
    h.server(joined("doc", "p1"))
    h.server(left("doc", "p1"))
    assert "p1" not in peers(h)
    effects = h.server(gone("p1"))
    assert h.events(effects) == [("peer-disconnected", Peer("p1", None, "Bob", True))]
    # Only for the frame right after: a late one for a forgotten peer says nothing.
    h.server(identity("p2", "Eve"))
    h.server(joined("doc", "p2"))
    h.server(left("doc", "p2"))
    h.server(left("doc", "p9"))
    assert h.events(h.server(gone("p2")), "peer-disconnected") == []


def test_an_identity_for_no_frame_of_ours_is_not_kept() -> None:
    h = connected(SCOPED)
    h.enter("doc")
    h.server(identity("p1", "Bob"))
    h.server(joined("elsewhere", "p1"))  # a document we do not track (we left it)
    assert peers(h) == {"me-1"}
    assert h.core.store.incoming == {}


def test_a_message_from_a_stranger_names_it_without_keeping_it() -> None:
    h = connected(SCOPED)
    h.enter("doc")
    h.server(identity("p7", "Stranger"))
    effects = h.ephemeral("p7", "s7", 1, "doc", {"hi": 1})
    (event,) = h.events(effects, "ephemeral-message")
    assert event == ("ephemeral-message", "doc", Peer("p7", None, "Stranger", True), {"hi": 1})
    assert peers(h) == {"me-1"}
    effects = h.ephemeral("p7", "s7", 2, "doc", {"hi": 2})  # not introduced again
    assert h.events(effects, "ephemeral-message")[0][2] == Peer.unknown("p7")


def test_leaving_a_document_forgets_the_peers_known_only_from_it() -> None:
    h = connected(SCOPED)
    h.enter("d1")
    h.enter("d2")
    for frame in (
        identity("p1", "Bob"),
        joined("d1", "p1"),
        identity("p2", "Eve"),
        joined("d1", "p2"),
        joined("d2", "p2"),
    ):
        h.server(frame)
    h.core.leave("d1", h.now)
    effects = h.take()
    assert peers(h) == {"me-1", "p2"}
    assert h.events(effects, "peer-disconnected") == []


def test_expired_from_a_document_forgets_who_was_there_until_back() -> None:
    h = connected(SCOPED)
    h.enter("doc")
    h.server(identity("p1", "Bob"))
    h.server(joined("doc", "p1"))
    h.server(left("doc", "me-1"))  # the relay expired us: it tells us nothing more there
    assert h.core.presence("doc") == ()
    assert peers(h) == {"me-1"}
    sent = h.sent(h.advance(0.01))  # and it joins again at once
    assert [f["payload"]["status"] for f in sent if f["type"] == "ephemeral"] == ["join"]


@pytest.mark.parametrize("features", [FULL, SCOPED])
def test_the_same_application_view_under_both_scopes(features: list[str]) -> None:
    """What an application sees of a document is the same in both scopes."""
    h = connected(features)
    h.enter("doc")
    if features is FULL:
        h.server(identity("p1", "Bob"))  # global: at connect time, whatever comes next
        h.server(identity("p2", "Eve"))
    for pid, name in (("p1", "Bob"), ("p2", "Eve")):
        if features is SCOPED:
            h.server(identity(pid, name))
        h.server(joined("doc", pid))
    assert [p.name for p in h.core.presence("doc")] == [h.core.me.name, "Bob", "Eve"]  # type: ignore[union-attr]
    h.server(left("doc", "p1"))
    h.server(gone("p1"))
    assert [p.name for p in h.core.presence("doc")] == [h.core.me.name, "Eve"]  # type: ignore[union-attr]
    assert [e[1].peer_id for e in h.events(h.log, "peer-disconnected")] == ["p1"]
    assert peers(h) == {"me-1", "p2"}


def test_identities_of_a_left_document_linger_until_the_server_has_the_leave() -> None:
    """The client forgets a document when the application leaves it; until the
    server has that leave it still counts us there, and may name its peers
    to us elsewhere without sending their identity again."""
    h = connected(SCOPED)
    h.enter("d1")
    h.enter("d2")
    h.server(identity("p1", "Bob"))
    h.server(joined("d1", "p1"))
    h.core.leave("d1", h.now)
    h.take()
    assert "p1" not in peers(h)
    effects = h.server(joined("d2", "p1"))  # no identity: the server thinks we know it
    bob = Peer("p1", None, "Bob", True)
    assert h.events(effects)[:2] == [("peer-identity", bob), ("peer-joined", "d2", bob)]
    assert "p1" in peers(h)
    # Lingering identities go after a while, unseen.
    h.enter("d3")
    h.server(identity("p2", "Eve"))
    h.server(joined("d3", "p2"))
    h.core.leave("d3", h.now)
    h.take()
    assert h.core.store.lingering
    h.advance(11.0)
    assert h.core.store.lingering == {}
    effects = h.server(joined("d2", "p2"))
    assert h.events(effects, "peer-joined") == [("peer-joined", "d2", Peer.unknown("p2"))]


def test_while_a_leave_is_on_its_way_any_identity_forgotten_lingers() -> None:
    """We left d1 (the server does not know yet); the peer then leaves d2, our
    last other document with it, and joins d3: the server, still counting us
    in d1, sends no identity with that join."""
    h = connected(SCOPED)
    for doc in ("d1", "d2", "d3"):
        h.enter(doc)
    h.server(identity("p1", "Bob"))
    for doc in ("d1", "d2"):
        h.server(joined(doc, "p1"))
    h.core.leave("d1", h.now)
    h.take()
    assert "p1" in peers(h)  # still in d2 with us
    h.server(left("d2", "p1"))
    assert "p1" not in peers(h)
    effects = h.server(joined("d3", "p1"))
    assert h.events(effects, "peer-joined") == [
        ("peer-joined", "d3", Peer("p1", None, "Bob", True))
    ]
    assert "p1" in peers(h)


def test_an_identity_sent_for_a_document_we_just_left_lingers() -> None:
    """The server, not having our leave of d1 yet, introduces a peer with its
    join there (ignored: we left), then names it in d2 as a peer we know."""
    h = connected(SCOPED)
    h.enter("d1")
    h.enter("d2")
    h.core.leave("d1", h.now)
    h.take()
    h.server(identity("p1", "Bob"))
    h.server(joined("d1", "p1"))
    effects = h.server(joined("d2", "p1"))
    assert h.events(effects, "peer-joined") == [
        ("peer-joined", "d2", Peer("p1", None, "Bob", True))
    ]
    assert "p1" in peers(h)
