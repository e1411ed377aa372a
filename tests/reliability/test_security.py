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
  or not, and receives nothing but errors meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from ratatoskr_client import Peer, PermissionDenied
from ratatoskr_client.server import RelayServer

from ..integration.fakeserver import Recorder
from .support import Background, RecordingPeer, assert_never_about, try_to_break_in

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
