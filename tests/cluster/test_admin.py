"""The admin API in a two-relay cluster (real Redis, relay processes): one
relay's API sees the other's peers, and disconnects and publishes reach them."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import pytest

from ratatoskr_client import DisconnectedByAdmin, Peer, RatatoskrClient
from ratatoskr_client.errors import RatatoskrError

from .conftest import make_cluster

TOKEN = "cluster-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WAIT = 10.0


async def test_one_relays_api_acts_on_the_whole_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RATATOSKR_ADMIN_TOKEN", TOKEN)
    with make_cluster(2) as cluster:
        await cluster.ready()
        doc = f"admin-{uuid.uuid4().hex[:8]}"
        here = RatatoskrClient(cluster.a.url, token="bob-secret")
        there = RatatoskrClient(cluster.b.url, token="alice-secret")
        try:
            await here.connect()
            await there.connect()
            await here.enter_document(doc)
            await there.enter_document(doc)
            await here.wait_for_presence(doc, lambda peers: len(peers) == 2, timeout=WAIT)
            async with aiohttp.ClientSession(headers=AUTH) as http:

                async def get(path: str) -> Any:
                    async with http.get(cluster.a.url + path) as answer:
                        assert answer.status == 200
                        return await answer.json()

                nodes = await get("/admin/api/nodes")
                assert len(nodes["nodes"]) == 2
                page = await get("/admin/api/connections")
                assert {c["peerId"] for c in page["connections"]} == {
                    here.me.peer_id,
                    there.me.peer_id,
                }
                presence = await get(f"/admin/api/documents/{doc}")
                assert {p["userId"] for p in presence["peers"]} == {"alice", "bob"}

                # A publish reaches the other relay's peers, from their server.
                got: asyncio.Future[tuple[Peer, Any]] = asyncio.get_running_loop().create_future()
                there.on(
                    "ephemeral-message",
                    lambda d, peer, payload: got.done() or got.set_result((peer, payload)),
                )
                async with http.post(
                    f"{cluster.a.url}/admin/api/documents/{doc}/publish",
                    json={"payload": {"notice": "hello"}},
                ) as answer:
                    assert (await answer.json())["forwarded"] is True
                peer, payload = await asyncio.wait_for(got, WAIT)
                assert payload == {"notice": "hello"} and peer.is_server

                # A disconnect of a user on the other relay reaches it.
                reasons: asyncio.Queue[RatatoskrError] = asyncio.Queue()
                there.on("disconnected", reasons.put_nowait)
                async with http.post(
                    f"{cluster.a.url}/admin/api/disconnect",
                    json={"userId": "alice", "reason": "maintenance"},
                ) as answer:
                    body = await answer.json()
                    assert answer.status == 200, body
                assert body == {"disconnected": [], "forwarded": [there.me.peer_id]}
                reason = await asyncio.wait_for(reasons.get(), WAIT)
                assert isinstance(reason, DisconnectedByAdmin) and reason.reason == "maintenance"
                await here.wait_for_presence(doc, lambda peers: len(peers) == 1, timeout=WAIT)
        finally:
            await here.close()
            await there.close()
