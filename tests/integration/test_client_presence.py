"""RatatoskrClient presence against the in-process relay, over real loopback sockets:
convergence, identities, enter/leave semantics, refusals, watch and wait helpers."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Mapping

import pytest

from ratatoskr_client import (
    ConnectionClosed,
    DocumentNotFound,
    OperationTimeout,
    Peer,
    PermissionDenied,
    RatatoskrError,
)

from .fakeserver import Recorder

USERS = [
    {"token": "alice-secret", "id": "alice", "name": "Alice"},
    {"token": "bob-secret", "id": "bob", "name": "Bob"},
]
DOCUMENTS = [
    {"id": "doc-123", "owner": "alice", "acl": [{"principal": "bob", "permission": "read"}]},
    {"id": "doc-public", "owner": "alice", "acl": [{"principal": "public", "permission": "read"}]},
    {"id": "doc-private", "owner": "alice"},
]
with_acl = pytest.mark.ratatoskr_relay(users=USERS, documents=DOCUMENTS)

ANIMAL_NAME = re.compile(r"^[A-Z][a-z]+ [A-Z][a-z]+$")


def ids(peers: tuple[Peer, ...]) -> list[str]:
    return [p.peer_id for p in peers]


async def converge(doc: str, clients, expected_ids: list[str], timeout: float = 5.0):
    """Wait until every client sees exactly ``expected_ids`` in ``doc``; return the tuples."""
    return await asyncio.gather(
        *(
            c.wait_for_presence(doc, lambda p: ids(p) == expected_ids, timeout=timeout)
            for c in clients
        )
    )


async def test_three_clients_converge_after_joins_and_leaves(ratatoskr_client, ratatoskr_relay):
    a, b, c = [await ratatoskr_client() for _ in range(3)]
    doc = "doc-1"

    assert ids(await a.enter_document(doc)) == [a.me.peer_id]
    assert ids(await b.enter_document(doc)) == [a.me.peer_id, b.me.peer_id]
    order = [a.me.peer_id, b.me.peer_id, c.me.peer_id]
    assert ids(await c.enter_document(doc)) == order

    seen = await converge(doc, [a, b, c], order)
    assert seen[0] == seen[1] == seen[2]  # the very same tuple of Peers, self included
    for client, peers in zip((a, b, c), seen, strict=True):
        assert client.me in peers
        assert peers == client.presence(doc)
    assert list(ratatoskr_relay.core.presence(doc)) == order

    await b.leave_document(doc)
    assert b.presence(doc) == ()
    await converge(doc, [a, c], [a.me.peer_id, c.me.peer_id])

    # Re-entering puts b at the end of the join order.
    order = [a.me.peer_id, c.me.peer_id, b.me.peer_id]
    assert ids(await b.enter_document(doc)) == order
    await converge(doc, [a, b, c], order)

    await a.close()
    await converge(doc, [b, c], [c.me.peer_id, b.me.peer_id])
    assert list(ratatoskr_relay.core.presence(doc)) == [c.me.peer_id, b.me.peer_id]


async def test_presence_is_per_document(ratatoskr_client):
    a, b = await ratatoskr_client(), await ratatoskr_client()
    await a.enter_document("one")
    await a.enter_document("two")
    await b.enter_document("two")
    await converge("two", [a, b], [a.me.peer_id, b.me.peer_id])
    assert ids(a.presence("one")) == [a.me.peer_id]
    assert b.presence("one") == ()  # not entered: not tracked
    assert a.entered_documents == ("one", "two")


@pytest.mark.ratatoskr_relay(users=USERS, documents=DOCUMENTS, identity_scope="global")
async def test_me_and_peers(ratatoskr_client):
    alice = await ratatoskr_client("alice-secret")
    anon = await ratatoskr_client()
    anon2 = await ratatoskr_client()
    rec = Recorder(alice)

    assert alice.me.user_id == "alice"
    assert alice.me.name == "Alice"
    assert not alice.me.is_anonymous
    assert alice.me.peer_id.startswith("peer-")

    for a in (anon, anon2):
        assert a.me.user_id is None
        assert a.me.is_anonymous
        assert ANIMAL_NAME.match(a.me.name), a.me.name
    assert anon.me.name != anon2.me.name
    assert len({alice.me.peer_id, anon.me.peer_id, anon2.me.peer_id}) == 3

    everyone = {c.me.peer_id: c.me for c in (alice, anon, anon2)}
    await rec.until(lambda: dict(alice.peers) == everyone)
    anon_rec = Recorder(anon2)
    await anon_rec.until(lambda: dict(anon2.peers) == everyone)  # initial sync, self included
    assert isinstance(alice.peers, Mapping)
    with pytest.raises(TypeError):
        alice.peers["x"] = alice.me  # type: ignore[index]

    # A peer that disconnects is no longer among the peers.
    gone = anon.me.peer_id
    await anon.close()
    await rec.until(lambda: gone not in alice.peers)
    assert set(alice.peers) == {alice.me.peer_id, anon2.me.peer_id}


@with_acl
async def test_peers_are_those_sharing_an_entered_document(ratatoskr_client):
    """The relay's default identity scope: a client knows the identities of
    the peers in the documents it entered, and of nobody else."""
    alice = await ratatoskr_client("alice-secret")
    bob = await ratatoskr_client("bob-secret")
    anon = await ratatoskr_client()
    rec = Recorder(alice)
    assert "scoped-identity" in alice.features
    assert dict(alice.peers) == {alice.me.peer_id: alice.me}  # nobody else is listed
    assert dict(anon.peers) == {anon.me.peer_id: anon.me}

    await alice.enter_document("doc-public")
    await anon.enter_document("doc-public")
    await bob.enter_document("doc-123")  # a document anon may not read
    await alice.enter_document("doc-123")
    await rec.until(lambda: set(alice.peers) == {alice.me.peer_id, bob.me.peer_id, anon.me.peer_id})
    assert alice.peers[bob.me.peer_id] == bob.me  # the server-verified identity
    anon_rec = Recorder(anon)
    await anon_rec.until(lambda: set(anon.peers) == {anon.me.peer_id, alice.me.peer_id})
    assert bob.me.peer_id not in anon.peers  # bob shares nothing with anon

    # Leaving the last shared document: the peer leaves `peers` with its
    # peer-left, without a peer-disconnected (it did not disconnect).
    mark = rec.mark()
    await anon.leave_document("doc-public")
    await rec.until(lambda: anon.me.peer_id not in alice.peers)
    assert rec.of("peer-left", mark) == [("doc-public", anon.me)]
    # A peer whose connection closes while it shares a document: peer-disconnected.
    bob_me = bob.me
    await bob.close()  # a polite close leaves first: peer-left, then gone
    await rec.until(lambda: bob_me.peer_id not in alice.peers)
    assert ("peer-left", ("doc-123", bob_me)) in rec.events[mark:]
    assert set(alice.peers) == {alice.me.peer_id}
    assert alice.stats().peers == 1


async def test_enter_document_returns_presence_once_confirmed(ratatoskr_client, ratatoskr_relay):
    a = await ratatoskr_client()
    peers = await a.enter_document("doc")
    assert peers == (a.me,)
    assert a.presence("doc") == peers
    # Returned only after the server confirmed: the relay already has us.
    assert ratatoskr_relay.core.presence("doc") == (a.me.peer_id,)


async def test_entering_twice_is_harmless(ratatoskr_client, ratatoskr_relay):
    a, b = await ratatoskr_client(), await ratatoskr_client()
    rec = Recorder(b)
    await b.enter_document("doc")
    first = await a.enter_document("doc")
    again = await a.enter_document("doc")
    assert again == first == a.presence("doc")
    both = await asyncio.gather(a.enter_document("doc"), a.enter_document("doc"))
    assert both[0] == both[1] == first
    assert ratatoskr_relay.core.presence("doc") == (b.me.peer_id, a.me.peer_id)
    assert a.entered_documents == ("doc",)

    # Concurrent first entries of a new document both return its presence.
    pair = await asyncio.gather(a.enter_document("new"), a.enter_document("new"))
    assert pair[0] == pair[1] == (a.me,)

    # b saw exactly one join by a: a's leave goes out after every entry, so once b
    # sees it leave, any duplicate join would have arrived before.
    await b.wait_for_presence("doc", lambda p: len(p) == 2, timeout=5)
    me_a = a.me
    await a.leave_document("doc")
    await b.wait_for_presence("doc", lambda p: len(p) == 1, timeout=5)
    assert rec.of("peer-joined") == [("doc", me_a)]
    assert rec.of("peer-left") == [("doc", me_a)]


async def test_leaving_a_document_not_entered_is_harmless(ratatoskr_client, ratatoskr_relay):
    a, b = await ratatoskr_client(), await ratatoskr_client()
    rec = Recorder(a)
    await a.enter_document("doc")
    await b.enter_document("doc")
    await a.leave_document("never-entered")
    await a.leave_document("doc")
    await a.leave_document("doc")  # twice
    assert a.entered_documents == ()
    assert a.presence("doc") == ()
    await b.wait_for_presence("doc", lambda p: ids(p) == [b.me.peer_id], timeout=5)
    assert ratatoskr_relay.core.presence("doc") == (b.me.peer_id,)
    assert rec.of("error") == []
    assert a.is_connected


async def test_leave_document_emits_an_empty_presence_change(ratatoskr_client):
    a = await ratatoskr_client()
    rec = Recorder(a)
    await a.enter_document("doc")
    mark = rec.mark()
    await a.leave_document("doc")
    assert rec.of("presence-changed", mark) == [("doc", ())]


@with_acl
async def test_permission_denied_carries_the_document(ratatoskr_client, ratatoskr_relay):
    bob = await ratatoskr_client("bob-secret")
    rec = Recorder(bob)
    with pytest.raises(PermissionDenied) as info:
        await bob.enter_document("doc-private", timeout=5)
    assert info.value.document_id == "doc-private"
    assert info.value.code == "permission_denied"
    assert isinstance(info.value, RatatoskrError)
    assert bob.entered_documents == ()
    assert bob.presence("doc-private") == ()
    assert ratatoskr_relay.core.presence("doc-private") == ()
    assert rec.of("error") == []  # the caller got it; it is not reported twice

    # The connection is still fine, and a readable document can be entered.
    assert bob.is_connected
    assert await bob.enter_document("doc-123") == (bob.me,)


@with_acl
async def test_anonymous_peer_cannot_enter_a_protected_document(ratatoskr_client):
    anon = await ratatoskr_client()
    with pytest.raises(PermissionDenied) as info:
        await anon.enter_document("doc-123", timeout=5)
    assert info.value.document_id == "doc-123"
    assert await anon.enter_document("doc-public") == (anon.me,)


@with_acl
async def test_document_not_found(ratatoskr_client):
    alice = await ratatoskr_client("alice-secret")
    with pytest.raises(DocumentNotFound) as info:
        await alice.enter_document("no-such-doc", timeout=5)
    assert info.value.document_id == "no-such-doc"
    assert info.value.code == "document_not_found"
    assert alice.entered_documents == ()


async def test_enter_document_rejects_bad_ids(ratatoskr_client):
    a = await ratatoskr_client()
    for bad in ("", None, 42):
        with pytest.raises(ValueError, match="document_id"):
            await a.enter_document(bad)  # type: ignore[arg-type]


async def test_watch_presence_yields_current_then_each_change_and_ends_on_close(
    ratatoskr_client,
):
    a, b = await ratatoskr_client(), await ratatoskr_client()
    await a.enter_document("doc")
    seen: list[tuple[Peer, ...]] = []
    first = asyncio.Event()
    two = asyncio.Event()

    async def watch() -> None:
        async for peers in a.watch_presence("doc"):
            seen.append(peers)
            first.set()
            if len(peers) == 2:
                two.set()

    task = asyncio.create_task(watch())
    await asyncio.wait_for(first.wait(), 5)
    assert seen == [(a.me,)]
    await b.enter_document("doc")
    await asyncio.wait_for(two.wait(), 5)
    await b.leave_document("doc")
    await a.wait_for_presence("doc", lambda p: len(p) == 1, timeout=5)
    await a.close()
    await asyncio.wait_for(task, 5)  # the iteration ended by itself
    assert [ids(p) for p in seen] == [
        [a.me.peer_id],
        [a.me.peer_id, b.me.peer_id],
        [a.me.peer_id],
        [],  # close() empties presence
    ]


async def test_watch_presence_can_stop_early(ratatoskr_client):
    a = await ratatoskr_client()
    await a.enter_document("doc")
    async with contextlib.aclosing(a.watch_presence("doc")) as watch:
        async for peers in watch:
            assert peers == (a.me,)
            assert a.stats().watchers == 1
            break
    assert a.stats().watchers == 0  # the watcher unregistered itself


async def test_wait_for_presence(ratatoskr_client):
    a, b = await ratatoskr_client(), await ratatoskr_client()
    await a.enter_document("doc")
    # Already true: returns at once.
    assert await a.wait_for_presence("doc", lambda p: len(p) == 1, timeout=0.01) == (a.me,)

    waiting = asyncio.create_task(a.wait_for_presence("doc", lambda p: len(p) >= 2, timeout=5))
    await b.enter_document("doc")
    peers = await waiting
    assert ids(peers) == [a.me.peer_id, b.me.peer_id]

    with pytest.raises(OperationTimeout) as info:
        await a.wait_for_presence("doc", lambda p: len(p) >= 3, timeout=0.2)
    assert isinstance(info.value, TimeoutError)
    assert a.stats().waiters == 0  # nothing left behind


async def test_wait_for_presence_fails_when_the_client_closes(ratatoskr_client):
    a = await ratatoskr_client()
    await a.enter_document("doc")
    asked = asyncio.Event()

    def predicate(peers: tuple[Peer, ...]) -> bool:
        asked.set()  # checked once at once; registered as a waiter in the same step
        return len(peers) >= 5

    waiting = asyncio.create_task(a.wait_for_presence("doc", predicate, timeout=5))
    await asyncio.wait_for(asked.wait(), 5)
    assert a.stats().waiters == 1
    await a.close()
    with pytest.raises(ConnectionClosed):
        await waiting
    with pytest.raises(ConnectionClosed):
        await a.wait_for_presence("doc", lambda p: len(p) >= 5, timeout=5)


async def test_a_predicate_that_raises_propagates(ratatoskr_client):
    a, b = await ratatoskr_client(), await ratatoskr_client()
    await a.enter_document("doc")

    def predicate(peers: tuple[Peer, ...]) -> bool:
        if len(peers) > 1:
            raise KeyError("boom")
        return False

    waiting = asyncio.create_task(a.wait_for_presence("doc", predicate, timeout=5))
    await b.enter_document("doc")
    with pytest.raises(KeyError):
        await waiting
    # The receive loop is unaffected.
    await b.leave_document("doc")
    await a.wait_for_presence("doc", lambda p: len(p) == 1, timeout=5)


@with_acl
async def test_the_same_user_twice_is_two_peers(ratatoskr_client):
    first = await ratatoskr_client("alice-secret")
    second = await ratatoskr_client("alice-secret")
    await first.enter_document("doc-123")
    await second.enter_document("doc-123")
    peers = await first.wait_for_presence("doc-123", lambda p: len(p) == 2, timeout=5)
    assert [p.user_id for p in peers] == ["alice", "alice"]
    assert peers[0].peer_id != peers[1].peer_id
    assert peers == (first.me, second.me)
