"""ClientCore against a hostile or broken server, in simulated time (coreharness.py):
when a silent connection is dead, the bounds on what a server can make a
client hold, and presence announced once per batch of frames.

The same findings end to end, on a real socket, with the bounds measured:
``tests/reliability/test_hostile_server.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from ratatoskr_client import ConnectionClosed, ProtocolError
from ratatoskr_client.core.batches import ANNOUNCE_SPACING, THROTTLE_PEERS
from ratatoskr_client.core.outbox import Drop, Ping
from ratatoskr_client.status import ConnectionState

from .coreharness import Harness


def of_type(effects: list[Any], kind: type) -> list[Any]:
    return [e for e in effects if type(e) is kind]


def join(doc: str, peer: str) -> dict[str, Any]:
    return {"type": "peer_joined_doc", "documentId": doc, "peerId": peer}


def identity(peer: str) -> dict[str, Any]:
    return {
        "type": "peer_identity",
        "peerId": peer,
        "user": {"id": None, "name": peer, "isAnonymous": True},
    }


def errors(effects: list[Any]) -> list[Exception]:
    return [e[1] for e in Harness.events(effects, "error")]


# --------------------------------------------------------------------------- liveness


def test_a_silent_server_is_pinged_then_declared_dead_at_one_and_a_half_intervals():
    h = Harness(ping_interval=10)
    h.pongs = False  # the server says nothing, whatever it is sent
    h.connect()
    connected = h.now
    assert of_type(h.advance(9.99), Ping) == []
    assert len(of_type(h.advance(0.01), Ping)) == 1  # 10 s without a whole frame
    assert of_type(h.advance(4.99), Drop) == []
    effects = h.advance(0.02)  # 15 s, then one timer step to look again
    (drop,) = of_type(effects, Drop)
    assert h.now - connected == pytest.approx(15.01)
    assert "no whole frame and no pong for 15" in str(drop.reason)
    assert of_type(effects, Ping) == []  # one ping per silence, not one per check
    # The driver closes the socket and reports it lost; the core's reason wins.
    h.core.connection_lost(ConnectionClosed("server closed the connection (code 1006)"), h.now)
    effects = h.take()
    assert [e[1] for e in h.events(effects, "disconnected")] == [drop.reason]
    assert h.core.state is ConnectionState.RECONNECTING
    assert of_type(h.advance(100), Ping) == []  # nothing to watch while disconnected


def test_whole_frames_and_pongs_keep_a_connection_alive():
    h = Harness(ping_interval=10)
    h.connect()  # pongs answered at once: a live, idle server
    effects = h.advance(1000)
    assert len(of_type(effects, Ping)) == 100  # one per interval of silence
    assert of_type(effects, Drop) == []
    h.pongs = False
    for _ in range(50):  # traffic every 9 s: never silent long enough to ping
        effects = h.advance(9)
        h.server(identity("someone"))
        assert of_type(effects, Ping) == [] and of_type(effects, Drop) == []
    h.core.heard(h.now)  # a ping or a pong from the server counts too
    assert of_type(h.advance(14.9), Drop) == []
    assert of_type(h.advance(0.2), Drop) != []


def test_a_frame_handled_late_after_a_stalled_loop_still_counts():
    # The loop was blocked past the deadline: the timer fires before the
    # receive loop handles what arrived meanwhile. The core looks again one
    # timer step later, and by then the frame has been handled.
    h = Harness(ping_interval=10)
    h.pongs = False
    h.connect()
    h.take()
    h.now += 30  # the timer is 15 s late
    h.core.on_timer(h.now)
    assert of_type(h.take(), Drop) == []
    h.server(identity("late"))  # the receive loop's turn
    h.wake = h.now + 0.001
    assert of_type(h.advance(1), Drop) == []
    assert h.core.state is ConnectionState.CONNECTED


def test_without_ping_interval_nothing_is_ever_declared_dead():
    h = Harness(ping_interval=None)
    h.pongs = False
    h.connect()
    effects = h.advance(10_000)
    assert of_type(effects, Ping) == [] and of_type(effects, Drop) == []


def test_every_connection_is_watched_afresh():
    h = Harness(ping_interval=10)
    h.pongs = False
    h.connect()
    h.advance(20)
    h.core.connection_lost(ConnectionClosed("dropped"), h.now)
    h.take()
    h.connect()  # the verdict on the old connection says nothing about this one
    assert of_type(h.advance(14.9), Drop) == []
    assert of_type(h.advance(0.2), Drop) != []


def test_a_connection_lost_to_an_oversized_frame_is_a_protocol_error_too():
    h = Harness()
    h.connect()
    problem = ProtocolError("the server sent a frame of 9,000,051 bytes, more than ...")
    reason = ConnectionClosed(str(problem), code=1009)
    reason.__cause__ = problem
    h.core.connection_lost(reason, h.now)
    effects = h.take()
    assert [name for name, *_ in h.events(effects) if name in ("error", "disconnected")] == [
        "error",
        "disconnected",
    ]
    assert errors(effects) == [problem]
    assert h.core.state is ConnectionState.RECONNECTING


# --------------------------------------------------------------------------- bounds


def test_a_presence_state_over_the_bound_is_refused_whole():
    h = Harness(max_presence_peers=3)
    h.connect()
    h.enter("doc", ["me-1", "a"])
    before = h.core.presence("doc")
    effects = h.server(
        {"type": "doc_presence_state", "documentId": "doc", "peers": ["me-1", "a", "b", "c"]}
    )
    (error,) = errors(effects)
    assert isinstance(error, ProtocolError)
    assert "4 peers in 'doc', more than a client holds (3)" in str(error)
    assert h.core.presence("doc") == before  # nothing of it applied
    assert h.events(effects, "presence-changed") == []
    # At the bound it is an ordinary frame.
    h.server({"type": "doc_presence_state", "documentId": "doc", "peers": ["me-1", "a", "b"]})
    assert h.presence_ids("doc") == ["me-1", "a", "b"]


def test_a_refused_presence_state_confirms_nothing():
    h = Harness(max_presence_peers=2)
    h.connect()
    waiter = h.core.enter("doc", h.now)
    h.take()
    effects = h.server(
        {"type": "doc_presence_state", "documentId": "doc", "peers": ["me-1", "a", "b"]}
    )
    assert isinstance(errors(effects)[0], ProtocolError)
    assert waiter not in h.finished(effects)  # still waiting (request_timeout ends it)
    assert h.core.docs.by_state()["entering"] == ("doc",)
    effects = h.server({"type": "doc_presence_state", "documentId": "doc", "peers": ["me-1"]})
    assert h.finished(effects) == {waiter: (h.core.me,)}


def test_joins_beyond_the_bound_are_refused_and_a_leave_makes_room():
    h = Harness(max_presence_peers=3)
    h.connect()
    h.enter("doc", ["me-1", "a"])
    effects = h.batch(join("doc", "b"), join("doc", "c"))
    assert h.presence_ids("doc") == ["me-1", "a", "b"]
    (error,) = errors(effects)
    assert "has 3 peers present already" in str(error) and "'c'" in str(error)
    assert [e[2].peer_id for e in h.events(effects, "peer-joined")] == ["b"]
    h.server({"type": "peer_left_doc", "documentId": "doc", "peerId": "a"})
    h.server(join("doc", "c"))
    assert h.presence_ids("doc") == ["me-1", "b", "c"]


def test_identities_beyond_the_bound_are_refused_and_a_disconnect_makes_room():
    h = Harness(max_identities=3)  # we are one of them
    h.connect()
    effects = h.batch(identity("a"), identity("b"), identity("c"))
    assert sorted(h.core.store.identities) == ["a", "b", "me-1"]
    (error,) = errors(effects)
    assert "identity of 'c' refused" in str(error)
    h.server(identity("a"))  # known already: not a new entry
    h.server({"type": "peer_disconnected", "peerId": "a"})
    assert errors(h.server(identity("c"))) == []
    assert sorted(h.core.store.identities) == ["b", "c", "me-1"]


SCOPED = ["identity", "presence", "ephemeral", "scoped-identity"]


def test_identities_held_for_the_next_frame_count_toward_the_bound():
    """With scoped identities a server sends them just before the frame that
    needs them; one that sends identity after identity, and never that frame,
    is refused at the bound all the same."""
    h = Harness(max_identities=3)
    h.connect(features=SCOPED)
    h.enter("doc")
    effects = h.batch(identity("a"), identity("b"), identity("c"))
    assert sorted(h.core.store.incoming) == ["a", "b"]  # (+ us: 3)
    (error,) = errors(effects)
    assert "identity of 'c' refused" in str(error)
    h.server(identity("a"))  # held already: not a new entry
    # The frame they came for puts one in our document: kept; the other is dropped.
    effects = h.server(join("doc", "a"))
    assert [e[1].peer_id for e in h.events(effects, "peer-identity")] == ["a"]
    assert sorted(h.core.store.identities) == ["a", "me-1"] and not h.core.store.incoming


def test_lingering_identities_are_bounded_too():
    """While a leave of ours is on its way, identities the server sends for no
    frame of ours linger out of sight: no more than max_identities of them,
    however many frames bring new ones."""
    h = Harness(max_identities=3)
    h.connect(features=SCOPED)
    h.enter("doc")
    h.enter("left")
    h.core.leave("left", h.now)  # the server may still name its peers: they linger
    for n in range(10):
        h.server(identity(f"stranger-{n}"))
        h.server({"type": "doc_presence_state", "documentId": "other", "peers": []})
    assert len(h.core.store.lingering) == 3
    assert sorted(h.core.store.identities) == ["me-1"]
    h.advance(11.0)  # LINGER is over
    assert h.core.store.lingering == {}


# --------------------------------------------------------------------------- batches


def test_presence_is_announced_once_per_batch_after_the_joins():
    h = Harness()
    h.connect()
    h.enter("doc")
    waiting = h.core.wait_presence("doc")  # a wait_for_presence
    watcher = h.core.watch("doc")
    h.take()
    effects = h.batch(join("doc", "a"), join("doc", "b"), join("doc", "c"))
    names = [name for name, *_ in h.events(effects)]
    assert names == ["peer-joined"] * 3 + ["presence-changed"]
    done = h.finished(effects)
    (four,) = done[waiting]  # two or three peers lasted only within the batch: not seen
    assert [p.peer_id for p in four] == ["me-1", "a", "b", "c"]
    assert done[watcher] == [four]  # one value for the watcher too
    # Nothing changed in a batch: nothing announced.
    assert h.events(h.batch(join("doc", "a")), "presence-changed") == []


def test_a_burst_builds_the_presence_tuple_once_per_batch(monkeypatch: pytest.MonkeyPatch):
    h = Harness()
    h.connect()
    h.enter("doc")
    h.core.watch("doc")
    h.take()
    table = h.core.store._docs["doc"]
    built = 0
    snapshot = type(table).snapshot

    def counting(self: Any) -> Any:
        nonlocal built
        if self._snapshot is None and self._frozen is None:
            built += 1
        return snapshot(self)

    monkeypatch.setattr(type(table), "snapshot", counting)
    for start in range(0, 1000, 100):  # ten batches of a hundred joins
        h.batch(*(join("doc", f"p{n}") for n in range(start, start + 100)))
    assert built == 10


def test_the_ends_of_a_connection_still_announce_presence_in_order():
    h = Harness()
    h.connect()
    h.enter("doc", ["me-1", "a"])
    watcher = h.core.watch("doc")
    h.take()
    h.core.connection_lost(ConnectionClosed("gone"), h.now)
    names = [name for name, *_ in h.events(h.take())]
    assert names.index("presence-changed") < names.index("disconnected")
    h.connect()
    h.server({"type": "doc_presence_state", "documentId": "doc", "peers": ["me-2"]})
    h.core.close(h.now)
    effects = h.take()
    empty, end = h.finished(effects)[watcher][-2:]
    assert empty == () and isinstance(end, ConnectionClosed)  # empty, then the end


def test_a_large_document_is_announced_at_most_once_per_spacing_while_it_changes():
    h = Harness()
    h.connect()
    crowd = ["me-1", *(f"p{n}" for n in range(THROTTLE_PEERS - 1))]
    entering = h.core.enter("doc", h.now)
    h.enter("small")
    watcher = h.core.watch("doc")
    h.take()
    effects = h.server({"type": "doc_presence_state", "documentId": "doc", "peers": crowd})
    assert h.events(effects, "presence-changed") == [("presence-changed", "doc")]
    assert h.finished(effects)[entering] == h.core.presence("doc")  # never held back
    window = THROTTLE_PEERS * ANNOUNCE_SPACING
    # Frames one at a time (batches of one), at once: held back, then one value.
    held = h.server(join("doc", "x1")) + h.server(join("doc", "x2"))
    assert h.events(held, "presence-changed") == []
    assert [e[2].peer_id for e in h.events(held, "peer-joined")] == ["x1", "x2"]
    assert h.core.presence("doc")[-2:] == tuple(h.core.store.peer(p) for p in ("x1", "x2"))
    # A small document changing meanwhile is announced at once.
    assert h.events(h.server(join("small", "y")), "presence-changed") == [
        ("presence-changed", "small")
    ]
    effects = h.advance(window)  # the core's timer announces the latest value
    assert h.events(effects, "presence-changed") == [("presence-changed", "doc")]
    assert h.finished(effects)[watcher] == [h.core.presence("doc")]
    assert len(h.core.presence("doc")) == THROTTLE_PEERS + 2
    # Quiet for longer than its spacing: the next change is announced at once.
    h.advance(1)
    assert h.events(h.server(join("doc", "x3")), "presence-changed") != []
    # Leaving, or losing the connection, is never held back.
    h.server(join("doc", "x4"))
    h.core.leave("doc", h.now)
    assert h.events(h.take(), "presence-changed") == [("presence-changed", "doc")]
