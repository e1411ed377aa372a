"""Connection and presence churn (issue #19, findings 2 and 3), over real sockets.

* An attacker cycling anonymous connections (connect → auth → ``request`` →
  reset) as fast as it can used to cost every connected peer two frames per
  cycle (its identity, then its disconnect) and hand it everyone's identity.
  In the relay's default identity scope it costs the idle peers nothing.
* In global scope the per-address budget of anonymous connections bounds it
  (tested with loopback not exempt).
* Peers toggling join/leave in one document as fast as each one's own bound
  allows: the document's members hear at most two changes per toggler and
  window (the presence budget).

Meanwhile a victim pair on another document keeps talking; its latency is
printed (``pytest -s``) and asserted with a bound generous enough for a loaded
2-core machine (the relay, the attacker and every peer share one event loop
here; ``benchmarks/churn.py`` measures the relay alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from typing import Any

import aiohttp
import cbor2
import pytest

from ratatoskr_client.server import RelayServer
from ratatoskr_client.server.core.relay import (
    PRESENCE_DOC_BURST,
    PRESENCE_DOC_RATE,
    PRESENCE_HOLD,
    PRESENCE_WINDOW,
)

from .support import Background, RecordingPeer, transport_of

IDLE = 200
ATTACK_SECONDS = 2.0
MAX_CYCLES = 3000
#: Asserted latency bound for the victim pair (measured values are printed).
LATENCY_BOUND = 1.0


class Raw:
    """A lightweight raw peer on a shared HTTP session: counts what it receives."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.frames: list[dict[str, Any]] = []
        self.peer_id = ""
        self.count = 0
        self.session_id = f"s-{id(self)}"
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    async def connect(self) -> dict[str, Any]:
        self.ws = await self.http.ws_connect(self.url, max_msg_size=0)
        await self.ws.send_bytes(cbor2.dumps({"type": "auth", "anonymous": True}))
        msg = await self.ws.receive()
        first: dict[str, Any] = cbor2.loads(msg.data)
        self.peer_id = first.get("clientPeerId", "")
        return first

    def read(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                self.frames.append(cbor2.loads(msg.data))

    async def presence(self, doc: str, status: str) -> None:
        assert self.ws is not None
        self.count += 1
        payload = {"type": "presence", "status": status, "documentId": doc}
        await self.ws.send_bytes(
            cbor2.dumps(
                {
                    "type": "ephemeral",
                    "senderId": "",
                    "targetId": "",
                    "documentId": doc,
                    "count": self.count,
                    "sessionId": self.session_id,
                    "data": cbor2.dumps(payload),
                }
            )
        )

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 2)


async def attack_cycle(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """connect → anonymous auth → request → reset; the relay's first answer."""
    ws = await http.ws_connect(url, max_msg_size=0)
    try:
        await ws.send_bytes(cbor2.dumps({"type": "auth", "anonymous": True}))
        first: dict[str, Any] = cbor2.loads((await ws.receive()).data)
        if first["type"] == "auth_ok":
            request = {
                "type": "request",
                "senderId": "",
                "targetId": "",
                "documentId": "attack",
                "data": bytes.fromhex("42000001000000020102"),
            }
            await ws.send_bytes(cbor2.dumps(request))
        return first
    finally:
        transport_of(ws).abort()
        with contextlib.suppress(Exception):
            await ws.close()


async def victim_pair(url: str, doc: str) -> tuple[RecordingPeer, RecordingPeer]:
    a = await RecordingPeer.open(url, "victim-a")
    b = await RecordingPeer.open(url, "victim-b")
    await a.join(doc)
    await b.join(doc)
    return a, b


async def talk(a: RecordingPeer, b: RecordingPeer, doc: str, latencies: list[float]) -> None:
    """a sends b one message every 10 ms; each one's delivery time is recorded."""
    n = 0
    while True:
        n += 1
        mark = len(b.frames)
        sent = time.perf_counter()
        await a.ephemeral(doc, {"n": n})
        await b.wait_for(lambda f: f.get("type") == "ephemeral", since=mark)
        latencies.append(time.perf_counter() - sent)
        await asyncio.sleep(0.01)


def report(name: str, latencies: list[float]) -> float:
    cuts = statistics.quantiles(latencies, n=100)
    p50, p99 = cuts[49], cuts[98]
    print(
        f"{name}: victim latency over {len(latencies)} messages: "
        f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
    )
    return p99


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


async def open_idle(http: aiohttp.ClientSession, url: str, count: int) -> list[Raw]:
    idle = [Raw(http, url) for _ in range(count)]
    for i in range(0, count, 50):
        await asyncio.gather(*(p.connect() for p in idle[i : i + 50]))
    for n, p in enumerate(idle):
        p.read()
        if n % 2:  # half of them in a document the attacker never touches
            await p.presence("lobby", "join")
    return idle


# --------------------------------------------------------------------------- connections


@pytest.mark.timed
async def test_connection_churn_costs_idle_peers_nothing(
    ratatoskr_relay: RelayServer, http: aiohttp.ClientSession
) -> None:
    url = ratatoskr_relay.ws_url
    idle = await open_idle(http, url, IDLE)
    a, b = await victim_pair(url, "victim")
    latencies: list[float] = []
    attackers: set[str] = set()
    try:
        async with Background() as background:
            background.start(talk(a, b, "victim", latencies))
            loop = asyncio.get_running_loop()
            end = loop.time() + ATTACK_SECONDS
            cycles = 0
            while loop.time() < end and cycles < MAX_CYCLES:
                first = await attack_cycle(http, url)
                assert first["type"] == "auth_ok", first  # loopback: not limited
                assert "scoped-identity" in first["features"]
                attackers.add(first["clientPeerId"])
                cycles += 1
        # Every cycle handled (each one's close too): only the idle and the pair are left.
        await a.barrier()
        assert ratatoskr_relay.stats().peers == IDLE + 2
        about_attackers = [
            f
            for p in idle
            for f in p.frames
            if f.get("peerId") in attackers or f.get("senderId") in attackers
        ]
        print(f"{cycles} churn cycles in {ATTACK_SECONDS} s; idle peers got {len(about_attackers)}")
        assert cycles > 50
        assert about_attackers == []  # not one frame about the attacker, to anyone
        assert [f for f in a.frames + b.frames if f.get("peerId") in attackers] == []
        assert report("connection churn", latencies) <= LATENCY_BOUND
    finally:
        await a.close()
        await b.close()
        for p in idle:
            await p.close()


@pytest.mark.ratatoskr_relay(
    identity_scope="global",
    anonymous_connection_limit=30,
    connection_limit_exempt=[],  # (so that 127.0.0.1 counts, as a remote address would)
    users=[{"token": "watcher-secret", "id": "watcher"}],
)
async def test_the_connection_budget_bounds_churn_in_global_scope(
    ratatoskr_relay: RelayServer, http: aiohttp.ClientSession
) -> None:
    url = ratatoskr_relay.ws_url
    watcher = await RecordingPeer.open(url, "watcher", "watcher-secret")  # (tokens: not counted)
    try:
        refused: dict[str, Any] | None = None
        admitted: set[str] = set()
        for _ in range(100):
            first = await attack_cycle(http, url)
            if first["type"] != "auth_ok":
                refused = first
                break
            admitted.add(first["clientPeerId"])
        assert refused is not None, "never refused"
        assert refused["error"] == "rate_limited"
        assert 0 < refused["retryAfter"] <= 2.0  # 30 per minute: one every 2 s
        assert "anonymous connections" in refused["message"]
        assert 30 <= len(admitted) <= 31  # the burst (and a refill's worth, on a slow machine)
        # The global broadcast: the watcher heard exactly the admitted ones come and go.
        await watcher.barrier()
        heard = {f["peerId"] for f in watcher.frames if f["type"] == "peer_identity"}
        assert heard == admitted
        assert ratatoskr_relay.stats().connection_addresses == 1
    finally:
        await watcher.close()


# --------------------------------------------------------------------------- presence


@pytest.mark.timed
async def test_join_leave_toggling_is_bounded_per_document(
    ratatoskr_relay: RelayServer, http: aiohttp.ClientSession
) -> None:
    url = ratatoskr_relay.ws_url
    togglers = [Raw(http, url) for _ in range(40)]
    for t in togglers:
        await t.connect()
        t.read()
    watcher = await RecordingPeer.open(url, "watcher")
    await watcher.join("busy")
    a, b = await victim_pair(url, "elsewhere")
    latencies: list[float] = []

    async def toggle(t: Raw) -> None:
        present = False
        while True:  # as fast as the socket takes it; the relay refuses the excess
            await t.presence("busy", "leave" if present else "join")
            present = not present
            await asyncio.sleep(0.005)

    try:
        async with Background() as background:
            background.start(talk(a, b, "elsewhere", latencies))
            mark = len(watcher.frames)
            started = time.perf_counter()
            for t in togglers:
                background.start(toggle(t))
            await asyncio.sleep(ATTACK_SECONDS)  # the workload's duration, not a wait for luck
            for task in background.tasks[1:]:
                task.cancel()
            elapsed = time.perf_counter() - started
        heard = [
            f for f in watcher.frames[mark:] if f["type"] in ("peer_joined_doc", "peer_left_doc")
        ]
        offered = sum(1 for t in togglers for f in t.frames if f["type"] == "doc_presence_state")
        print(
            f"{len(togglers)} togglers for {elapsed:.1f} s: {offered} joins accepted, the "
            f"watcher heard {len(heard)} changes ({len(heard) / elapsed:.0f}/s)"
        )
        # Each toggler adds at most two changes per window (+ one flush in
        # flight), and the document's own budget caps them all.
        per_peer = 2 * len(togglers) * ((elapsed + PRESENCE_HOLD) / PRESENCE_WINDOW + 1)
        assert len(heard) <= min(per_peer, PRESENCE_DOC_BURST + PRESENCE_DOC_RATE * elapsed)
        assert offered > 2 * len(heard)  # there was far more churn than it heard
        # Once quiet, the watcher's view converges on the relay's.
        core = ratatoskr_relay.core

        def converged(_: Any) -> bool:
            view: list[str] = []
            for f in watcher.frames:
                if f.get("documentId") != "busy":
                    continue
                if f["type"] == "doc_presence_state":
                    view = list(f["peers"])
                elif f["type"] == "peer_joined_doc":
                    view.append(f["peerId"])
                elif f["type"] == "peer_left_doc" and f["peerId"] in view:
                    view.remove(f["peerId"])
            return core.held_documents() == 0 and view == list(core.presence("busy"))

        await watcher.wait_for(converged, timeout=20)
        assert report("join/leave toggling", latencies) <= LATENCY_BOUND
    finally:
        for peer in (watcher, a, b):
            await peer.close()
        for t in togglers:
            await t.close()
