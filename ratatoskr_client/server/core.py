"""The relay's rules as a state machine: bytes in, frames out through an outbox. No I/O.

:class:`RelayCore` holds every connection's identity, every document's presence,
the rate-limit buckets and the gossip bookkeeping, and applies the rules of
``docs/protocol.md`` to each incoming message. It never touches a socket: each
connection hands it an :class:`Outbox`, and the core calls the outbox
synchronously with ready-to-send CBOR frames. The aiohttp layer
(:mod:`ratatoskr_client.server.app`) turns those calls into WebSocket frames; the
unit tests use a list.

The clock is injected (``clock``), so TTL expiry and rate limits are testable
without sleeping.

A relay in a cluster (``docs/cluster.md``) also has a :class:`Bus`: the core
tells it, synchronously, about every local identity, membership and relayed
message, and asks it who is present on the other relays. The bus calls back
:meth:`RelayCore.deliver_remote` with messages other relays accepted. Without
a bus (``bus is None``) nothing of this runs.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Protocol

import cbor2

from ..errors import ProtocolError
from ..pacing import TokenBucket
from ..protocol import (
    EPHEMERAL_PREFIX,
    FEATURES,
    Admission,
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
    PresenceMessage,
    RequestFrame,
    SessionOwners,
    SyncFrame,
    UnknownFrame,
    UserInfo,
    cbor_bytes,
    cbor_map_header,
    cbor_text,
    cbor_uint,
    decode,
    decode_payload,
    encode,
)
from .bus import Bus, RemoteSender
from .config import Access, RelayConfig
from .counters import RelayCounters, refusal_reason
from .names import NameAllocator

__all__ = [
    "MAX_SESSIONS_PER_CONNECTION",
    "Bus",
    "Connection",
    "Outbox",
    "RelayCore",
    "RelayStats",
    "RemoteSender",
    "Session",
]

log = logging.getLogger("ratatoskr_client.server")

#: Distinct ephemeral ``sessionId``s one connection may use. A stock peer uses one;
#: the bound keeps a hostile client from growing the gossip table without limit.
MAX_SESSIONS_PER_CONNECTION: Final = 16
#: Seconds a closed connection's sessionIds are remembered, with their last count.
#: Late gossip copies (count <= last) stay dropped; a stock peer that reconnects
#: with the same sessionId and a higher count takes it back.
SESSION_TOMBSTONE_TTL: Final = 60.0
#: Bound on remembered sessionIds of closed connections (oldest forgotten first).
#: With sessionIds of at most MAX_SESSION_ID_BYTES, the table stays under 8 MiB.
MAX_SESSION_TOMBSTONES: Final = 20_000
#: Source addresses whose failed auth attempts are remembered at once. Beyond
#: it the oldest is forgotten: many addresses cost each one its memory, not more.
MAX_AUTH_FAILURE_ADDRESSES: Final = 10_000
#: Presence control messages (join/leave/heartbeat) one connection may send per
#: document: a burst of PRESENCE_BURST, refilled at PRESENCE_RATE per second.
#: They are not relayed and not counted by the rate limit, but each join or
#: leave is fanned out to everyone present, so it needs a bound of its own.
PRESENCE_BURST: Final = 10
PRESENCE_RATE: Final = 5.0

# Frames only the server may send; a client sending one gets invalid_message.
_SERVER_ONLY: Final = frozenset(
    {
        "auth_ok",
        "auth_error",
        "error",
        "peer_identity",
        "peer_disconnected",
        "peer_joined_doc",
        "peer_left_doc",
        "doc_presence_state",
    }
)

# Pre-encoded pieces of an outgoing ephemeral frame (see _relay_ephemeral).
_EPH_MAP: Final = cbor_map_header(7) + cbor_text("type") + cbor_text("ephemeral")
_K_SENDER: Final = cbor_text("senderId")
_K_DOC: Final = cbor_text("documentId")
_K_COUNT: Final = cbor_text("count")
_K_SESSION: Final = cbor_text("sessionId")
_K_DATA: Final = cbor_text("data")
_K_TARGET: Final = cbor_text("targetId")


class Outbox(Protocol):
    """Where the core puts the frames for one connection. Calls never block."""

    def send(self, frame: bytes) -> None:
        """Deliver a control frame (identity, presence, errors). Never dropped."""

    def send_ephemeral(self, prefix: bytes, suffix: bytes) -> None:
        """Deliver the frame ``prefix + suffix``. May be dropped if the connection
        is too far behind: ephemeral messages are fire-and-forget."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection after the frames already sent."""


class Connection:
    """One WebSocket connection, before and after authentication.

    (Not the wire's ``sessionId``: that names a sender's stream of ephemeral
    messages, and one connection may use several.)
    """

    __slots__ = (
        "address",
        "authenticated",
        "bucket",
        "control",
        "docs",
        "identity_frame",
        "is_anonymous",
        "name",
        "outbox",
        "peer_id",
        "target_suffix",
        "user_id",
    )

    def __init__(self, outbox: Outbox, address: str = "") -> None:
        self.outbox = outbox
        #: the peer's network address (for per-address limits); "" if unknown
        self.address = address
        self.authenticated = False
        self.peer_id = ""
        self.user_id: str | None = None
        self.name = ""
        self.is_anonymous = True
        #: document id -> monotonic time of the last join/heartbeat (or other activity)
        self.docs: dict[str, float] = {}
        self.bucket: TokenBucket | None = None
        #: document id -> bucket for presence control messages (created on demand)
        self.control: dict[str, TokenBucket] = {}
        self.identity_frame = b""
        self.target_suffix = b""

    def __repr__(self) -> str:
        who = self.peer_id or "unauthenticated"
        return f"<Connection {who} {self.name!r} docs={len(self.docs)}>"


#: The former name of :class:`Connection`, kept so existing imports work.
Session = Connection


@dataclass(frozen=True, slots=True)
class RelayStats:
    """Sizes of every table the relay keeps; all return to zero when everyone leaves."""

    connections: int
    peers: int
    documents: int
    memberships: int
    gossip_sessions: int
    session_tombstones: int
    rate_buckets: int
    anonymous_names: int
    auth_failure_addresses: int = 0


class RelayCore:
    """Applies the wire contract to every connection of one relay."""

    def __init__(
        self,
        config: RelayConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        names: NameAllocator | None = None,
        server_peer_id: str | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.server_peer_id = server_peer_id or f"relay-{secrets.token_hex(6)}"
        self._names = names or NameAllocator()
        self._connections: set[Connection] = set()
        #: authenticated connections by peer id, in connection order
        self._peers: dict[str, Connection] = {}
        #: document id -> present connections by peer id, in join order
        self._docs: dict[str, dict[str, Connection]] = {}
        #: ephemeral sessionId -> the connection that first used it (the gossip rule);
        #: senders on other relays are keyed by (node id, peer id)
        self._sessions: SessionOwners[Connection | RemoteSender] = SessionOwners(
            max_per_sender=MAX_SESSIONS_PER_CONNECTION,
            tombstone_ttl=SESSION_TOMBSTONE_TTL,
            max_tombstones=MAX_SESSION_TOMBSTONES,
        )
        #: source address -> bucket of failed auth attempts (see _auth_allowed)
        self._auth_failures: dict[str, TokenBucket] = {}
        self._server_presence = config.server_presence
        #: connections closed since the core started (for memory housekeeping)
        self.closed_total = 0
        #: traffic counts, for monitoring
        self.counters = RelayCounters()
        #: the cluster link (see :meth:`attach_bus`); None for a single relay
        self.bus: Bus | None = None

    # ------------------------------------------------------------------ lifecycle

    def open(self, outbox: Outbox, address: str = "") -> Connection:
        """Register a new, unauthenticated connection from ``address`` (the
        peer's IP address; per-address limits apply to it)."""
        session = Connection(outbox, address)
        self._connections.add(session)
        return session

    def close(self, session: Connection) -> None:
        """The connection is gone: remove it from every document (``peer_left_doc``
        each), then announce ``peer_disconnected``. Safe to call twice."""
        if session not in self._connections:
            return
        self._connections.discard(session)
        self.closed_total += 1
        for doc_id in list(session.docs):
            self._leave(session, doc_id, tell_self=False)
        self._sessions.release(session, self.clock())
        session.control.clear()
        session.bucket = None
        if session.authenticated:
            del self._peers[session.peer_id]
            if session.is_anonymous:
                self._names.release(session.name)
            if self.bus is not None:
                self.bus.peer_closed(session)
            if self._server_presence:
                frame = encode(PeerDisconnectedFrame(session.peer_id))
                for other in self._peers.values():
                    other.outbox.send(frame)
            log.debug("peer %s (%s) disconnected", session.peer_id, session.name)

    def expire(self, now: float | None = None) -> int:
        """Remove every membership whose last join/heartbeat is older than the
        presence TTL, as if the peer had left. Returns how many were removed."""
        now = self.clock() if now is None else now
        self._forget_idle(now)
        if not self._server_presence:
            return 0  # like upstream: a subscription lasts as long as the connection
        deadline = now - self.config.presence_ttl
        removed = 0
        for session in list(self._peers.values()):
            stale = [doc for doc, seen in session.docs.items() if seen < deadline]
            for doc_id in stale:
                log.debug("presence of %s in %r expired", session.peer_id, doc_id)
                self._leave(session, doc_id, tell_self=True)
                removed += 1
        return removed

    def _forget_idle(self, now: float) -> None:
        """Drop bookkeeping that has served its purpose: tombstones past their TTL
        and presence-control buckets that are full again."""
        self._sessions.expire(now)
        for session in self._peers.values():
            if session.control:
                full = [d for d, b in session.control.items() if b.tokens(now) >= b.capacity]
                for doc_id in full:
                    del session.control[doc_id]
        if self._auth_failures:
            healed = [a for a, b in self._auth_failures.items() if b.tokens(now) >= b.capacity]
            for address in healed:
                del self._auth_failures[address]

    def stats(self) -> RelayStats:
        """Current table sizes (for monitoring and leak tests)."""
        return RelayStats(
            connections=len(self._connections),
            peers=len(self._peers),
            documents=len(self._docs),
            memberships=sum(len(m) for m in self._docs.values()),
            gossip_sessions=len(self._sessions),
            session_tombstones=self._sessions.tombstones,
            rate_buckets=sum(1 for s in self._connections if s.bucket is not None),
            anonymous_names=len(self._names),
            auth_failure_addresses=len(self._auth_failures),
        )

    def presence(self, document_id: str) -> tuple[str, ...]:
        """Peer ids present in a document, in join order."""
        return tuple(self._docs.get(document_id, ()))

    def peers(self) -> Iterable[Connection]:
        """Authenticated sessions, in connection order."""
        return self._peers.values()

    # ------------------------------------------------------------------ input

    def receive_text(self, session: Connection) -> None:
        """A text WebSocket message arrived: always bad input."""
        self.counters.frame_in("text")
        self._error(session, "invalid_message", "text frames are not supported; send binary CBOR")

    def receive(self, session: Connection, data: bytes) -> None:
        """Apply one binary WebSocket message from ``session``."""
        counters = self.counters
        if len(data) > self.config.max_frame_size:
            counters.frame_in("oversized")
            self._error(
                session,
                "invalid_message",
                f"frame of {len(data)} bytes exceeds the {self.config.max_frame_size}-byte limit",
                reason="oversized",
            )
            return
        try:
            frame = decode(data)
        except ProtocolError as exc:
            counters.frame_in("invalid")
            log.debug("invalid frame from %r: %s", session, exc)
            self._error(session, "invalid_message", str(exc))
            return
        counters.frame_in(frame.TYPE or "unknown")
        if not session.authenticated:
            self._receive_unauthenticated(session, frame)
            return
        if type(frame) is EphemeralFrame:
            self._on_ephemeral(session, frame)
        elif isinstance(frame, RequestFrame | SyncFrame):
            self._on_sync(session, frame)
        elif isinstance(frame, AuthFrame):
            self._error(
                session, "already_authenticated", "this connection is already authenticated"
            )
        elif isinstance(frame, DocUnavailableFrame):
            pass  # a peer telling us it lacks a document we never asked for: nothing to do
        else:
            kind = frame.type if isinstance(frame, UnknownFrame) else frame.TYPE
            if kind in _SERVER_ONLY:
                msg = f"{kind!r} frames are sent only by the server"
            else:
                msg = f"unsupported frame type {kind!r}"
            self._error(session, "invalid_message", msg)

    # ------------------------------------------------------------------ auth

    def _receive_unauthenticated(self, session: Connection, frame: Frame) -> None:
        if not isinstance(frame, AuthFrame):
            self._error(session, "not_authenticated", "the first frame must be an auth frame")
            return
        if not self._auth_allowed(session):
            return
        if frame.token is not None:
            user = self.config.user_for_token(frame.token)
            if user is None:
                self._auth_error(session, "invalid_token", "Invalid or expired token")
                return
            self._authenticate(session, user.id, user.name, anonymous=False)
        elif frame.anonymous:
            self._authenticate(session, None, self._names.allocate(), anonymous=True)
        else:
            self._auth_error(session, "missing_credentials", "send a token, or anonymous: true")

    def _auth_allowed(self, session: Connection) -> bool:
        """Refuse every auth attempt from an address whose failed attempts used
        up their allowance (``auth_failure_limit`` per minute, as a burst): a
        token cannot be guessed faster than that, and a flood of bad auths from
        one address is answered with one short frame each."""
        bucket = self._auth_failures.get(session.address)
        if bucket is None:
            return True
        now = self.clock()
        tokens = bucket.tokens(now)
        if tokens >= 1.0:
            return True
        retry = math.ceil((1.0 - tokens) / bucket.rate * 1000) / 1000
        log.debug("auth from %s refused: too many failed attempts", session.address or "?")
        self._error(
            session,
            "rate_limited",
            "too many failed auth attempts from this address",
            retry_after=retry,
        )
        session.outbox.close(1008, "rate_limited")
        return False

    def _auth_error(self, session: Connection, code: str, message: str) -> None:
        log.debug("auth failed for %r: %s", session, code)
        now = self.clock()
        failures = self._auth_failures
        bucket = failures.get(session.address)
        if bucket is None:
            if len(failures) >= MAX_AUTH_FAILURE_ADDRESSES:
                del failures[next(iter(failures))]
            limit = self.config.auth_failure_limit
            bucket = failures[session.address] = TokenBucket.per_minute(limit, now)
        bucket.take(now)
        self.counters.refusal(refusal_reason(code))
        session.outbox.send(encode(AuthErrorFrame(code, message)))
        session.outbox.close(1008, code)

    def _authenticate(
        self, session: Connection, user_id: str | None, name: str, *, anonymous: bool
    ) -> None:
        peer_id = f"peer-{secrets.token_hex(8)}"
        user = UserInfo(user_id, name, anonymous)
        session.authenticated = True
        session.peer_id = peer_id
        session.user_id = user_id
        session.name = name
        session.is_anonymous = anonymous
        session.bucket = TokenBucket.per_minute(self.config.rate_limit, self.clock())
        session.target_suffix = cbor_text(peer_id)
        session.identity_frame = encode(PeerIdentityFrame(peer_id, user))

        out = session.outbox
        if not self._server_presence:
            # What today's upstream server sends: no features, no name.
            wire_user = None if anonymous else {"id": user_id}
            out.send(
                cbor2.dumps(
                    {
                        "type": "auth_ok",
                        "peerId": self.server_peer_id,
                        "clientPeerId": peer_id,
                        "user": wire_user,
                    }
                )
            )
            self._peers[peer_id] = session
            if self.bus is not None:
                self.bus.peer_authenticated(session)
            return
        out.send(encode(AuthOkFrame(self.server_peer_id, peer_id, user, FEATURES)))
        for other in self._peers.values():  # initial sync, in connection order
            out.send(other.identity_frame)
            other.outbox.send(session.identity_frame)
        self._peers[peer_id] = session
        if self.bus is not None:  # then the peers on the other relays
            for frame in self.bus.peer_authenticated(session):
                out.send(frame)
        log.debug("peer %s authenticated as %r (user %s)", peer_id, name, user_id)

    # ------------------------------------------------------------------ documents

    def _check_access(self, session: Connection, doc_id: str) -> bool:
        access = self.config.access(session.user_id, doc_id)
        if access is Access.ALLOWED:
            return True
        if access is Access.NOT_FOUND:
            self._error(
                session, "document_not_found", f"unknown document {doc_id!r}", document_id=doc_id
            )
        else:
            self._error(session, "permission_denied", "Read access required", document_id=doc_id)
        return False

    def _join(self, session: Connection, doc_id: str, *, send_state: bool = True) -> None:
        now = self.clock()
        members = self._docs.get(doc_id)
        if members is not None and session.peer_id in members:
            session.docs[doc_id] = now
        else:
            if not self._check_access(session, doc_id):
                return
            if len(session.docs) >= self.config.max_documents_per_peer:
                self._error(
                    session,
                    "too_many_documents",
                    f"a connection may be present in at most "
                    f"{self.config.max_documents_per_peer} documents",
                    document_id=doc_id,
                )
                return
            if members is None:
                members = self._docs[doc_id] = {}
            if self._server_presence:
                joined = encode(PeerJoinedDocFrame(doc_id, session.peer_id))
                for other in members.values():
                    other.outbox.send(joined)
            members[session.peer_id] = session
            session.docs[doc_id] = now
            if self.bus is not None:
                self.bus.joined(doc_id, session)
        if send_state and self._server_presence:
            peers = tuple(members)
            if self.bus is not None:
                remote = self.bus.presence_state(doc_id, session)
                if remote is None:
                    return  # the bus sends it once it knows who is present elsewhere
                peers = remote + peers  # so the joiner is still listed last
            session.outbox.send(encode(DocPresenceStateFrame(doc_id, peers)))

    def _leave(self, session: Connection, doc_id: str, *, tell_self: bool) -> None:
        if session.docs.pop(doc_id, None) is None:
            return
        members = self._docs[doc_id]
        del members[session.peer_id]
        if not members:
            del self._docs[doc_id]
        if self.bus is not None:
            self.bus.left(doc_id, session)
        if not self._server_presence:
            return
        left = encode(PeerLeftDocFrame(doc_id, session.peer_id))
        for other in members.values():
            other.outbox.send(left)
        if tell_self:
            # Expiry: the peer may still be alive (a stalled loop), so tell it too;
            # a client that sees itself leave re-joins with a heartbeat.
            session.outbox.send(left)

    # ------------------------------------------------------------------ ephemeral

    def _on_ephemeral(self, session: Connection, frame: EphemeralFrame) -> None:
        try:
            payload = decode_payload(frame.data)
            presence = PresenceMessage.from_payload(payload)
        except ProtocolError as exc:
            self._error(session, "invalid_message", str(exc), document_id=frame.document_id)
            return
        if not self._admit(session, frame):
            return
        doc_id = frame.document_id
        if not self._server_presence:
            if doc_id.startswith(EPHEMERAL_PREFIX):
                return  # upstream's automerge-repo rejects eph: ids: nothing relayed, no error
            presence = None  # upstream relays presence-shaped payloads like any other
        if presence is not None:
            # Only joins and leaves fan out to everyone present; a heartbeat for a
            # document the peer is in just refreshes a timestamp, so it is free.
            refresh = presence.status == "heartbeat" and doc_id in session.docs
            if not refresh and not self._control_allowed(session, doc_id):
                return
            if presence.document_id != doc_id:
                self._error(
                    session,
                    "invalid_message",
                    "presence documentId does not match the envelope's documentId",
                    document_id=doc_id,
                )
            elif presence.status == "leave":
                self._leave(session, doc_id, tell_self=False)
            else:
                # A heartbeat for a document the peer is not in counts as a join.
                self._join(
                    session,
                    doc_id,
                    send_state=presence.status == "join" or doc_id not in session.docs,
                )
            return
        if not self._check_access(session, doc_id):
            return
        bucket = session.bucket
        assert bucket is not None
        wait = bucket.take(self.clock())
        if wait > 0:
            self._error(
                session,
                "rate_limited",
                f"more than {self.config.rate_limit} ephemeral messages per minute",
                retry_after=math.ceil(wait * 1000) / 1000,
            )
            return
        if doc_id in session.docs:
            session.docs[doc_id] = self.clock()  # activity keeps presence alive
        self._relay_ephemeral(session, frame)

    def _control_allowed(self, session: Connection, doc_id: str) -> bool:
        now = self.clock()
        bucket = session.control.get(doc_id)
        if bucket is None:
            bucket = session.control[doc_id] = TokenBucket(PRESENCE_RATE, PRESENCE_BURST, now)
        wait = bucket.take(now)
        if wait <= 0:
            return True
        self._error(
            session,
            "rate_limited",
            f"more than {PRESENCE_BURST} presence messages in a row for this document",
            document_id=doc_id,
            retry_after=math.ceil(wait * 1000) / 1000,
        )
        return False

    def _admit(self, session: Connection, frame: EphemeralFrame) -> bool:
        """Gossip and replay filter: True if the frame is new and really from ``session``."""
        verdict = self._sessions.admit(session, frame.session_id, frame.count)
        if verdict is Admission.ACCEPTED:
            return True
        if verdict is Admission.TOO_MANY_SESSIONS:
            self._error(
                session,
                "too_many_sessions",
                f"a connection may use at most {MAX_SESSIONS_PER_CONNECTION} sessionIds",
            )
        # Otherwise a stock peer forwarding someone's message back to us, or a
        # copy we already relayed: dropped without a word (docs/protocol.md).
        return False

    def _relay_ephemeral(self, session: Connection, frame: EphemeralFrame) -> None:
        self.counters.relayed_local += 1
        if self.bus is not None:
            self.bus.relayed(frame.document_id, session, frame.count, frame.session_id, frame.data)
        members = self._docs.get(frame.document_id)
        if not members:
            return
        prefix = _ephemeral_prefix(
            session.target_suffix, frame.document_id, frame.count, frame.session_id, frame.data
        )
        for other in members.values():
            if other is not session:
                other.outbox.send_ephemeral(prefix, other.target_suffix)

    # ------------------------------------------------------------------ cluster seam

    def attach_bus(self, bus: Bus) -> None:
        """Link this core to the other relays of a cluster (before any connection)."""
        if self._connections:
            raise RuntimeError("attach the bus before the relay accepts connections")
        self.bus = bus

    def members(self, document_id: str) -> Iterable[Connection]:
        """The local sessions present in a document, in join order."""
        return self._docs.get(document_id, {}).values()

    def deliver_remote(
        self, sender: RemoteSender, document_id: str, count: int, session_id: str, data: bytes
    ) -> bool:
        """A message another relay accepted from ``sender``: apply the gossip
        rule to it here too (so a sessionId stays its first user's across the
        cluster), then deliver it to the local peers present. Its read check and
        rate limit were applied where it entered. True if it was admitted."""
        if self._sessions.admit(sender, session_id, count) is not Admission.ACCEPTED:
            return False
        self.counters.relayed_remote += 1
        members = self._docs.get(document_id)
        if members:
            prefix = _ephemeral_prefix(cbor_text(sender[1]), document_id, count, session_id, data)
            for other in members.values():
                other.outbox.send_ephemeral(prefix, other.target_suffix)
        return True

    def release_remote(self, sender: RemoteSender) -> None:
        """A peer on another relay is gone: its sessionIds become tombstones."""
        self._sessions.release(sender, self.clock())

    # ------------------------------------------------------------------ automerge sync

    def _on_sync(self, session: Connection, frame: RequestFrame | SyncFrame) -> None:
        """A stock automerge-repo peer subscribing to a document: it never sends a
        presence join, so a request/sync counts as one. The relay stores no
        documents, so a request is answered with doc-unavailable."""
        doc_id = frame.document_id
        if not self._server_presence and doc_id.startswith(EPHEMERAL_PREFIX):
            return  # upstream: "Invalid AutomergeUrl", no answer
        self._join(session, doc_id, send_state=doc_id not in session.docs)
        if not isinstance(frame, RequestFrame) or doc_id not in session.docs:
            return
        if self._server_presence:
            reply: Frame = DocUnavailableFrame(self.server_peer_id, session.peer_id, doc_id)
        else:
            # Upstream answers a request with a sync message; with nothing stored,
            # the empty document's own sync message is the truthful answer.
            reply = SyncFrame(self.server_peer_id, session.peer_id, doc_id, frame.data)
        session.outbox.send(encode(reply))

    # ------------------------------------------------------------------ errors

    def _error(
        self,
        session: Connection,
        code: str,
        message: str,
        *,
        document_id: str | None = None,
        retry_after: float | None = None,
        reason: str | None = None,
    ) -> None:
        self.counters.refusal(reason or refusal_reason(code))
        session.outbox.send(encode(ErrorFrame(code, message, document_id, retry_after)))


def _ephemeral_prefix(
    sender: bytes, document_id: str, count: int, session_id: str, data: bytes
) -> bytes:
    """A relayed ephemeral frame up to its ``targetId`` value (``sender`` is the
    CBOR text of the sender's peer id). Encoded once per message, with targetId
    last, so each recipient's id is spliced onto the end: no per-recipient
    re-encoding of the payload."""
    return b"".join(
        (
            _EPH_MAP,
            _K_SENDER,
            sender,
            _K_DOC,
            cbor_text(document_id),
            _K_COUNT,
            cbor_uint(count),
            _K_SESSION,
            cbor_text(session_id),
            _K_DATA,
            cbor_bytes(data),
            _K_TARGET,
        )
    )
