"""The relay's rules as a state machine: bytes and time in, frames out through an outbox. No I/O.

:class:`RelayCore` applies the rules of ``docs/protocol.md`` to every
connection of one relay. It never touches a socket nor a timer: each
connection hands it an :class:`Outbox`, which the core calls synchronously
with ready-to-send CBOR frames (or to close the connection, or to ping it);
time comes from the injected ``clock``, and the core says when it must be
called again (:meth:`RelayCore.on_timer`, :attr:`RelayCore.wake_at`). The
aiohttp layer (:mod:`ratatoskr_client.server.asyncio.app`) turns the outbox
calls into WebSocket frames and keeps one timer; the unit tests use lists and a
fake clock.

The core is the composition of parts that each own their state:

* :class:`~.auth.Authentication` (``core.auth``): the ``auth`` frame, the auth
  deadline, the per-address allowances, and the table of authenticated peers;
* :class:`~.documents.Documents` (``core.documents``): presence in documents,
  its expiry, the gossip table, relaying and the one fan-out loop;
* :class:`~.visibility.Visibility` (``core.visibility``): who is told about
  whom, and when (identity scope, the presence budget);
* :class:`~.replies.Replies` (``core.replies``): the error answers and their counts.

What is left here is the connections' life (open, close, the liveness rule),
the dispatch of incoming frames, the timer rules and the cluster seam.

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
from typing import Any, Final

from ...errors import ProtocolError
from ...protocol import (
    AuthFrame,
    DocUnavailableFrame,
    EphemeralFrame,
    ErrorFrame,
    RequestFrame,
    SyncFrame,
    UnknownFrame,
    UserInfo,
    decode,
    encode,
)
from ...protocol.constants import EPHEMERAL_PREFIX
from ...protocol.writers import ephemeral_prefix, target_suffix
from ..config import Access, RelayConfig
from .auth import Authentication
from .bus import Bus, Member, RemoteSender
from .connection import Connection, Outbox, RelayStats
from .counters import RelayCounters
from .documents import Documents, fan_out
from .identities import Lookup, Permissions
from .limits import (
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
from .replies import Replies
from .resume import DETACHED, Claim, HandedPeer, HandedState, Resumption
from .roster import Roster
from .visibility import Visibility

__all__ = [
    "DISCONNECTED_BY_ADMIN",
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
    "SWEEP_MAX_INTERVAL",
    "Bus",
    "Connection",
    "Outbox",
    "RelayCore",
    "RelayStats",
    "RemoteSender",
]

log = logging.getLogger("ratatoskr_client.server")

#: Frames a connection may send while the relay waits for a look-up about it
#: (its auth token, a document's permission); beyond, each is refused.
MAX_PARKED_FRAMES: Final = 100

#: The longest time between two runs of a periodic sweep (presence expiry, the
#: liveness rule); each runs every tenth of its own period when that is shorter.
SWEEP_MAX_INTERVAL: Final = 1.0

#: The error code of a connection the operator closed (:meth:`RelayCore.disconnect`).
DISCONNECTED_BY_ADMIN: Final = "disconnected_by_admin"

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


class RelayCore:
    """Applies the wire contract to every connection of one relay.

    ``clock`` is the relay's time (seconds, monotonic): every rule that
    involves time reads it, so a test can pass a
    :class:`~ratatoskr_client.server.core.clock.ManualClock` and move time by hand.
    """

    def __init__(
        self,
        config: RelayConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        names: NameAllocator | None = None,
        server_peer_id: str | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        #: Unix time, which token ``exp`` claims are in
        self.wall_clock = wall_clock
        #: set by the I/O layer: called with a look-up the core needs answered
        #: (:meth:`answer` brings the answer back); see :mod:`.identities`
        self.request: Callable[[Lookup], None] = _no_request
        #: look-up -> the connections whose frames wait for it
        self._inflight: dict[Lookup, list[Connection]] = {}
        self.server_peer_id = server_peer_id or f"relay-{secrets.token_hex(6)}"
        #: traffic counts, for monitoring
        self.counters = RelayCounters()
        #: connections closed since the core started (for memory housekeeping)
        self.closed_total = 0
        #: the cluster link (see :meth:`attach_bus`); None for a single relay
        self.bus: Bus | None = None
        #: set by the I/O layer: called with a time at which :meth:`on_timer`
        #: must run: held presence changes are due then, or an auth deadline
        #: earlier than the time :meth:`on_timer` last returned. The core has
        #: no timers.
        self.wake_at: Callable[[float], None] = _no_wake
        self._connections: set[Connection] = set()
        # The tables the parts share, each written by one of them only:
        # authenticated connections by peer id, in connection order (auth's), and
        # document id -> present connections by peer id, in join order (documents').
        peers: dict[str, Connection] = {}
        members: dict[str, dict[str, Connection]] = {}
        self.replies = Replies(config, clock, self.counters)
        #: who is where, since when, as which user, sharing what (roster.py):
        #: kept when the admin API or webhooks are configured (else empty)
        self.roster = Roster(
            clock, active=config.admin_token is not None or config.webhook_url is not None
        )
        self.visibility = Visibility(config, clock, members, peers, self._wake)
        self.documents = Documents(
            config,
            clock,
            self.counters,
            self.replies,
            self.visibility,
            members,
            peers,
            self.server_peer_id,
            self.roster,
        )
        #: the resume secrets and the held peers (docs/protocol.md, "Resuming")
        self.resumption = Resumption(config.resume_grace if config.server_presence else 0.0)
        self.auth = Authentication(
            config,
            clock,
            self.counters,
            self.replies,
            self.visibility,
            peers,
            names=names,
            server_peer_id=self.server_peer_id,
            resumption=self.resumption,
        )
        self.auth.on_resumed = self._resumed
        self.auth.wake_claims = self._wake
        self.auth.adopt_documents = self.documents.adopt
        self._peers = peers
        self._members = members
        self.permissions = Permissions(config)
        self.identities = self.auth.identities
        self.auth.wall = wall_clock
        self.auth.wait = self.documents.wait = self.wait
        self.documents.permissions = self.permissions if self.permissions.remote else None
        # The hot path's dispatch, bound once.
        self._on_ephemeral = self.documents.on_ephemeral
        self._max_frame_size = config.max_frame_size
        # The periodic sweeps: often enough that a stale peer is gone within
        # TTL + 1 s (or TTL x 1.1), and a dead or trickling socket within
        # 1.5 x ping_interval + 2 sweeps.
        now = clock()
        self._expiry_every = min(SWEEP_MAX_INTERVAL, config.presence_ttl / 10)
        self._liveness_every = min(SWEEP_MAX_INTERVAL, config.ping_interval / 10)
        self._expiry_due = now + self._expiry_every
        self._liveness_due = now + self._liveness_every
        #: the earliest time the I/O layer was asked to call on_timer at
        self._next_due = min(self._expiry_due, self._liveness_due)
        # What the operator publishes (publish): the relay's own sender id and
        # session, and the count of its messages.
        self._server_suffix = target_suffix(self.server_peer_id)
        self._server_session = f"server-{secrets.token_hex(8)}"
        self._published = 0

    def _wake(self, when: float) -> None:
        if when < self._next_due:
            self._next_due = when
        self.wake_at(when)

    # ------------------------------------------------------------------ lifecycle

    def open(self, outbox: Outbox, address: str = "") -> Connection:
        """Register a new, unauthenticated connection from ``address`` (the
        peer's IP address; per-address limits apply to it). Its auth deadline
        starts now."""
        now = self.clock()
        conn = Connection(outbox, address, now)
        self._connections.add(conn)
        deadline = self.auth.opened(conn, now)
        if deadline < self._next_due:  # (an auth_timeout shorter than the sweeps')
            self._next_due = deadline
            self.wake_at(deadline)
        return conn

    def close(self, conn: Connection, *, clean: bool = True, outbox: Outbox | None = None) -> None:
        """The connection is gone: remove it from every document (``peer_left_doc``
        each, at once), then announce ``peer_disconnected`` (in document
        scope: to each peer that knew it, right after its last
        ``peer_left_doc``). Safe to call twice.

        ``clean``: the peer closed it with a close frame. A resumable peer
        whose connection is lost otherwise is held for ``resume_grace``
        instead (:mod:`.resume`): nobody is told anything unless the grace
        runs out. ``outbox``: the socket that closed; if the connection has
        moved to another socket meanwhile (it was resumed), nothing happens."""
        if outbox is not None and conn.outbox is not outbox:
            return
        if conn not in self._connections:
            return
        self._connections.discard(conn)
        if not clean and conn.authenticated and self.resumption.hold(conn, self.clock()):
            log.debug("holding %r for %g s", conn, self.resumption.grace)
            self._wake(self.resumption.next_deadline())
            return
        self._finish(conn)

    def _finish(self, conn: Connection) -> None:
        """The peer is gone for good."""
        self.closed_total += 1
        self.resumption.forget(conn)
        self.documents.closed(conn)
        self.auth.closed(conn)

    def _resumed(self, new: Connection, peer: Connection) -> None:
        """``new`` resumed ``peer``: its socket carries ``peer`` from now on.
        Its client starts a new sessionId there, as on any connection: the
        old ones become tombstones (their late copies stay dropped)."""
        self._connections.discard(new)
        self._connections.add(peer)
        self.documents.sessions.release(peer, self.clock())

    # ------------------------------------------------------------------ resuming across relays

    def claim_requested(
        self, node: str, request: str, peer_id: str, secret_digest: bytes, user: str | None
    ) -> None:
        """Relay ``node`` of the cluster asks for our peer ``peer_id``: a
        client presented it a secret whose SHA-256 is ``secret_digest``, with
        credentials verified as ``user`` (None: anonymous). The same rule as
        a resume here (:mod:`.resume`): the peer must be held or connected
        here, the same user (or anonymous for an anonymous peer) and the
        digest its current secret's (compared in constant time). Then it is
        handed over: it leaves here unannounced, and ``node`` gets it.
        Otherwise ``node`` is told no, and its client is a new peer."""
        bus = self.bus
        if bus is None:
            return
        resumption = self.resumption
        peer = resumption.take(peer_id, secret_digest, user, user is None, self._peers.get(peer_id))
        if peer is None:
            log.debug("refused node %s the peer %s", node, peer_id)  # (counted there)
            bus.hand_over(node, request, None)
            return
        states = self.visibility.states
        handed = []
        for doc_id in peer.docs:
            entry = states.entry(doc_id, peer_id)
            if entry is not None and entry.state:
                handed.append(HandedState(doc_id, entry.session_id, entry.count, dict(entry.state)))
        snapshot = HandedPeer(
            peer_id,
            UserInfo(peer.user_id, peer.name, peer.is_anonymous),
            peer.identity,
            tuple(peer.docs),
            tuple(handed),
        )
        # Gone from here for good, but not a leave: it is node's peer now.
        old = peer.outbox
        peer.outbox = DETACHED
        self._connections.discard(peer)
        self.closed_total += 1
        resumption.forget(peer)
        docs = self.documents.hand_off(peer)
        self.auth.handed_off(peer)
        bus.handed_off(peer, node, docs)
        bus.hand_over(node, request, snapshot)
        self.counters.resume("handed_over")
        if old is not DETACHED:
            # Its old socket is still open here (the relay has not noticed it
            # died): it carries nothing of the peer any more.
            old.close(1000, "resumed")
        log.debug("handed peer %s (%s) over to node %s", peer_id, peer.name, node)

    def claim_answered(self, request: str, peer: HandedPeer | None) -> None:
        """The answer to a resume this relay asked another relay for: the
        peer handed over, or None (refused). Nobody may be lost without a
        leave, so a handed-over peer whose claim is over is still adopted:
        if the connection that claimed it closed meanwhile, it is held here
        as if that connection had been lost (its client may resume it again,
        with the same secret, within the grace); if the claim timed out (its
        client is a new peer by then), it leaves at once."""
        claim = self.resumption.answered(request)
        if claim is not None and claim.conn in self._connections:
            if peer is None:
                self.counters.resume("refused")
            self._settle_claim(claim, peer)
            return
        if peer is None:
            return
        orphan = Connection(DETACHED, "", self.clock())
        self.auth.adopt_quietly(orphan, peer)
        if claim is not None and self.resumption.hold_handed(
            orphan, claim.secret_digest, self.clock()
        ):
            log.debug("handover of %s after its connection closed: held", peer.peer_id)
            self._wake(self.resumption.next_deadline())
            return
        log.debug("late handover of %s: it leaves", peer.peer_id)
        self.counters.resume("late")
        self._finish(orphan)

    def _settle_claim(self, claim: Claim, peer: HandedPeer | None) -> None:
        """A claim is answered (``peer``) or timed out (None): the connection
        is that peer, or a new one; then its frames parked meanwhile are
        handled (the first was its ``auth``)."""
        conn = claim.conn
        frames = conn.parked or []
        conn.parked = None
        conn.waiting = None
        self.auth.claim_answered(claim, peer)
        rest = frames[1:]
        for i, data in enumerate(rest):
            self.receive(conn, data)
            parked: list[bytes] | None = conn.parked  # (receive() may have set it)
            if parked is not None:  # waits again: the rest stays behind it
                parked.extend(rest[i + 1 :])
                break

    # ------------------------------------------------------------------ time

    def on_timer(self, now: float | None = None) -> float:
        """Run every timer rule that is due at ``now`` (default: the clock):
        the liveness rule and presence expiry (each every tenth of its period,
        at most every :data:`SWEEP_MAX_INTERVAL` (1) seconds), the auth deadlines
        and the held presence changes (each exactly when due). Returns when to
        call again; :attr:`wake_at` says when that moves earlier."""
        now = self.clock() if now is None else now
        if now >= self._liveness_due:
            self._liveness_due = now + self._liveness_every
            self.check_liveness(now)
        if now >= self._expiry_due:
            self._expiry_due = now + self._expiry_every
            self.expire(now)
        auth = self.auth
        if auth.next_deadline() <= now:
            auth.check_deadlines(now)
        visibility = self.visibility
        flush = visibility.flush_held(now) if visibility.held_documents() else math.inf
        resumption = self.resumption
        if resumption.next_deadline() <= now:
            for conn in resumption.due(now):
                log.debug("%r was not resumed within %g s", conn, resumption.grace)
                self._finish(conn)
        if resumption.next_claim_deadline() <= now:
            for claim in resumption.claims_due(now):
                if claim.conn in self._connections:  # (else it closed while it waited)
                    log.debug("no answer for the resume of %r: a new peer", claim.conn)
                    self.counters.resume("timed_out")
                    self._settle_claim(claim, None)
        due = min(
            self._liveness_due,
            self._expiry_due,
            auth.next_deadline(),
            flush,
            resumption.next_deadline(),
            resumption.next_claim_deadline(),
        )
        self._next_due = due
        return due

    def expire(self, now: float | None = None) -> int:
        """Remove every membership whose last join/heartbeat is older than the
        presence TTL, as if the peer had left; drop the bookkeeping that has
        served its purpose. Returns how many memberships were removed."""
        now = self.clock() if now is None else now
        self.documents.forget_idle(now)
        self.auth.forget_idle(now)
        if self.permissions.remote:
            self._revalidate(now)
        self.visibility.forget_idle(now)
        return self.documents.expire(now)

    def check_liveness(self, now: float | None = None) -> int:
        """The liveness rule: a connection from which no complete frame (a pong
        included) has arrived for ``ping_interval`` is pinged; one silent for
        ``LIVENESS_FACTOR`` (1.5) x ``ping_interval`` is closed, whatever bytes
        of an unfinished frame trickle in. :meth:`on_timer` runs it every
        ``ping_interval / 10`` (at most every second); a frame's arrival is
        noted by the next run, so the deadline counts from at most one run
        after it. Returns how many connections were closed."""
        now = self.clock() if now is None else now
        interval = self.config.ping_interval
        deadline = now - interval * LIVENESS_FACTOR
        ping_before = now - interval
        closed = 0
        auth = self.auth
        for conn in self._connections:
            if conn.expires <= now:
                auth.check_expiry(conn, now)
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

    # ------------------------------------------------------------------ queries

    def stats(self) -> RelayStats:
        """Current table sizes (for monitoring and leak tests)."""
        sessions = self.documents.sessions
        return RelayStats(
            connections=len(self._connections),
            peers=len(self._peers),
            documents=len(self._members),
            memberships=sum(len(m) for m in self._members.values()),
            gossip_sessions=len(sessions),
            session_tombstones=sessions.tombstones,
            rate_buckets=sum(1 for s in self._connections if s.bucket is not None),
            anonymous_names=len(self.auth.names),
            auth_failure_addresses=self.auth.failure_addresses(),
            connection_addresses=self.auth.connection_addresses(),
        )

    def presence(self, document_id: str) -> tuple[str, ...]:
        """Peer ids present in a document, in join order (who receives its
        messages; see :meth:`presence_shown` for what its members were told)."""
        return tuple(self._members.get(document_id, ()))

    def users(self, document_id: str) -> dict[str, tuple[str, ...]]:
        """The local peers present in a document grouped by user: user id (for
        an anonymous peer, its peer id) -> its peer ids, in join order. A
        resumed peer is the same peer throughout: it never leaves nor joins."""
        users: dict[str, list[str]] = {}
        for peer_id, conn in self._members.get(document_id, {}).items():
            key = conn.user_id if conn.user_id is not None else peer_id
            users.setdefault(key, []).append(peer_id)
        return {key: tuple(ids) for key, ids in users.items()}

    def peer_states(self, document_id: str) -> dict[str, dict[str, Any]]:
        """Peer id -> the latest per-peer state (automerge-repo ``Presence``)
        the relay holds for it in a document (a copy; what joiners are replayed)."""
        return self.visibility.states.state(document_id)

    def away(self) -> tuple[str, ...]:
        """Peer ids held after an unclean drop, waiting to be resumed (still
        present in their documents for everyone: see :mod:`.resume`)."""
        return tuple(self.resumption.held)

    def presence_shown(self, document_id: str) -> tuple[str, ...]:
        """Local peer ids present in a document as its members were told, in
        join order (differs from :meth:`presence` only while changes are held)."""
        return self.visibility.presence_shown(document_id)

    def held_documents(self) -> int:
        """Documents with presence changes held for the next flush."""
        return self.visibility.held_documents()

    def flush_held(self, now: float | None = None) -> float:
        """Announce the held presence changes that are due (:meth:`on_timer`
        does it when they are). Returns when to call again (``inf``: nothing
        is held)."""
        return self.visibility.flush_held(now)

    def peers(self) -> Iterable[Connection]:
        """Authenticated connections, in connection order."""
        return self._peers.values()

    def members(self, document_id: str) -> Iterable[Connection]:
        """The local connections present in a document, in join order."""
        return self._members.get(document_id, {}).values()

    def peer(self, peer_id: str) -> Connection | None:
        """The authenticated local connection ``peer_id``, if any."""
        return self._peers.get(peer_id)

    # ------------------------------------------------------------------ the operator

    def disconnect(self, peer_id: str, reason: str, retry_after: float | None = None) -> bool:
        """The operator closes the local connection ``peer_id``: it is sent
        the error ``disconnected_by_admin`` with ``reason`` as its message and
        then closed (1008, ``disconnected_by_admin``). ``retry_after``: the
        client may reconnect after that many seconds; None: it must not
        reconnect (``docs/protocol.md``). Its leaves are announced when its
        socket closes, as for any closed connection. False if there is no
        such connection."""
        conn = self._peers.get(peer_id)
        if conn is None:
            return False
        # Gone for good, not dropped: its peer is not held for a resume, so
        # everyone sees it leave now.
        self.resumption.forget(conn)
        conn.outbox.send(encode(ErrorFrame(DISCONNECTED_BY_ADMIN, reason, None, retry_after)))
        conn.outbox.close(1008, DISCONNECTED_BY_ADMIN)
        return True

    def disconnect_user(
        self, user_id: str, reason: str, retry_after: float | None = None
    ) -> tuple[str, ...]:
        """:meth:`disconnect` every local connection of the user ``user_id``
        (anonymous peers have no user: disconnect them one by one). Returns
        their peer ids."""
        peers = tuple(
            c.peer_id for c in self._peers.values() if c.user_id == user_id and not c.is_anonymous
        )
        for peer_id in peers:
            self.disconnect(peer_id, reason, retry_after)
        return peers

    def publish(self, document_id: str, data: bytes) -> int:
        """The operator publishes the encoded payload ``data`` into
        ``document_id``: every local peer present receives it as an ephemeral
        message whose ``senderId`` is this relay's peer id (what ``auth_ok``
        named the server; clients tell the server's messages by it), in a
        session of the relay's own. Not rate-limited, not subject to the
        gossip rule (it comes from no connection). Returns how many peers it
        was written to."""
        self._published += 1
        members = self._members.get(document_id)
        if not members:
            return 0
        self.counters.relayed_local += 1
        fan_out(
            members,
            ephemeral_prefix(
                self._server_suffix, document_id, self._published, self._server_session, data
            ),
        )
        return len(members)

    # ------------------------------------------------------------------ input

    def receive_text(self, conn: Connection) -> None:
        """A text WebSocket message arrived: always bad input."""
        conn.heard = True
        self.counters.frame_in("text")
        self.replies.error(
            conn, "invalid_message", "text frames are not supported; send binary CBOR"
        )

    def receive(self, conn: Connection, data: bytes) -> None:
        """Apply one binary WebSocket message from ``conn``.

        Never raises: a frame the relay fails on (a bug of its own) costs that
        frame only; it is answered with ``internal_error``, logged and
        counted (:meth:`~ratatoskr_client.server.core.replies.Replies.internal_error`)."""
        conn.heard = True
        counters = self.counters
        parked = conn.parked
        if parked is not None:
            # Waiting for a look-up: kept, in order, and replayed once answered.
            if len(parked) < MAX_PARKED_FRAMES:
                parked.append(data)
            else:
                self.replies.error(
                    conn,
                    "rate_limited",
                    f"more than {MAX_PARKED_FRAMES} frames while the relay checks credentials",
                    retry_after=1.0,
                )
            return
        try:
            if len(data) > self._max_frame_size:
                counters.frame_in("oversized")
                self.replies.error(
                    conn,
                    "invalid_message",
                    f"frame of {len(data)} bytes exceeds the {self._max_frame_size}-byte limit",
                    reason="oversized",
                )
                return
            try:
                frame = decode(data)
            except ProtocolError as exc:
                counters.frame_in("invalid")
                log.debug("invalid frame from %r: %s", conn, exc)
                self.replies.error(conn, "invalid_message", str(exc))
                return
            # (The frame a look-up was answered for was counted when it
            # arrived; the frames parked behind it were not.)
            if conn.answered is None:
                counters.frame_in(frame.TYPE or "unknown")
            if not conn.authenticated:
                self.auth.receive(conn, frame)
            elif type(frame) is EphemeralFrame:
                self._on_ephemeral(conn, frame)
            elif isinstance(frame, RequestFrame | SyncFrame):
                self.documents.on_sync(conn, frame)
            elif isinstance(frame, AuthFrame):
                if self.config.server_presence:
                    self.auth.reauth(conn, frame)
                else:  # upstream's answer
                    self.replies.error(
                        conn, "already_authenticated", "this connection is already authenticated"
                    )
            elif isinstance(frame, DocUnavailableFrame):
                pass  # a peer telling us it lacks a document we never asked for: nothing to do
            else:
                kind = frame.type if isinstance(frame, UnknownFrame) else frame.TYPE
                if kind in _SERVER_ONLY:
                    msg = f"{kind!r} frames are sent only by the server"
                else:
                    msg = f"unsupported frame type {kind!r}"
                self.replies.error(conn, "invalid_message", msg)
        except Exception:
            self.replies.internal_error(conn)
        if conn.waiting is not None and conn.parked is None:
            conn.parked = [data]  # this frame waits for the look-up it asked for

    # ------------------------------------------------------------------ look-ups

    def wait(self, conn: Connection, lookup: Lookup) -> bool:
        """``conn``'s current frame needs ``lookup`` answered: it is parked
        with every later frame of the connection, and the I/O layer is asked
        (once per look-up, however many connections wait for it). False when
        that look-up was just answered for this frame (its answer is already
        used: the caller decides without it)."""
        if conn.answered == lookup:
            return False
        conn.waiting = lookup
        waiters = self._inflight.get(lookup)
        if waiters is None:
            self._inflight[lookup] = [conn]
            self.request(lookup)
        else:
            waiters.append(conn)
        return True

    def _ask(self, lookup: Lookup) -> None:
        """Ask ``lookup`` with nobody waiting (a permission revalidated)."""
        if lookup not in self._inflight:
            self._inflight[lookup] = []
            self.request(lookup)

    def lookups_in_flight(self) -> int:
        """Look-ups asked for and not answered yet."""
        return len(self._inflight)

    def answer(self, lookup: Lookup, result: Any) -> None:
        """The I/O layer's answer to ``lookup`` (see
        ``identities.Lookup``): cached, then the frames of every
        connection that waited for it are replayed in order. A permission
        that is no longer granted removes the user's peers from the document
        (``permission_revoked``; everyone else sees them leave)."""
        now = self.clock()
        if lookup.kind in ("userinfo", "jwks"):
            self.identities.answer(lookup, result, now)
        else:
            self.permissions.answer(lookup, result, now)
            if result is Access.DENIED or result is Access.NOT_FOUND:
                user, doc_id = lookup.key
                self.documents.revoke(user or None, doc_id)
        for conn in self._inflight.pop(lookup, ()):
            if conn.waiting == lookup and conn in self._connections:
                self._replay(conn, lookup)

    def _replay(self, conn: Connection, lookup: Lookup) -> None:
        frames = conn.parked or []
        conn.parked = None
        conn.waiting = None
        for i, data in enumerate(frames):
            conn.answered = lookup if i == 0 else None
            try:
                self.receive(conn, data)
            finally:
                conn.answered = None
            parked: list[bytes] | None = conn.parked  # (receive() may have set it)
            if parked is not None:  # waits again: the rest stays behind it
                parked.extend(frames[i + 1 :])
                return

    def _revalidate(self, now: float) -> None:
        """Ask again, once its answer is stale, whether each user present in a
        document may still read it (only with a permission provider that
        looks up: its answers may change). A revoked permission thus takes
        effect within the provider's ``ttl`` plus a sweep."""
        permissions = self.permissions
        for doc_id, members in self._members.items():
            if doc_id.startswith(EPHEMERAL_PREFIX):
                continue
            users = {conn.user_id for conn in members.values()}
            for user in users:
                if not permissions.fresh(user, doc_id, now):
                    self._ask(permissions.lookup(user, doc_id))

    # ------------------------------------------------------------------ cluster seam

    def attach_bus(self, bus: Bus) -> None:
        """Link this core to the other relays of a cluster (before any connection)."""
        if self._connections:
            raise RuntimeError("attach the bus before the relay accepts connections")
        self.bus = self.auth.bus = self.documents.bus = self.visibility.bus = bus

    def deliver_remote(
        self,
        sender: RemoteSender,
        document_id: str,
        count: int,
        session_id: str,
        data: bytes,
        identity: str | None = None,
        speaker: Member | None = None,
        present: bool = True,
    ) -> bool:
        """A message another relay accepted from ``sender``; True if it was
        admitted (see
        :meth:`~ratatoskr_client.server.core.documents.Documents.deliver_remote`)."""
        return self.documents.deliver_remote(
            sender, document_id, count, session_id, data, identity, speaker, present
        )

    def release_remote(self, sender: RemoteSender) -> None:
        """A peer on another relay is gone: its sessionIds become tombstones."""
        self.documents.sessions.release(sender, self.clock())


def _no_request(lookup: Lookup) -> None:
    """The default :attr:`RelayCore.request`: no I/O layer answers look-ups
    (a relay configured with remote providers needs one)."""
    log.warning("no I/O layer to answer %s look-ups", lookup.kind)


def _no_wake(when: float) -> None:
    """The default :attr:`RelayCore.wake_at`: nobody is woken (tests call
    :meth:`RelayCore.on_timer` or :meth:`RelayCore.flush_held` themselves)."""


def __getattr__(name: str) -> Any:
    if name == "Session":  # deprecated: see connection.py
        from . import connection

        return connection.__getattr__(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
