"""Security checks with live traffic in the protected document.

The same rules are also asserted at the end of the chaos, fuzz, flood, leak and
half-open scenarios, over every frame their unprivileged peer received:

* a peer without read permission never receives any frame about a protected
  document — the only ones mentioning it are error frames answering its own
  frames (``permission_denied``; ``invalid_message`` echoing an id it sent);
* it cannot inject messages into it (join, heartbeat, ephemeral, automerge
  ``request``/``sync``: all refused, nothing delivered);
* it cannot forge ``senderId`` (the relay stamps the real one) or an identity
  (server-only frames are refused and change nothing);
* a socket that does not authenticate is closed after the auth timeout, sending
  or not, and receives nothing but errors meanwhile;
* a session belongs to its owner (issue #19, finding 1): while a stock peer
  reconnects, nobody else can take over the ``sessionId`` it keeps, even
  having read it off a relayed frame, with a count of 2**64 (refused:
  ``invalid_message``) or of 2**53 - 1 (dropped as another identity's copy).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import cbor2
import pytest

from ratatoskr_client import Peer, PermissionDenied
from ratatoskr_client.protocol import MAX_COUNT
from ratatoskr_client.server import RelayServer

from ..integration.fakeserver import Recorder
from .support import Background, Frame, RecordingPeer, assert_never_about, try_to_break_in

USERS = [
    {"token": "alice-secret", "id": "alice", "name": "Alice"},
    {"token": "bob-secret", "id": "bob", "name": "Bob"},
]
DOCUMENTS = [
    {"id": "vault", "owner": "alice"},
    {"id": "lobby", "acl": [{"principal": "public"}]},
]
AUTH_TIMEOUT = 0.5
SLACK = 1.0


@pytest.mark.ratatoskr_relay(users=USERS, documents=DOCUMENTS)
async def test_no_read_permission_means_nothing_in_and_nothing_out(
    ratatoskr_relay: RelayServer, ratatoskr_client: Any
) -> None:
    alice = await ratatoskr_client("alice-secret")
    alice2 = await ratatoskr_client("alice-secret")
    bob = await ratatoskr_client("bob-secret")  # a user, but not of the vault
    recs = {c: Recorder(c) for c in (alice, alice2, bob)}
    for c in (alice, alice2):
        await c.enter_document("vault")
        await c.enter_document("lobby")
    await bob.enter_document("lobby")
    await alice.wait_for_presence("vault", lambda p: len(p) == 2, timeout=10)
    await alice.wait_for_presence("lobby", lambda p: len(p) == 3, timeout=10)
    spy = await RecordingPeer.open(ratatoskr_relay.ws_url, "spy")
    try:
        # Traffic in the vault while everyone else tries to get in.
        await alice.send_ephemeral("vault", {"secret": 1})
        assert await try_to_break_in(spy, "vault", alice.me.peer_id) == 5
        with pytest.raises(PermissionDenied):
            await bob.enter_document("vault")
        await bob.send_ephemeral("vault", {"inject": "bob"})  # refused later, as an error event
        await spy.ephemeral("lobby", {"hello": "from spy"}, senderId=alice.me.peer_id)
        await alice.send_ephemeral("vault", {"secret": 2})

        # Settle: alice2 has everything it will ever get from these.
        await recs[alice2].wait("ephemeral-message", lambda d, s, p: p == {"secret": 2}, timeout=10)
        await recs[alice2].wait(
            "ephemeral-message", lambda d, s, p: p == {"hello": "from spy"}, timeout=10
        )
        (err,) = await recs[bob].wait("error", timeout=10)
        await spy.barrier()

        assert isinstance(err, PermissionDenied) and err.document_id == "vault"
        vault_msgs = [
            (s.peer_id, p) for d, s, p in recs[alice2].of("ephemeral-message") if d == "vault"
        ]
        assert vault_msgs == [(alice.me.peer_id, {"secret": 1}), (alice.me.peer_id, {"secret": 2})]
        # The forged sender id was replaced by the spy's own, with its own identity.
        for c in (alice, alice2, bob):
            (sender,) = [s for d, s, p in recs[c].of("ephemeral-message") if "hello" in p]
            assert sender.peer_id == spy.peer_id
            assert sender == Peer(spy.peer_id, None, spy.user["name"], True)
            # Forged identity frames changed nothing anyone knows; the spy,
            # in no document, is known only as the sender of its message.
            assert c.peers[alice.me.peer_id].user_id == "alice"
            assert spy.peer_id not in c.peers
        # Nothing about the vault reached bob or the spy, and the spy is in no document.
        assert [args for args in recs[bob].of("peer-joined") if args[0] == "vault"] == []
        assert bob.presence("vault") == ()
        assert assert_never_about(spy.frames, "vault") == {"permission_denied": 5}
        assert [
            d for d in ("vault", "lobby") if spy.peer_id in ratatoskr_relay.core.presence(d)
        ] == []
    finally:
        await spy.close()


@pytest.mark.ratatoskr_relay(users=USERS, documents=DOCUMENTS, auth_timeout=AUTH_TIMEOUT)
async def test_unauthenticated_sockets_are_closed_after_the_auth_timeout(
    ratatoskr_relay: RelayServer,
) -> None:
    loop = asyncio.get_running_loop()
    url = ratatoskr_relay.ws_url
    alice = await RecordingPeer.open(url, "alice", "alice-secret")
    alice2 = await RecordingPeer.open(url, "alice2", "alice-secret")
    strangers: list[RecordingPeer] = []
    try:
        async with Background() as background:
            await alice.join("vault")
            await alice2.join("vault")
            sent = 0

            async def vault_traffic() -> None:
                nonlocal sent
                while True:
                    await alice.ephemeral("vault", {"n": sent})
                    sent += 1
                    await asyncio.sleep(0.02)

            talking = background.start(vault_traffic())
            opened: dict[str, float] = {}
            for label in ("silent", "chatty", "garbage"):
                strangers.append(await RecordingPeer.open(url, label, auth=False))
                opened[label] = loop.time()
            silent, chatty, garbage = strangers

            async def pester() -> None:
                frames: list[Any]
                while True:  # frames before auth do not extend the timeout
                    for peer, frames in (
                        (
                            chatty,
                            [
                                chatty.ephemeral_frame(
                                    "vault",
                                    {"type": "presence", "status": "join", "documentId": "vault"},
                                ),
                                {"type": "request", "documentId": "vault", "data": b""},
                                {"type": "peer_identity", "peerId": "x", "user": None},
                            ],
                        ),
                        (garbage, [b"\xff\x00", "text"]),
                    ):
                        if not peer.closed:
                            for frame in frames:
                                with contextlib.suppress(ConnectionError):
                                    await peer.send(frame)
                    await asyncio.sleep(0.05)

            pestering = background.start(pester())
            for peer in strangers:
                assert await peer.wait_closed(timeout=AUTH_TIMEOUT + 10) == 1008
            pestering.cancel()
            talking.cancel()

            for peer in strangers:
                assert peer.closed_at is not None
                lived = peer.closed_at - opened[peer.label]
                print(f"unauthenticated {peer.label} socket closed after {lived:.3f} s")
                assert AUTH_TIMEOUT - 0.05 <= lived <= AUTH_TIMEOUT + SLACK
                assert all(f["type"] == "error" for f in peer.frames), peer.frames
                assert peer.frames[-1]["error"] == "auth_timeout"
                assert assert_never_about(peer.frames, "vault") == {}
            assert [f["error"] for f in silent.frames] == ["auth_timeout"]
            assert {f["error"] for f in chatty.frames[:-1]} == {
                "not_authenticated",
                "invalid_message",
            }
            assert {f["error"] for f in garbage.frames[:-1]} == {"invalid_message"}
            # The vault's traffic went on untouched; only the two members are left.
            await alice.barrier()
            await alice2.barrier()
            got = [f for f in alice2.frames if f["type"] == "ephemeral"]
            assert len(got) == sent
            assert ratatoskr_relay.stats().connections == 2
    finally:
        for peer in (*strangers, alice2, alice):
            await peer.close()


def _ephemeral_in(document_id: str, sender: str) -> Any:
    def match(f: Frame) -> bool:
        return (
            f.get("type") == "ephemeral"
            and f.get("documentId") == document_id
            and f.get("senderId") == sender
        )

    return match


#: Messages the owner sends after reconnecting, while the attacker is
#: connected and after it left (issue #19: 0 of 20 and 0 of 5 arrived).
AFTER_RECONNECT, AFTER_ATTACKER_LEFT = 20, 5


@pytest.mark.parametrize("gone", ["closed", "half-open"])
@pytest.mark.parametrize("attacker_kind", ["anonymous", "without read permission"])
@pytest.mark.ratatoskr_relay(users=USERS, documents=DOCUMENTS)
async def test_a_reconnecting_stock_peers_session_cannot_be_taken_over(
    ratatoskr_relay: RelayServer, attacker_kind: str, gone: str
) -> None:
    """Issue #19, finding 1. alice's stock peer keeps its sessionId across a
    reconnect. While it is away (its connection closed, or half-open: the
    relay still thinks it alive), an attacker who read that sessionId off a
    relayed frame in a public chat channel sends a frame with it into alice's document:
    an anonymous peer into the public lobby, or bob into the vault he may not
    read. Every message alice sends after reconnecting arrives."""
    url = ratatoskr_relay.ws_url
    anonymous = attacker_kind == "anonymous"
    doc = "lobby" if anonymous else "vault"
    owner = await RecordingPeer.open(url, "owner", "alice-secret")
    reader = "bob-secret" if anonymous else "alice-secret"  # someone who may read `doc`
    watcher = await RecordingPeer.open(url, "watcher", reader)
    attacker = await RecordingPeer.open(url, "attacker", None if anonymous else "bob-secret")
    back = RecordingPeer(url, "owner-back")
    try:
        await watcher.join(doc)
        # Present in its document, as a stock peer is once it sent request or
        # sync: the watcher shares it, so it hears of the owner's going.
        await owner.join(doc)
        await attacker.join("eph:chat")
        await owner.ephemeral(doc, {"n": "before"})
        await owner.ephemeral("eph:chat", {"n": "hello"})
        seen = await attacker.wait_for(_ephemeral_in("eph:chat", owner.peer_id))
        session_id = seen["sessionId"]
        assert session_id == owner.session_id  # what a stock peer's frames show
        await watcher.wait_for(_ephemeral_in(doc, owner.peer_id))

        if gone == "closed":
            mark = len(watcher.frames)
            await owner.close()
            await watcher.wait_for(
                lambda f: f.get("type") == "peer_disconnected" and f["peerId"] == owner.peer_id,
                since=mark,
            )
            assert ratatoskr_relay.stats().session_tombstones >= 1
        else:
            owner.pause()  # the relay has not noticed: the session's owner is live

        # The takeover as reported: count 2**64 (a CBOR bignum). Refused.
        mark = len(attacker.frames)
        await attacker.send(
            attacker.ephemeral_frame(doc, {"n": "mine now"}, sessionId=session_id, count=2**64)
        )
        err = await attacker.wait_for(lambda f: f.get("type") == "error", since=mark)
        assert err["error"] == "invalid_message" and "2**53 - 1" in err["message"]
        # The largest count a frame may carry: refused by the read check, or
        # (in a document the attacker may read) dropped as another identity's copy.
        mark = len(attacker.frames)
        await attacker.send(
            attacker.ephemeral_frame(doc, {"n": "mine now"}, sessionId=session_id, count=MAX_COUNT)
        )
        if anonymous:
            await attacker.barrier()
            assert [f for f in attacker.frames[mark:] if f.get("documentId") == doc] == []
        else:
            err = await attacker.wait_for(lambda f: f.get("type") == "error", since=mark)
            assert (err["error"], err["documentId"]) == ("permission_denied", "vault")

        # alice's stock peer is back on a new connection, carrying on its session.
        back.session_id, back.count = owner.session_id, owner.count
        await back.connect("alice-secret", keep_session=True)
        for n in range(AFTER_RECONNECT):
            await back.ephemeral(doc, {"n": n})
        await watcher.wait_for(
            lambda f: (
                _ephemeral_in(doc, back.peer_id)(f)
                and cbor2.loads(f["data"]) == {"n": AFTER_RECONNECT - 1}
            )
        )
        await attacker.close()
        for n in range(AFTER_RECONNECT, AFTER_RECONNECT + AFTER_ATTACKER_LEFT):
            await back.ephemeral(doc, {"n": n})
        last = AFTER_RECONNECT + AFTER_ATTACKER_LEFT - 1
        await watcher.wait_for(
            lambda f: _ephemeral_in(doc, back.peer_id)(f) and cbor2.loads(f["data"]) == {"n": last}
        )
        await watcher.barrier()

        got = [
            (f["senderId"], cbor2.loads(f["data"])["n"])
            for f in watcher.frames
            if f.get("type") == "ephemeral" and f.get("documentId") == doc
        ]
        assert got == [(owner.peer_id, "before")] + [(back.peer_id, n) for n in range(last + 1)]
        assert {f["sessionId"] for f in watcher.frames if f.get("type") == "ephemeral"} == {
            session_id
        }
        print(
            f"{attacker_kind}, owner {gone}: {AFTER_RECONNECT} of {AFTER_RECONNECT} delivered "
            f"after the reconnect, {AFTER_ATTACKER_LEFT} of {AFTER_ATTACKER_LEFT} after the "
            "attacker left"
        )
        if not anonymous:
            assert assert_never_about(attacker.frames, "vault") == {"permission_denied": 1}
    finally:
        for peer in (back, attacker, watcher, owner):
            await peer.close()
