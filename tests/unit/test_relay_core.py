"""The relay's rules as a pure state machine (``RelayCore``), with a fake outbox and clock.

Every frame the core emits is captured as bytes and decoded with the protocol
codec, so these tests see exactly what a peer would receive.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import cbor2
import pytest

from ratatoskr_client.protocol import (
    FEATURES,
    MAX_COUNT,
    AuthErrorFrame,
    AuthFrame,
    AuthOkFrame,
    DocPresenceStateFrame,
    DocUnavailableFrame,
    EphemeralFrame,
    ErrorFrame,
    Frame,
    PeerDisconnectedFrame,
    PeerIdentityFrame,
    PeerJoinedDocFrame,
    PeerLeftDocFrame,
    RequestFrame,
    SyncFrame,
    UnknownFrame,
    UserInfo,
    cbor_text,
    decode,
    decode_payload,
    encode,
    encode_payload,
)
from ratatoskr_client.server import (
    AclEntry,
    DocumentSpec,
    RelayConfig,
    RelayCore,
    RelayStats,
    UserSpec,
)
from ratatoskr_client.server.core.names import ADJECTIVES, ANIMALS, NameAllocator
from ratatoskr_client.server.core.relay import (
    MAX_SESSIONS_PER_CONNECTION,
    PRESENCE_BURST,
    PRESENCE_RATE,
    SESSION_TOMBSTONE_TTL,
    SWEEP_MAX_INTERVAL,
    Connection,
)

ZERO = RelayStats(0, 0, 0, 0, 0, 0, 0, 0)
SERVER_ID = "relay-test"

USERS = (
    UserSpec("alice-secret", "alice", "Alice"),
    UserSpec("bob-secret", "bob", "Bob"),
)
DOCUMENTS = (
    DocumentSpec("secret", owner="alice"),
    DocumentSpec("shared", owner="alice", acl=(AclEntry("bob", "write"),)),
    DocumentSpec("public-doc", acl=(AclEntry("public", "read"),)),
)


def global_config(**options: Any) -> RelayConfig:
    """The tests in this file encode the plan's global identity scope (every
    identity to everyone); document scope has its own file,
    ``test_relay_scope.py``."""
    return RelayConfig(identity_scope="global", **options)


class FakeOutbox:
    """Collects what the core sends to one connection."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []
        self.ephemeral_parts: list[tuple[bytes, bytes]] = []
        self.closed: tuple[int, str] | None = None
        self.pings = 0

    def send(self, frame: bytes) -> None:
        assert self.closed is None, "frame sent after close"
        self.raw.append(frame)

    def ping(self) -> None:
        self.pings += 1

    def send_ephemeral(self, prefix: bytes, suffix: bytes) -> None:
        assert self.closed is None, "frame sent after close"
        self.ephemeral_parts.append((prefix, suffix))
        self.raw.append(prefix + suffix)

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Peer:
    """One connection to the core, with the client-side ephemeral bookkeeping."""

    _ids = itertools.count()

    def __init__(self, relay: Relay, address: str = "198.51.100.7") -> None:
        self.relay = relay
        self.outbox = FakeOutbox()
        self.session: Connection = relay.core.open(self.outbox, address)
        self.session_id = f"sess-{next(self._ids)}"
        self.count = 0
        self.peer_id = ""
        self._read = 0

    # -- output
    def take(self) -> list[Frame]:
        """Frames received since the last take(), decoded."""
        frames = [decode(raw) for raw in self.outbox.raw[self._read :]]
        self._read = len(self.outbox.raw)
        return frames

    def take_one(self) -> Frame:
        frames = self.take()
        assert len(frames) == 1, frames
        return frames[0]

    # -- input
    def send(self, frame: Frame | dict[str, Any] | bytes) -> None:
        if isinstance(frame, Frame):
            data = encode(frame)
        elif isinstance(frame, dict):
            data = cbor2.dumps(frame)
        else:
            data = frame
        self.relay.core.receive(self.session, data)

    def auth(self, token: str | None = None) -> AuthOkFrame:
        self.send(AuthFrame(token=token, anonymous=token is None))
        frames = self.take()
        ok = frames[0]
        assert isinstance(ok, AuthOkFrame), frames
        self.peer_id = ok.client_peer_id
        self._pending_identities = frames[1:]
        #: what the relay sent in answer to the auth
        self.auth_frames = frames
        return ok

    def ephemeral(
        self,
        doc: str,
        payload: Any = None,
        *,
        data: bytes | None = None,
        count: int | None = None,
        session_id: str | None = None,
        sender_id: str = "",
        target_id: str = "",
    ) -> EphemeralFrame:
        if count is None:
            self.count += 1
            count = self.count
        frame = EphemeralFrame(
            sender_id,
            target_id,
            doc,
            count,
            session_id or self.session_id,
            encode_payload(payload) if data is None else data,
        )
        self.send(frame)
        return frame

    def presence(self, doc: str, status: str) -> None:
        self.ephemeral(doc, {"type": "presence", "status": status, "documentId": doc})

    def join(self, doc: str) -> None:
        self.presence(doc, "join")

    def leave(self, doc: str) -> None:
        self.presence(doc, "leave")

    def heartbeat(self, doc: str) -> None:
        self.presence(doc, "heartbeat")

    def close(self) -> None:
        self.relay.core.close(self.session)


class Relay:
    def __init__(self, config: RelayConfig) -> None:
        self.clock = Clock()
        self.core = RelayCore(
            config,
            clock=self.clock,
            names=NameAllocator(random.Random(0)),
            server_peer_id=SERVER_ID,
        )

    def peer(
        self, token: str | None = None, *, auth: bool = True, address: str = "198.51.100.7"
    ) -> Peer:
        peer = Peer(self, address)
        if auth:
            peer.auth(token)
        return peer

    def peers(self, n: int) -> list[Peer]:
        made = [self.peer() for _ in range(n)]
        for p in made:
            p.take()  # drop identity frames
        return made

    def stats(self) -> RelayStats:
        return self.core.stats()


@pytest.fixture
def relay() -> Relay:
    """Open mode: every document exists and is readable."""
    return Relay(global_config(open=True))


@pytest.fixture
def acl_relay() -> Relay:
    return Relay(global_config(users=USERS, documents=DOCUMENTS))


def error(frame: Frame) -> ErrorFrame:
    assert isinstance(frame, ErrorFrame), frame
    return frame


# --------------------------------------------------------------------------- auth


def test_token_auth(acl_relay: Relay) -> None:
    peer = acl_relay.peer(auth=False)
    peer.send(AuthFrame(token="alice-secret"))
    ok = peer.take_one()
    assert isinstance(ok, AuthOkFrame)
    # (#22 added the relay's own extensions after the three contract features.)
    assert ok == AuthOkFrame(
        SERVER_ID,
        ok.client_peer_id,
        UserInfo("alice", "Alice", False),
        (*FEATURES, "reauth", "state-replay", "resume"),
    )
    assert ok.client_peer_id.startswith("peer-")
    assert FEATURES == ("identity", "presence", "ephemeral")
    assert peer.outbox.closed is None
    assert acl_relay.stats().anonymous_names == 0


def test_anonymous_auth_gets_a_name(acl_relay: Relay) -> None:
    peer = acl_relay.peer(auth=False)
    peer.send(AuthFrame(anonymous=True))
    ok = peer.take_one()
    assert isinstance(ok, AuthOkFrame)
    assert ok.user is not None
    assert ok.user.id is None
    assert ok.user.is_anonymous is True
    assert ok.user.name is not None
    adjective, animal = ok.user.name.split(" ")
    assert adjective in ADJECTIVES
    assert animal in ANIMALS
    assert acl_relay.stats().anonymous_names == 1


def test_token_wins_over_anonymous_flag(acl_relay: Relay) -> None:
    peer = acl_relay.peer(auth=False)
    peer.send(AuthFrame(token="bob-secret", anonymous=True))
    ok = peer.take_one()
    assert isinstance(ok, AuthOkFrame)
    assert ok.user == UserInfo("bob", "Bob", False)


def test_peer_ids_are_fresh_per_connection(acl_relay: Relay) -> None:
    ids = {acl_relay.peer("alice-secret").peer_id for _ in range(5)}
    ids |= {acl_relay.peer().peer_id for _ in range(5)}
    assert len(ids) == 10
    assert SERVER_ID not in ids


@pytest.mark.parametrize(
    ("auth", "code"),
    [
        (AuthFrame(token="wrong"), "invalid_token"),
        (AuthFrame(token=""), "invalid_token"),
        (AuthFrame(), "missing_credentials"),
        ({"type": "auth", "anonymous": False}, "missing_credentials"),
    ],
)
def test_auth_failures_close_the_connection(
    acl_relay: Relay, auth: AuthFrame | dict[str, Any], code: str
) -> None:
    watcher = acl_relay.peer("alice-secret")
    watcher.take()
    peer = acl_relay.peer(auth=False)
    peer.send(auth)
    frame = peer.take_one()
    assert isinstance(frame, AuthErrorFrame)
    assert frame.error == code
    assert frame.message
    assert peer.outbox.closed == (1008, code)
    assert peer.session.authenticated is False
    assert watcher.take() == []  # no identity broadcast for a refused peer
    peer.close()
    assert acl_relay.stats().peers == 1


@pytest.mark.parametrize(
    "frame",
    [
        EphemeralFrame("", "", "doc", 1, "s", encode_payload(None)),
        RequestFrame("", "", "doc", b""),
        PeerIdentityFrame("p", UserInfo(None, "X", True)),
        UnknownFrame("whatever", {"type": "whatever"}),
    ],
    ids=lambda f: type(f).__name__,
)
def test_not_authenticated_keeps_the_socket_open(acl_relay: Relay, frame: Frame) -> None:
    peer = acl_relay.peer(auth=False)
    peer.send(frame)
    err = error(peer.take_one())
    assert err.error == "not_authenticated"
    assert peer.outbox.closed is None
    # The connection can still authenticate afterwards.
    assert peer.auth("alice-secret").user == UserInfo("alice", "Alice", False)


def test_already_authenticated(acl_relay: Relay) -> None:
    watcher = acl_relay.peer()
    watcher.take()
    peer = acl_relay.peer("alice-secret")
    watcher.take()
    # A second auth is a re-auth (docs/protocol.md, "Re-authentication"):
    # refused unless it is a valid token for the same user.
    for second, code in (
        (AuthFrame(token="bob-secret"), "user_mismatch"),
        (AuthFrame(token="nobody"), "invalid_token"),
        (AuthFrame(anonymous=True), "invalid_message"),
        (AuthFrame(), "invalid_message"),
    ):
        peer.send(second)
        assert error(peer.take_one()).error == code
    assert peer.outbox.closed is None
    assert peer.session.user_id == "alice"
    assert watcher.take() == []
    assert acl_relay.stats().anonymous_names == 1  # only the watcher's


# --------------------------------------------------------------------------- identity


def test_identity_broadcast_and_initial_sync(acl_relay: Relay) -> None:
    a = acl_relay.peer("alice-secret")
    b = acl_relay.peer()
    a_frames = a.take()
    assert len(a_frames) == 1
    b_identity = a_frames[0]
    assert isinstance(b_identity, PeerIdentityFrame)
    assert b_identity.peer_id == b.peer_id
    assert b_identity.user.id is None
    assert b_identity.user.is_anonymous
    # b got auth_ok, then the identity of everyone already connected (not itself).
    assert b._pending_identities == [
        PeerIdentityFrame(a.peer_id, UserInfo("alice", "Alice", False))
    ]
    assert b.take() == []

    c = Peer(acl_relay)
    c.send(AuthFrame(token="bob-secret"))
    frames = c.take()
    assert isinstance(frames[0], AuthOkFrame)
    # initial sync in connection order
    assert [f.peer_id for f in frames[1:] if isinstance(f, PeerIdentityFrame)] == [
        a.peer_id,
        b.peer_id,
    ]
    assert len(frames) == 3
    c_identity = PeerIdentityFrame(frames[0].client_peer_id, UserInfo("bob", "Bob", False))
    assert a.take() == [c_identity]
    assert b.take() == [c_identity]


def test_peer_disconnected_is_broadcast(acl_relay: Relay) -> None:
    a, b, c = acl_relay.peers(3)
    b.close()
    assert a.take() == [PeerDisconnectedFrame(b.peer_id)]
    assert c.take() == [PeerDisconnectedFrame(b.peer_id)]
    b.close()  # closing twice is harmless
    assert a.take() == []
    assert acl_relay.stats().peers == 2


def test_closing_an_unauthenticated_connection_is_silent(acl_relay: Relay) -> None:
    a = acl_relay.peer()
    a.take()
    ghost = acl_relay.peer(auth=False)
    assert acl_relay.stats().connections == 2
    ghost.close()
    assert a.take() == []
    assert acl_relay.stats().connections == 1


# --------------------------------------------------------------------------- presence


def test_join_state_in_join_order_and_broadcast(relay: Relay) -> None:
    a, b, c, outsider = relay.peers(4)
    a.join("doc")
    assert a.take() == [DocPresenceStateFrame("doc", (a.peer_id,))]
    c.join("doc")
    assert c.take() == [DocPresenceStateFrame("doc", (a.peer_id, c.peer_id))]
    assert a.take() == [PeerJoinedDocFrame("doc", c.peer_id)]
    b.join("doc")
    assert b.take() == [DocPresenceStateFrame("doc", (a.peer_id, c.peer_id, b.peer_id))]
    assert a.take() == [PeerJoinedDocFrame("doc", b.peer_id)]
    assert c.take() == [PeerJoinedDocFrame("doc", b.peer_id)]
    assert outsider.take() == []
    assert relay.core.presence("doc") == (a.peer_id, c.peer_id, b.peer_id)


def test_second_join_resends_state_without_broadcast(relay: Relay) -> None:
    a, b = relay.peers(2)
    a.join("doc")
    b.join("doc")
    a.take()
    b.take()
    b.join("doc")
    assert b.take() == [DocPresenceStateFrame("doc", (a.peer_id, b.peer_id))]
    assert a.take() == []


def test_leave(relay: Relay) -> None:
    a, b, c = relay.peers(3)
    for p in (a, b, c):
        p.join("doc")
    for p in (a, b, c):
        p.take()
    b.leave("doc")
    assert a.take() == [PeerLeftDocFrame("doc", b.peer_id)]
    assert c.take() == [PeerLeftDocFrame("doc", b.peer_id)]
    assert b.take() == []
    assert relay.core.presence("doc") == (a.peer_id, c.peer_id)
    b.leave("doc")  # leaving again, or a document never joined: nothing happens
    b.leave("other")
    assert a.take() == c.take() == b.take() == []
    # After a rejoin the peer is last in join order.
    b.join("doc")
    assert b.take() == [DocPresenceStateFrame("doc", (a.peer_id, c.peer_id, b.peer_id))]


def test_heartbeat_for_a_doc_not_joined_counts_as_join(relay: Relay) -> None:
    a, b = relay.peers(2)
    a.join("doc")
    a.take()
    b.heartbeat("doc")
    assert b.take() == [DocPresenceStateFrame("doc", (a.peer_id, b.peer_id))]
    assert a.take() == [PeerJoinedDocFrame("doc", b.peer_id)]
    # A heartbeat in a joined document is silent.
    b.heartbeat("doc")
    assert a.take() == b.take() == []


def test_presence_document_must_match_envelope(relay: Relay) -> None:
    (a,) = relay.peers(1)
    a.ephemeral("doc-1", {"type": "presence", "status": "join", "documentId": "doc-2"})
    err = error(a.take_one())
    assert err.error == "invalid_message"
    assert err.document_id == "doc-1"
    assert relay.stats().memberships == 0


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "presence", "status": "enter", "documentId": "doc"},
        {"type": "presence", "status": ["join"], "documentId": "doc"},
        {"type": "presence", "status": {"x": 1}, "documentId": "doc"},
        {"type": "presence", "status": "join"},
        {"type": "presence", "status": "join", "documentId": 5},
    ],
)
def test_malformed_presence_is_invalid_message(relay: Relay, payload: dict[str, Any]) -> None:
    a, b = relay.peers(2)
    b.join("doc")
    b.take()
    a.ephemeral("doc", payload)
    err = error(a.take_one())
    assert err.error == "invalid_message"
    assert err.document_id == "doc"
    assert b.take() == []  # neither joined nor relayed
    assert relay.core.presence("doc") == (b.peer_id,)


@pytest.mark.parametrize("status", ["join", "heartbeat"])
def test_join_needs_read_permission(acl_relay: Relay, status: str) -> None:
    alice = acl_relay.peer("alice-secret")
    bob = acl_relay.peer("bob-secret")
    anon = acl_relay.peer()
    alice.join("secret")
    for p in (alice, bob, anon):
        p.take()
    for p in (bob, anon):
        p.presence("secret", status)
        err = error(p.take_one())
        assert (err.error, err.document_id) == ("permission_denied", "secret")
        p.presence("nope", status)
        err = error(p.take_one())
        assert (err.error, err.document_id) == ("document_not_found", "nope")
    assert alice.take() == []
    assert acl_relay.core.presence("secret") == (alice.peer_id,)
    # write permission implies read; public documents admit anonymous peers
    bob.join("shared")
    assert bob.take() == [DocPresenceStateFrame("shared", (bob.peer_id,))]
    anon.join("public-doc")
    assert anon.take() == [DocPresenceStateFrame("public-doc", (anon.peer_id,))]


def test_eph_channels_are_public(acl_relay: Relay) -> None:
    alice = acl_relay.peer("alice-secret")
    anon = acl_relay.peer()
    alice.take()
    anon.join("eph:chat-secret")
    assert anon.take() == [DocPresenceStateFrame("eph:chat-secret", (anon.peer_id,))]
    alice.join("eph:chat-secret")
    alice.take()
    anon.take()
    alice.ephemeral("eph:chat-secret", {"text": "hi"})
    (got,) = anon.take()
    assert isinstance(got, EphemeralFrame)
    assert got.sender_id == alice.peer_id


# --------------------------------------------------------------------------- TTL expiry


def test_ttl_expiry(relay: Relay) -> None:
    ttl = relay.core.config.presence_ttl
    assert ttl == 90.0
    a, b = relay.peers(2)
    a.join("doc")
    b.join("doc")
    a.take()
    b.take()
    relay.clock.advance(ttl / 2)
    b.heartbeat("doc")
    relay.clock.advance(ttl / 2)
    assert relay.core.expire() == 0  # exactly the TTL old is not yet stale
    relay.clock.advance(0.001)
    assert relay.core.expire() == 1
    # The others are told, and so is the expired peer itself.
    assert b.take() == [PeerLeftDocFrame("doc", a.peer_id)]
    assert a.take() == [PeerLeftDocFrame("doc", a.peer_id)]
    assert relay.core.presence("doc") == (b.peer_id,)
    # Expiring is idempotent.
    assert relay.core.expire() == 0
    # b is removed later, at its own deadline; the document then disappears.
    assert relay.core.expire(relay.clock.now + ttl / 2 + 0.001) == 1
    assert b.take() == [PeerLeftDocFrame("doc", b.peer_id)]
    assert relay.stats().documents == 0
    assert relay.stats().memberships == 0


def test_expiry_is_per_document(relay: Relay) -> None:
    a, b = relay.peers(2)
    a.join("d1")
    a.join("d2")
    b.join("d1")
    b.join("d2")
    relay.clock.advance(60)
    a.heartbeat("d2")
    a.take()
    b.take()
    relay.clock.advance(31)
    assert relay.core.expire(relay.clock.now) == 3
    # Peers are swept in connection order, each document in join order.
    assert a.take() == [PeerLeftDocFrame("d1", a.peer_id), PeerLeftDocFrame("d2", b.peer_id)]
    assert b.take() == [
        PeerLeftDocFrame("d1", a.peer_id),
        PeerLeftDocFrame("d1", b.peer_id),
        PeerLeftDocFrame("d2", b.peer_id),
    ]
    assert relay.core.presence("d2") == (a.peer_id,)


def test_expired_peer_can_rejoin_with_a_heartbeat(relay: Relay) -> None:
    a, b = relay.peers(2)
    a.join("doc")
    b.join("doc")
    relay.clock.advance(100)
    b.heartbeat("doc")
    relay.core.expire()
    a.take()
    b.take()
    a.heartbeat("doc")
    assert a.take() == [DocPresenceStateFrame("doc", (b.peer_id, a.peer_id))]
    assert b.take() == [PeerJoinedDocFrame("doc", a.peer_id)]


def test_relayed_ephemeral_keeps_presence_alive(relay: Relay) -> None:
    a, b = relay.peers(2)
    a.join("doc")
    b.join("doc")
    relay.clock.advance(80)
    a.ephemeral("doc", "still here")
    b.heartbeat("doc")
    relay.clock.advance(20)
    assert relay.core.expire() == 0
    assert relay.core.presence("doc") == (a.peer_id, b.peer_id)


# --------------------------------------------------------------------------- disconnect


def test_disconnect_cleanup_order(relay: Relay) -> None:
    a, b, c = relay.peers(3)
    a.join("d1")
    a.join("d2")
    b.join("d1")
    b.join("d2")
    a.take()
    b.take()
    a.close()
    assert b.take() == [
        PeerLeftDocFrame("d1", a.peer_id),
        PeerLeftDocFrame("d2", a.peer_id),
        PeerDisconnectedFrame(a.peer_id),
    ]
    assert c.take() == [PeerDisconnectedFrame(a.peer_id)]
    assert a.take() == []
    assert relay.core.presence("d1") == (b.peer_id,)


def test_disconnect_of_the_last_member_drops_the_document(relay: Relay) -> None:
    a, b = relay.peers(2)
    a.join("solo")
    a.close()
    assert b.take() == [PeerDisconnectedFrame(a.peer_id)]
    assert relay.stats().documents == 0


# --------------------------------------------------------------------------- ephemeral


def test_ephemeral_is_forwarded_with_identity_rewritten(relay: Relay) -> None:
    a, b, c, outsider = relay.peers(4)
    for p in (a, b, c):
        p.join("doc")
    for p in (a, b, c):
        p.take()
    payload = {"cursor": [1, 2], "blob": b"\x00" * 300}
    sent = a.ephemeral("doc", payload, sender_id="forged", target_id="also-forged")
    for recipient in (b, c):
        (got,) = recipient.take()
        assert got == EphemeralFrame(
            a.peer_id, recipient.peer_id, "doc", sent.count, a.session_id, sent.data
        )
        # The spliced frame: one prefix for everyone, the recipient's id as suffix.
        prefix, suffix = recipient.outbox.ephemeral_parts[-1]
        assert suffix == cbor_text(recipient.peer_id)
        raw = cbor2.loads(prefix + suffix)
        assert set(raw) == {
            "type",
            "senderId",
            "targetId",
            "documentId",
            "count",
            "sessionId",
            "data",
        }
        assert cbor2.loads(raw["data"]) == payload
    assert b.outbox.ephemeral_parts[-1][0] == c.outbox.ephemeral_parts[-1][0]
    assert a.take() == []  # never echoed to the sender
    assert outsider.take() == []  # not present in the document


@pytest.mark.parametrize(
    ("count", "data"),
    [
        (0, b"\xf6"),
        (23, encode_payload("x" * 23)),
        (2**32, encode_payload(list(range(100)))),
        (MAX_COUNT, encode_payload({"big": b"\xff" * 60_000})),
    ],
)
def test_spliced_frame_decodes_exactly(relay: Relay, count: int, data: bytes) -> None:
    a, b = relay.peers(2)
    b.join("eph:doc")
    b.take()
    a.ephemeral("eph:doc", data=data, count=count)
    assert b.take() == [EphemeralFrame(a.peer_id, b.peer_id, "eph:doc", count, a.session_id, data)]


def test_sender_need_not_be_present(relay: Relay) -> None:
    a, b = relay.peers(2)
    b.join("doc")
    b.take()
    a.ephemeral("doc", 1)
    (got,) = b.take()
    assert isinstance(got, EphemeralFrame)
    assert relay.core.presence("doc") == (b.peer_id,)


def test_ephemeral_needs_read_permission(acl_relay: Relay) -> None:
    alice = acl_relay.peer("alice-secret")
    bob = acl_relay.peer("bob-secret")
    anon = acl_relay.peer()
    alice.join("secret")
    for p in (alice, bob, anon):
        p.take()
    for p in (bob, anon):
        p.ephemeral("secret", {"inject": True})
        err = error(p.take_one())
        assert (err.error, err.document_id) == ("permission_denied", "secret")
        p.ephemeral("unknown-doc", 1)
        err = error(p.take_one())
        assert (err.error, err.document_id) == ("document_not_found", "unknown-doc")
    assert alice.take() == []


def test_gossip_copy_from_another_connection_is_dropped(relay: Relay) -> None:
    a, b, c = (relay.peer(address=f"198.51.100.{i}") for i in (1, 2, 3))
    for p in (a, b, c):
        p.join("doc")
    for p in (a, b, c):
        p.take()
    sent = a.ephemeral("doc", "hello")
    b.take()
    c.take()
    # b forwards a's message back to the relay, as a stock automerge-repo peer does.
    b.send(sent)
    # Another identity: a copy whatever its count, up to the largest one.
    b.ephemeral("doc", "copy", session_id=a.session_id, count=sent.count + 1)
    b.ephemeral("doc", "copy", session_id=a.session_id, count=MAX_COUNT)
    assert a.take() == b.take() == c.take() == []  # silently dropped, no error
    # b's own session still works, and so does a's.
    b.ephemeral("doc", "mine")
    assert len(a.take()) == 1
    assert len(c.take()) == 1
    a.ephemeral("doc", "still mine")
    assert [f.count for f in c.take() if isinstance(f, EphemeralFrame)] == [sent.count + 1]


def test_a_session_passes_to_another_connection_of_the_same_identity(acl_relay: Relay) -> None:
    """A stock peer back on a new connection before its old one was noticed
    dead (same user, or for anonymous peers the same address): its new count
    takes the session over; its other tab forwarding a copy (old count) does not."""
    relay = acl_relay
    alice = relay.peer("alice-secret", address="198.51.100.1")
    watcher = relay.peer("bob-secret", address="198.51.100.2")
    for p in (alice, watcher):
        p.join("shared")
    sent = alice.ephemeral("shared", "hello")
    alice_again = relay.peer("alice-secret", address="203.0.113.9")  # another address
    for p in (alice, watcher, alice_again):
        p.take()
    alice_again.send(sent)  # a copy from alice's other tab: dropped
    assert watcher.take() == []
    alice_again.ephemeral("shared", "back", session_id=alice.session_id, count=sent.count + 1)
    (got,) = watcher.take()
    assert isinstance(got, EphemeralFrame)
    assert (got.sender_id, got.count) == (alice_again.peer_id, sent.count + 1)
    # The old connection's frames of that session with no new count are copies
    # now; with a new count, it would take the session back (the same user).
    alice.ephemeral("shared", "stale", count=sent.count + 1)
    assert watcher.take() == []
    alice.close()
    watcher.take()
    alice_again.ephemeral("shared", "on", session_id=alice.session_id, count=sent.count + 3)
    assert [f.count for f in watcher.take() if isinstance(f, EphemeralFrame)] == [sent.count + 3]
    assert relay.stats().session_tombstones == 0


def test_count_not_greater_than_last_is_dropped(relay: Relay) -> None:
    a, b = relay.peers(2)
    b.join("doc")
    b.take()
    a.ephemeral("doc", 1, count=5)
    assert len(b.take()) == 1
    for stale in (5, 4, 0):
        a.ephemeral("doc", 1, count=stale)
    assert b.take() == []
    assert a.take() == []
    a.ephemeral("doc", 1, count=9)  # gaps are fine
    assert [f.count for f in b.take() if isinstance(f, EphemeralFrame)] == [9]
    # The counter is shared across documents.
    b.join("doc2")
    b.take()
    a.ephemeral("doc2", 1, count=9)
    assert b.take() == []


def test_closed_connections_session_id_is_tombstoned_then_taken_back(relay: Relay) -> None:
    a, c = relay.peers(2)
    other = relay.peer(address="192.0.2.66")
    c.join("doc")
    c.take()
    a.ephemeral("doc", 1, session_id="shared", count=5)
    assert relay.stats().gossip_sessions == 2  # c's (from its join) and a's
    a.close()
    assert relay.stats().gossip_sessions == 1
    assert relay.stats().session_tombstones == 1
    c.take()
    other.take()
    # Someone else, even with a new count: dropped, and the tombstone stays.
    other.ephemeral("doc", 1, session_id="shared", count=MAX_COUNT)
    assert c.take() == other.take() == []
    # The stock peer reconnects (the same anonymous address): a late gossip copy
    # of its last message, forwarded by its other tab, is still dropped...
    b = relay.peer()
    c.take()
    b.ephemeral("doc", 1, session_id="shared", count=5)
    assert c.take() == []
    # ...and it keeps its sessionId and carries on counting.
    b.ephemeral("doc", 2, session_id="shared", count=6)
    (got,) = c.take()
    assert isinstance(got, EphemeralFrame)
    assert (got.sender_id, got.count) == (b.peer_id, 6)
    assert relay.stats().session_tombstones == 0


def test_a_frame_refused_by_the_read_check_claims_no_session(acl_relay: Relay) -> None:
    """Issue #19, finding 1: a peer that may not read a document used to claim
    a sessionId with its refused frame. The read check now comes first."""
    relay = acl_relay
    alice = relay.peer("alice-secret")
    watcher = relay.peer("alice-secret", address="198.51.100.99")
    watcher.join("secret")
    bob = relay.peer("bob-secret", address="192.0.2.1")
    anon = relay.peer(address="192.0.2.2")
    for p in (alice, watcher, bob, anon):
        p.take()
    for p in (bob, anon):
        for payload in ({"x": 1}, {"type": "presence", "status": "join", "documentId": "secret"}):
            p.ephemeral("secret", payload, session_id=alice.session_id, count=MAX_COUNT)
            err = error(p.take_one())
            assert (err.error, err.document_id) == ("permission_denied", "secret")
        # A leave of a document one is not in does nothing, and claims nothing.
        p.ephemeral(
            "secret",
            {"type": "presence", "status": "leave", "documentId": "secret"},
            session_id=alice.session_id,
            count=MAX_COUNT,
        )
        assert p.take() == []
    assert relay.stats().gossip_sessions == 1  # the watcher's join
    alice.ephemeral("secret", "mine", count=1)
    assert [f.count for f in watcher.take() if isinstance(f, EphemeralFrame)] == [1]


def test_a_count_beyond_2_53_is_invalid_and_claims_nothing(relay: Relay) -> None:
    a, b = relay.peers(2)
    b.join("doc")
    b.take()
    for count in (MAX_COUNT + 1, 2**64):
        a.ephemeral("doc", 1, count=count)
        err = error(a.take_one())
        assert err.error == "invalid_message"
        assert "2**53 - 1" in err.message
    assert b.take() == []
    a.ephemeral("doc", 1, count=1)
    assert len(b.take()) == 1


def test_gossip_copies_spend_no_rate_tokens() -> None:
    relay = Relay(global_config(open=True, rate_limit=2))
    a = relay.peer(address="192.0.2.1")
    stock = relay.peer(address="192.0.2.2")
    stock.join("doc")
    stock.take()
    sent = [a.ephemeral("doc", i) for i in range(2)]
    assert len(stock.take()) == 2
    for frame in sent * 5:  # a stock peer forwarding everything it hears, and more
        stock.send(frame)
    assert stock.take() == []  # dropped silently: no rate_limited
    # Its whole allowance is still there: two messages of its own, not three.
    stock.ephemeral("doc", "own")
    stock.ephemeral("doc", "own")
    assert stock.take() == []
    stock.ephemeral("doc", "one too many")
    assert error(stock.take_one()).error == "rate_limited"


def test_tombstones_expire(relay: Relay) -> None:
    (a,) = relay.peers(1)
    a.ephemeral("doc", 1, session_id="s", count=3)
    a.close()
    relay.clock.advance(SESSION_TOMBSTONE_TTL - 1)
    relay.core.expire()
    assert relay.stats().session_tombstones == 1
    relay.clock.advance(2)
    relay.core.expire()
    assert relay.stats().session_tombstones == 0


def test_presence_messages_per_document_are_bounded(relay: Relay) -> None:
    a, b = relay.peers(2)
    b.join("doc")
    b.take()
    for _ in range(PRESENCE_BURST // 2):
        a.join("doc")
        a.leave("doc")
    frames = a.take()
    assert all(not isinstance(f, ErrorFrame) for f in frames)
    a.join("doc")  # one more than the burst
    err = error(a.take_one())
    assert (err.error, err.document_id) == ("rate_limited", "doc")
    assert err.retry_after is not None
    assert 0 < err.retry_after <= 1 / PRESENCE_RATE + 0.001
    assert relay.core.presence("doc") == (b.peer_id,)
    # Another document has its own allowance; time refills this one.
    a.join("other")
    assert not isinstance(a.take()[-1], ErrorFrame)
    relay.clock.advance(1 / PRESENCE_RATE)
    a.join("doc")
    assert relay.core.presence("doc") == (b.peer_id, a.peer_id)
    # Heartbeats for a document one is in cost nothing: any number of them.
    for _ in range(PRESENCE_BURST * 3):
        a.heartbeat("doc")
    assert not any(isinstance(f, ErrorFrame) for f in a.take())


def test_too_many_sessions(relay: Relay) -> None:
    a, b = relay.peers(2)
    b.join("doc")
    b.take()
    for i in range(MAX_SESSIONS_PER_CONNECTION):
        a.ephemeral("doc", i, session_id=f"s{i}", count=1)
    assert len(b.take()) == MAX_SESSIONS_PER_CONNECTION
    a.ephemeral("doc", "one more", session_id="s-extra", count=1)
    err = error(a.take_one())
    assert err.error == "too_many_sessions"
    assert b.take() == []
    assert relay.stats().gossip_sessions == MAX_SESSIONS_PER_CONNECTION + 1  # + b's own
    # Sessions already known keep working.
    a.ephemeral("doc", "again", session_id="s0", count=2)
    assert len(b.take()) == 1


def test_rate_limit() -> None:
    relay = Relay(global_config(open=True, rate_limit=3))
    a, b = relay.peers(2)
    b.join("doc")
    b.take()
    for i in range(3):
        a.ephemeral("doc", i)
    assert len(b.take()) == 3
    a.ephemeral("doc", "too many")
    err = error(a.take_one())
    assert err.error == "rate_limited"
    assert err.retry_after == pytest.approx(20.0)  # one token per 60/3 s
    assert "3" in err.message
    assert b.take() == []
    # Presence is not rate limited.
    a.join("doc")
    a.heartbeat("doc")
    a.join("other")
    assert [type(f) for f in a.take()] == [DocPresenceStateFrame, DocPresenceStateFrame]
    assert b.take() == [PeerJoinedDocFrame("doc", a.peer_id)]
    # A refused message is not relayed later, and costs no token; one sent
    # before the retryAfter it was given has passed is not answered again.
    relay.clock.advance(10)
    a.ephemeral("doc", "still too early")
    assert a.take() == []
    assert relay.core.counters.unanswered == 1
    relay.clock.advance(10)
    a.ephemeral("doc", "ok now")
    assert [f.data for f in b.take() if isinstance(f, EphemeralFrame)] == [encode_payload("ok now")]


def test_rate_limit_is_per_connection() -> None:
    relay = Relay(global_config(open=True, rate_limit=1))
    a, b, c = relay.peers(3)
    c.join("doc")
    c.take()
    a.ephemeral("doc", 1)
    b.ephemeral("doc", 1)
    assert len(c.take()) == 2
    a.ephemeral("doc", 2)
    assert error(a.take_one()).error == "rate_limited"
    assert b.take() == []


def test_denied_messages_do_not_use_tokens() -> None:
    relay = Relay(global_config(users=USERS, documents=DOCUMENTS, rate_limit=1))
    alice = relay.peer("alice-secret")
    anon = relay.peer()
    alice.join("public-doc")
    alice.take()
    anon.take()
    for _ in range(3):
        anon.ephemeral("secret", 1)
        assert error(anon.take_one()).error == "permission_denied"
    anon.ephemeral("public-doc", 1)
    assert anon.take() == []
    assert len(alice.take()) == 1


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\xff", "not valid CBOR"),
        (b"", "empty"),
        (encode_payload(1) + b"\x00", "trailing"),
    ],
)
def test_data_that_is_not_cbor(relay: Relay, data: bytes, match: str) -> None:
    a, b = relay.peers(2)
    b.join("doc")
    b.take()
    a.ephemeral("doc", data=data)
    err = error(a.take_one())
    assert err.error == "invalid_message"
    assert match in err.message
    assert err.document_id == "doc"
    assert b.take() == []


def test_max_documents_per_peer() -> None:
    relay = Relay(global_config(open=True, max_documents_per_peer=2))
    a, b = relay.peers(2)
    a.join("d1")
    a.join("eph:d2")  # sidecars count too
    a.take()
    for status in ("join", "heartbeat"):
        a.presence("d3", status)
        err = error(a.take_one())
        assert (err.error, err.document_id) == ("too_many_documents", "d3")
        assert "2" in err.message
    a.send(RequestFrame("", "", "d3", b""))
    assert error(a.take_one()).error == "too_many_documents"
    # Re-joining a document already held is fine.
    a.join("d1")
    assert a.take() == [DocPresenceStateFrame("d1", (a.peer_id,))]
    # The bound is per connection.
    b.join("d3")
    assert b.take() == [DocPresenceStateFrame("d3", (b.peer_id,))]
    a.leave("d1")
    a.join("d3")
    assert a.take() == [DocPresenceStateFrame("d3", (b.peer_id, a.peer_id))]


# --------------------------------------------------------------------------- bad input


SERVER_ONLY_FRAMES: list[Frame] = [
    AuthOkFrame("relay", "peer-x", UserInfo("alice", "Alice", False), FEATURES),
    AuthErrorFrame("invalid_token", "x"),
    ErrorFrame("permission_denied", "x", "doc"),
    PeerIdentityFrame("peer-x", UserInfo("alice", "Alice", False)),
    PeerDisconnectedFrame("peer-x"),
    PeerJoinedDocFrame("doc", "peer-x"),
    PeerLeftDocFrame("doc", "peer-x"),
    DocPresenceStateFrame("doc", ("peer-x",)),
]


@pytest.mark.parametrize("frame", SERVER_ONLY_FRAMES, ids=lambda f: f.TYPE)
def test_server_only_frames_are_rejected(relay: Relay, frame: Frame) -> None:
    a, b, c = relay.peers(3)
    a.join("doc")
    b.join("doc")
    a.take()
    b.take()
    # Aim the forged frame at real peers and documents.
    forged = cbor2.loads(encode(frame))
    for key in ("peerId", "clientPeerId"):
        if key in forged:
            forged[key] = a.peer_id
    if "peers" in forged:
        forged["peers"] = [c.peer_id]
    before = relay.stats()
    c.send(forged)
    err = error(c.take_one())
    assert err.error == "invalid_message"
    assert frame.TYPE in err.message
    assert "only by the server" in err.message
    assert a.take() == b.take() == []
    assert relay.stats() == before
    assert relay.core.presence("doc") == (a.peer_id, b.peer_id)
    # A forged auth_ok (claiming alice) changes nobody's identity.
    assert (c.session.peer_id, c.session.user_id, c.session.is_anonymous) == (
        c.peer_id,
        None,
        True,
    )
    assert c.outbox.closed is None


def test_unknown_frame_type_is_rejected(relay: Relay) -> None:
    a, b = relay.peers(2)
    a.send({"type": "subscribe", "documentId": "doc"})
    err = error(a.take_one())
    assert (err.error, err.message) == ("invalid_message", "unsupported frame type 'subscribe'")
    assert b.take() == []


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\x00garbage",
        b"",
        cbor2.dumps(None),
        cbor2.dumps(42),
        cbor2.dumps([1, 2, 3]),
        cbor2.dumps({"no": "type"}),
        cbor2.dumps({"type": "ephemeral", "documentId": "doc"}),
        cbor2.dumps(
            {"type": "ephemeral", "documentId": "doc", "count": 1, "sessionId": "s", "data": "x"}
        ),
    ],
)
@pytest.mark.parametrize("authenticated", [True, False])
def test_garbage_is_invalid_message(relay: Relay, data: bytes, authenticated: bool) -> None:
    a = relay.peer(auth=authenticated)
    a.take()
    a.send(data)
    err = error(a.take_one())
    assert err.error == "invalid_message"
    assert err.message
    assert a.outbox.closed is None


def test_text_frames_are_invalid_message(relay: Relay) -> None:
    (a,) = relay.peers(1)
    relay.core.receive_text(a.session)
    err = error(a.take_one())
    assert err.error == "invalid_message"
    assert "text" in err.message


def test_oversized_frame_is_invalid_message() -> None:
    relay = Relay(global_config(open=True, max_frame_size=1000))
    a, b = relay.peers(2)
    b.join("doc")
    b.take()
    a.ephemeral("doc", data=encode_payload(b"x" * 900))
    assert len(b.take()) == 1
    a.ephemeral("doc", data=encode_payload(b"x" * 1000))
    err = error(a.take_one())
    assert err.error == "invalid_message"
    assert "exceeds the 1000-byte limit" in err.message
    assert b.take() == []


def test_automerge_request_counts_as_join(relay: Relay) -> None:
    a, b = relay.peers(2)
    a.join("doc")
    a.take()
    b.send(RequestFrame("", "", "doc", b"\x42"))
    assert b.take() == [
        DocPresenceStateFrame("doc", (a.peer_id, b.peer_id)),
        DocUnavailableFrame(SERVER_ID, b.peer_id, "doc"),
    ]
    assert a.take() == [PeerJoinedDocFrame("doc", b.peer_id)]
    b.send(SyncFrame("", "", "doc", b""))
    b.send(DocUnavailableFrame("", "", "doc"))
    assert b.take() == []
    assert a.take() == []


def test_request_for_protected_doc_is_denied(acl_relay: Relay) -> None:
    anon = acl_relay.peer()
    anon.send(RequestFrame("", "", "secret", b""))
    err = error(anon.take_one())
    assert (err.error, err.document_id) == ("permission_denied", "secret")
    assert acl_relay.stats().memberships == 0


# --------------------------------------------------------------------------- stats


def test_stats_return_to_zero_after_everyone_leaves() -> None:
    relay = Relay(global_config(users=USERS, documents=DOCUMENTS, rate_limit=5))
    assert relay.stats() == ZERO
    alice = relay.peer("alice-secret")
    bob = relay.peer("bob-secret")
    anons = [relay.peer() for _ in range(3)]
    ghost = relay.peer(auth=False)
    refused = relay.peer(auth=False)
    refused.send(AuthFrame(token="bad"))
    everyone = [alice, bob, *anons]
    for i, p in enumerate(everyone):
        p.join("public-doc")
        p.join(f"eph:side-{i}")
        p.ephemeral("public-doc", {"hello": i})
        p.ephemeral("public-doc", {"hello": i}, session_id=f"{p.session_id}-second")
    alice.join("secret")
    bob.join("shared")
    for _ in range(6):
        anons[0].ephemeral("public-doc", "spam")  # hits the rate limit
    stats = relay.stats()
    assert stats == RelayStats(
        connections=7,
        peers=5,
        documents=1 + 5 + 2,
        memberships=5 + 5 + 2,
        gossip_sessions=10,
        session_tombstones=0,
        rate_buckets=5,
        anonymous_names=3,
        auth_failure_addresses=1,  # the refused one's address, until its allowance refills
        connection_addresses=1,  # the anonymous ones' address, until its allowance refills
    )
    relay.clock.advance(200)
    alice.heartbeat("secret")
    relay.core.expire()
    for p in [*everyone, ghost, refused]:
        p.close()
    # Closed connections' sessionIds are remembered for a while (late gossip
    # copies stay dropped), then forgotten.
    assert relay.stats().session_tombstones == 10
    relay.clock.advance(SESSION_TOMBSTONE_TTL + 1)
    relay.core.expire()
    assert relay.stats() == ZERO
    assert relay.core.presence("public-doc") == ()
    assert list(relay.core.peers()) == []


# ----------------------------------------------------------------- upstream-compatible mode


@pytest.fixture
def compat() -> Relay:
    """server_presence=False: what today's upstream server speaks."""
    return Relay(
        RelayConfig(
            users=USERS, documents=DOCUMENTS, open=True, server_presence=False, presence_ttl=5
        )
    )


def test_compat_auth_ok_has_no_features_and_no_names(compat: Relay) -> None:
    anon = Peer(compat)
    anon.send(AuthFrame(anonymous=True))
    (raw,) = anon.outbox.raw
    assert cbor2.loads(raw) == {
        "type": "auth_ok",
        "peerId": compat.core.server_peer_id,
        "clientPeerId": anon.session.peer_id,
        "user": None,
    }
    alice = Peer(compat)
    alice.send(AuthFrame(token="alice-secret"))
    assert cbor2.loads(alice.outbox.raw[0])["user"] == {"id": "alice"}
    # No identity frames either way: anon was not told about alice.
    assert len(anon.outbox.raw) == 1
    assert len(alice.outbox.raw) == 1


def test_compat_request_subscribes_silently_and_is_answered_with_sync(compat: Relay) -> None:
    a, b = Peer(compat), Peer(compat)
    a.auth()
    b.auth()
    data = bytes.fromhex("42000001000000020102")
    a.send(RequestFrame("x", "y", "amdoc", data))
    (reply,) = a.take()
    assert reply == SyncFrame(compat.core.server_peer_id, a.peer_id, "amdoc", data)
    b.send(SyncFrame("x", "y", "amdoc", data))
    assert a.take() == []  # no peer_joined_doc
    assert b.take() == []  # no doc_presence_state, no answer to sync
    assert compat.core.presence("amdoc") == (a.peer_id, b.peer_id)
    b.ephemeral("amdoc", {"cursor": 1})
    (got,) = a.take()
    assert isinstance(got, EphemeralFrame)
    assert (got.sender_id, decode_payload(got.data)) == (b.peer_id, {"cursor": 1})


def test_compat_relays_presence_shaped_payloads_and_ignores_eph_ids(compat: Relay) -> None:
    a, b = Peer(compat), Peer(compat)
    a.auth()
    b.auth()
    a.send(RequestFrame("", "", "amdoc", b"\x42"))
    a.take()
    b.join("amdoc")  # not a presence message here: relayed like any payload
    (got,) = a.take()
    assert isinstance(got, EphemeralFrame)
    assert decode_payload(got.data)["type"] == "presence"
    assert b.take() == []
    b.send(RequestFrame("", "", "eph:chat-amdoc", b"\x42"))
    b.ephemeral("eph:chat-amdoc", "hi")
    assert b.take() == []  # upstream: invalid id, no answer
    assert compat.core.presence("eph:chat-amdoc") == ()


def test_compat_subscriptions_do_not_expire_and_disconnect_is_silent(compat: Relay) -> None:
    a, b = Peer(compat), Peer(compat)
    a.auth()
    b.auth()
    a.send(SyncFrame("", "", "amdoc", b"\x42"))
    b.send(SyncFrame("", "", "amdoc", b"\x42"))
    compat.clock.advance(1000)
    assert compat.core.expire() == 0
    assert compat.core.presence("amdoc") == (a.peer_id, b.peer_id)
    a.close()
    assert b.take() == []  # no peer_left_doc, no peer_disconnected
    assert compat.core.presence("amdoc") == (b.peer_id,)


# --------------------------------------------------------------------------- failed auths


def _try_auth(relay: Relay, token: str | None, address: str = "198.51.100.7") -> Peer:
    peer = Peer(relay, address)
    peer.send(AuthFrame(token=token, anonymous=token is None))
    return peer


def test_failed_auths_use_up_an_allowance_per_address() -> None:
    relay = Relay(global_config(users=USERS, documents=DOCUMENTS, auth_failure_limit=3))
    for _ in range(3):
        refused = _try_auth(relay, "wrong")
        assert isinstance(refused.take_one(), AuthErrorFrame)
        assert refused.outbox.closed == (1008, "invalid_token")
    # The allowance is used up: every auth from that address is refused, the
    # right token and anonymous ones too, with the time until the next try.
    for token in ("wrong", "alice-secret", None):
        limited = _try_auth(relay, token)
        err = error(limited.take_one())
        assert err.error == "rate_limited"
        assert err.retry_after == pytest.approx(20.0, abs=0.01)  # 3 a minute: one per 20 s
        assert limited.outbox.closed == (1008, "rate_limited")
    # Other addresses are not affected.
    elsewhere = _try_auth(relay, "alice-secret", address="203.0.113.9")
    assert isinstance(elsewhere.take()[0], AuthOkFrame)
    # One failure's worth comes back after 20 s.
    relay.clock.advance(20)
    assert isinstance(_try_auth(relay, "alice-secret").take()[0], AuthOkFrame)
    assert isinstance(_try_auth(relay, "wrong").take_one(), AuthErrorFrame)
    assert error(_try_auth(relay, "alice-secret").take_one()).error == "rate_limited"


def test_missing_credentials_count_as_a_failure() -> None:
    relay = Relay(global_config(open=True, auth_failure_limit=1))
    peer = Peer(relay)
    peer.send({"type": "auth"})
    assert isinstance(peer.take_one(), AuthErrorFrame)
    assert error(_try_auth(relay, None).take_one()).error == "rate_limited"


def test_the_failure_table_forgets_healed_addresses() -> None:
    relay = Relay(global_config(open=True, users=USERS, auth_failure_limit=2))
    for i in range(5):
        _try_auth(relay, "wrong", address=f"192.0.2.{i}")
    assert relay.stats().auth_failure_addresses == 5
    relay.clock.advance(20)  # 2 a minute: the one failure is refilled in 30 s
    relay.core.expire()
    assert relay.stats().auth_failure_addresses == 5  # not yet full again
    relay.clock.advance(11)
    relay.core.expire()
    assert relay.stats().auth_failure_addresses == 0


# --------------------------------------------------------------------------- the auth deadline


def auth_timeouts(peer: Peer) -> list[Frame]:
    return [f for f in peer.take() if isinstance(f, ErrorFrame) and f.error == "auth_timeout"]


def test_a_connection_without_auth_is_refused_at_its_deadline(acl_relay: Relay) -> None:
    timeout = acl_relay.core.config.auth_timeout
    silent = acl_relay.peer(auth=False)
    chatty = acl_relay.peer(auth=False)
    acl_relay.clock.advance(timeout / 2)
    chatty.send({"type": "hello"})  # not auth: it does not extend the deadline
    assert error(chatty.take_one()).error == "not_authenticated"
    late = acl_relay.peer(auth=False)
    authed = acl_relay.peer("alice-secret")
    authed.take()
    acl_relay.clock.advance(timeout / 2 - 0.001)
    acl_relay.core.on_timer()
    assert (silent.outbox.closed, chatty.outbox.closed) == (None, None)
    acl_relay.clock.advance(0.001)
    acl_relay.core.on_timer()
    for peer in (silent, chatty):
        (frame,) = auth_timeouts(peer)
        assert frame == ErrorFrame("auth_timeout", f"no auth within {timeout:g} s")
        assert peer.outbox.closed == (1008, "auth_timeout")
    # Its own deadline is half a timeout later; an authenticated peer has none.
    assert late.outbox.closed is None and authed.outbox.closed is None
    acl_relay.clock.advance(timeout)
    acl_relay.core.on_timer()
    assert len(auth_timeouts(late)) == 1 and late.outbox.closed == (1008, "auth_timeout")
    assert authed.take() == [] and authed.outbox.closed is None
    # Counted as refused authentications (ratatoskr_refused_total{reason="auth"}):
    # the two timeouts, the late one, and chatty's not_authenticated.
    assert acl_relay.core.counters.refused == {"auth": 4}


def test_an_answered_auth_has_no_deadline_any_more(acl_relay: Relay) -> None:
    refused = acl_relay.peer(auth=False)
    refused.send(AuthFrame(token="wrong"))
    assert isinstance(refused.take_one(), AuthErrorFrame)
    acl_relay.clock.advance(acl_relay.core.config.auth_timeout + 1)
    acl_relay.core.on_timer()
    assert refused.take() == []  # closed once, with auth_error only
    assert acl_relay.core.counters.refused == {"auth": 1}


def test_the_core_asks_to_be_woken_for_a_deadline_before_its_sweeps() -> None:
    relay = Relay(global_config(open=True, auth_timeout=0.3))
    wakes: list[float] = []
    relay.core.wake_at = wakes.append
    due = relay.core.on_timer()
    assert due == relay.clock.now + SWEEP_MAX_INTERVAL
    peer = relay.peer(auth=False)
    assert wakes == [relay.clock.now + 0.3]
    relay.peer(auth=False)  # a later deadline than the one asked for: no new wake
    assert wakes == [relay.clock.now + 0.3]
    relay.clock.advance(0.3)
    assert relay.core.on_timer() == relay.clock.now + 0.7  # the sweeps' next turn
    assert peer.outbox.closed == (1008, "auth_timeout")


def test_the_sweeps_run_when_due_and_say_when_next() -> None:
    relay = Relay(global_config(open=True, presence_ttl=5, ping_interval=4))
    peer = relay.peer()
    peer.join("doc")
    peer.take()
    start = relay.clock.now
    # Expiry every TTL/10 = 0.5 s, liveness every interval/10 = 0.4 s.
    assert relay.core.on_timer() == start + 0.4
    relay.clock.advance(0.4)
    assert relay.core.on_timer() == start + 0.5
    relay.clock.advance(5.1)  # past the TTL: the next expiry sweep removes it
    relay.core.on_timer()
    assert relay.core.presence("doc") == ()
    assert PeerLeftDocFrame("doc", peer.peer_id) in peer.take()
    # Pinged once silent for ping_interval, closed once silent for 1.5 x that
    # (counted from the first sweep after its last frame).
    assert peer.outbox.pings == 1  # (silent since the sweep at start + 0.4)
    peer.send({"type": "hello"})  # (any frame counts)
    peer.outbox.pings = 0
    relay.clock.advance(0.4)
    relay.core.on_timer()
    heard = relay.clock.now
    relay.clock.now = heard + 4.0
    relay.core.on_timer()
    assert (peer.outbox.pings, peer.outbox.closed) == (1, None)
    relay.clock.now = heard + 6.0
    relay.core.on_timer()
    assert peer.outbox.closed == (1008, "ping_timeout")


# --------------------------------------------------------------------------- internal errors


def test_a_frame_the_relay_fails_on_costs_that_frame_only(
    relay: Relay, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = relay.peers(2)
    for p in (a, b):
        p.join("doc")
    a.take(), b.take()

    def broken(conn: Connection, frame: EphemeralFrame) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(relay.core, "_on_ephemeral", broken)
    a.ephemeral("doc", {"n": 1})  # raises inside the core: never out of receive()
    assert a.take() == [ErrorFrame("internal_error", "the relay failed on this frame")]
    assert a.outbox.closed is None
    assert relay.core.counters.internal_errors == 1
    assert relay.core.counters.refused == {}  # a failure of ours, not a refusal
    assert [r.levelname for r in caplog.records if "internal error" in r.getMessage()] == ["ERROR"]
    monkeypatch.undo()
    a.ephemeral("doc", {"n": 2})
    assert [f for f in b.take() if isinstance(f, EphemeralFrame)] != []


def test_session_is_a_deprecated_name_of_connection() -> None:
    import ratatoskr_client.server.core as core_package
    import ratatoskr_client.server.core.connection as connection_module
    import ratatoskr_client.server.core.relay as relay_module

    for module in (core_package, relay_module, connection_module):
        with pytest.warns(DeprecationWarning, match="use Connection"):
            assert module.Session is Connection
    with pytest.raises(AttributeError):
        _ = relay_module.NoSuchName
