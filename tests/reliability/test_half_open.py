"""Half-open connections: a peer or a server that goes silent without closing.

Relay side, two independent mechanisms, each measured on its own:

* presence TTL: a peer that stops sending (its TCP connection still open) is
  removed from every document within TTL + one expiry sweep (min(1 s, TTL/10));
* WebSocket ping: a socket that answers no ping is closed within 1.5 ×
  ``ping_interval`` of the last frame received from it, and its presence goes
  with it; so is one that trickles bytes that never complete a frame (only
  whole frames and pongs count), while one that stays silent but answers
  every ping stays connected.

Client side: a client whose server stops answering (a frozen server, or a
network path that silently drops every packet, played by a TCP proxy) notices
within 1.5 × its ``ping_interval`` of the last frame it received, reports
``disconnected``, and reconnects as soon as a server is reachable again.
"""

from __future__ import annotations

import asyncio
import contextlib

import cbor2
import pytest

from ratatoskr_client import ConnectionClosed, Peer, RatatoskrClient
from ratatoskr_client.testing import TEST_BACKOFF

from ..integration.fakeserver import FakeServer, Recorder
from .hostile import client_frame, open_upgraded
from .support import Background, BlackholeProxy, RecordingPeer, assert_never_about

#: Scheduling allowance on a small, shared machine (the CI runner or a laptop
#: running benchmarks). Every bound below is "documented bound + SLACK".
SLACK = 1.0


USERS = [{"token": "alice-secret", "id": "alice", "name": "Alice"}]
#: "doc" is public; the anonymous observers must never hear of the "vault".
DOCUMENTS = [
    {"id": "doc", "acl": [{"principal": "public"}]},
    {"id": "vault", "owner": "alice"},
]


def ids(peers: tuple[Peer, ...]) -> list[str]:
    return [p.peer_id for p in peers]


def is_left(peer_id: str):
    return lambda f: f.get("type") == "peer_left_doc" and f.get("peerId") == peer_id


# --------------------------------------------------------------------------- relay side

TTL = 1.0
SWEEP = min(1.0, TTL / 10)


# ping_interval stays 30 s: only the TTL acts
@pytest.mark.ratatoskr_relay(presence_ttl=TTL, users=USERS, documents=DOCUMENTS)
async def test_relay_removes_a_silent_peer_from_presence_within_the_ttl(ratatoskr_relay):
    url = ratatoskr_relay.ws_url
    observer = await RecordingPeer.open(url, "observer")
    stuck = await RecordingPeer.open(url, "stuck", "alice-secret")
    try:
        await _silent_peer_scenario(ratatoskr_relay, observer, stuck)
    finally:
        await stuck.close()
        await observer.close()


async def _silent_peer_scenario(ratatoskr_relay, observer, stuck) -> None:
    loop = asyncio.get_running_loop()
    async with Background() as background:
        await observer.join("doc")
        await stuck.join("vault")

        async def keep_observer_present() -> None:
            while True:  # well within the TTL
                await asyncio.sleep(TTL / 5)
                await observer.presence("doc", "heartbeat")

        background.start(keep_observer_present())  # until the end of the test
        sent = loop.time()
        await stuck.join("doc")
        confirmed = loop.time()
        stuck.pause()  # alive TCP, no reads, no writes

        i = await observer.wait_index(is_left(stuck.peer_id), timeout=TTL + SWEEP + 10)
        removed = observer.arrivals[i]
        print(
            f"silent peer removed {removed - confirmed:.3f}-{removed - sent:.3f} s after its "
            f"last frame (TTL {TTL} s, sweep {SWEEP} s)"
        )
        assert removed - sent >= TTL  # never before the TTL
        assert removed - confirmed <= TTL + SWEEP + SLACK
        assert ratatoskr_relay.core.presence("doc") == (observer.peer_id,)
        assert ratatoskr_relay.core.presence("vault") == ()  # expired everywhere
        # Only presence went: the connection itself is open (no ping has failed yet).
        assert ratatoskr_relay.stats().peers == 2
        assert observer.received(lambda f: f.get("type") == "peer_disconnected") == []

        # The relay told the stuck peer too; once it runs again it reads that it
        # is gone, and one heartbeat brings it back.
        stuck.resume()
        await stuck.wait_for(is_left(stuck.peer_id))
        mark = len(stuck.frames)
        await stuck.presence("doc", "heartbeat")
        state = await stuck.wait_for(lambda f: f.get("type") == "doc_presence_state", since=mark)
        assert state["peers"] == [observer.peer_id, stuck.peer_id]
        await observer.wait_for(
            lambda f: f.get("type") == "peer_joined_doc" and f.get("peerId") == stuck.peer_id
        )
        await observer.barrier()
        assert assert_never_about(observer.frames, "vault") == {}


RELAY_PING = 0.5


@pytest.mark.ratatoskr_relay(
    ping_interval=RELAY_PING, presence_ttl=60, users=USERS, documents=DOCUMENTS
)
async def test_relay_closes_a_socket_that_answers_no_ping(ratatoskr_relay):
    url = ratatoskr_relay.ws_url
    observer = await RecordingPeer.open(url, "observer")
    stuck = await RecordingPeer.open(url, "stuck", "alice-secret")
    try:
        await observer.join("doc")
        await stuck.join("vault")
        loop = asyncio.get_running_loop()
        # The relay's ping timer restarts with each frame it receives from the
        # peer: the last one is this join, received after `sent` and before the
        # presence state arrives.
        sent = loop.time()
        await stuck.join("doc")
        last_frame = stuck.arrivals[-1]
        stuck.pause()
        gone = await observer.wait_index(
            lambda f: f.get("type") == "peer_disconnected" and f.get("peerId") == stuck.peer_id,
            timeout=10,
        )
        closed_after = observer.arrivals[gone] - last_frame
        print(f"unanswered pings closed the socket {closed_after:.3f} s after its last frame")
        # A ping after ping_interval of silence, then half that for the pong.
        assert observer.arrivals[gone] - sent >= 1.5 * RELAY_PING
        assert closed_after <= 1.5 * RELAY_PING + SLACK
        # Presence went with the connection (the TTL, 60 s, had nothing to do with it).
        left = [i for i, f in enumerate(observer.frames) if is_left(stuck.peer_id)(f)]
        assert len(left) == 1
        assert left[0] < gone
        assert ratatoskr_relay.core.presence("doc") == (observer.peer_id,)
        stats = ratatoskr_relay.stats()
        assert (stats.connections, stats.peers, stats.memberships) == (1, 1, 1)
        await observer.barrier()
        assert assert_never_about(observer.frames, "vault") == {}
    finally:
        await stuck.close()
        await observer.close()


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One unmasked server frame: (opcode, payload)."""
    first, second = await reader.readexactly(2)
    n = second & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    return first & 0x0F, await reader.readexactly(n)


async def _raw_authenticated(
    port: int, join: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    """An anonymous raw peer; present in ``join`` when it returns, if given."""
    reader, writer = await open_upgraded(port)
    writer.write(client_frame(cbor2.dumps({"type": "auth", "anonymous": True})))
    await writer.drain()
    peer_id = ""
    while True:
        opcode, payload = await _read_frame(reader)
        if opcode != 0x2:
            continue
        frame = cbor2.loads(payload)
        if frame["type"] == "auth_ok":
            peer_id = frame["clientPeerId"]
            if join is None:
                return reader, writer, peer_id
            presence = {"type": "presence", "status": "join", "documentId": join}
            writer.write(
                client_frame(
                    cbor2.dumps(
                        {
                            "type": "ephemeral",
                            "senderId": peer_id,
                            "targetId": "",
                            "documentId": join,
                            "count": 1,
                            "sessionId": "raw",
                            "data": cbor2.dumps(presence),
                        }
                    )
                )
            )
            await writer.drain()
        elif frame["type"] == "doc_presence_state" and frame["documentId"] == join:
            return reader, writer, peer_id


@pytest.mark.ratatoskr_relay(ping_interval=RELAY_PING, presence_ttl=60, auth_timeout=60)
async def test_relay_closes_a_socket_that_trickles_a_frame_forever(ratatoskr_relay):
    """Finding 4 of the security review, relay side: bytes that never complete
    a frame do not keep a connection alive. It is pinged (which it cannot
    answer in the middle of a frame) and closed 1.5 x ping_interval after its
    last complete frame, however busily it trickles."""
    loop = asyncio.get_running_loop()
    observer = await RecordingPeer.open(ratatoskr_relay.ws_url, "observer")
    await observer.join("doc")  # (so that it hears of the trickler's going)
    reader, writer, peer_id = await _raw_authenticated(ratatoskr_relay.port, join="doc")
    last_frame = loop.time()  # the doc_presence_state answered its last complete frame
    # The start of a 100-byte frame, then one more byte every 50 ms.
    writer.write(bytes((0x82, 0x80 | 100)) + b"\0\0\0\0")
    await writer.drain()
    opcodes: list[int] = []

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(99):
                await asyncio.sleep(0.05)
                writer.write(b"\xa0")
                await writer.drain()

    async def read_until_closed() -> float:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                opcode, payload = await _read_frame(reader)
                opcodes.append(opcode)
                if opcode == 0x8:
                    assert int.from_bytes(payload[:2], "big") == 1008
        return loop.time()

    try:
        async with Background() as background:
            background.start(trickle())
            closed_at = await asyncio.wait_for(read_until_closed(), 10)
        closed_after = closed_at - last_frame
        print(f"a trickling socket was closed {closed_after:.3f} s after its last complete frame")
        assert closed_after >= 1.5 * RELAY_PING
        # (+ two sweeps of the relay's housekeeping, ping_interval / 10 each)
        assert closed_after <= 1.5 * RELAY_PING + 2 * RELAY_PING / 10 + SLACK
        # A ping it could not answer, then the close.
        assert [op for op in opcodes if op != 0x2] == [0x9, 0x8]
        # Closed like any connection: its leave and going told to who knew it.
        await observer.wait_for(
            lambda f: f.get("type") == "peer_disconnected" and f.get("peerId") == peer_id
        )
        assert observer.received(
            lambda f: f.get("type") == "peer_left_doc" and f.get("peerId") == peer_id
        )
        assert ratatoskr_relay.core.counters.unresponsive_disconnects == 1
    finally:
        writer.close()
        await observer.close()


@pytest.mark.ratatoskr_relay(ping_interval=RELAY_PING, presence_ttl=60)
async def test_a_silent_socket_that_answers_pings_stays_connected(ratatoskr_relay):
    reader, writer, _ = await _raw_authenticated(ratatoskr_relay.port)
    pings = 0
    try:
        while pings < 2:  # two intervals of silence (past the 1.5 deadline), pings answered
            opcode, payload = await asyncio.wait_for(_read_frame(reader), 10 * RELAY_PING)
            if opcode == 0x9:
                pings += 1
                writer.write(client_frame(payload, opcode=0xA))
                await writer.drain()
        assert ratatoskr_relay.stats().peers == 1
        assert ratatoskr_relay.core.counters.unresponsive_disconnects == 0
        # A client's own ping is answered with its payload (the SDK pings the relay).
        writer.write(client_frame(b"are you there", opcode=0x9))
        await writer.drain()
        while (frame := await asyncio.wait_for(_read_frame(reader), 10))[0] == 0x9:
            pass
        assert frame == (0xA, b"are you there")
    finally:
        writer.close()


# --------------------------------------------------------------------------- client side

PING = 0.5
CONNECT_TIMEOUT = 1.0


@pytest.mark.ratatoskr_relay(ping_interval=RELAY_PING, users=USERS, documents=DOCUMENTS)
@pytest.mark.slow
async def test_client_notices_a_dead_network_path_and_reconnects_through_it(
    ratatoskr_relay, ratatoskr_client
):
    loop = asyncio.get_running_loop()
    observer = await ratatoskr_client()  # straight to the relay
    spy = await RecordingPeer.open(ratatoskr_relay.ws_url, "spy")  # records every frame
    async with BlackholeProxy(ratatoskr_relay.port) as proxy:
        client = RatatoskrClient(
            proxy.url,
            token="alice-secret",
            resume=False,  # (the relay must drop the old peer, not hold it: #22)
            ping_interval=PING,
            connect_timeout=CONNECT_TIMEOUT,
            backoff=TEST_BACKOFF,
        )
        rec = Recorder(client)
        obs = Recorder(observer)
        try:
            await client.connect()
            await client.enter_document("doc")
            await client.enter_document("vault")
            await observer.enter_document("doc")
            await client.wait_for_presence("doc", lambda p: len(p) == 2, timeout=10)
            old = client.me

            # Healthy but idle for several ping intervals: pings are answered,
            # nothing is declared dead.
            before = proxy.traffic()
            await asyncio.sleep(4 * PING)  # let the ping timers run
            assert rec.of("disconnected") == []
            assert client.is_connected
            assert proxy.traffic() > before  # pings and pongs did cross

            # The path dies: every byte is dropped, nothing is closed.
            last_received = loop.time()  # nothing can arrive from here on
            proxy.blackhole()
            (reason,) = await rec.wait("disconnected", timeout=10)
            detected = loop.time() - last_received
            assert isinstance(reason, ConnectionClosed)
            assert not client.is_connected
            assert client.presence("doc") == ()

            # The relay, pinging the other end of the same dead path, drops the old peer.
            await obs.wait("peer-left", lambda doc, peer: peer == old, timeout=10)
            relay_detected = loop.time() - last_received

            # Reconnect attempts go into the void until the path is back...
            proxy.new_link.clear()
            await asyncio.wait_for(proxy.new_link.wait(), 10)
            assert not client.is_connected
            restored = loop.time()
            proxy.restore()
            await rec.wait("connected", lambda me: me != old, timeout=10)
            reconnected = loop.time() - restored
            print(
                f"dead path: client noticed after {detected:.3f} s (ping {PING} s), relay after "
                f"{relay_detected:.3f} s (ping {RELAY_PING} s); reconnected {reconnected:.3f} s "
                "after the path came back"
            )
            assert detected <= 1.5 * PING + SLACK
            assert relay_detected <= 1.5 * RELAY_PING + SLACK
            # One attempt may be hanging in the dead path: it times out, then backoff.
            assert reconnected <= CONNECT_TIMEOUT + TEST_BACKOFF.max_delay + SLACK

            # Converged: both see exactly the two live connections, no ghost.
            expected = [observer.me.peer_id, client.me.peer_id]
            await client.wait_for_presence("doc", lambda p: ids(p) == expected, timeout=10)
            await observer.wait_for_presence("doc", lambda p: ids(p) == expected, timeout=10)
            assert list(ratatoskr_relay.core.presence("doc")) == expected
            # Identities: the peers sharing a document (the spy shares none).
            await obs.until(lambda: set(observer.peers) == set(expected), timeout=10)
            assert set(client.peers) == set(expected)
            attempts = rec.of("reconnecting")
            assert len(attempts) >= 2  # at least one went into the dead path
            assert [n for n, _ in attempts] == list(range(1, len(attempts) + 1))
            await client.wait_for_presence("vault", lambda p: ids(p) == [client.me.peer_id])
            await spy.barrier()
            assert assert_never_about(spy.frames, "vault") == {}
            # In no document, the spy heard of nobody: not the old peer's going either.
            assert [f["type"] for f in spy.frames if f["type"].startswith("peer_")] == []
        finally:
            await client.close()
            await spy.close()


async def test_client_notices_a_frozen_server_and_reconnects():
    loop = asyncio.get_running_loop()
    async with FakeServer() as server:
        client = RatatoskrClient(server.url, ping_interval=PING, backoff=TEST_BACKOFF)
        rec = Recorder(client)
        try:
            await client.connect()
            await client.enter_document("doc")
            first = server.conns[0]
            server.freeze(first)  # stops after the next frame: no answers, no pongs
            await client.send_ephemeral("doc", "the last frame it reads")
            frozen = (await server.wait_for(lambda r: r.frame.get("type") == "ephemeral")).at
            (reason,) = await rec.wait("disconnected", timeout=10)
            detected = loop.time() - frozen
            await rec.wait("connected", since=1, timeout=10)
            await client.wait_for_presence("doc", lambda p: client.me in p, timeout=10)
            print(f"frozen server noticed after {detected:.3f} s (ping {PING} s)")
            assert isinstance(reason, ConnectionClosed)
            assert detected <= 1.5 * PING + SLACK
            assert client.me.peer_id == "client-2"  # a fresh connection
            assert len(server.conns) == 2
        finally:
            await client.close()
