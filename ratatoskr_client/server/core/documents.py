"""The relay's document rules, part of :class:`~.relay.RelayCore`. No I/O.

Presence (join, leave, heartbeat, expiry), the read check, the per-document
bound on presence messages, the gossip and replay filter, the rate limit, and
relaying an ephemeral message to everyone present; automerge-repo
``request``/``sync`` frames count as a join. :func:`fan_out` is the one loop
that writes a message to a document's local members, for the relay's own
peers' messages and for those other relays of a cluster deliver here
(:meth:`Documents.deliver_remote`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ...errors import ProtocolError
from ...protocol import (
    EPHEMERAL_PREFIX,
    PRESENCE_MARKER,
    Admission,
    DocUnavailableFrame,
    EphemeralFrame,
    Frame,
    PeerLeftDocFrame,
    PresenceMessage,
    RequestFrame,
    SessionOwners,
    SyncFrame,
    decode_payload,
    encode,
    encode_payload,
)
from ...protocol.writers import ephemeral_prefix, target_suffix
from ..config import Access, RelayConfig
from .bus import Bus, Member, RemoteSender
from .connection import Connection, LimitBucket, forget_full
from .counters import RelayCounters
from .identities import Lookup, Permissions, Unavailable
from .limits import (
    MAX_SESSION_TOMBSTONES,
    MAX_SESSIONS_PER_CONNECTION,
    PRESENCE_BURST,
    PRESENCE_RATE,
    SESSION_TOMBSTONE_TTL,
)
from .replies import Replies
from .resume import HandedPeer
from .roster import Roster
from .visibility import ANNOUNCE, CANCELLED, SILENT, Visibility

__all__ = ["Documents", "ephemeral_prefix", "fan_out"]

log = logging.getLogger("ratatoskr_client.server")

#: What every automerge-repo Presence payload contains (a remote message is
#: decoded only when it does).
_MARKER_BYTES = PRESENCE_MARKER.encode()


class Documents:
    """Presence in documents and the ephemeral messages relayed in them.

    It owns the member tables (``members``: document id -> present connections
    by peer id, in join order; the core creates it and :class:`~.visibility.Visibility`
    reads it) and the gossip table; it reads ``peers`` (authentication's table
    of authenticated connections) for the expiry sweep.
    """

    __slots__ = (
        "_check",
        "_peers",
        "_presence",
        "_replies",
        "bus",
        "clock",
        "config",
        "counters",
        "members",
        "permissions",
        "roster",
        "server_peer_id",
        "sessions",
        "visibility",
        "wait",
    )

    def __init__(
        self,
        config: RelayConfig,
        clock: Callable[[], float],
        counters: RelayCounters,
        replies: Replies,
        visibility: Visibility,
        members: dict[str, dict[str, Connection]],
        peers: dict[str, Connection],
        server_peer_id: str,
        roster: Roster,
    ) -> None:
        self.config = config
        #: told every membership change (the operator's view, the webhooks)
        self.roster = roster
        self.server_peer_id = server_peer_id
        self.clock = clock
        self.counters = counters
        self.visibility = visibility
        #: document id -> present connections by peer id, in join order
        self.members = members
        #: ephemeral sessionId -> the connection that owns it, and its identity (the
        #: gossip rule); senders on other relays are keyed by (node id, peer id)
        self.sessions: SessionOwners[Connection | RemoteSender] = SessionOwners(
            max_per_sender=MAX_SESSIONS_PER_CONNECTION,
            tombstone_ttl=SESSION_TOMBSTONE_TTL,
            max_tombstones=MAX_SESSION_TOMBSTONES,
        )
        #: the cluster link (None for a relay on its own)
        self.bus: Bus | None = None
        self._replies = replies
        self._check = config.access
        #: the permission provider when it looks up (set by the core), else None
        self.permissions: Permissions | None = None
        #: park a connection's frames until a look-up is answered (RelayCore.wait)
        self.wait: Callable[[Connection, Lookup], bool] = lambda conn, lookup: False
        self._peers = peers
        self._presence = config.server_presence

    # ------------------------------------------------------------------ membership

    def _check_access(self, conn: Connection, doc_id: str) -> bool:
        permissions = self.permissions
        if permissions is None:
            access = self._check(conn.user_id, doc_id)
        else:
            found = permissions.access(conn.user_id, doc_id, self.clock())
            if isinstance(found, Lookup):
                if self.wait(conn, found):
                    return False  # the frame waits for the answer
                found = Unavailable("the answer was lost")
            if isinstance(found, Unavailable):
                # Fail closed: the permission provider did not answer.
                self._replies.error(
                    conn,
                    "permission_unavailable",
                    "the permission provider is unavailable",
                    document_id=doc_id,
                    retry_after=1.0,
                )
                return False
            access = found
        if access is Access.ALLOWED:
            return True
        if access is Access.NOT_FOUND:
            self._replies.error(
                conn, "document_not_found", f"unknown document {doc_id!r}", document_id=doc_id
            )
        else:
            self._replies.error(
                conn, "permission_denied", "Read access required", document_id=doc_id
            )
        return False

    def join(self, conn: Connection, doc_id: str, *, send_state: bool = True) -> None:
        """``conn`` joins ``doc_id`` (or refreshes its presence there)."""
        now = self.clock()
        members = self.members.get(doc_id)
        rejoin = members is not None and conn.peer_id in members
        visibility = self.visibility
        if rejoin:
            conn.docs[doc_id] = now
        else:
            if not self._check_access(conn, doc_id):
                return
            if len(conn.docs) >= self.config.max_documents_per_peer:
                self._replies.error(
                    conn,
                    "too_many_documents",
                    f"a connection may be present in at most "
                    f"{self.config.max_documents_per_peer} documents",
                    document_id=doc_id,
                )
                return
            if members is None:
                members = self.members[doc_id] = {}
            decision = visibility.decide(doc_id, conn, now) if self._presence else SILENT
            members[conn.peer_id] = conn
            conn.docs[doc_id] = now
            self.roster.joined(doc_id, conn)
            if self.bus is not None:
                self.bus.joined(doc_id, conn)
                if decision == SILENT:
                    self.bus.announce(doc_id, conn, True)  # (no presence frames to pace)
            if decision == ANNOUNCE:
                visibility.announce_join(doc_id, conn)
            elif decision == CANCELLED:
                visibility.settle(doc_id)
        if send_state and self._presence:
            remote = self.bus.presence_state(doc_id, conn) if self.bus is not None else ()
            if remote is None:
                return  # the bus calls send_presence_state once it knows who is elsewhere
            visibility.send_presence_state(conn, doc_id, remote, rejoin=rejoin)

    def leave(self, conn: Connection, doc_id: str, *, tell_self: bool, gone: bool = False) -> None:
        """``conn`` is no longer present in ``doc_id``: it left, expired
        (``tell_self``: it is told too) or its connection is ``gone`` (its
        leave is announced at once, never held)."""
        if conn.docs.pop(doc_id, None) is None:
            return
        again = conn.reintroduce
        if again is not None:
            again.discard(doc_id)
            if not again:
                conn.reintroduce = None
        members = self.members[doc_id]
        presence = self._presence
        visibility = self.visibility
        decision = visibility.decide(doc_id, conn, self.clock(), force=gone) if presence else SILENT
        del members[conn.peer_id]
        visibility.states.forget(doc_id, conn.peer_id)
        self.roster.left(doc_id, conn)
        if not members:
            del self.members[doc_id]
            visibility.drop_held(doc_id)  # nobody left to tell
            visibility.unsubscribed(doc_id)
        if self.bus is not None:
            self.bus.left(doc_id, conn)
            if not presence:
                self.bus.announce(doc_id, conn, False, gone)
        if not presence:
            return
        if decision == ANNOUNCE:
            visibility.announce_leave(doc_id, conn, gone=gone)
        elif decision == CANCELLED:
            visibility.settle(doc_id)
        if tell_self:
            # Expiry: the peer may still be alive (a stalled loop), so tell it too;
            # a client that sees itself leave re-joins with a heartbeat.
            conn.outbox.send(encode(PeerLeftDocFrame(doc_id, conn.peer_id)))

    def revoke(self, user_id: str | None, doc_id: str) -> None:
        """``user_id`` may no longer read ``doc_id``: each of its connections
        present there is told (``permission_revoked``) and removed, and
        everyone else sees it leave."""
        members = self.members.get(doc_id)
        if not members:
            return
        for conn in [c for c in members.values() if c.user_id == user_id]:
            log.info("permission of %s on %r revoked", conn.peer_id, doc_id)
            self._replies.error(
                conn,
                "permission_revoked",
                "read access to the document was revoked",
                document_id=doc_id,
            )
            self.leave(conn, doc_id, tell_self=False)

    def expire(self, now: float) -> int:
        """Remove every membership whose last join/heartbeat is older than the
        presence TTL at ``now``, as if the peer had left (and told it).
        Returns how many were removed."""
        if not self._presence:
            return 0  # like upstream: a subscription lasts as long as the connection
        deadline = now - self.config.presence_ttl
        removed = 0
        for conn in list(self._peers.values()):
            stale = [doc for doc, seen in conn.docs.items() if seen < deadline]
            for doc_id in stale:
                log.debug("presence of %s in %r expired", conn.peer_id, doc_id)
                self.leave(conn, doc_id, tell_self=True)
                removed += 1
        return removed

    def closed(self, conn: Connection) -> None:
        """``conn``'s connection is gone: it leaves every document
        (``peer_left_doc`` each, at once, and its held leaves too), and its
        sessionIds become tombstones."""
        for doc_id in list(conn.docs):
            self.leave(conn, doc_id, tell_self=False, gone=True)
        self.visibility.closed(conn)
        self.sessions.release(conn, self.clock())
        conn.control.clear()
        conn.bucket = None

    # ------------------------------------------------------------------ handovers

    def hand_off(self, conn: Connection) -> tuple[str, ...]:
        """``conn`` was handed over to another relay of the cluster (see
        :mod:`.resume`): it leaves every document here **without** anyone
        being told (to its members it stays present, as a peer of that
        relay); a change of it still held is announced first, so what they
        were told is what is true. Returns its documents."""
        visibility = self.visibility
        visibility.hand_off(conn)
        docs = tuple(conn.docs)
        conn.docs.clear()
        conn.reintroduce = None
        for doc_id in docs:
            members = self.members[doc_id]
            del members[conn.peer_id]
            self.roster.left(doc_id, conn)
            if not members:
                del self.members[doc_id]
                visibility.drop_held(doc_id)
                visibility.unsubscribed(doc_id)
            if self.bus is not None:
                self.bus.left(doc_id, conn)
        self.sessions.release(conn, self.clock())
        conn.control.clear()
        conn.bucket = None
        return docs

    def adopt(self, conn: Connection, peer: HandedPeer) -> None:
        """``conn`` is ``peer``, handed over by another relay of the cluster:
        present in its documents here at once, with its state, and nobody is
        told (to the members it was already present, as a peer of that relay)."""
        now = self.clock()
        states = self.visibility.states
        for doc_id in peer.documents:
            members = self.members.get(doc_id)
            if members is None:
                members = self.members[doc_id] = {}
            members[conn.peer_id] = conn
            conn.docs[doc_id] = now
            self.roster.joined(doc_id, conn)
            if self.bus is not None:
                self.bus.joined(doc_id, conn)
        self.visibility.adopted(conn)
        for handed in peer.states:
            if handed.document_id in conn.docs:
                payload = {PRESENCE_MARKER: {"type": "snapshot", "state": handed.state}}
                size = len(encode_payload(payload))
                states.observe(
                    handed.document_id,
                    conn.peer_id,
                    handed.session_id,
                    handed.count,
                    payload,
                    size,
                )

    def forget_idle(self, now: float) -> None:
        """Drop bookkeeping that has served its purpose: tombstones past their
        TTL and presence-control buckets that are full again."""
        self.sessions.expire(now)
        for conn in self._peers.values():
            if conn.control:
                forget_full(conn.control, now)

    # ------------------------------------------------------------------ ephemeral

    def on_ephemeral(self, conn: Connection, frame: EphemeralFrame) -> None:
        """An ephemeral frame from the authenticated ``conn``: a presence
        control message (join, leave, heartbeat) or a message to relay."""
        # The order of the checks is the contract's (docs/protocol.md,
        # "Ephemeral messages"), and it matters:
        # 1. what the frame itself says: bad input is refused before anything;
        # 2. the read check, before the frame touches any shared table: a frame
        #    about a document the peer may not read must not claim a sessionId
        #    in the gossip table (it would silence the session's owner);
        # 3. the gossip table, before any allowance: a stock peer forwards every
        #    message it receives, in documents it is present in (so readable);
        #    those copies are dropped here without spending its tokens;
        # 4. the presence bound or the rate limit, then the message's effect.
        doc_id = frame.document_id
        try:
            payload = decode_payload(frame.data)
            presence = PresenceMessage.from_payload(payload)
        except ProtocolError as exc:
            self._replies.error(conn, "invalid_message", str(exc), document_id=doc_id)
            return
        if not self._presence:
            if doc_id.startswith(EPHEMERAL_PREFIX):
                return  # upstream's automerge-repo rejects eph: ids: nothing relayed, no error
            presence = None  # upstream relays presence-shaped payloads like any other
        if presence is None:
            # A member of the document passed the read check when it joined;
            # with a provider that looks up, a revocation removes it (the
            # core revalidates memberships), so its messages need no check.
            if (self.permissions is None or doc_id not in conn.docs) and not self._check_access(
                conn, doc_id
            ):
                return
        elif presence.document_id != doc_id:
            self._replies.error(
                conn,
                "invalid_message",
                "presence documentId does not match the envelope's documentId",
                document_id=doc_id,
            )
            return
        elif doc_id not in conn.docs and (
            # A peer present in the document passed the read check when it
            # joined (the configuration does not change); one that is not needs
            # it now, except to leave, which then has nothing to do.
            presence.status == "leave" or not self._check_access(conn, doc_id)
        ):
            return
        if not self._admit(conn, frame):
            return
        if presence is not None:
            # Only joins and leaves fan out to everyone present; a heartbeat for a
            # document the peer is in just refreshes a timestamp, so it is free.
            refresh = presence.status == "heartbeat" and doc_id in conn.docs
            if not refresh and not self._control_allowed(conn, doc_id):
                return
            if presence.status == "leave":
                self.leave(conn, doc_id, tell_self=False)
            else:
                # A heartbeat for a document the peer is not in counts as a join.
                self.join(
                    conn,
                    doc_id,
                    send_state=presence.status == "join" or doc_id not in conn.docs,
                )
            return
        bucket = conn.bucket
        assert bucket is not None
        wait = bucket.take(self.clock())
        if wait > 0:
            self._replies.rate_limited(conn, bucket, wait)
            return
        if doc_id in conn.docs:
            conn.docs[doc_id] = self.clock()  # activity keeps presence alive
            if self._presence and type(payload) is dict and PRESENCE_MARKER in payload:
                # automerge-repo Presence state: replayed to joiners (states.py),
                # read by the admin API and the dashboard (RelayCore.peer_states)
                self.visibility.states.observe(
                    doc_id, conn.peer_id, frame.session_id, frame.count, payload, len(frame.data)
                )
        self._relay(conn, frame)

    def _control_allowed(self, conn: Connection, doc_id: str) -> bool:
        now = self.clock()
        bucket = conn.control.get(doc_id)
        if bucket is None:
            bucket = conn.control[doc_id] = LimitBucket(PRESENCE_RATE, PRESENCE_BURST, now)
        wait = bucket.take(now)
        if wait <= 0:
            return True
        self._replies.rate_limited(conn, bucket, wait, doc_id)
        return False

    def _admit(self, conn: Connection, frame: EphemeralFrame) -> bool:
        """Gossip and replay filter: True if the frame is new and really from
        ``conn``. A sessionId changes hands only between connections of one
        identity (the same user; for anonymous peers, the same address): a
        stock peer reconnecting carries on its session, nobody else can."""
        verdict = self.sessions.admit(conn, frame.session_id, frame.count, conn.identity)
        if verdict.admitted:
            return True
        if verdict is Admission.TOO_MANY_SESSIONS:
            self._replies.error(
                conn,
                "too_many_sessions",
                f"a connection may use at most {MAX_SESSIONS_PER_CONNECTION} sessionIds",
            )
        # Otherwise a stock peer forwarding someone's message back to us, or a
        # copy we already relayed: dropped without a word (docs/protocol.md).
        return False

    def _relay(self, conn: Connection, frame: EphemeralFrame) -> None:
        self.counters.relayed_local += 1
        doc_id = frame.document_id
        visibility = self.visibility
        held = conn.held
        if held is not None and doc_id in held:
            visibility.unhold_join(doc_id, conn)  # its join goes before its message, everywhere
        if self.bus is not None:
            self.bus.relayed(doc_id, conn, frame.count, frame.session_id, frame.data)
        members = self.members.get(doc_id)
        if not members:
            return
        if doc_id not in conn.docs:  # (present: the members know who is speaking)
            visibility.introduce(conn, False, members.values())
        fan_out(
            members,
            ephemeral_prefix(conn.target_suffix, doc_id, frame.count, frame.session_id, frame.data),
            conn,
        )

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
        """A message another relay accepted from ``sender`` (whose identity key,
        as announced by its relay, is ``identity``; None if its relay announced
        none: then it is its own): apply the gossip rule to it here too (so a
        sessionId stays its owner's across the cluster), then deliver it to the
        local peers present. Its read check and rate limit were applied where
        it entered. ``speaker``: the sender as the members may be told it, and
        whether it is ``present`` in the document (see
        :meth:`~.visibility.Visibility.introduce`). True if it was admitted."""
        if not self.sessions.admit(sender, session_id, count, identity).admitted:
            return False
        self.counters.relayed_remote += 1
        if self._presence and present and _MARKER_BYTES in data:
            try:
                payload = decode_payload(data)
            except ProtocolError:
                payload = None  # (its relay checked it; nothing to keep then)
            self.visibility.states.observe(
                document_id, sender[1], session_id, count, payload, len(data)
            )
        members = self.members.get(document_id)
        if members:
            if speaker is not None:
                self.visibility.introduce(speaker, present, members.values())
            fan_out(
                members,
                ephemeral_prefix(target_suffix(sender[1]), document_id, count, session_id, data),
            )
        return True

    # ------------------------------------------------------------------ automerge sync

    def on_sync(self, conn: Connection, frame: RequestFrame | SyncFrame) -> None:
        """A stock automerge-repo peer subscribing to a document: it never sends a
        presence join, so a request/sync counts as one. The relay stores no
        documents, so a request is answered with doc-unavailable."""
        doc_id = frame.document_id
        if not self._presence and doc_id.startswith(EPHEMERAL_PREFIX):
            return  # upstream: "Invalid AutomergeUrl", no answer
        self.join(conn, doc_id, send_state=doc_id not in conn.docs)
        if not isinstance(frame, RequestFrame) or doc_id not in conn.docs:
            return
        server_peer_id = self.server_peer_id
        if self._presence:
            reply: Frame = DocUnavailableFrame(server_peer_id, conn.peer_id, doc_id)
        else:
            # Upstream answers a request with a sync message; with nothing stored,
            # the empty document's own sync message is the truthful answer.
            reply = SyncFrame(server_peer_id, conn.peer_id, doc_id, frame.data)
        conn.outbox.send(encode(reply))


def fan_out(members: dict[str, Connection], prefix: bytes, sender: object = None) -> None:
    """Write the relayed frame ``prefix`` (see :func:`ephemeral_prefix`) to every
    one of a document's ``members`` but its ``sender``, each with its own
    ``targetId``: the one fan-out loop of the relay, for the messages of its
    own peers and for those other relays deliver."""
    for other in members.values():
        if other is not sender:
            other.outbox.send_ephemeral(prefix, other.target_suffix)
