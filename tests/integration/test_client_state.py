"""Per-peer state (set_state / state / state-changed) and the peer-to-peer mode,
between real clients on the in-process relay (issue 7).

The same messages against stock automerge-repo peers are in tests/interop/.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from ratatoskr_client import PayloadError, Peer, PresenceUnsupported, RatatoskrClient

from .fakeserver import Recorder, abort_transport

TIMEOUT = 5.0
States = Mapping[str, Mapping[str, Any]]


async def wait_state(
    client: RatatoskrClient, doc: str, predicate: Callable[[States], bool]
) -> States:
    """Wait, on state-changed events, until predicate(client.state(doc)) holds."""
    if predicate(client.state(doc)):
        return client.state(doc)
    done: asyncio.Future[States] = asyncio.get_running_loop().create_future()

    def check(doc_id: str, peer: Peer, state: Mapping[str, Any]) -> None:
        if doc_id == doc and not done.done() and predicate(client.state(doc)):
            done.set_result(client.state(doc))

    client.on("state-changed", check)
    try:
        return await asyncio.wait_for(done, TIMEOUT)
    except TimeoutError:
        raise AssertionError(f"state never matched: {dict(client.state(doc))}") from None
    finally:
        client.off("state-changed", check)


def has(peer_id: str, expected: Mapping[str, Any]) -> Callable[[States], bool]:
    return lambda states: dict(states.get(peer_id) or {}) == dict(expected)


def channel_values(recorder: Recorder, peer_id: str, channel: str) -> list[Any]:
    """Each value of ``channel`` a peer's state took, in the order the
    ``state-changed`` events reported them (one per Presence message that
    changed it)."""
    values = [
        dict(state)[channel]
        for _, peer, state in recorder.of("state-changed")
        if peer.peer_id == peer_id and channel in state
    ]
    return [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]


# --------------------------------------------------------------------------- server mode


async def test_state_is_shared_merged_and_reported(ratatoskr_client):
    a = await ratatoskr_client()
    b = await ratatoskr_client()
    await a.enter_document("doc")
    await b.enter_document("doc")
    changes: list[tuple[str, Peer, dict[str, Any]]] = []
    b.on("state-changed", lambda d, peer, state: changes.append((d, peer, dict(state))))

    assert a.state("doc") == {}  # nothing shared until set_state
    await a.set_state("doc", "cursor", [1, 2])
    # Our own state is visible at once, with the default display name.
    assert a.state("doc")[a.me.peer_id] == {"name": a.me.name, "cursor": [1, 2]}
    await wait_state(b, "doc", has(a.me.peer_id, {"name": a.me.name, "cursor": [1, 2]}))
    await a.set_state("doc", "status", "typing")  # merged, not replaced
    await wait_state(
        b, "doc", has(a.me.peer_id, {"name": a.me.name, "cursor": [1, 2], "status": "typing"})
    )
    doc_id, peer, state = changes[-1]
    assert (doc_id, peer) == ("doc", a.me)  # the server's identity for the sender
    assert state["status"] == "typing"
    # b shares nothing, so a knows nothing about b's state.
    assert b.me.peer_id not in a.state("doc")


async def test_a_late_joiner_learns_state_from_the_reannounce(ratatoskr_client):
    a = await ratatoskr_client()
    await a.enter_document("doc")
    await a.set_state("doc", "name", "early-bird")
    b = await ratatoskr_client()
    await b.enter_document("doc")
    await b.set_state("doc", "name", "late")  # b's snapshot is news to a: a re-announces
    await wait_state(b, "doc", has(a.me.peer_id, {"name": "early-bird"}))
    await wait_state(a, "doc", has(b.me.peer_id, {"name": "late"}))


async def test_state_set_before_entering_goes_out_with_the_snapshot(ratatoskr_client):
    a = await ratatoskr_client()
    b = await ratatoskr_client()
    await b.enter_document("doc")
    await a.set_state("doc", "cursor", [9, 9])  # not entered yet: kept
    await a.enter_document("doc")
    await wait_state(b, "doc", has(a.me.peer_id, {"name": a.me.name, "cursor": [9, 9]}))


async def test_two_hundred_updates_a_second_are_coalesced_and_the_last_arrives(ratatoskr_client):
    interval = 0.05
    a = await ratatoskr_client(state_interval=interval)
    b = await ratatoskr_client()
    rec_b = Recorder(b)
    await a.enter_document("doc")
    await b.enter_document("doc")
    await a.set_state("doc", "cursor", -1)
    await wait_state(b, "doc", has(a.me.peer_id, {"name": a.me.name, "cursor": -1}))

    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(200):  # a cursor moving at 200 Hz for one second
        await a.set_state("doc", "cursor", i)
        await asyncio.sleep(max(0.0, start + (i + 1) / 200 - loop.time()))
    elapsed = loop.time() - start
    await wait_state(b, "doc", has(a.me.peer_id, {"name": a.me.name, "cursor": 199}))

    sent = channel_values(rec_b, a.me.peer_id, "cursor")[1:]  # after the -1 of the snapshot
    assert sent[-1] == 199  # the last value always arrives
    assert len(sent) <= (elapsed + interval) / interval + 1  # at most one per interval
    assert len(sent) >= 5  # and it really streams, not just the final value
    assert sent == sorted(sent)  # in order, never an older value after a newer one


async def test_busy_state_never_trips_the_rate_limit(ratatoskr_client, ratatoskr_relay):
    # 600 updates at 200 Hz with a 600/min limit on both sides: coalescing keeps
    # the message rate under the limit, so the relay never has to refuse one.
    a = await ratatoskr_client()
    errors = Recorder(a)
    await a.enter_document("doc")
    for i in range(600):
        await a.set_state("doc", "cursor", i)
        await asyncio.sleep(0.005)
    b = await ratatoskr_client()
    await b.enter_document("doc")
    await b.set_state("doc", "name", "probe")  # makes a re-announce its full state
    await wait_state(b, "doc", has(a.me.peer_id, {"name": a.me.name, "cursor": 599}))
    assert errors.of("error") == []


async def test_state_is_forgotten_when_the_peer_leaves(ratatoskr_client):
    a = await ratatoskr_client()
    b = await ratatoskr_client()
    await a.enter_document("doc")
    await b.enter_document("doc")
    await a.set_state("doc", "cursor", [1, 1])
    await wait_state(b, "doc", has(a.me.peer_id, {"name": a.me.name, "cursor": [1, 1]}))
    gone: list[Mapping[str, Any]] = []
    b.on("state-changed", lambda d, p, state: gone.append(state) if p == a.me else None)
    await a.leave_document("doc")  # sends goodbye, then leaves
    await wait_state(b, "doc", lambda s: a.me.peer_id not in s)
    assert dict(gone[-1]) == {}
    assert a.state("doc") == {}


async def test_state_of_a_crashed_peer_goes_with_its_presence(ratatoskr_client):
    a = await ratatoskr_client(reconnect=False)
    b = await ratatoskr_client()
    await a.enter_document("doc")
    await b.enter_document("doc")
    await a.set_state("doc", "cursor", [5, 5])
    await wait_state(b, "doc", has(a.me.peer_id, {"name": a.me.name, "cursor": [5, 5]}))
    abort_transport(a)  # no goodbye: the relay's peer_left_doc clears it
    await wait_state(b, "doc", lambda s: a.me.peer_id not in s)


async def test_state_is_restored_after_a_reconnect(ratatoskr_client, ratatoskr_relay):
    a = await ratatoskr_client()
    b = await ratatoskr_client()
    for c in (a, b):
        await c.enter_document("doc")
        await c.set_state("doc", "name", f"client-{id(c)}")
    await wait_state(b, "doc", has(a.me.peer_id, {"name": f"client-{id(a)}"}))
    await ratatoskr_relay.stop()
    await b.wait_for_presence("doc", lambda p: p == (), timeout=TIMEOUT)
    assert b.state("doc") == {}  # no connection, no peers' state (ours is kept)
    await ratatoskr_relay.start()
    await a.wait_for_presence("doc", lambda p: len(p) == 2, timeout=TIMEOUT)
    await b.wait_for_presence("doc", lambda p: len(p) == 2, timeout=TIMEOUT)
    await wait_state(b, "doc", has(a.me.peer_id, {"name": f"client-{id(a)}"}))
    await wait_state(a, "doc", has(b.me.peer_id, {"name": f"client-{id(b)}"}))


@pytest.mark.parametrize(
    ("channel", "value", "error"),
    [
        ("", 1, ValueError),
        ("cursor", object(), PayloadError),
        ("blob", b"x" * 70_000, PayloadError),
    ],
)
async def test_set_state_bad_input(ratatoskr_client, channel, value, error):
    a = await ratatoskr_client()
    with pytest.raises(error):
        await a.set_state("doc", channel, value)


async def test_the_name_a_peer_chose_and_the_name_the_server_gave(ratatoskr_client):
    a = await ratatoskr_client(name="alpha")
    b = await ratatoskr_client()
    # The relay names anonymous peers; the name a client chose is its own.
    assert (a.me.chosen_name, b.me.chosen_name) == ("alpha", None)
    assert a.me.name != "alpha"
    # The one name to show: the chosen one, else the server's.
    assert (a.me.display_name, b.me.display_name) == ("alpha", b.me.name)
    await a.enter_document("doc")
    await b.enter_document("doc")
    await a.set_state("doc", "cursor", [1, 1])
    # Shared state carries the chosen name (what automerge-repo apps show)...
    await wait_state(b, "doc", has(a.me.peer_id, {"name": "alpha", "cursor": [1, 1]}))
    # ...and the Peer shows both: the server's name and the chosen one.
    seen = b.peers[a.me.peer_id]
    assert (seen.name, seen.chosen_name) == (a.me.name, "alpha")
    assert seen.display_name == "alpha"
    assert b.peers[b.me.peer_id].display_name == b.me.name  # chose none: the server's
    assert seen == a.me  # the same identity, whatever it calls itself
    assert next(p for p in b.presence("doc") if p == a.me).chosen_name == "alpha"
    # state() is plain and read-only, and prints like a dict.
    states = b.state("doc")
    assert repr(states) == repr({a.me.peer_id: {"name": "alpha", "cursor": [1, 1]}})
    with pytest.raises(TypeError):
        states[a.me.peer_id]["name"] = "mallory"  # type: ignore[index]


# --------------------------------------------------------------------------- peer-to-peer


@pytest.mark.ratatoskr_relay(server_presence=False)
async def test_peer_to_peer_presence_between_python_clients(ratatoskr_client):
    a = await ratatoskr_client(name="Ada", state_heartbeat=0.2, state_ttl=1.0)
    b = await ratatoskr_client(name="Bob", state_heartbeat=0.2, state_ttl=1.0)
    assert not a.server_presence
    assert a.me.name == "Ada"  # the server gave no name: ours is used
    assert await a.enter_document("amdoc") == (a.me,)
    await b.enter_document("amdoc")
    peers = await a.wait_for_presence("amdoc", lambda p: len(p) == 2, timeout=TIMEOUT)
    assert [p.name for p in peers] == ["Ada", "Bob"]  # names come from the peers' state
    peers = await b.wait_for_presence("amdoc", lambda p: len(p) == 2, timeout=TIMEOUT)
    assert [p.name for p in peers] == ["Bob", "Ada"]
    assert a.peers[b.me.peer_id].name == "Bob"

    await b.set_state("amdoc", "cursor", [3, 4])
    await wait_state(a, "amdoc", has(b.me.peer_id, {"name": "Bob", "cursor": [3, 4]}))

    # Renaming shows in presence too.
    await b.set_state("amdoc", "name", "Bobby")
    await a.wait_for_presence(
        "amdoc", lambda p: [x.name for x in p] == ["Ada", "Bobby"], timeout=TIMEOUT
    )

    # A goodbye (leave) removes b at once.
    await b.leave_document("amdoc")
    assert await a.wait_for_presence("amdoc", lambda p: len(p) == 1, timeout=TIMEOUT) == (a.me,)
    assert b.me.peer_id not in a.peers


@pytest.mark.ratatoskr_relay(server_presence=False)
async def test_peer_to_peer_silent_peer_is_pruned_after_the_ttl(ratatoskr_client):
    a = await ratatoskr_client(state_heartbeat=0.2, state_ttl=0.8)
    b = await ratatoskr_client(state_heartbeat=0.2, state_ttl=0.8, reconnect=False)
    rec_a = Recorder(a)
    await a.enter_document("amdoc")
    await b.enter_document("amdoc")
    await a.wait_for_presence("amdoc", lambda p: len(p) == 2, timeout=TIMEOUT)
    loop = asyncio.get_running_loop()
    abort_transport(b)  # no goodbye: only silence
    gone_at = loop.time()
    await a.wait_for_presence("amdoc", lambda p: len(p) == 1, timeout=TIMEOUT)
    waited = loop.time() - gone_at
    # Pruned after the TTL (0.8 s since b's last heartbeat), checked every 0.1 s.
    assert 0.8 - 0.2 - 0.05 <= waited <= 0.8 + 0.2 + 0.5
    left = rec_a.of("peer-left")
    assert [(doc, peer.peer_id) for doc, peer in left] == [("amdoc", b.me.peer_id)]


@pytest.mark.ratatoskr_relay(server_presence=False)
async def test_peer_to_peer_refuses_sidecars_and_survives_a_relay_restart(
    ratatoskr_client, ratatoskr_relay
):
    a = await ratatoskr_client(state_heartbeat=0.2)
    b = await ratatoskr_client(state_heartbeat=0.2)
    with pytest.raises(PresenceUnsupported):
        await a.enter_document(a.sidecar("amdoc", "chat"))
    await a.enter_document("amdoc")
    await b.enter_document("amdoc")
    await a.wait_for_presence("amdoc", lambda p: len(p) == 2, timeout=TIMEOUT)
    await ratatoskr_relay.stop()
    for c in (a, b):
        await c.wait_for_presence("amdoc", lambda p: p == (), timeout=TIMEOUT)
    await ratatoskr_relay.start()
    for c in (a, b):
        await c.wait_connected(timeout=TIMEOUT)
    # Both re-send their request and snapshot; each re-announces to the other.
    for c, other in ((a, b), (b, a)):
        both = {c.me.peer_id, other.me.peer_id}
        await c.wait_for_presence(
            "amdoc", lambda p, both=both: {x.peer_id for x in p} == both, timeout=TIMEOUT
        )


async def test_a_state_value_that_cannot_be_sent_is_named_in_the_callers_terms(
    ratatoskr_client,
):
    a = await ratatoskr_client()
    with pytest.raises(PayloadError) as info:
        await a.set_state("doc", "tags", {"x": {1, 2}})
    assert str(info.value) == (
        "state 'tags' cannot be sent: state 'tags'['x'] is a set: send a list instead"
    )  # not the envelope's "payload['__presence']['value']", not "semantic tag 258"


async def test_the_clients_of_a_process_keep_one_copy_of_a_peers_state(ratatoskr_client):
    """Every client of a document receives the sender's bytes unchanged, so
    the clients of one process decode them once: a Locust worker's users
    hold one copy of each peer's state values, not one per user."""
    a, b, c = [await ratatoskr_client() for _ in range(3)]
    for client in (a, b, c):
        await client.enter_document("doc")
    await a.set_state("doc", "cursor", [3, 4])
    expected = {"name": a.me.name, "cursor": [3, 4]}
    seen_b = await wait_state(b, "doc", has(a.me.peer_id, expected))
    seen_c = await wait_state(c, "doc", has(a.me.peer_id, expected))
    assert seen_b[a.me.peer_id]["cursor"] is seen_c[a.me.peer_id]["cursor"]
    assert seen_b[a.me.peer_id]["name"] is seen_c[a.me.peer_id]["name"]


async def test_clients_sharing_state_in_one_document_share_their_peer_tables(ratatoskr_client):
    """Our own entry shows the name our state carries, as the others show us:
    the clients of a process in one document then hold equal tables, and
    share them once quiet; ``me`` keeps the ``name=`` argument (None here)."""
    clients = [await ratatoskr_client() for _ in range(3)]
    for client in clients:
        await client.enter_document("doc")
    for n, client in enumerate(clients):
        await client.set_state("doc", "cursor", [n, n])
    for client in clients:
        for other in clients:
            await wait_state(client, "doc", lambda s, o=other: o.me.peer_id in s)
    first = clients[0]
    assert first.me.chosen_name is None
    assert first.peers[first.me.peer_id].chosen_name == first.me.name  # what it shares
    assert first.peers[first.me.peer_id] == first.me

    def tables(client: RatatoskrClient) -> tuple[object, object]:
        store = client._core.store
        return store._identities._frozen, store._docs["doc"]._frozen

    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while len({tables(c) for c in clients}) != 1 or tables(first)[0] is None:
        assert asyncio.get_running_loop().time() < deadline, [tables(c) for c in clients]
        await asyncio.sleep(0.05)  # the tables are shared 0.5 s after their last change
    identities, members = tables(first)
    assert identities is not None and members is not None
