"""Ephemeral messaging with RatatoskrClient against the in-process relay: round
trips, sidecar channels, server errors as events, pacing and bad input."""

from __future__ import annotations

import asyncio
import collections
import math
import types

import pytest

from ratatoskr_client import (
    ConnectionClosed,
    DocumentNotFound,
    PayloadError,
    PermissionDenied,
    RateLimited,
)

from .fakeserver import Recorder

USERS = [{"token": "alice-secret", "id": "alice", "name": "Alice"}]
DOCUMENTS = [
    {"id": "doc-123", "owner": "alice"},
    {"id": "doc-public", "owner": "alice", "acl": [{"principal": "public", "permission": "read"}]},
]
with_acl = pytest.mark.ratatoskr_relay(users=USERS, documents=DOCUMENTS)


async def in_doc(doc: str, *clients) -> None:
    for c in clients:
        await c.enter_document(doc)
    n = len(clients)
    await asyncio.gather(
        *(c.wait_for_presence(doc, lambda p: len(p) == n, timeout=5) for c in clients)
    )


def messages(rec: Recorder, doc: str | None = None) -> list[tuple[str, object, object]]:
    return [args for args in rec.of("ephemeral-message") if doc is None or args[0] == doc]


PAYLOADS = [
    {"cursor": [3, 4]},
    [1, 2.5, "three", None, True],
    "plain text ✓ ünïcode",
    b"\x00\x01binary\xff",
    42,
    -7.25,
    None,
    {"nested": {"deep": [{"x": b"y"}]}, "n": 2**40},
    {"type": "not-presence", "status": "join"},
    "x" * 30_000,
]


async def test_round_trip_reaches_every_other_peer_and_excludes_the_sender(ratatoskr_client):
    a, b, c = [await ratatoskr_client() for _ in range(3)]
    recs = {name: Recorder(cl) for name, cl in (("a", a), ("b", b), ("c", c))}
    await in_doc("doc", a, b, c)

    for payload in PAYLOADS:
        await a.send_ephemeral("doc", payload)
    for name in ("b", "c"):
        await recs[name].until(lambda name=name: len(messages(recs[name])) == len(PAYLOADS))
        got = messages(recs[name])
        assert [m[2] for m in got] == PAYLOADS  # in order, decoded to equal values
        assert all(m[0] == "doc" and m[1] == a.me for m in got)

    # b's message to a is relayed after a's own ones were; a would have received
    # any copy of its own messages first.
    await b.send_ephemeral("doc", "from b")
    await recs["a"].until(lambda: len(messages(recs["a"])) == 1)
    assert messages(recs["a"]) == [("doc", b.me, "from b")]


async def test_peers_not_in_the_document_receive_nothing(ratatoskr_client):
    a, b, outsider = [await ratatoskr_client() for _ in range(3)]
    rec_out = Recorder(outsider)
    rec_b = Recorder(b)
    await in_doc("doc", a, b)
    await outsider.enter_document("other")
    await a.send_ephemeral("doc", "for doc")
    await a.enter_document("other")
    await a.send_ephemeral("other", "for other")
    await rec_out.until(lambda: len(messages(rec_out)) == 1)
    assert messages(rec_out) == [("other", a.me, "for other")]
    await rec_b.until(lambda: len(messages(rec_b)) == 1)
    assert messages(rec_b) == [("doc", a.me, "for doc")]


@with_acl
async def test_sidecar_channel_between_a_reader_and_an_anonymous_peer(ratatoskr_client):
    alice = await ratatoskr_client("alice-secret")
    anon = await ratatoskr_client()
    rec_alice, rec_anon = Recorder(alice), Recorder(anon)
    chat = alice.sidecar("doc-123", "chat")
    assert chat == "eph:chat-doc-123"

    await alice.enter_document("doc-123")
    with pytest.raises(PermissionDenied):
        await anon.enter_document("doc-123", timeout=5)

    await in_doc(chat, alice, anon)
    assert {p.peer_id for p in anon.presence(chat)} == {alice.me.peer_id, anon.me.peer_id}

    # The anonymous peer cannot send into the main document...
    await anon.send_ephemeral("doc-123", {"inject": True})
    (err,) = await rec_anon.wait("error")
    assert isinstance(err, PermissionDenied)
    assert err.document_id == "doc-123"

    # ...but both talk on the sidecar.
    await anon.send_ephemeral(chat, {"text": "hi from anon"})
    await rec_alice.until(lambda: len(messages(rec_alice)) == 1)
    assert messages(rec_alice) == [(chat, anon.me, {"text": "hi from anon"})]
    await alice.send_ephemeral(chat, {"text": "hi from alice"})
    await rec_anon.until(lambda: len(messages(rec_anon)) == 1)
    assert messages(rec_anon) == [(chat, alice.me, {"text": "hi from alice"})]
    assert messages(rec_alice, "doc-123") == []  # the injection never reached alice


@with_acl
async def test_server_errors_for_sends_arrive_later_as_error_events(ratatoskr_client):
    alice = await ratatoskr_client("alice-secret")
    anon = await ratatoskr_client()
    rec = Recorder(anon)

    assert await anon.send_ephemeral("doc-123", 1) is None  # nothing raised now
    await anon.send_ephemeral("no-such-doc", 2)
    await rec.until(lambda: len(rec.of("error")) == 2)
    denied, missing = (args[0] for args in rec.of("error"))
    assert isinstance(denied, PermissionDenied)
    assert denied.document_id == "doc-123"
    assert isinstance(missing, DocumentNotFound)
    assert missing.document_id == "no-such-doc"

    # Nothing crashed: the connection keeps carrying messages.
    assert anon.is_connected
    await in_doc("doc-public", alice, anon)
    await alice.send_ephemeral("doc-public", "still fine")
    await rec.until(lambda: len(messages(rec)) == 1)


@pytest.mark.ratatoskr_relay(rate_limit=1200)
async def test_pacing_keeps_the_client_under_the_rate_limit(ratatoskr_client):
    # 20 messages per second, bursting to 5: 25 messages take at least 1 s.
    sender = await ratatoskr_client(rate_limit=1200, rate_burst=5)
    receiver = await ratatoskr_client()
    rec_s, rec_r = Recorder(sender), Recorder(receiver)
    await in_doc("doc", sender, receiver)

    loop = asyncio.get_running_loop()
    start = loop.time()
    for n in range(25):
        await sender.send_ephemeral("doc", n)
    elapsed = loop.time() - start
    await rec_r.until(lambda: len(messages(rec_r)) == 25)
    assert [m[2] for m in messages(rec_r)] == list(range(25))
    assert rec_s.of("error") == []  # never rate_limited
    assert 0.95 <= elapsed < 2.5, elapsed


@pytest.mark.ratatoskr_relay(rate_limit=20)
async def test_without_pacing_the_relay_does_limit(ratatoskr_client, ratatoskr_relay):
    # The control for the test above: the same kind of burst, unpaced, is limited.
    sender = await ratatoskr_client(rate_limit=None)
    rec = Recorder(sender)
    for n in range(25):
        await sender.send_ephemeral("eph:x", n)
    await sender.enter_document("eph:barrier")  # the relay has handled all 25
    # The first refusal is answered; the other four, sent before its
    # retryAfter, are dropped unanswered.
    (error,) = [args[0] for args in rec.of("error")]
    assert isinstance(error, RateLimited) and error.retry_after > 0
    assert ratatoskr_relay.core.counters.unanswered == 4


@pytest.mark.ratatoskr_relay(rate_limit=60)
async def test_a_rate_limited_frame_pauses_sending_for_retry_after(ratatoskr_client):
    # The client allows itself far more than the relay: it trips the limit once,
    # then waits for retryAfter instead of being limited again.
    sender = await ratatoskr_client(rate_limit=6000, rate_burst=1000)
    receiver = await ratatoskr_client()
    rec_s, rec_r = Recorder(sender), Recorder(receiver)
    await in_doc("doc", sender, receiver)
    loop = asyncio.get_running_loop()
    limited_at: list[float] = []
    sender.on("error", lambda err: limited_at.append(loop.time()))

    for n in range(61):  # the relay's burst is 60
        await sender.send_ephemeral("doc", n)
    (err,) = await rec_s.wait("error")
    assert isinstance(err, RateLimited)
    assert 0.5 < err.retry_after <= 1.0

    await sender.send_ephemeral("doc", "after the pause")
    waited = loop.time() - limited_at[0]
    assert waited >= err.retry_after - 0.02, (waited, err.retry_after)
    await rec_r.until(lambda: messages(rec_r)[-1:] and messages(rec_r)[-1][2] == "after the pause")
    assert [m[2] for m in messages(rec_r)] == [*range(60), "after the pause"]
    assert len(rec_s.of("error")) == 1  # not limited a second time


class Unencodable:
    pass


def cyclic() -> list[object]:
    loop: list[object] = []
    loop.append(loop)
    return loop


@pytest.mark.parametrize(
    "payload",
    [
        Unencodable(),
        {"f": lambda: None},
        pytest.param(cyclic(), id="cyclic"),
        pytest.param(b"x" * 70_000, id="too-large"),
        pytest.param({"big": "y" * (64 * 1024)}, id="too-large-dict"),
        pytest.param({"type": "presence", "status": "join", "documentId": "doc"}, id="presence"),
        pytest.param({"type": "presence"}, id="presence-minimal"),
        pytest.param(
            collections.OrderedDict(type="presence", status="leave", documentId="doc"),
            id="presence-dict-subclass",
        ),
        pytest.param(types.MappingProxyType({"type": "presence"}), id="presence-mapping"),
    ],
)
async def test_send_ephemeral_refuses_bad_payloads(ratatoskr_client, payload):
    a = await ratatoskr_client()
    rec = Recorder(a)
    with pytest.raises(PayloadError) as info:
        await a.send_ephemeral("doc", payload)
    assert isinstance(info.value, ValueError)
    assert a.is_connected
    assert rec.of("error") == []


async def test_a_payload_just_under_the_frame_limit_goes_through(ratatoskr_client):
    a, b = await ratatoskr_client(), await ratatoskr_client()
    rec = Recorder(b)
    await in_doc("doc", a, b)
    big = b"z" * (60 * 1024)
    await a.send_ephemeral("doc", big)
    await rec.until(lambda: len(messages(rec)) == 1)
    assert messages(rec)[0][2] == big


async def test_send_ephemeral_when_not_connected_raises_connection_closed(
    ratatoskr_client, ratatoskr_relay
):
    never = await ratatoskr_client(connect=False)
    with pytest.raises(ConnectionClosed):
        await never.send_ephemeral("doc", 1)

    closed = await ratatoskr_client()
    await closed.close()
    with pytest.raises(ConnectionClosed, match="closed"):
        await closed.send_ephemeral("doc", 1)

    down = await ratatoskr_client()
    rec = Recorder(down)
    await ratatoskr_relay.stop()
    await rec.wait("disconnected")
    with pytest.raises(ConnectionClosed):
        await down.send_ephemeral("doc", 1)


async def test_send_ephemeral_rejects_bad_document_ids(ratatoskr_client):
    a = await ratatoskr_client()
    for bad in ("", None, 7):
        with pytest.raises(ValueError, match="document_id"):
            await a.send_ephemeral(bad, 1)  # type: ignore[arg-type]


async def test_nan_and_infinity_payloads_survive(ratatoskr_client):
    a, b = await ratatoskr_client(), await ratatoskr_client()
    rec = Recorder(b)
    await in_doc("doc", a, b)
    await a.send_ephemeral("doc", [math.inf, -math.inf])
    await rec.until(lambda: len(messages(rec)) == 1)
    assert messages(rec)[0][2] == [math.inf, -math.inf]


@pytest.mark.ratatoskr_relay(rate_limit=6000)
async def test_concurrent_paced_sends_keep_their_call_order(ratatoskr_client):
    sender = await ratatoskr_client(rate_limit=6000, rate_burst=5)
    receiver = await ratatoskr_client()
    rec = Recorder(receiver)
    await in_doc("doc", sender, receiver)
    await asyncio.gather(*(sender.send_ephemeral("doc", n) for n in range(30)))
    await rec.until(lambda: len(messages(rec)) == 30)
    assert [m[2] for m in messages(rec)] == list(range(30))
