"""The admin API, its dashboard stream and the webhooks on a real relay, with
real clients: what an operator's calls do to connected peers."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ratatoskr_client import ConnectionState, DisconnectedByAdmin, Peer, RatatoskrClient
from ratatoskr_client.errors import RatatoskrError
from ratatoskr_client.server import RelayConfig, RelayServer
from ratatoskr_client.server.asyncio.admin import STREAM_HZ
from ratatoskr_client.server.core.webhooks import verify

from .test_relay_cli import relay_process

TOKEN = "admin-s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WAIT = 5.0


@pytest.fixture
async def relay() -> AsyncIterator[RelayServer]:
    async with RelayServer(RelayConfig(port=0, open=True, admin_token=TOKEN)) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any]:
    async with http.request(method, url, **kwargs) as response:
        assert response.content_type == "application/json", await response.text()
        return response.status, await response.json()


async def test_without_admin_every_admin_path_is_a_json_404(http: aiohttp.ClientSession) -> None:
    async with RelayServer(port=0, open=True) as relay:
        for path in ("/admin", "/admin/", "/admin/api/documents", "/admin/static/app.js"):
            status, body = await call(http, "GET", relay.url + path, headers=AUTH)
            assert (status, body["error"]) == (404, "not_found"), path


async def test_every_api_call_needs_the_token(
    relay: RelayServer, http: aiohttp.ClientSession
) -> None:
    calls = [
        ("GET", "/admin/api/nodes"),
        ("GET", "/admin/api/documents"),
        ("GET", "/admin/api/documents/doc"),
        ("GET", "/admin/api/connections"),
        ("GET", "/admin/api/stream"),
        ("POST", "/admin/api/disconnect"),
        ("POST", "/admin/api/documents/doc/publish"),
    ]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        for method, path in calls:
            status, body = await call(http, method, relay.url + path, headers=headers)
            assert (status, body["error"]) == (401, "unauthorized"), (method, path, headers)
    # The page itself holds no data: it is served to anyone, and asks for the token.
    async with http.get(relay.url + "/admin/") as page:
        assert page.status == 200 and "Admin token" in await page.text()
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    status, body = await call(http, "GET", relay.url + "/admin/api/nothing", headers=AUTH)
    assert (status, body["error"]) == (404, "not_found")
    status, body = await call(
        http, "POST", relay.url + "/admin/api/disconnect", headers=AUTH, data=b"{not json"
    )
    assert (status, body["error"]) == (400, "invalid_request")


async def test_the_api_answers_as_documented(
    relay: RelayServer, http: aiohttp.ClientSession
) -> None:
    a = RatatoskrClient(relay.url, name="Ada")
    b = RatatoskrClient(relay.url)
    try:
        await a.connect()
        await b.connect()
        await a.enter_document("doc")
        await b.enter_document("doc")
        await a.set_state("doc", "cursor", [3, 4])
        await b.wait_for_presence("doc", lambda peers: len(peers) == 2, timeout=WAIT)
        got: asyncio.Queue[Any] = asyncio.Queue()
        b.on("state-changed", lambda doc, peer, state: got.put_nowait(dict(state)))
        while (await asyncio.wait_for(got.get(), WAIT)).get("cursor") != [3, 4]:
            pass  # (the relay relayed the state before b saw it)

        status, nodes = await call(http, "GET", relay.url + "/admin/api/nodes", headers=AUTH)
        assert status == 200 and nodes["nodes"][0]["peers"] == 2
        status, docs = await call(http, "GET", relay.url + "/admin/api/documents", headers=AUTH)
        assert docs["documents"] == [{"id": "doc", "peers": 2, "local": 2, "remote": 0, "users": 2}]
        status, doc = await call(http, "GET", relay.url + "/admin/api/documents/doc", headers=AUTH)
        assert {p["peerId"] for p in doc["peers"]} == {a.me.peer_id, b.me.peer_id}
        assert abs(doc["peers"][0]["since"] - time.time()) < 60
        assert doc["state"][a.me.peer_id] == {"name": "Ada", "cursor": [3, 4]}
        status, page = await call(
            http, "GET", relay.url + "/admin/api/connections?limit=1", headers=AUTH
        )
        assert (page["total"], page["next"], len(page["connections"])) == (2, 1, 1)
    finally:
        await a.close()
        await b.close()


async def test_a_published_message_comes_from_the_server(
    relay: RelayServer, http: aiohttp.ClientSession
) -> None:
    client = RatatoskrClient(relay.url)
    try:
        await client.connect()
        await client.enter_document("doc")
        received: asyncio.Future[tuple[Peer, Any]] = asyncio.get_running_loop().create_future()
        client.on(
            "ephemeral-message", lambda doc, peer, payload: received.set_result((peer, payload))
        )
        status, body = await call(
            http,
            "POST",
            relay.url + "/admin/api/documents/doc/publish",
            headers=AUTH,
            json={"payload": {"notice": "maintenance at 5"}},
        )
        assert (status, body) == (200, {"documentId": "doc", "delivered": 1})
        peer, payload = await asyncio.wait_for(received, WAIT)
        assert payload == {"notice": "maintenance at 5"}
        assert peer.is_server and peer.name == "server"
        assert peer.peer_id == relay.core.server_peer_id
    finally:
        await client.close()


async def test_a_disconnected_client_is_told_why_and_stays_away(
    relay: RelayServer, http: aiohttp.ClientSession
) -> None:
    victim = RatatoskrClient(relay.url)
    other = RatatoskrClient(relay.url)
    try:
        await victim.connect()
        await other.connect()
        await victim.enter_document("doc")
        await other.enter_document("doc")
        await other.wait_for_presence("doc", lambda peers: len(peers) == 2, timeout=WAIT)
        reasons: asyncio.Queue[RatatoskrError] = asyncio.Queue()
        victim.on("disconnected", reasons.put_nowait)
        status, body = await call(
            http,
            "POST",
            relay.url + "/admin/api/disconnect",
            headers=AUTH,
            json={"peerId": victim.me.peer_id, "reason": "abuse"},
        )
        assert (status, body) == (200, {"disconnected": [victim.me.peer_id]})
        reason = await asyncio.wait_for(reasons.get(), WAIT)
        assert isinstance(reason, DisconnectedByAdmin)
        assert (reason.reason, reason.reconnect, reason.code) == ("abuse", False, 1008)
        assert victim.connection_state is ConnectionState.CLOSED  # no reconnect loop
        await other.wait_for_presence("doc", lambda peers: len(peers) == 1, timeout=WAIT)
        assert relay.core.stats().peers == 1
    finally:
        await victim.close()
        await other.close()


async def test_a_client_allowed_back_reconnects_after_retry_after(
    relay: RelayServer, http: aiohttp.ClientSession
) -> None:
    client = RatatoskrClient(relay.url)
    try:
        await client.connect()
        first = client.me.peer_id
        reasons: asyncio.Queue[RatatoskrError] = asyncio.Queue()
        client.on("disconnected", reasons.put_nowait)
        reconnected = asyncio.Event()
        client.on("connected", lambda me: reconnected.set())
        status, _ = await call(
            http,
            "POST",
            relay.url + "/admin/api/disconnect",
            headers=AUTH,
            json={"peerId": first, "reconnect": True, "retryAfter": 0.2},
        )
        assert status == 200
        reason = await asyncio.wait_for(reasons.get(), WAIT)
        assert isinstance(reason, DisconnectedByAdmin) and reason.retry_after == 0.2
        await asyncio.wait_for(reconnected.wait(), WAIT)
        assert client.me.peer_id != first
    finally:
        await client.close()


async def test_the_stream_pushes_coalesced_snapshots(
    relay: RelayServer, http: aiohttp.ClientSession
) -> None:
    """A burst of changes costs at most STREAM_HZ snapshots a second, the
    same bytes for every tab; a tab opened later gets the latest at once."""
    clients = [RatatoskrClient(relay.url) for _ in range(8)]

    async def read(response: aiohttp.ClientResponse) -> bytes:
        while True:
            line = await asyncio.wait_for(response.content.readline(), WAIT)
            if line.startswith(b"data: "):
                return line

    try:
        async with http.get(relay.url + "/admin/api/stream", headers=AUTH) as tab1:
            assert tab1.headers["Content-Type"] == "text/event-stream"
            empty = json.loads((await read(tab1))[6:])
            assert empty["peerCount"] == 0 and empty["documents"] == []
            loop = asyncio.get_running_loop()
            started = loop.time()
            for client in clients:  # 8 connects and 8 joins: 16 changes
                await client.connect()
                await client.enter_document("doc")
            snapshots = 0
            while True:
                latest = await read(tab1)
                snapshots += 1
                if json.loads(latest[6:])["peerCount"] == len(clients):
                    break
            took = loop.time() - started
            assert snapshots <= took * STREAM_HZ + 2, (snapshots, took)
            async with http.get(relay.url + "/admin/api/stream", headers=AUTH) as tab2:
                assert await read(tab2) == latest
    finally:
        for client in clients:
            await client.close()


async def test_relay_cli_admin_token_flag_file_and_variable(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text("from-a-file\n")
    for args, env, token in (
        (["--admin-token", "from-argv"], {}, "from-argv"),
        (["--admin-token-file", str(token_file)], {}, "from-a-file"),
        ([], {"RATATOSKR_ADMIN_TOKEN": "from-env"}, "from-env"),
    ):
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            async with relay_process("--log-level", "DEBUG", *args) as relay:
                base = f"http://127.0.0.1:{relay.port}"
                status, _ = await call(
                    http,
                    "GET",
                    base + "/admin/api/documents",
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert status == 200, args
                status, _ = await call(http, "GET", base + "/admin/api/documents")
                assert status == 401
                code, _, stderr = await relay.stop()
                assert code == 0
                assert b"/admin/" in stderr
                assert token.encode() not in stderr  # never logged
        finally:
            for key, value in old.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


class Receiver:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        assert verify("hook-secret", request.headers, body, time.time())
        self.events += json.loads(body)["events"]
        self.arrived.set()
        return web.json_response({"ok": True})


async def test_webhooks_from_a_single_relay() -> None:
    hooks = Receiver()
    app = web.Application()
    app.router.add_post("/", hooks.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    try:
        config = RelayConfig(port=0, open=True, webhook_url=url, webhook_secret="hook-secret")
        async with RelayServer(config) as relay:
            client = RatatoskrClient(relay.url)
            await client.connect()
            await client.enter_document("doc")
            await client.close()
            while len(hooks.events) < 4:
                hooks.arrived.clear()
                await asyncio.wait_for(hooks.arrived.wait(), WAIT)
            assert [e["type"] for e in hooks.events] == [
                "document.occupied",
                "user.joined",
                "user.left",
                "document.vacated",
            ]
            assert all(e["documentId"] == "doc" for e in hooks.events)
    finally:
        await runner.cleanup()


async def test_a_failing_receiver_gets_the_same_batch_again_until_it_answers(
    monkeypatch: pytest.MonkeyPatch, http: aiohttp.ClientSession
) -> None:
    from ratatoskr_client.server.core import webhooks

    monkeypatch.setattr(webhooks, "RETRY_FIRST", 0.01)  # (the schedule, shortened)
    answers = [500, 503, 200]
    deliveries: list[str] = []
    arrived = asyncio.Event()

    async def flaky(request: web.Request) -> web.Response:
        body = await request.read()
        assert verify("hook-secret", request.headers, body, time.time())
        deliveries.append(request.headers["X-Ratatoskr-Delivery"])
        status = answers.pop(0) if answers else 200
        if status == 200:
            arrived.set()
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/", flaky)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    try:
        config = RelayConfig(port=0, open=True, webhook_url=url, webhook_secret="hook-secret")
        async with RelayServer(config) as relay:
            client = RatatoskrClient(relay.url)
            await client.connect()
            await client.enter_document("doc")
            await asyncio.wait_for(arrived.wait(), WAIT)
            assert len(deliveries) == 3 and len(set(deliveries)) == 1  # one batch, retried
            async with http.get(relay.metrics_url) as page:
                text = await page.text()
            assert 'ratatoskr_webhook_deliveries_total{outcome="error"} 2.0' in text
            assert 'ratatoskr_webhook_deliveries_total{outcome="ok"} 1.0' in text
            assert 'ratatoskr_webhook_events_dropped_total{reason="failed"} 0.0' in text
            await client.close()
    finally:
        await runner.cleanup()
