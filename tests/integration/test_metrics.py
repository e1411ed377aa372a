"""``GET /metrics`` on a single relay: what it counts, and its answer without
prometheus-client."""

from __future__ import annotations

import sys

import aiohttp
import cbor2
import pytest

from ratatoskr_client.server import RelayServer, metrics

from .rawpeer import RawPeers, settle

pytest.importorskip("prometheus_client", reason="the metrics tests need prometheus-client")


async def scrape(relay: RelayServer) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as http, http.get(f"{relay.url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = await resp.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


@pytest.mark.ratatoskr_relay(
    rate_limit=5,
    users=[{"token": "alice-secret", "id": "alice"}],
    documents=[
        {"id": "private", "owner": "alice"},
        {"id": "doc", "acl": [{"principal": "public"}]},
    ],
)
async def test_metrics_count_what_the_relay_did(
    ratatoskr_relay: RelayServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "MAX_AGE", 0.0)  # every scrape renders the page anew
    before = await scrape(ratatoskr_relay)
    async with RawPeers(ratatoskr_relay.ws_url) as peers:
        a, b = await peers(), await peers()
        await a.join("doc")
        await b.join("doc")
        for i in range(7):  # 5 relayed, 2 rate limited: 1 answered, 1 not
            await a.ephemeral("doc", i)
        await a.presence("private", "join")  # permission
        await a.send(b"\xff")  # invalid
        await a.send(b"\xa1" + b"\x00" * 70_000)  # oversized
        await a.send("text")  # a text frame
        await settle(a, b)
        during = await scrape(ratatoskr_relay)
    after = await scrape(ratatoskr_relay)

    def grew(key: str, at: dict[str, float] = during) -> float:
        return at.get(key, 0.0) - before.get(key, 0.0)

    assert during["ratatoskr_peers"] == 2
    assert during["ratatoskr_memberships"] == 2
    assert grew('ratatoskr_messages_relayed_total{origin="local"}') == 5
    assert grew('ratatoskr_frames_sent_total{type="ephemeral"}') == 5
    assert grew('ratatoskr_refused_total{reason="rate_limit"}') == 1
    assert grew("ratatoskr_refused_unanswered_total") == 1
    assert grew('ratatoskr_refused_total{reason="permission"}') == 1
    assert grew('ratatoskr_refused_total{reason="invalid"}') == 2  # undecodable, text
    assert grew('ratatoskr_refused_total{reason="oversized"}') == 1
    for kind in ("invalid", "oversized", "text"):
        assert grew(f'ratatoskr_frames_received_total{{type="{kind}"}}') == 1
    assert grew('ratatoskr_frames_received_total{type="auth"}') == 2
    assert grew('ratatoskr_frames_sent_total{type="doc_presence_state"}') >= 2
    assert after["ratatoskr_peers"] == 0 and after["ratatoskr_connections"] == 0
    assert "process_resident_memory_bytes" in after
    assert "ratatoskr_redis_up" not in after  # not in a cluster
    assert grew("ratatoskr_internal_errors_total", after) == 0


async def test_a_frame_the_relay_fails_on_is_answered_counted_and_costs_nothing_else(
    ratatoskr_relay: RelayServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(metrics, "MAX_AGE", 0.0)
    core = ratatoskr_relay.core
    async with RawPeers(ratatoskr_relay.ws_url) as peers:
        a, b = await peers(), await peers()
        await a.join("doc")
        await b.join("doc")
        working = core._on_ephemeral

        def broken(*args: object) -> None:
            raise RuntimeError("a bug in the relay")

        monkeypatch.setattr(core, "_on_ephemeral", broken)
        await a.ephemeral("doc", "lost")
        err = await a.recv_type("error", error="internal_error")
        assert err["message"] == "the relay failed on this frame"
        monkeypatch.setattr(core, "_on_ephemeral", working)
        await a.ephemeral("doc", "delivered")  # the connection, and the relay, go on
        message = await b.recv_type("ephemeral", senderId=a.peer_id)
        assert cbor2.loads(message["data"]) == "delivered"
        counted = await scrape(ratatoskr_relay)
    assert counted["ratatoskr_internal_errors_total"] == 1
    assert [r.levelname for r in caplog.records if "internal error" in r.getMessage()] == ["ERROR"]


async def test_metrics_without_prometheus_client_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    async with RelayServer(port=0) as relay, aiohttp.ClientSession() as http:
        async with http.get(f"{relay.url}/metrics") as resp:
            assert resp.status == 501
            assert '.venv/bin/pip install -e ".[metrics]"' in await resp.text()
        async with http.get(f"{relay.url}/health") as resp:
            assert await resp.json() == {"status": "ok"}
