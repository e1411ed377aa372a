"""A stock automerge-repo peer (Node) and RatatoskrClient, through our relay.

The JS side (``node/peer.js``) is automerge-repo 2.5.x's own ``Repo``,
``DocHandle.broadcast`` and ``Presence`` with a small network adapter that does the
Ratatoskr auth handshake (``node/ratatoskr-adapter.js``); the Python side is a real
:class:`~ratatoskr_client.RatatoskrClient`. Both directions are checked for
membership, ephemeral messages and Presence state, on our relay and on a relay that
behaves like today's upstream server (``server_presence=False``).

Issue 7, part 4. The Presence tests use the client's per-peer state API
(``set_state``, ``state(doc)``, the ``state-changed`` event) and the relay's
``server_presence`` option.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from ratatoskr_client import Peer, RatatoskrClient
from ratatoskr_client.server import RelayServer
from ratatoskr_client.testing import ClientFactory

from ..reliability.support import RecordingPeer
from .conftest import WAIT_TIMEOUT, JsPeer, StartJsPeer, automerge_document_id


def ids(peers: tuple[Peer, ...]) -> set[str]:
    return {p.peer_id for p in peers}


async def enter_with(client: RatatoskrClient, js: JsPeer) -> tuple[Peer, ...]:
    """Enter the JS peer's document and wait until the relay counts the JS peer
    (its ``request``/``sync``) as present there."""
    doc = js.document_id
    await client.enter_document(doc, timeout=WAIT_TIMEOUT)
    return await client.wait_for_presence(
        doc, lambda peers: js.peer_id in ids(peers), timeout=WAIT_TIMEOUT
    )


class Inbox:
    """Collects a client's ``ephemeral-message`` events; wait for one by predicate."""

    def __init__(self, client: RatatoskrClient) -> None:
        self.messages: list[tuple[str, Peer, Any]] = []
        self._new = asyncio.Event()
        client.on("ephemeral-message", self._on_message)

    def _on_message(self, document_id: str, sender: Peer, payload: Any) -> None:
        self.messages.append((document_id, sender, payload))
        self._new.set()

    async def wait_for(
        self, predicate: Callable[[str, Peer, Any], bool], timeout: float = WAIT_TIMEOUT
    ) -> tuple[str, Peer, Any]:
        async with asyncio.timeout(timeout):
            index = 0
            while True:
                while index < len(self.messages):
                    message = self.messages[index]
                    index += 1
                    if predicate(*message):
                        return message
                self._new.clear()
                await self._new.wait()


async def wait_state(
    client: RatatoskrClient,
    document_id: str,
    predicate: Callable[[Mapping[str, Mapping[str, Any]]], bool],
    timeout: float = WAIT_TIMEOUT,
) -> Mapping[str, Mapping[str, Any]]:
    """Wait until ``predicate(client.state(document_id))`` holds (re-checked on
    every ``state-changed`` event); return that state mapping."""
    current = client.state(document_id)
    if predicate(current):
        return current
    done: asyncio.Future[Mapping[str, Mapping[str, Any]]] = (
        asyncio.get_running_loop().create_future()
    )

    def on_change(doc_id: str, peer: Peer, state: Mapping[str, Any]) -> None:
        if doc_id == document_id and not done.done():
            states = client.state(document_id)
            if predicate(states):
                done.set_result(states)

    client.on("state-changed", on_change)
    try:
        return await asyncio.wait_for(done, timeout)
    except TimeoutError:
        raise AssertionError(
            f"state of {document_id!r} did not match within {timeout} s: "
            f"{dict(client.state(document_id))}"
        ) from None
    finally:
        client.off("state-changed", on_change)


def has_state(peer_id: str, expected: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], bool]:
    return lambda states: dict(states.get(peer_id) or {}) == dict(expected)


# --------------------------------------------------------------------------- membership


@pytest.mark.parametrize("how", ["create", "find"])
async def test_js_peer_opening_a_document_is_present_until_it_quits(
    start_js_peer: StartJsPeer, ratatoskr_client: ClientFactory, how: str
) -> None:
    # create: the JS repo has the document and sends `sync`; find: it has not, sends
    # `request`, and the relay (which stores nothing) answers doc-unavailable.
    if how == "create":
        js = await start_js_peer("--create")
        assert js.info["documentState"] == "ready"
    else:
        js = await start_js_peer("--find", automerge_document_id())
        assert js.info["documentState"] == "unavailable"
    doc = js.document_id
    assert js.info["features"] == [
        "identity",
        "presence",
        "ephemeral",
        "scoped-identity",
        "reauth",
        "state-replay",
        "resume",
    ]
    client = await ratatoskr_client()

    present = await enter_with(client, js)

    assert ids(present) == {client.me.peer_id, js.peer_id}
    # The JS repo's peerId is the id the relay assigned, and the relay's identity
    # frames name it.
    js_peer = next(p for p in present if p.peer_id == js.peer_id)
    assert js_peer.name == js.info["user"]["name"]
    assert client.peers[js.peer_id] == js_peer

    assert await js.quit() == 0
    present = await client.wait_for_presence(
        doc, lambda peers: js.peer_id not in ids(peers), timeout=WAIT_TIMEOUT
    )
    assert ids(present) == {client.me.peer_id}


# --------------------------------------------------------------------------- ephemeral


async def test_js_broadcast_arrives_as_ephemeral_message(
    start_js_peer: StartJsPeer, ratatoskr_client: ClientFactory
) -> None:
    js = await start_js_peer("--create")
    client = await ratatoskr_client()
    inbox = Inbox(client)
    await enter_with(client, js)

    payload = {"kind": "chat", "text": "hello from js", "n": [1, 2, 3], "ok": True}
    await js.call("broadcast-ephemeral", message=payload)

    doc_id, sender, _ = await inbox.wait_for(lambda d, s, p: p == payload)
    assert doc_id == js.document_id
    assert sender.peer_id == js.peer_id
    assert sender.name == js.info["user"]["name"]


async def test_python_ephemeral_arrives_at_js_handle(
    start_js_peer: StartJsPeer, ratatoskr_client: ClientFactory
) -> None:
    js = await start_js_peer("--create")
    client = await ratatoskr_client()
    await enter_with(client, js)

    payload = {"kind": "chat", "text": "hello from python", "blob": b"\x00\x01\xff"}
    await client.send_ephemeral(js.document_id, payload)

    event = await js.wait_event("ephemeral", lambda e: e["message"] == payload)
    assert event["documentId"] == js.document_id
    assert event["senderId"] == client.me.peer_id
    assert event["presence"] is False


@pytest.mark.parametrize("old_socket", ["closed", "left open"])
async def test_a_reconnecting_js_peer_keeps_its_session_and_every_message_arrives(
    start_js_peer: StartJsPeer,
    ratatoskr_client: ClientFactory,
    ratatoskr_relay: RelayServer,
    old_socket: str,
) -> None:
    """Issue #19, finding 1: the relay now gives a sessionId only to its owner's
    identity. A stock automerge-repo Repo that reconnects (a new socket, the same
    Repo) keeps its ephemeral sessionId and carries on counting; its messages
    must keep arriving, also when its old socket was left open (the relay still
    thinks it alive: the new connection takes the session over). Both are
    anonymous from the same address here, the identity of an anonymous peer."""
    js = await start_js_peer("--create")
    doc = js.document_id
    client = await ratatoskr_client()
    inbox = Inbox(client)
    await enter_with(client, js)
    raw = await RecordingPeer.open(ratatoskr_relay.ws_url, "raw")  # sees the wire fields
    try:
        await raw.join(doc)
        await js.call("broadcast-ephemeral", message={"n": "before"})
        await inbox.wait_for(lambda d, s, p: p == {"n": "before"})

        reply = await js.call("reconnect", abandon=old_socket == "left open")
        again = reply["peerId"]
        assert again != js.peer_id
        # Its Repo syncs the document with the server again: present once more.
        await client.wait_for_presence(doc, lambda peers: again in ids(peers), timeout=WAIT_TIMEOUT)
        for n in range(20):
            await js.call("broadcast-ephemeral", message={"n": n})
        await inbox.wait_for(lambda d, s, p: p == {"n": 19})
        await raw.wait_for(lambda f: f.get("type") == "ephemeral" and f["senderId"] == again)
        await raw.barrier()

        got = [(s.peer_id, p["n"]) for d, s, p in inbox.messages if d == doc]
        assert got == [(js.peer_id, "before")] + [(again, n) for n in range(20)]
        wire = [
            (f["senderId"], f["sessionId"], f["count"])
            for f in raw.frames
            if f.get("type") == "ephemeral" and f.get("documentId") == doc
        ]
        assert len(wire) == 21
        # The same session before and after, counting on: the stock peer's own.
        assert len({sid for _, sid, _ in wire}) == 1
        counts = [count for _, _, count in wire]
        assert counts == sorted(counts) and len(set(counts)) == 21
    finally:
        await raw.close()


async def test_two_stock_js_presence_peers_see_each_other_exactly(
    start_js_peer: StartJsPeer, ratatoskr_client: ClientFactory
) -> None:
    # Stock peers gossip every received ephemeral message back to the server; on
    # upstream those copies come back relabelled and corrupt Presence. Our relay drops
    # them, so each JS peer sees exactly the other one, with the right state.
    alice = await start_js_peer("--create", label="alice")
    client = await ratatoskr_client()  # a Python peer in the document too
    inbox = Inbox(client)
    changes: list[tuple[str, dict[str, Any]]] = []
    client.on("state-changed", lambda d, peer, state: changes.append((peer.peer_id, dict(state))))
    await enter_with(client, alice)
    await alice.presence_start({"name": "js-alice", "cursor": [0, 0]})
    bob = await start_js_peer("--find", alice.document_id, label="bob")
    await bob.presence_start({"name": "js-bob"})

    # Alice hears Bob's opening snapshot; Bob learns Alice's state from her re-announce.
    assert await alice.wait_peer_states(lambda s: s == {bob.peer_id: {"name": "js-bob"}})
    await bob.wait_peer_states(
        lambda s: s == {alice.peer_id: {"name": "js-alice", "cursor": [0, 0]}}
    )
    await alice.call("presence-broadcast", channel="cursor", value=[7, 8])
    await bob.wait_peer_states(
        lambda s: s == {alice.peer_id: {"name": "js-alice", "cursor": [7, 8]}}
    )
    # Nothing relabelled, nobody sees itself: exactly one peer each.
    assert await alice.peer_states() == {bob.peer_id: {"name": "js-bob"}}
    assert list(await bob.peer_states()) == [alice.peer_id]

    # The Python client (present on the relay) got the same Presence messages, from
    # the right senders, never a gossip copy: as state, never as ephemeral-message.
    doc = alice.document_id
    await wait_state(
        client,
        doc,
        lambda s: (
            {k: dict(v) for k, v in s.items()}
            == {
                alice.peer_id: {"name": "js-alice", "cursor": [7, 8]},
                bob.peer_id: {"name": "js-bob"},
            }
        ),
    )
    assert {peer_id for peer_id, _ in changes} == {alice.peer_id, bob.peer_id}
    assert all(st.get("name") == "js-alice" for pid, st in changes if pid == alice.peer_id)
    assert all(st == {"name": "js-bob"} for pid, st in changes if pid == bob.peer_id)
    assert inbox.messages == []  # Presence messages are not application messages
    # Their chosen names are on the Peers; the relay's names stay the names.
    js_alice = client.peers[alice.peer_id]
    assert js_alice.chosen_name == "js-alice"
    assert js_alice.name == alice.info["user"]["name"]


# --------------------------------------------------------------------------- Presence state
# These use the per-peer state API of issue 7 (set_state / state(doc) / state-changed).


async def test_js_presence_sees_python_state_and_its_updates(
    start_js_peer: StartJsPeer, ratatoskr_client: ClientFactory
) -> None:
    # The JS peer started Presence before the bot arrived, so the bot's snapshot on
    # entering is what introduces it, and the JS peer's re-announce (500 ms after a
    # message from a peer it has not seen) is how the bot learns the JS state.
    js = await start_js_peer("--create")
    doc = js.document_id
    await js.presence_start({"name": "js-alice", "cursor": [0, 0]})
    client = await ratatoskr_client()
    await enter_with(client, js)
    me = client.me.peer_id

    await client.set_state(doc, "name", "py-bot")
    await client.set_state(doc, "cursor", [1, 2])

    await js.wait_peer_states(has_state(me, {"name": "py-bot", "cursor": [1, 2]}))
    assert client.state(doc)[me] == {"name": "py-bot", "cursor": [1, 2]}
    await wait_state(client, doc, has_state(js.peer_id, {"name": "js-alice", "cursor": [0, 0]}))

    await client.set_state(doc, "cursor", [3, 4])
    states = await js.wait_peer_states(has_state(me, {"name": "py-bot", "cursor": [3, 4]}))
    assert set(states) == {me}  # keyed by the relay-assigned peer id, nothing else
    assert client.state(doc)[me] == {"name": "py-bot", "cursor": [3, 4]}


async def test_python_state_follows_js_presence_broadcasts(
    start_js_peer: StartJsPeer, ratatoskr_client: ClientFactory
) -> None:
    js = await start_js_peer("--create")
    doc = js.document_id
    client = await ratatoskr_client()
    await enter_with(client, js)
    assert js.peer_id not in client.state(doc)
    changes: list[tuple[str, Peer, dict[str, Any]]] = []
    client.on("state-changed", lambda d, peer, state: changes.append((d, peer, dict(state))))

    # The bot is already present: the JS opening snapshot reaches it directly.
    await js.presence_start({"name": "js-alice", "cursor": [0, 0]})
    await wait_state(client, doc, has_state(js.peer_id, {"name": "js-alice", "cursor": [0, 0]}))

    await js.call("presence-broadcast", channel="cursor", value=[7, 8])
    await wait_state(client, doc, has_state(js.peer_id, {"name": "js-alice", "cursor": [7, 8]}))

    doc_id, peer, state = [c for c in changes if c[1].peer_id == js.peer_id][-1]
    assert doc_id == doc
    assert peer.name == js.info["user"]["name"]  # the relay's identity for that peer id
    assert state == {"name": "js-alice", "cursor": [7, 8]}


async def test_a_silent_watcher_sees_js_and_python_states_at_once(
    start_js_peer: StartJsPeer, ratatoskr_client: ClientFactory
) -> None:
    # Issue 22: a bot that never shares state learns everyone's from the relay's
    # replay, the stock JS peer's name included, within 1.5 s of entering.
    js = await start_js_peer("--create")
    doc = js.document_id
    await js.presence_start({"name": "js-alice", "cursor": [0, 0]})
    bots = [await ratatoskr_client(name=f"py-{i}") for i in range(2)]
    for bot in bots:
        await enter_with(bot, js)
        await bot.set_state(doc, "cursor", [1, 1])
    await js.call("presence-broadcast", channel="cursor", value=[5, 5])
    expected = {
        js.peer_id: {"name": "js-alice", "cursor": [5, 5]},
        **{bot.me.peer_id: {"name": f"py-{i}", "cursor": [1, 1]} for i, bot in enumerate(bots)},
    }
    await wait_state(bots[0], doc, lambda s: all(has_state(p, e)(s) for p, e in expected.items()))

    watcher = await ratatoskr_client()
    loop = asyncio.get_running_loop()
    entered = loop.time()
    await watcher.enter_document(doc, timeout=WAIT_TIMEOUT)
    await wait_state(
        watcher, doc, lambda s: all(has_state(p, e)(s) for p, e in expected.items()), 1.5
    )
    assert loop.time() - entered < 1.5
    # And the JS peer, which shares nothing about it, still sees the bots as before.
    states = await js.wait_peer_states(lambda s: all(b.me.peer_id in s for b in bots))
    assert watcher.me.peer_id not in states  # a silent watcher stays silent


# --------------------------------------------------------------------------- upstream-like


@pytest.mark.ratatoskr_relay(server_presence=False)
async def test_bot_on_server_without_features_meets_js_presence_peer(
    start_js_peer: StartJsPeer, ratatoskr_client: ClientFactory
) -> None:
    # Issue 7 acceptance: on a server that sends no `features` (like today's
    # upstream), a Python bot entering a document appears in a JS Presence peer's
    # getPeerStates() and sees that peer's state.
    js = await start_js_peer("--create")
    doc = js.document_id
    assert js.info["features"] is None
    await js.presence_start({"name": "js-alice", "cursor": [0, 0]})
    client = await ratatoskr_client()
    assert client.features == ()
    assert client.server_presence is False
    me = client.me.peer_id

    # Peer-to-peer presence: entering sends the empty-document `request` that
    # subscribes the connection, then the bot's Presence snapshot.
    await client.enter_document(doc, timeout=WAIT_TIMEOUT)
    await client.set_state(doc, "name", "py-bot")

    states = await js.wait_peer_states(has_state(me, {"name": "py-bot"}))
    assert set(states) == {me}
    await wait_state(client, doc, has_state(js.peer_id, {"name": "js-alice", "cursor": [0, 0]}))
    # Membership is derived from the Presence messages.
    await client.wait_for_presence(
        doc, lambda peers: js.peer_id in ids(peers), timeout=WAIT_TIMEOUT
    )

    await js.call("presence-broadcast", channel="cursor", value=[7, 8])
    await wait_state(client, doc, has_state(js.peer_id, {"name": "js-alice", "cursor": [7, 8]}))
    await client.set_state(doc, "cursor", [1, 2])
    await js.wait_peer_states(has_state(me, {"name": "py-bot", "cursor": [1, 2]}))
