"""How received frames reach the client: from aiohttp's ``data_received``
(:class:`~ratatoskr_client.asyncio.socket.DirectReader`), or, without it,
through ``ws.receive()`` in the receive task. Both paths deliver the same
frames in the same order, and a connection ends the same way on both."""

from __future__ import annotations

import asyncio
from typing import Any

import cbor2
import pytest

from ratatoskr_client import RatatoskrClient
from ratatoskr_client.asyncio import driver
from ratatoskr_client.asyncio.socket import DirectReader, SocketWriter
from ratatoskr_client.testing import TEST_BACKOFF

from .fakeserver import FakeServer, Recorder, ws_frame

PATHS = pytest.mark.parametrize("direct", [True, False], ids=["direct", "receive-task"])


async def two_clients(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> tuple[RatatoskrClient, RatatoskrClient, dict[str, Any]]:
    """A sends one message to B through the fake server; returns both and the
    frame B was sent (the template of the frames a test sends B itself)."""
    monkeypatch.setattr(driver, "DIRECT_RECEIVE", direct)
    a = RatatoskrClient(server.url, backoff=TEST_BACKOFF)
    b = RatatoskrClient(server.url, backoff=TEST_BACKOFF)
    await a.connect()
    await b.connect()
    for c in (a, b):
        await c.enter_document("doc")
    first = Recorder(b, ("ephemeral-message",))
    await a.send_ephemeral("doc", {"n": -1})
    sent = await server.wait_for(
        lambda r: r.frame.get("type") == "ephemeral" and r.payload == {"n": -1}
    )
    await first.wait("ephemeral-message", timeout=5)  # B is not sent it again
    template = {**sent.frame, "senderId": server.conns[0].peer_id, "targetId": b.me.peer_id}
    return a, b, template


def messages(template: dict[str, Any], numbers: range) -> bytes:
    """Ephemeral frames from A to B carrying ``{"n": i}``, framed, back to back."""
    return b"".join(
        ws_frame(cbor2.dumps({**template, "count": 1_000 + i, "data": cbor2.dumps({"n": i})}))
        for i in numbers
    )


@PATHS
async def test_every_frame_in_order_and_where_the_callbacks_run(
    monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    async with FakeServer() as server:
        a, b, template = await two_clients(server, monkeypatch, direct)
        got: list[int] = []
        tasks: set[str | None] = set()

        def on_message(doc: str, sender: Any, payload: Any) -> None:
            got.append(payload["n"])
            task = asyncio.current_task()
            tasks.add(None if task is None else task.get_name())

        b.on("ephemeral-message", on_message)
        rec = Recorder(b)
        # 3,000 frames of about 200 bytes in one write: more than aiohttp's
        # queue holds (128 KiB) before it pauses the socket and stalls its
        # parser, which taking the messages must resume.
        n = 3_000
        await server.send_raw(server.conns[1], messages(template, range(n)), chunk=1 << 20)
        await rec.until(lambda: len(got) == n, timeout=10)
        assert got == list(range(n))
        # Direct: from the protocol's data_received, outside any task; else in
        # the receive task.
        assert tasks == ({None} if direct else {"ratatoskr-receive"})
        assert (b._driver._direct is not None) is direct
        # Still connected and answering, both ways.
        await b.send_ephemeral("doc", {"n": "back"})
        await server.wait_for(
            lambda r: r.frame.get("type") == "ephemeral" and r.payload == {"n": "back"}
        )
        await a.close()
        await b.close()


@PATHS
async def test_frames_before_a_close_arrive_then_the_close_code(
    monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    async with FakeServer() as server:
        a, b, template = await two_clients(server, monkeypatch, direct)
        rec = Recorder(b)
        close = ws_frame((4321).to_bytes(2, "big") + b"bye", opcode=0x8)
        # Messages, a close, and a message after it (never to be delivered),
        # all in one read.
        data = messages(template, range(50)) + close + messages(template, range(50, 51))
        await server.send_raw(server.conns[1], data)
        await rec.wait("disconnected", timeout=5)
        got = [args[2]["n"] for args in rec.of("ephemeral-message")]
        assert got == list(range(50))
        (reason,) = rec.of("disconnected")[0]
        assert reason.code == 4321
        await a.close()
        await b.close()


@PATHS
async def test_a_ping_among_messages_is_answered_and_nothing_is_lost(
    monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    async with FakeServer() as server:
        a, b, template = await two_clients(server, monkeypatch, direct)
        rec = Recorder(b)
        conn = server.conns[1]
        pongs: asyncio.Queue[bytes] = asyncio.Queue()
        answer = SocketWriter.pong

        def pong(self: SocketWriter, data: bytes) -> None:
            pongs.put_nowait(data)
            answer(self, data)

        monkeypatch.setattr(SocketWriter, "pong", pong)
        ping = ws_frame(b"hi", 0x9)
        data = messages(template, range(10)) + ping + messages(template, range(10, 20))
        await server.send_raw(conn, data)
        assert await asyncio.wait_for(pongs.get(), 5) == b"hi"
        await rec.until(lambda: len(rec.of("ephemeral-message")) == 20)
        assert [args[2]["n"] for args in rec.of("ephemeral-message")] == list(range(20))
        await a.close()
        await b.close()


async def test_attach_refuses_a_socket_without_the_expected_internals() -> None:
    class NotAiohttp:
        closed = False

    assert DirectReader.attach(NotAiohttp(), print, print, print) is None  # type: ignore[arg-type]


async def test_the_open_socket_keeps_no_handshake_headers() -> None:
    async with FakeServer() as server:
        client = RatatoskrClient(server.url, backoff=TEST_BACKOFF)
        await client.connect()
        try:
            response = client._driver.writer.ws._response  # type: ignore[union-attr]
            assert len(response.headers) == 0
            assert response.raw_headers == ()
            assert len(response.request_info.headers) == 0
            assert response.status == 101  # the rest stays as it was
            # The HTTP parser that read the 101 (and keeps its headers) is gone.
            protocol = client._driver.writer.ws._writer.protocol  # type: ignore[union-attr]
            assert protocol._parser is None
            assert protocol._payload_parser is not None
            await client.enter_document("doc")  # and the socket works on
        finally:
            await client.close()
        assert not client.is_connected
