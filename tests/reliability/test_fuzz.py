"""Fuzzing the relay and the client's decoder with Hypothesis.

Relay: one anonymous peer throws random and mutated frames at the relay while
alice and bob exchange messages in a document the fuzzer may not read. After
every fuzzed frame the fuzzer sends a probe and collects everything the relay
answered in between; that answer must be exactly what the protocol says (an
oracle built from the codec and a model of the fuzzer's own session): every bad
frame gets one error frame, nothing crashes, no ``internal_error``, nothing
logged above WARNING. At the end alice and bob have each received exactly the
messages the other sent, in order, and nothing from or about the fuzzer, and the
fuzzer has received nothing about their document.

Client: a scripted server sends random and mutated server frames to a connected
client, each followed by a probe message. Every undecodable frame surfaces as
exactly one ``error`` event, and the client stays on the same connection with
its receive loop alive, still able to enter documents and send.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import cbor2
import pytest

from ratatoskr_client import ProtocolError, RatatoskrClient, RateLimited
from ratatoskr_client.core.peer_state import parse_state_payload
from ratatoskr_client.errors import _MAX_RETRY_AFTER as MAX_RETRY_AFTER
from ratatoskr_client.errors import error_from_frame
from ratatoskr_client.protocol import (
    AuthFrame,
    DocUnavailableFrame,
    EphemeralFrame,
    ErrorFrame,
    PresenceMessage,
    RequestFrame,
    SyncFrame,
    UnknownFrame,
    decode,
    decode_payload,
)
from ratatoskr_client.server import Access, RelayServer
from ratatoskr_client.server.core.relay import MAX_SESSIONS_PER_CONNECTION
from ratatoskr_client.testing import TEST_BACKOFF

from ..integration.fakeserver import FakeServer, Recorder, ratatoskr_tasks
from .fuzzing import (
    EMPTY_DOC_SYNC,
    NEXT_COUNT,
    Payload,
    Recipe,
    encode_recipe,
    frames,
    run_examples,
)
from .support import Background, RecordingPeer, assert_never_about

RELAY_EXAMPLES = 1000
CLIENT_EXAMPLES = 1000
MAX_FRAME = 2048

USERS = [
    {"token": "alice-secret", "id": "alice", "name": "Alice"},
    {"token": "bob-secret", "id": "bob", "name": "Bob"},
]
PRIVATE = "private"
DOCUMENTS = [{"id": PRIVATE, "owner": "alice", "acl": [{"principal": "bob"}]}]
#: Where the fuzzer points its frames: one it may not read, public channels
#: (one of them it may join), one that does not exist.
RELAY_DOCS = (PRIVATE, "eph:fuzz", "nowhere", "eph:other")
SERVER_ONLY = {
    "auth_ok",
    "auth_error",
    "error",
    "peer_identity",
    "peer_disconnected",
    "peer_joined_doc",
    "peer_left_doc",
    "doc_presence_state",
}


@pytest.fixture(autouse=True)
def _nothing_logged_above_warning(caplog: pytest.LogCaptureFixture) -> Any:
    yield
    loud = [
        r.getMessage()
        for when in ("setup", "call", "teardown")
        for r in caplog.get_records(when)
        if r.levelno > logging.WARNING
    ]
    assert loud == []


# --------------------------------------------------------------------------- relay


def relay_templates(session_id: str) -> list[dict[str, Any]]:
    def eph(doc: str, payload: Any, **extra: Any) -> dict[str, Any]:
        return {
            "type": "ephemeral",
            "senderId": "forged-sender",
            "targetId": "forged-target",
            "documentId": doc,
            "count": NEXT_COUNT,
            "sessionId": session_id,
            "data": Payload(payload),
            **extra,
        }

    out: list[dict[str, Any]] = []
    for doc in RELAY_DOCS[:3]:
        out.append(eph(doc, {"cursor": [1, 2]}))
        for status in ("join", "leave", "heartbeat"):
            out.append(eph(doc, {"type": "presence", "status": status, "documentId": doc}))
        out.append(eph(doc, {"type": "presence", "status": "join", "documentId": "eph:other"}))
        out.append(eph(doc, {"__presence": {"type": "snapshot", "state": {"x": 1}}}))
        for kind in ("request", "sync"):
            out.append({"type": kind, "documentId": doc, "data": EMPTY_DOC_SYNC})
        out.append({"type": "doc-unavailable", "documentId": doc, "senderId": "x"})
        out.append({"type": "peer_joined_doc", "documentId": doc, "peerId": "p"})
        out.append({"type": "doc_presence_state", "documentId": doc, "peers": ["p"]})
    out += [
        {"type": "auth", "anonymous": True},
        {"type": "auth", "token": "alice-secret"},
        {"type": "peer_identity", "peerId": "p", "user": {"id": "alice", "name": "A"}},
        {"type": "error", "error": "rate_limited", "message": "m", "retryAfter": 1},
        {"type": "from-the-future", "x": 1},
    ]
    return out


Reply = tuple[str, ...]
#: acceptable replies, and the model update to run with the actual one
Expectation = tuple[set[Reply], Callable[[Reply], None]]


def _nothing(reply: Reply) -> None:
    pass


class RelayOracle:
    """What the relay must answer the fuzzer, from the codec and a model of the
    fuzzer's session (its sessionIds and their counts, the channels it is in)."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.counts: dict[str, int] = {}
        self.joined: set[str] = set()

    def expect(self, raw: bytes | str) -> Expectation:
        """The acceptable replies (as tuples of frame kinds), and what to do to
        the model once the actual reply is known."""
        invalid: set[Reply] = {("error:invalid_message",)}
        if isinstance(raw, str) or len(raw) > self.config.max_frame_size:
            return invalid, _nothing
        try:
            frame = decode(raw)
        except ProtocolError:
            return invalid, _nothing
        if isinstance(frame, UnknownFrame) or frame.TYPE in SERVER_ONLY:
            return invalid, _nothing
        if isinstance(frame, AuthFrame):
            if not self.config.server_presence:
                return {("error:already_authenticated",)}, _nothing
            # A re-authentication (docs/protocol.md): the fuzzer is anonymous,
            # so no token can be for its user.
            if frame.token is None:
                return invalid, _nothing
            refused = {("error:invalid_token",), ("error:user_mismatch",), ("error:rate_limited",)}
            return refused, _nothing
        if isinstance(frame, DocUnavailableFrame):
            return {()}, _nothing
        if isinstance(frame, RequestFrame | SyncFrame):
            return self._sync(frame)
        assert isinstance(frame, EphemeralFrame)
        return self._ephemeral(frame)

    def _denied(self, doc: str) -> set[Reply] | None:
        access = self.config.access(None, doc)
        if access is Access.DENIED:
            return {("error:permission_denied",)}
        if access is Access.NOT_FOUND:
            return {("error:document_not_found",)}
        return None

    def _join(self, doc: str, replies: Reply) -> Expectation:
        if doc in self.joined:
            return {replies}, _nothing
        if len(self.joined) >= self.config.max_documents_per_peer:
            return {("error:too_many_documents",)}, _nothing

        def joined(reply: Reply) -> None:
            self.joined.add(doc)

        return {replies}, joined

    def _sync(self, frame: RequestFrame | SyncFrame) -> Expectation:
        doc = frame.document_id
        denied = self._denied(doc)
        if denied:
            return denied, _nothing
        state: Reply = () if doc in self.joined else ("doc_presence_state",)
        unavailable: Reply = ("doc-unavailable",) if isinstance(frame, RequestFrame) else ()
        return self._join(doc, state + unavailable)

    def _ephemeral(self, frame: EphemeralFrame) -> Expectation:
        doc = frame.document_id
        try:
            presence = PresenceMessage.from_payload(decode_payload(frame.data))
        except ProtocolError:
            return {("error:invalid_message",)}, _nothing
        # The presence payload's own document id, then the read check (unless
        # the fuzzer is present: it passed one when it joined; a leave for a
        # document it is not in has nothing to do), then the replay filter.
        if presence is not None and presence.document_id != doc:
            return {("error:invalid_message",)}, _nothing
        if presence is None or doc not in self.joined:
            if presence is not None and presence.status == "leave":
                return {()}, _nothing
            denied = self._denied(doc)
            if denied:
                return denied, _nothing
        sid = frame.session_id
        if sid not in self.counts and len(self.counts) >= MAX_SESSIONS_PER_CONNECTION:
            return {("error:too_many_sessions",)}, _nothing
        if frame.count <= self.counts.get(sid, -1):
            return {()}, _nothing  # a replay: dropped without a word
        self.counts[sid] = frame.count
        if presence is None:
            return {()}, _nothing  # relayed to nobody
        # Joins and leaves have a per-document bound (burst 10, 5/s): rate_limited
        # is a correct answer to any of them; a heartbeat refresh is free.
        refresh = presence.status == "heartbeat" and doc in self.joined
        limited: set[Reply] = set() if refresh else {("error:rate_limited",)}
        if presence.status == "leave":

            def left(reply: Reply) -> None:
                if reply == ():
                    self.joined.discard(doc)

            return limited | {()}, left
        if refresh:
            return {()}, _nothing
        replies, update = self._join(doc, ("doc_presence_state",))

        def unless_limited(reply: Reply) -> None:
            if reply != ("error:rate_limited",):
                update(reply)

        return limited | replies, unless_limited


def kind_of(frame: dict[str, Any]) -> str:
    if frame.get("type") == "error":
        return f"error:{frame.get('error')}"
    return str(frame.get("type"))


@pytest.mark.ratatoskr_relay(
    users=USERS, documents=DOCUMENTS, max_frame_size=MAX_FRAME, rate_limit=100_000
)
@pytest.mark.slow
async def test_fuzzed_frames_at_the_relay(ratatoskr_relay: RelayServer) -> None:
    url = ratatoskr_relay.ws_url
    alice = await RecordingPeer.open(url, "alice", "alice-secret")
    bob = await RecordingPeer.open(url, "bob", "bob-secret")
    fuzzer = await RecordingPeer.open(url, "fuzzer")
    oracle = RelayOracle(ratatoskr_relay.config)
    sent: dict[str, list[int]] = {"alice": [], "bob": []}
    outcomes: dict[tuple[str, ...], int] = {}
    probes = 0
    background = Background()
    try:
        await alice.join(PRIVATE)
        await bob.join(PRIVATE)

        async def traffic() -> None:
            n = 0
            while True:
                for peer in (alice, bob):
                    await peer.ephemeral(PRIVATE, {"from": peer.label, "n": n})
                    sent[peer.label].append(n)
                n += 1
                await asyncio.sleep(0.005)

        talking = background.start(traffic())

        def next_count() -> int:
            fuzzer.count += 1
            return fuzzer.count

        async def check(recipe: Recipe) -> None:
            nonlocal probes
            raw = encode_recipe(recipe, next_count)
            expected, update = oracle.expect(raw)
            mark = len(fuzzer.frames)
            await fuzzer.send(raw)
            probes += 1
            probe = f"probe-{probes}"
            await fuzzer.send(fuzzer.ephemeral_frame(probe, data=b"\xff"))
            end = await fuzzer.wait_index(
                lambda f: f.get("type") == "error" and f.get("documentId") == probe,
                timeout=10,
                since=mark,
            )
            reply = tuple(kind_of(f) for f in fuzzer.frames[mark:end])
            assert reply in expected, f"{raw!r}: relay answered {reply}, expected one of {expected}"
            update(reply)
            outcomes[reply] = outcomes.get(reply, 0) + 1

        ran = await run_examples(
            frames(relay_templates(fuzzer.session_id), RELAY_DOCS, oversize=MAX_FRAME),
            check,
            max_examples=RELAY_EXAMPLES,
        )
        talking.cancel()
        print(f"relay fuzz: {ran} frames; replies: {sorted(outcomes.items(), key=str)}")
        assert ran >= RELAY_EXAMPLES
        assert outcomes.get(("error:invalid_message",), 0) > ran // 3
        assert not fuzzer.closed
        assert ratatoskr_relay.running

        # alice and bob: exactly each other's messages, in order, nothing else.
        await alice.barrier()
        await bob.barrier()
        await alice.barrier()
        for me, other in ((alice, bob), (bob, alice)):
            got = [
                cbor2.loads(f["data"])
                for f in me.frames
                if f["type"] == "ephemeral" and f["documentId"] == PRIVATE
            ]
            assert got == [{"from": other.label, "n": n} for n in sent[other.label]]
            assert len(got) > 50
            about_fuzzer = [f for f in me.frames if fuzzer.peer_id in repr(f)]
            assert about_fuzzer == []  # it shares no document with them: not even its name
            kinds = {kind_of(f) for f in me.frames}
            assert kinds <= {
                "auth_ok",
                "peer_identity",
                "doc_presence_state",
                "peer_joined_doc",
                "ephemeral",
                "error:invalid_message",  # their barrier probes
            }, kinds
        assert ratatoskr_relay.core.presence(PRIVATE) == (alice.peer_id, bob.peer_id)
        # The fuzzer, in every reply it got, learned nothing about the private document.
        assert_never_about(fuzzer.frames, PRIVATE)
        assert fuzzer.received(lambda f: f.get("error") == "internal_error") == []
    finally:
        await background.__aexit__()
        for peer in (fuzzer, bob, alice):
            await peer.close()


# --------------------------------------------------------------------------- client


def client_templates(own_peer_id: str) -> list[dict[str, Any]]:
    def eph(payload: Any, **extra: Any) -> dict[str, Any]:
        return {
            "type": "ephemeral",
            "senderId": "client-9",
            "targetId": own_peer_id,
            "documentId": "doc",
            "count": NEXT_COUNT,
            "sessionId": "their-session",
            "data": Payload(payload),
            **extra,
        }

    user = {"id": "u", "name": "U", "isAnonymous": False}
    return [
        {"type": "auth_ok", "peerId": "s", "clientPeerId": own_peer_id, "user": user},
        {"type": "auth_error", "error": "invalid_token", "message": "m"},
        {"type": "error", "error": "invalid_message", "message": "m"},
        {"type": "error", "error": "permission_denied", "message": "m", "documentId": "doc"},
        {"type": "error", "error": "rate_limited", "message": "m", "retryAfter": 0.01},
        {"type": "error", "error": "brand_new_code", "message": "m", "documentId": "x"},
        {"type": "peer_identity", "peerId": "client-9", "user": user},
        {"type": "peer_disconnected", "peerId": "client-9"},
        {"type": "peer_joined_doc", "documentId": "doc", "peerId": "client-9"},
        {"type": "peer_left_doc", "documentId": "doc", "peerId": "client-9"},
        {"type": "peer_left_doc", "documentId": "doc", "peerId": own_peer_id},
        {"type": "doc_presence_state", "documentId": "doc", "peers": [own_peer_id, "client-9"]},
        eph({"cursor": [3, 4]}),
        eph({"__presence": {"type": "snapshot", "state": {"name": "N"}}}),
        eph({"__presence": {"type": "update", "channel": "c", "value": 1}}),
        eph({"__presence": {"type": "heartbeat"}}),
        eph({"__presence": {"type": "goodbye"}}),
        eph({"type": "presence", "status": "join", "documentId": "doc"}),
        {"type": "doc-unavailable", "documentId": "doc", "senderId": "s", "targetId": "t"},
        {"type": "sync", "documentId": "doc", "data": EMPTY_DOC_SYNC, "senderId": "s"},
        {"type": "request", "documentId": "doc", "data": EMPTY_DOC_SYNC},
        {"type": "from-the-future", "x": [1, 2]},
    ]


def expected_client_errors(raw: bytes | str, own_session: str) -> list[type]:
    """The classes of the ``error`` events one server frame must cause."""
    if isinstance(raw, str):
        return [ProtocolError]
    try:
        frame = decode(raw)
    except ProtocolError:
        return [ProtocolError]
    if isinstance(frame, ErrorFrame):
        err = error_from_frame(
            frame.error, frame.message, document_id=frame.document_id, retry_after=frame.retry_after
        )
        return [type(err)]
    if isinstance(frame, EphemeralFrame) and frame.session_id != own_session:
        try:
            parse_state_payload(decode_payload(frame.data))
        except ProtocolError:
            return [ProtocolError]
    return []


@pytest.mark.slow
async def test_fuzzed_server_frames_never_kill_the_client() -> None:
    async with FakeServer() as server:
        # Pacing off: a fuzzed rate_limited frame may legitimately ask for a long
        # pause (see test_an_absurd_retry_after_is_capped), and every example
        # checks that the client can still send.
        client = RatatoskrClient(server.url, rate_limit=None)
        rec = Recorder(client)
        counts = {"n": 0}
        outcomes: dict[str, int] = {}
        try:
            await client.connect()
            await client.enter_document("doc")
            conn = server.conns[0]
            join = await server.wait_for(lambda r: r.frame.get("type") == "ephemeral")
            own_session = join.frame["sessionId"]
            assert client.stats().tasks == ("receive",)

            def next_count() -> int:
                counts["n"] += 1
                return counts["n"]

            async def check(recipe: Recipe) -> None:
                raw = encode_recipe(recipe, next_count)
                expected = expected_client_errors(raw, own_session)
                mark = rec.mark()
                if isinstance(raw, str):
                    await conn.ws.send_str(raw)
                else:
                    await conn.ws.send_bytes(raw)
                probe = {"probe": next_count()}
                await server.send(
                    conn,
                    {
                        "type": "ephemeral",
                        "senderId": "prober",
                        "targetId": conn.peer_id,
                        "documentId": "probe",
                        "count": probe["probe"],
                        "sessionId": "probe-session",
                        "data": cbor2.dumps(probe),
                    },
                )
                await rec.wait(
                    "ephemeral-message", lambda d, s, p: p == probe, since=mark, timeout=10
                )
                errors = [type(args[0]) for args in rec.of("error", mark)]
                assert errors == expected, f"{raw!r}: error events {errors}, expected {expected}"
                assert client.is_connected, f"{raw!r} cost the connection"
                assert client.stats().tasks == ("receive",), f"{raw!r} ended the receive loop"
                # ...and it can still send.
                echo = {"echo": probe["probe"]}
                await asyncio.wait_for(client.send_ephemeral("echo", echo), 10)
                await server.wait_for(
                    lambda r: r.frame.get("documentId") == "echo" and r.payload == echo,
                    timeout=10,
                )
                name = "error" if expected else "quiet"
                outcomes[name] = outcomes.get(name, 0) + 1

            ran = await run_examples(
                frames(client_templates(conn.peer_id), ("doc", "probe", "x", "eph:x")),
                check,
                max_examples=CLIENT_EXAMPLES,
            )
            print(f"client fuzz: {ran} frames; {outcomes}")
            assert ran >= CLIENT_EXAMPLES
            assert outcomes.get("error", 0) > ran // 3

            # Still the first connection, and fully working.
            assert len(server.conns) == 1
            assert client.is_connected
            assert await client.enter_document("after-fuzz", timeout=10) == (client.me,)
            await asyncio.wait_for(client.send_ephemeral("after-fuzz", "still here"), 10)
            got = await server.wait_for(
                lambda r: (
                    r.frame.get("type") == "ephemeral"
                    and r.frame.get("documentId") == "after-fuzz"
                    and r.payload == "still here"
                ),
                timeout=10,
            )
            assert got.conn is conn
            assert {t.get_name() for t in ratatoskr_tasks()} >= {"ratatoskr-receive"}
        finally:
            await client.close()


async def test_an_absurd_retry_after_is_capped() -> None:
    """A server (buggy or hostile) asking for a pause of 30 years gets at most
    MAX_RETRY_AFTER: the client's pacing, re-joins and reconnects resume then."""
    async with FakeServer() as server:
        client = RatatoskrClient(server.url, backoff=TEST_BACKOFF)
        rec = Recorder(client)
        try:
            await client.connect()
            conn = server.conns[0]
            await server.send(
                conn,
                {"type": "error", "error": "rate_limited", "message": "m", "retryAfter": 1e9},
            )
            (err,) = await rec.wait("error")
            assert isinstance(err, RateLimited)
            assert err.retry_after == MAX_RETRY_AFTER
            # The same during a reconnect: the next attempt is not 30 years away.
            server.auth_replies.append(
                {"type": "error", "error": "rate_limited", "message": "m", "retryAfter": 1e9}
            )
            await server.drop(conn)
            await rec.until(lambda: len(rec.of("reconnecting")) == 2, timeout=10)
            assert rec.of("reconnecting")[1][1] == MAX_RETRY_AFTER
        finally:
            await client.close()


# --------------------------------------------------------------------------- found by fuzzing

FOUND_BY_FUZZING: list[dict[str, Any]] = [
    # float(10**400) raised OverflowError (not ProtocolError) inside decode():
    # the client's receive loop died, the relay answered internal_error.
    {"type": "error", "error": "rate_limited", "message": "m", "retryAfter": 10**400},
    {"type": "error", "error": "rate_limited", "message": "m", "retryAfter": float("inf")},
    {"type": "error", "error": "rate_limited", "message": "m", "retryAfter": float("nan")},
]


@pytest.mark.parametrize("frame", FOUND_BY_FUZZING, ids=["bignum", "inf", "nan"])
def test_retry_after_must_be_a_finite_number(frame: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError, match="retryAfter"):
        decode(cbor2.dumps(frame))


def test_an_unhashable_presence_type_is_a_protocol_error() -> None:
    # `[] in frozenset(...)` raised TypeError: one such message killed the client.
    kinds: list[object] = [[], {}, [[1]]]
    for kind in kinds:
        with pytest.raises(ProtocolError):
            parse_state_payload({"__presence": {"type": kind}})


async def test_frames_that_once_killed_the_client_are_now_error_events() -> None:
    async with FakeServer() as server:
        client = RatatoskrClient(server.url)
        rec = Recorder(client)
        try:
            await client.connect()
            conn = server.conns[0]
            bad = [cbor2.dumps(f) for f in FOUND_BY_FUZZING]
            bad.append(
                cbor2.dumps(
                    {
                        "type": "ephemeral",
                        "senderId": "p",
                        "targetId": conn.peer_id,
                        "documentId": "doc",
                        "count": 1,
                        "sessionId": "s",
                        "data": cbor2.dumps({"__presence": {"type": []}}),
                    }
                )
            )
            for raw in bad:
                await conn.ws.send_bytes(raw)
            await rec.until(lambda: len(rec.of("error")) == len(bad), timeout=10)
            assert all(isinstance(args[0], ProtocolError) for args in rec.of("error"))
            assert client.is_connected
            assert await client.enter_document("doc", timeout=10) == (client.me,)
        finally:
            await client.close()
