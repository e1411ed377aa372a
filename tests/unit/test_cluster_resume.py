"""Resuming a peer on another relay of a cluster (issue 22), with real relay
cores and the in-memory stand-in for Redis of ``test_cluster_view``: the relay
a client comes back to asks the one that holds its peer, which hands it over;
nobody on any relay sees a leave or a join, and a wrong secret, no answer in
time or an answer too late never loses anyone."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest

from ratatoskr_client.server.core.relay import Connection
from ratatoskr_client.server.core.resume import CLAIM_TIMEOUT

from .test_cluster_view import Hub, Node, Outbox

A, B, C = "aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"
EVENTS = ("peer_joined_doc", "peer_left_doc", "peer_disconnected")


def resumable(node: Node) -> tuple[Connection, str]:
    conn = node.core.open(Outbox())
    node.core.receive(conn, cbor2.dumps({"type": "auth", "anonymous": True, "resume": True}))
    ok = outbox(conn).frames[0]
    assert ok["type"] == "auth_ok" and ok["resumeSecret"]
    node.peers[conn.peer_id] = conn
    return conn, ok["resumeSecret"]


def resume(node: Node, peer_id: str, secret: str) -> Connection:
    conn = node.core.open(Outbox())
    auth = {"type": "auth", "anonymous": True, "resume": {"peerId": peer_id, "secret": secret}}
    node.core.receive(conn, cbor2.dumps(auth))
    return conn


def say(node: Node, conn: Connection, doc: str, payload: Any) -> None:
    """An ephemeral message from a resumed client: on its new connection it
    uses a new sessionId, as every client does."""
    node.ephemeral(conn, doc, payload, sessionId=f"again-{conn.peer_id}")


def rejoin(node: Node, conn: Connection, doc: str) -> None:
    say(node, conn, doc, {"type": "presence", "status": "join", "documentId": doc})


def outbox(conn: Connection) -> Outbox:
    assert isinstance(conn.outbox, Outbox)
    return conn.outbox


def events(conn: Connection, since: int) -> list[dict[str, Any]]:
    return [f for f in outbox(conn).frames[since:] if f["type"] in EVENTS]


def state_of(conn: Connection, doc: str, peer_id: str) -> Any:
    """The last state snapshot ``conn`` was sent for ``peer_id`` in ``doc``."""
    found = None
    for f in outbox(conn).frames:
        if f["type"] == "ephemeral" and f["senderId"] == peer_id and f["documentId"] == doc:
            payload = cbor2.loads(f["data"])
            if isinstance(payload, dict) and "__presence" in payload:
                found = payload["__presence"].get("state", found)
    return found


@pytest.fixture(params=["global", "document"])
def any_hub(request: pytest.FixtureRequest) -> Hub:
    """Nodes in either identity scope."""
    return Hub(request.param)


@pytest.fixture
def world(any_hub: Hub) -> tuple[Hub, list[Node], Connection, str, list[Connection]]:
    """Three relays; a resumable bot on A with state in "doc"; a watcher on each."""
    hub = any_hub
    nodes = [hub.add(A), hub.add(B), hub.add(C)]
    bot, secret = resumable(nodes[0])
    hub.pump()
    watchers = [n.connect() for n in nodes]
    hub.pump()
    for node, conn in [(nodes[0], bot), *zip(nodes, watchers, strict=True)]:
        node.presence(conn, "doc", "join")
        hub.pump()
    nodes[0].ephemeral(
        bot, "doc", {"__presence": {"type": "snapshot", "state": {"cursor": [1, 2]}}}
    )
    hub.pump()
    hub.settle()
    return hub, nodes, bot, secret, watchers


def test_a_peer_resumed_on_another_relay_is_the_same_peer_to_everyone(world: Any) -> None:
    hub, (a, b, c), bot, secret, watchers = world
    name = bot.name
    marks = [len(outbox(w).frames) for w in watchers]
    a.core.close(bot, clean=False)  # dropped: held on A
    back = resume(b, bot.peer_id, secret)
    assert outbox(back).frames == []  # parked: B asks A
    hub.pump()
    ok = outbox(back).frames[0]
    assert ok["type"] == "auth_ok" and ok["resumed"] is True
    assert ok["clientPeerId"] == bot.peer_id and ok["user"]["name"] == name
    assert ok["documents"] == ["doc"] and ok["resumeSecret"] != secret
    b.peers[back.peer_id] = back
    del a.peers[bot.peer_id]
    # The bot is B's now, A's no more; every relay sees it on B.
    assert bot.peer_id in b.core.presence("doc") and bot.peer_id not in a.core.presence("doc")
    assert a.core.away() == () and a.core.peer(bot.peer_id) is None
    assert (a.core.counters.resumes, b.core.counters.resumes) == (
        {"handed_over": 1},
        {"adopted": 1},
    )
    for node in (a, c):
        assert node.view.remote.holder(bot.peer_id) == B
    assert hub.peers[A].get(bot.peer_id) is None and bot.peer_id in hub.peers[B]
    # Its client joins again and speaks: nobody saw it leave or join.
    rejoin(b, back, "doc")
    say(b, back, "doc", {"__presence": {"type": "update", "channel": "cursor", "value": 3}})
    hub.pump()
    hub.check(["doc"])
    for watcher, mark in zip(watchers, marks, strict=True):
        assert events(watcher, mark) == []
    assert [m for m in outbox(watchers[0]).messages("doc") if m[0] == bot.peer_id]
    # Its state was handed over: a newcomer on B is replayed it at once.
    newcomer = b.connect()
    b.presence(newcomer, "doc", "join")
    hub.pump()
    assert state_of(newcomer, "doc", bot.peer_id) == {"cursor": 3}
    # Past A's grace nothing happens any more; a clean close on B is a leave for all.
    marks = [len(outbox(w).frames) for w in watchers]  # (the newcomer's join is seen)
    hub.now += a.core.resumption.grace + 1  # (within the presence TTL)
    a.core.on_timer()
    hub.pump()
    assert all(events(w, m) == [] for w, m in zip(watchers, marks, strict=True))
    b.close(back)
    hub.pump()
    for watcher, mark in zip(watchers, marks, strict=True):
        assert [f["type"] for f in events(watcher, mark)][:1] == ["peer_left_doc"]


def test_a_wrong_secret_gets_a_new_peer_and_takes_nobody_over(world: Any) -> None:
    hub, (a, b, _c), bot, secret, _watchers = world
    a.core.close(bot, clean=False)
    thief = resume(b, bot.peer_id, "not-" + secret)
    hub.pump()
    ok = outbox(thief).frames[0]
    assert ok["type"] == "auth_ok" and ok["clientPeerId"] != bot.peer_id
    assert "resumed" not in ok
    assert a.core.away() == (bot.peer_id,)  # still held for its real client
    back = resume(b, bot.peer_id, secret)
    hub.pump()
    assert outbox(back).frames[0]["clientPeerId"] == bot.peer_id
    assert b.core.counters.resumes == {"refused": 1, "adopted": 1}


def test_no_answer_in_time_is_a_new_peer_and_a_late_handover_a_leave(world: Any) -> None:
    hub, (a, b, _c), bot, secret, watchers = world
    marks = [len(outbox(w).frames) for w in watchers]
    a.core.close(bot, clean=False)
    back = resume(b, bot.peer_id, secret)  # A does not answer (its claim stays queued)
    hub.now += CLAIM_TIMEOUT
    b.core.on_timer()
    ok = outbox(back).frames[0]
    assert ok["type"] == "auth_ok" and ok["clientPeerId"] != bot.peer_id
    b.peers[back.peer_id] = back
    hub.pump()  # A answers after all: the peer it hands over leaves, for everyone
    assert a.core.peer(bot.peer_id) is None and b.core.peer(bot.peer_id) is None
    for watcher, mark in zip(watchers, marks, strict=True):
        assert [f["peerId"] for f in events(watcher, mark) if f["type"] == "peer_left_doc"] == [
            bot.peer_id
        ]
    del a.peers[bot.peer_id]
    hub.check(["doc"])
    assert b.core.counters.resumes == {"timed_out": 1, "late": 1}


def test_frames_sent_while_the_claim_is_out_are_handled_after_it(world: Any) -> None:
    hub, (a, b, _c), bot, secret, _watchers = world
    a.core.close(bot, clean=False)
    back = resume(b, bot.peer_id, secret)
    rejoin(b, back, "doc")  # parked behind the auth
    assert outbox(back).frames == []
    hub.pump()
    kinds = [f["type"] for f in outbox(back).frames]
    assert kinds[0] == "auth_ok" and "doc_presence_state" in kinds and "error" not in kinds


def test_a_claimant_that_closes_while_it_waits_loses_nothing(world: Any) -> None:
    # Its connection to B drops while A answers: the peer is held on B, and
    # its client may resume it there with the secret it still has.
    hub, (a, b, _c), bot, secret, watchers = world
    marks = [len(outbox(w).frames) for w in watchers]
    a.core.close(bot, clean=False)
    first = resume(b, bot.peer_id, secret)
    b.core.close(first, clean=False)
    hub.pump()
    assert b.core.away() == (bot.peer_id,) and a.core.peer(bot.peer_id) is None
    back = resume(b, bot.peer_id, secret)  # on B itself now
    ok = outbox(back.successor or back).frames[0]
    assert ok["type"] == "auth_ok" and ok["resumed"] is True and ok["clientPeerId"] == bot.peer_id
    hub.pump()
    assert all(events(w, m) == [] for w, m in zip(watchers, marks, strict=True))


def test_a_claimant_that_closes_and_is_never_answered_leaves_no_trace(world: Any) -> None:
    hub, (a, b, _c), bot, secret, _watchers = world
    before = b.core.stats()
    a.core.close(bot, clean=False)
    gone = resume(b, bot.peer_id, secret)
    b.core.close(gone, clean=False)
    hub.now += CLAIM_TIMEOUT
    b.core.on_timer()
    assert b.core.stats() == before  # no peer made for a closed connection
    assert a.core.away() == (bot.peer_id,)  # A never heard (its claim is unread): still held


def test_a_peer_whose_old_socket_the_holder_still_has_open_moves_too(world: Any) -> None:
    # The holder has not noticed the drop yet: it hands the peer over all the
    # same, and the old socket's close, when it comes, changes nothing.
    hub, (a, b, _c), bot, secret, watchers = world
    marks = [len(outbox(w).frames) for w in watchers]
    old = bot.outbox
    back = resume(b, bot.peer_id, secret)
    hub.pump()
    assert outbox(back).frames[0]["resumed"] is True
    a.core.close(bot, clean=False, outbox=old)  # (what the socket's end does, later)
    hub.now += a.core.resumption.grace + 1
    a.core.on_timer()
    hub.pump()
    assert a.core.stats().peers == 1 and a.core.away() == ()  # its watcher only
    assert all(events(w, m) == [] for w, m in zip(watchers, marks, strict=True))


@pytest.mark.parametrize("churn", ["none", "leave-join", "leave", "join-other"])
def test_a_watcher_resumed_after_an_adopted_peer_churned_sees_it_right(
    any_hub: Hub, churn: str
) -> None:
    # The shape of the cluster chaos test's failures: a watcher held on B while
    # a peer from A resumed on B (and changed its documents there); the watcher
    # resumes too and joins again.
    hub = any_hub
    a, b = hub.add(A), hub.add(B)
    bot, bot_secret = resumable(a)
    watcher, watcher_secret = resumable(b)
    hub.pump()
    for node, conn in ((a, bot), (b, watcher)):
        node.presence(conn, "doc", "join")
        hub.pump()
    hub.settle()
    b.core.close(watcher, clean=False)  # held on B
    a.core.close(bot, clean=False)  # held on A
    moved = resume(b, bot.peer_id, bot_secret)
    hub.pump()
    b.peers[moved.peer_id] = moved
    del a.peers[bot.peer_id]
    rejoin(b, moved, "doc")
    hub.pump()
    if churn in ("leave-join", "leave"):
        say(b, moved, "doc", {"type": "presence", "status": "leave", "documentId": "doc"})
        hub.pump()
    if churn == "leave-join":
        rejoin(b, moved, "doc")
        hub.pump()
    if churn == "join-other":
        rejoin(b, moved, "other")
        hub.pump()
    back = resume(b, watcher.peer_id, watcher_secret)
    hub.pump()
    assert back.successor is watcher
    rejoin(b, watcher, "doc")
    hub.pump()
    hub.settle()
    present = {watcher.peer_id} | ({bot.peer_id} if churn != "leave" else set())
    assert set(outbox(watcher).presence("doc")) == present
    # Its client forgot every identity when its socket dropped: told again.
    told = {f["peerId"] for f in outbox(watcher).frames if f["type"] == "peer_identity"}
    assert present - {watcher.peer_id} <= told


def test_a_peer_adopted_while_its_document_holds_changes_is_shown_to_a_joiner(
    any_hub: Hub,
) -> None:
    # The cluster chaos test's case: on B, "doc" held a presence change (a peer
    # toggling fast) when the bot arrived from A. A peer that joined "doc" on B
    # in that window was told who is there without the bot, and nothing ever
    # told it the bot was there (the others knew it already: no event).
    hub = any_hub
    a, b = hub.add(A), hub.add(B)
    bot, bot_secret = resumable(a)
    hub.pump()
    a.presence(bot, "doc", "join")
    hub.pump()
    toggler = b.connect()
    for status in ("join", "leave", "join"):  # the third change within the window is held
        b.presence(toggler, "doc", status)
        hub.pump()
    assert b.core.held_documents()
    a.core.close(bot, clean=False)
    moved = resume(b, bot.peer_id, bot_secret)
    hub.pump()
    assert outbox(moved).frames[0]["resumed"] is True
    b.peers[moved.peer_id] = moved
    del a.peers[bot.peer_id]
    joiner = b.connect()
    hub.pump()
    b.presence(joiner, "doc", "join")
    hub.pump()
    hub.settle()
    assert set(outbox(joiner).presence("doc")) == {bot.peer_id, toggler.peer_id, joiner.peer_id}
