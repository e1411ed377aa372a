"""The relay's rules as a state machine: bytes in, frames out through an outbox. No I/O.

:class:`RelayCore` holds every connection's identity, every document's presence,
the rate-limit buckets and the gossip bookkeeping, and applies the rules of
``docs/protocol.md`` to each incoming message. It never touches a socket: each
connection hands it an :class:`Outbox`, and the core calls the outbox
synchronously with ready-to-send CBOR frames. The aiohttp layer
(:mod:`ratatoskr_client.server.asyncio.app`) turns those calls into WebSocket frames; the
unit tests use a list.

The clock is injected (``clock``), so TTL expiry and rate limits are testable
without sleeping. The rules are in three parts: :class:`~.auth.AuthRules`
(authentication), :class:`~.documents.DocumentRules` (presence and relaying)
and, here, the connections' life, the dispatch of incoming frames and the
cluster seam.

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
from typing import Final, TypeVar

from ...errors import ProtocolError
from ...protocol import (
    AuthFrame,
    DocUnavailableFrame,
    EphemeralFrame,
    ErrorFrame,
    PeerDisconnectedFrame,
    RequestFrame,
    SessionOwners,
    SyncFrame,
    UnknownFrame,
    cbor_text,
    decode,
    encode,
)
from ...protocol.rates import TokenBucket
from ..config import RelayConfig
from .auth import AuthRules
from .bus import Bus, RemoteSender
from .connection import Connection, LimitBucket, Outbox, RelayStats, Session
from .counters import RelayCounters, refusal_reason
from .documents import DocumentRules, ephemeral_prefix
from .identity import identity_key
from .limits import (
    FLOOD_ALLOWANCE,
    FLOOD_REFILL,
    LIVENESS_FACTOR,
    MAX_AUTH_FAILURE_ADDRESSES,
    MAX_CONNECTION_ADDRESSES,
    MAX_SESSION_TOMBSTONES,
    MAX_SESSIONS_PER_CONNECTION,
    PRESENCE_BURST,
    PRESENCE_DOC_BURST,
    PRESENCE_DOC_RATE,
    PRESENCE_HOLD,
    PRESENCE_RATE,
    PRESENCE_WINDOW,
    SESSION_TOMBSTONE_TTL,
)
from .names import NameAllocator
from .visibility import HeldChanges

__all__ = [
    "MAX_AUTH_FAILURE_ADDRESSES",
    "MAX_CONNECTION_ADDRESSES",
    "MAX_SESSIONS_PER_CONNECTION",
    "MAX_SESSION_TOMBSTONES",
    "PRESENCE_BURST",
    "PRESENCE_DOC_BURST",
    "PRESENCE_DOC_RATE",
    "PRESENCE_HOLD",
    "PRESENCE_RATE",
    "PRESENCE_WINDOW",
    "SESSION_TOMBSTONE_TTL",
    "Bus",
    "Connection",
    "Outbox",
    "RelayCore",
    "RelayStats",
    "RemoteSender",
    "Session",
]

log = logging.getLogger("ratatoskr_client.server")

_Bucket = TypeVar("_Bucket", bound=TokenBucket)

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


class RelayCore(AuthRules, DocumentRules):
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
        #: ephemeral sessionId -> the connection that owns it, and its identity (the
        #: gossip rule); senders on other relays are keyed by (node id, peer id)
        self._sessions: SessionOwners[Connection | RemoteSender] = SessionOwners(
            max_per_sender=MAX_SESSIONS_PER_CONNECTION,
            tombstone_ttl=SESSION_TOMBSTONE_TTL,
            max_tombstones=MAX_SESSION_TOMBSTONES,
        )
        #: what anonymous identities are hashed with (the same on every relay of a cluster)
        self._identity_key = identity_key(config.redis_url)
        #: source address -> bucket of failed auth attempts (see _auth_allowed)
        self._auth_failures: dict[str, TokenBucket] = {}
        #: source address -> bucket of anonymous connections (see _connection_allowed)
        self._connection_budget: dict[str, TokenBucket] = {}
        self._server_presence = config.server_presence
        #: identities go only to peers sharing a document (see .visibility)
        self._scoped = config.server_presence and config.identity_scope == "document"
        #: documents with presence changes held for the next flush (see .visibility)
        self._held: dict[str, HeldChanges] = {}
        #: document id -> its presence budget (see .visibility)
        self._doc_budget: dict[str, TokenBucket] = {}
        #: document id -> peer id -> when its last two changes there were
        #: announced (kept for PRESENCE_WINDOW; see .visibility)
        self._recent: dict[str, dict[str, tuple[float, float]]] = {}
        #: set by the I/O layer: called with the time at which :meth:`flush_held`
        #: must run (held presence changes are due); the core has no timers
        self.wake_at: Callable[[float], None] = _no_wake
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
        conn = Connection(outbox, address, self.clock())
        self._connections.add(conn)
        return conn

    def close(self, conn: Connection) -> None:
        """The connection is gone: remove it from every document (``peer_left_doc``
        each, at once), then announce ``peer_disconnected`` (in document
        scope: to each peer that knew it, right after its last
        ``peer_left_doc``). Safe to call twice."""
        if conn not in self._connections:
            return
        self._connections.discard(conn)
        self.closed_total += 1
        for doc_id in list(conn.docs):
            self._leave(conn, doc_id, tell_self=False, gone=True)
        if conn.held is not None:
            # Leaves that were held: it is still shown there. Announce them now.
            for doc_id in list(conn.held):
                held = self._held.get(doc_id)
                if held is not None and held.pending.pop(conn.peer_id, None) is not None:
                    self._announce_leave(doc_id, conn, gone=True)
                    self._settle_held(doc_id)
            conn.held = None
        self._sessions.release(conn, self.clock())
        conn.control.clear()
        conn.bucket = None
        if conn.authenticated:
            del self._peers[conn.peer_id]
            if conn.is_anonymous:
                self._names.release(conn.name)
            if self.bus is not None:
                self.bus.peer_closed(conn)
            if self._server_presence and not self._scoped:
                frame = encode(PeerDisconnectedFrame(conn.peer_id))
                for other in self._peers.values():
                    other.outbox.send(frame)
            log.debug("peer %s (%s) disconnected", conn.peer_id, conn.name)

    def expire(self, now: float | None = None) -> int:
        """Remove every membership whose last join/heartbeat is older than the
        presence TTL, as if the peer had left. Returns how many were removed."""
        now = self.clock() if now is None else now
        self._forget_idle(now)
        if not self._server_presence:
            return 0  # like upstream: a subscription lasts as long as the connection
        deadline = now - self.config.presence_ttl
        removed = 0
        for conn in list(self._peers.values()):
            stale = [doc for doc, seen in conn.docs.items() if seen < deadline]
            for doc_id in stale:
                log.debug("presence of %s in %r expired", conn.peer_id, doc_id)
                self._leave(conn, doc_id, tell_self=True)
                removed += 1
        return removed

    def check_liveness(self, now: float | None = None) -> int:
        """The liveness rule: a connection from which no complete frame (a pong
        included) has arrived for ``ping_interval`` is pinged; one silent for
        ``LIVENESS_FACTOR`` (1.5) x ``ping_interval`` is closed, whatever bytes
        of an unfinished frame trickle in. Call it at least every
        ``ping_interval / 10`` (the app's housekeeping does); a frame's arrival
        is noted by the next call, so the deadline counts from at most one call
        after it. Returns how many connections were closed."""
        now = self.clock() if now is None else now
        interval = self.config.ping_interval
        deadline = now - interval * LIVENESS_FACTOR
        ping_before = now - interval
        closed = 0
        for conn in self._connections:
            if conn.heard:
                conn.heard = False
                conn.heard_at = now
                conn.pinged = False
            elif conn.heard_at <= deadline:
                log.debug("closing %r: no frame for %g s", conn, now - conn.heard_at)
                self.counters.unresponsive_disconnects += 1
                conn.heard_at = math.inf  # closed once, even if the app lags behind
                conn.outbox.close(1008, "ping_timeout")
                closed += 1
            elif conn.heard_at <= ping_before and not conn.pinged:
                conn.pinged = True
                conn.outbox.ping()
        return closed

    def alive(self, conn: Connection) -> None:
        """A complete frame that is not a message arrived from ``conn`` (a ping
        or a pong): it counts for the liveness rule."""
        conn.heard = True

    def _forget_idle(self, now: float) -> None:
        """Drop bookkeeping that has served its purpose: tombstones past their TTL
        and presence-control buckets that are full again."""
        self._sessions.expire(now)
        for conn in self._peers.values():
            if conn.control:
                _drop_full(conn.control, now)
        if self._auth_failures:
            _drop_full(self._auth_failures, now)
        if self._connection_budget:
            _drop_full(self._connection_budget, now)
        if self._recent:
            for doc_id in list(self._recent):
                recent = self._recent[doc_id]
                for pid in [p for p, t in recent.items() if now - t[1] >= PRESENCE_WINDOW]:
                    del recent[pid]
                if not recent:
                    del self._recent[doc_id]
        if self._doc_budget:
            held = self._held
            budgets = self._doc_budget
            for doc_id in [d for d, b in budgets.items() if d not in held]:
                if budgets[doc_id].tokens(now) >= budgets[doc_id].capacity:
                    del budgets[doc_id]

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
            connection_addresses=len(self._connection_budget),
        )

    def presence(self, document_id: str) -> tuple[str, ...]:
        """Peer ids present in a document, in join order (who receives its
        messages; see :meth:`presence_shown` for what its members were told)."""
        return tuple(self._docs.get(document_id, ()))

    def peers(self) -> Iterable[Connection]:
        """Authenticated connections, in connection order."""
        return self._peers.values()

    # ------------------------------------------------------------------ input

    def receive_text(self, conn: Connection) -> None:
        """A text WebSocket message arrived: always bad input."""
        conn.heard = True
        self.counters.frame_in("text")
        self._error(conn, "invalid_message", "text frames are not supported; send binary CBOR")

    def receive(self, conn: Connection, data: bytes) -> None:
        """Apply one binary WebSocket message from ``conn``."""
        conn.heard = True
        counters = self.counters
        if len(data) > self.config.max_frame_size:
            counters.frame_in("oversized")
            self._error(
                conn,
                "invalid_message",
                f"frame of {len(data)} bytes exceeds the {self.config.max_frame_size}-byte limit",
                reason="oversized",
            )
            return
        try:
            frame = decode(data)
        except ProtocolError as exc:
            counters.frame_in("invalid")
            log.debug("invalid frame from %r: %s", conn, exc)
            self._error(conn, "invalid_message", str(exc))
            return
        counters.frame_in(frame.TYPE or "unknown")
        if not conn.authenticated:
            self._receive_unauthenticated(conn, frame)
            return
        if type(frame) is EphemeralFrame:
            self._on_ephemeral(conn, frame)
        elif isinstance(frame, RequestFrame | SyncFrame):
            self._on_sync(conn, frame)
        elif isinstance(frame, AuthFrame):
            self._error(conn, "already_authenticated", "this connection is already authenticated")
        elif isinstance(frame, DocUnavailableFrame):
            pass  # a peer telling us it lacks a document we never asked for: nothing to do
        else:
            kind = frame.type if isinstance(frame, UnknownFrame) else frame.TYPE
            if kind in _SERVER_ONLY:
                msg = f"{kind!r} frames are sent only by the server"
            else:
                msg = f"unsupported frame type {kind!r}"
            self._error(conn, "invalid_message", msg)

    # ------------------------------------------------------------------ cluster seam

    def attach_bus(self, bus: Bus) -> None:
        """Link this core to the other relays of a cluster (before any connection)."""
        if self._connections:
            raise RuntimeError("attach the bus before the relay accepts connections")
        self.bus = bus

    def members(self, document_id: str) -> Iterable[Connection]:
        """The local connections present in a document, in join order."""
        return self._docs.get(document_id, {}).values()

    def deliver_remote(
        self,
        sender: RemoteSender,
        document_id: str,
        count: int,
        session_id: str,
        data: bytes,
        identity: str | None = None,
        introduce: bytes | None = None,
    ) -> bool:
        """A message another relay accepted from ``sender`` (whose identity key,
        as announced by its relay, is ``identity``; None if its relay announced
        none: then it is its own): apply the gossip rule to it here too (so a
        sessionId stays its owner's across the cluster), then deliver it to the
        local peers present. Its read check and rate limit were applied where
        it entered. ``introduce``: the sender's identity frame, when it is not
        present in the document here (document scope): each member that does
        not know it gets it first. True if it was admitted."""
        if not self._sessions.admit(sender, session_id, count, identity).admitted:
            return False
        self.counters.relayed_remote += 1
        members = self._docs.get(document_id)
        if members:
            bus = self.bus
            if introduce is not None and bus is not None:
                for other in members.values():
                    if not bus.knows(other, sender[1], None):
                        other.outbox.send(introduce)
            prefix = ephemeral_prefix(cbor_text(sender[1]), document_id, count, session_id, data)
            for other in members.values():
                other.outbox.send_ephemeral(prefix, other.target_suffix)
        return True

    def release_remote(self, sender: RemoteSender) -> None:
        """A peer on another relay is gone: its sessionIds become tombstones."""
        self._sessions.release(sender, self.clock())

    # ------------------------------------------------------------------ errors

    def _error(
        self,
        conn: Connection,
        code: str,
        message: str,
        *,
        document_id: str | None = None,
        retry_after: float | None = None,
        reason: str | None = None,
    ) -> None:
        """Send an error frame and count the refusal. ``retry_after`` (seconds)
        goes out rounded up to the millisecond: a client that waits that long
        finds its token."""
        if retry_after is not None:
            retry_after = math.ceil(retry_after * 1000) / 1000
        self.counters.refusal(reason or refusal_reason(code))
        conn.outbox.send(encode(ErrorFrame(code, message, document_id, retry_after)))

    def _rate_limited(
        self, conn: Connection, bucket: LimitBucket, wait: float, document_id: str | None = None
    ) -> None:
        """A frame refused by ``bucket`` (the message rate, or one document's
        presence bound), whose next token comes in ``wait`` seconds.

        The first refusal is answered with ``rate_limited`` and ``retryAfter``;
        until that time has passed, further refusals by the same bucket are
        dropped unanswered (a counter increment, no encoding, no frame). A
        peer that obeys ``retryAfter`` only sends what was already in flight;
        one that sends more than FLOOD_ALLOWANCE such frames (refilled at
        FLOOD_REFILL per second) is told why and closed."""
        now = self.clock()
        if now >= bucket.told_until:
            bucket.told_until = now + wait
            if document_id is None:
                message = f"more than {self.config.rate_limit} ephemeral messages per minute"
            else:
                message = f"more than {PRESENCE_BURST} presence messages in a row for this document"
            self._error(conn, "rate_limited", message, document_id=document_id, retry_after=wait)
            return
        self.counters.unanswered += 1
        flood = conn.flood
        if flood is None:
            flood = conn.flood = TokenBucket(FLOOD_REFILL, FLOOD_ALLOWANCE, now)
        if flood.take(now) > 0:
            log.debug("closing %r: it kept sending after rate_limited", conn)
            self.counters.flood_disconnects += 1
            self._error(
                conn,
                "rate_limited",
                "kept sending after rate_limited: connection closed",
                document_id=document_id,
                retry_after=wait,
            )
            conn.outbox.close(1008, "rate_limited")


def _no_wake(when: float) -> None:
    """The default :attr:`RelayCore.wake_at`: nobody flushes on time (tests
    call :meth:`RelayCore.flush_held` themselves)."""


def _drop_full(buckets: dict[str, _Bucket], now: float) -> None:
    """Forget the buckets that are full again: a new one would be the same."""
    for key in [k for k, b in buckets.items() if b.tokens(now) >= b.capacity]:
        del buckets[key]
