"""The relay's documented limits, at their default values, at the boundary.

* frame size: 65,536 bytes are processed, 65,537 get ``invalid_message``
  (socket open), more than 1 MiB closes the socket with 1009;
* documents per connection: 1,000 (``eph:`` channels included), the 1,001st is
  ``too_many_documents``;
* rate limit: 600 relayed messages per minute with a burst of 600, then
  ``rate_limited`` with ``retryAfter`` of about 0.1 s.

Other peers are unaffected by each of them.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import cbor2

from ratatoskr_client.server import (
    DEFAULT_MAX_DOCUMENTS_PER_PEER,
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_RATE_LIMIT,
    RelayServer,
)

from .support import RecordingPeer


def frame_of_size(peer: RecordingPeer, document_id: str, size: int) -> bytes:
    """An ephemeral frame whose CBOR encoding is exactly ``size`` bytes."""
    pad = size - 200
    while True:
        frame = peer.ephemeral_frame(document_id, b"\x00" * pad)
        peer.count -= 1  # only the last one built is sent
        raw = cbor2.dumps(frame)
        if len(raw) == size:
            peer.count += 1
            return raw
        pad += size - len(raw)


def errors(peer: RecordingPeer) -> list[dict[str, Any]]:
    return peer.received(
        lambda f: f.get("type") == "error" and not str(f.get("documentId")).startswith("probe-")
    )


async def test_default_frame_size_limit(ratatoskr_relay: RelayServer) -> None:
    assert ratatoskr_relay.config.max_frame_size == DEFAULT_MAX_FRAME_SIZE == 65_536
    url = ratatoskr_relay.ws_url
    sender = await RecordingPeer.open(url, "sender")
    receiver = await RecordingPeer.open(url, "receiver")
    try:
        await receiver.join("doc")
        await sender.join("doc")  # (so that the receiver hears it disconnect)
        await sender.send(frame_of_size(sender, "doc", DEFAULT_MAX_FRAME_SIZE))
        got = await receiver.wait_for(lambda f: f.get("type") == "ephemeral")
        assert len(cbor2.loads(got["data"])) > 65_000
        mark = len(sender.frames)
        await sender.send(frame_of_size(sender, "doc", DEFAULT_MAX_FRAME_SIZE + 1))
        err = await sender.wait_for(lambda f: f.get("type") == "error", since=mark)
        assert err["error"] == "invalid_message"
        assert "65537 bytes exceeds the 65536-byte limit" in err["message"]
        # 16 times the limit is still read and refused; beyond, the socket is closed.
        await sender.send(b"\x00" * (16 * DEFAULT_MAX_FRAME_SIZE))
        await sender.wait_for(lambda f: f.get("type") == "error", since=mark + 1)
        await sender.send(b"\x00" * (16 * DEFAULT_MAX_FRAME_SIZE + 1))
        assert await sender.wait_closed() == 1009
        await receiver.wait_for(
            lambda f: f.get("type") == "peer_disconnected" and f.get("peerId") == sender.peer_id
        )
        assert [f["type"] for f in receiver.frames].count("ephemeral") == 1
        assert not receiver.closed
    finally:
        await sender.close()
        await receiver.close()


async def test_default_documents_per_connection(ratatoskr_relay: RelayServer) -> None:
    assert ratatoskr_relay.config.max_documents_per_peer == DEFAULT_MAX_DOCUMENTS_PER_PEER == 1000
    url = ratatoskr_relay.ws_url
    hoarder = await RecordingPeer.open(url, "hoarder")
    other = await RecordingPeer.open(url, "other")
    try:
        for n in range(DEFAULT_MAX_DOCUMENTS_PER_PEER):
            channel = f"eph:{n}" if n % 2 else f"doc-{n}"
            await hoarder.presence(channel, "join")
        await hoarder.barrier()
        states = hoarder.received(lambda f: f.get("type") == "doc_presence_state")
        assert len(states) == DEFAULT_MAX_DOCUMENTS_PER_PEER
        assert errors(hoarder) == []
        await hoarder.presence("one-too-many", "join")
        await hoarder.barrier()
        (err,) = errors(hoarder)
        assert (err["error"], err["documentId"]) == ("too_many_documents", "one-too-many")
        stats = ratatoskr_relay.stats()
        assert stats.memberships == stats.documents == DEFAULT_MAX_DOCUMENTS_PER_PEER
        # Others are not limited by it; and a leave makes room.
        assert (await other.join("one-too-many"))["peers"] == [other.peer_id]
        await hoarder.presence("doc-0", "leave")
        state = await hoarder.join("one-too-many")
        assert state["peers"] == [other.peer_id, hoarder.peer_id]
    finally:
        await hoarder.close()
        await other.close()


async def test_default_rate_limit(ratatoskr_relay: RelayServer) -> None:
    assert ratatoskr_relay.config.rate_limit == DEFAULT_RATE_LIMIT == 600
    url = ratatoskr_relay.ws_url
    sender = await RecordingPeer.open(url, "sender")
    receiver = await RecordingPeer.open(url, "receiver")
    try:
        await receiver.join("doc")
        loop = asyncio.get_running_loop()
        started = loop.time()
        for n in range(DEFAULT_RATE_LIMIT + 50):
            await sender.ephemeral("doc", n)
        await sender.barrier()
        refilled = math.ceil((loop.time() - started) * DEFAULT_RATE_LIMIT / 60)
        await receiver.barrier()
        limited = errors(sender)
        relayed = [cbor2.loads(f["data"]) for f in receiver.frames if f["type"] == "ephemeral"]
        # The burst, plus what refilled (10/s) while the 650 went out.
        assert DEFAULT_RATE_LIMIT <= len(relayed) <= DEFAULT_RATE_LIMIT + refilled
        assert relayed == list(range(len(relayed)))
        # Every other one is refused: answered once per window (until the next
        # token is due, at most 0.1 s), the rest dropped unanswered.
        refused = DEFAULT_RATE_LIMIT + 50 - len(relayed)
        assert 1 <= len(limited) <= refilled + 1
        assert len(limited) + ratatoskr_relay.core.counters.unanswered == refused
        assert all(f["error"] == "rate_limited" for f in limited)
        assert all(0 < f["retryAfter"] <= 0.1 for f in limited)
    finally:
        await sender.close()
        await receiver.close()
