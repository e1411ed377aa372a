"""The relay's document rules, part of :class:`~.core.RelayCore`. No I/O.

Presence (join, leave, heartbeat), the read check, the per-document bound on
presence messages, the gossip and replay filter, the rate limit, and relaying
an ephemeral message to everyone present; automerge-repo ``request``/``sync``
frames count as a join.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ...errors import ProtocolError
from ...protocol import (
    EPHEMERAL_PREFIX,
    Admission,
    DocUnavailableFrame,
    EphemeralFrame,
    Frame,
    PeerLeftDocFrame,
    PresenceMessage,
    RequestFrame,
    SessionOwners,
    SyncFrame,
    cbor_bytes,
    cbor_text,
    cbor_uint,
    decode_payload,
    encode,
)
from ...protocol.constants import (
    EPHEMERAL_HEAD,
    KEY_COUNT,
    KEY_DATA,
    KEY_DOCUMENT_ID,
    KEY_SENDER_ID,
    KEY_SESSION_ID,
    KEY_TARGET_ID,
)
from ..config import Access, RelayConfig
from .bus import Bus, RemoteSender
from .connection import Connection, LimitBucket
from .counters import RelayCounters
from .limits import MAX_SESSIONS_PER_CONNECTION, PRESENCE_BURST, PRESENCE_RATE
from .visibility import ANNOUNCE, CANCELLED, SILENT, Visibility

__all__ = ["DocumentRules", "ephemeral_prefix"]

log = logging.getLogger("ratatoskr_client.server")


class DocumentRules(Visibility):
    """Presence in documents and the ephemeral messages relayed in them."""

    __slots__ = ()

    # What these rules use of the RelayCore they are part of.
    config: RelayConfig
    clock: Callable[[], float]
    server_peer_id: str
    counters: RelayCounters
    bus: Bus | None
    _docs: dict[str, dict[str, Connection]]
    _sessions: SessionOwners[Connection | RemoteSender]
    _server_presence: bool

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
        raise NotImplementedError

    def _rate_limited(
        self, conn: Connection, bucket: LimitBucket, wait: float, document_id: str | None = None
    ) -> None:
        raise NotImplementedError

    def _check_access(self, conn: Connection, doc_id: str) -> bool:
        access = self.config.access(conn.user_id, doc_id)
        if access is Access.ALLOWED:
            return True
        if access is Access.NOT_FOUND:
            self._error(
                conn, "document_not_found", f"unknown document {doc_id!r}", document_id=doc_id
            )
        else:
            self._error(conn, "permission_denied", "Read access required", document_id=doc_id)
        return False

    def _join(self, conn: Connection, doc_id: str, *, send_state: bool = True) -> None:
        now = self.clock()
        members = self._docs.get(doc_id)
        rejoin = members is not None and conn.peer_id in members
        if rejoin:
            conn.docs[doc_id] = now
        else:
            if not self._check_access(conn, doc_id):
                return
            if len(conn.docs) >= self.config.max_documents_per_peer:
                self._error(
                    conn,
                    "too_many_documents",
                    f"a connection may be present in at most "
                    f"{self.config.max_documents_per_peer} documents",
                    document_id=doc_id,
                )
                return
            if members is None:
                members = self._docs[doc_id] = {}
            decision = self._decide(doc_id, conn, now) if self._server_presence else SILENT
            members[conn.peer_id] = conn
            conn.docs[doc_id] = now
            if self.bus is not None:
                self.bus.joined(doc_id, conn)
                if decision == SILENT:
                    self.bus.announce(doc_id, conn, True)  # (no presence frames to pace)
            if decision == ANNOUNCE:
                self._announce_join(doc_id, conn)
            elif decision == CANCELLED:
                self._settle_held(doc_id)
        if send_state and self._server_presence:
            remote = self.bus.presence_state(doc_id, conn) if self.bus is not None else ()
            if remote is None:
                return  # the bus calls send_presence_state once it knows who is elsewhere
            self.send_presence_state(conn, doc_id, remote, rejoin=rejoin)

    def _leave(self, conn: Connection, doc_id: str, *, tell_self: bool, gone: bool = False) -> None:
        """``conn`` is no longer present in ``doc_id``: it left, expired
        (``tell_self``: it is told too) or its connection is ``gone`` (its
        leave is announced at once, never held)."""
        if conn.docs.pop(doc_id, None) is None:
            return
        members = self._docs[doc_id]
        presence = self._server_presence
        decision = self._decide(doc_id, conn, self.clock(), force=gone) if presence else SILENT
        del members[conn.peer_id]
        if not members:
            del self._docs[doc_id]
            self._drop_held(doc_id)  # nobody left to tell
        if self.bus is not None:
            self.bus.left(doc_id, conn)
            if not presence:
                self.bus.announce(doc_id, conn, False, gone)
        if not presence:
            return
        if decision == ANNOUNCE:
            self._announce_leave(doc_id, conn, gone=gone)
        elif decision == CANCELLED:
            self._settle_held(doc_id)
        if tell_self:
            # Expiry: the peer may still be alive (a stalled loop), so tell it too;
            # a client that sees itself leave re-joins with a heartbeat.
            conn.outbox.send(encode(PeerLeftDocFrame(doc_id, conn.peer_id)))

    # ------------------------------------------------------------------ ephemeral

    def _on_ephemeral(self, conn: Connection, frame: EphemeralFrame) -> None:
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
            self._error(conn, "invalid_message", str(exc), document_id=doc_id)
            return
        if not self._server_presence:
            if doc_id.startswith(EPHEMERAL_PREFIX):
                return  # upstream's automerge-repo rejects eph: ids: nothing relayed, no error
            presence = None  # upstream relays presence-shaped payloads like any other
        if presence is None:
            if not self._check_access(conn, doc_id):
                return
        elif presence.document_id != doc_id:
            self._error(
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
                self._leave(conn, doc_id, tell_self=False)
            else:
                # A heartbeat for a document the peer is not in counts as a join.
                self._join(
                    conn,
                    doc_id,
                    send_state=presence.status == "join" or doc_id not in conn.docs,
                )
            return
        bucket = conn.bucket
        assert bucket is not None
        wait = bucket.take(self.clock())
        if wait > 0:
            self._rate_limited(conn, bucket, wait)
            return
        if doc_id in conn.docs:
            conn.docs[doc_id] = self.clock()  # activity keeps presence alive
        self._relay_ephemeral(conn, frame)

    def _control_allowed(self, conn: Connection, doc_id: str) -> bool:
        now = self.clock()
        bucket = conn.control.get(doc_id)
        if bucket is None:
            bucket = conn.control[doc_id] = LimitBucket(PRESENCE_RATE, PRESENCE_BURST, now)
        wait = bucket.take(now)
        if wait <= 0:
            return True
        self._rate_limited(conn, bucket, wait, doc_id)
        return False

    def _admit(self, conn: Connection, frame: EphemeralFrame) -> bool:
        """Gossip and replay filter: True if the frame is new and really from
        ``conn``. A sessionId changes hands only between connections of one
        identity (the same user; for anonymous peers, the same address): a
        stock peer reconnecting carries on its session, nobody else can."""
        verdict = self._sessions.admit(conn, frame.session_id, frame.count, conn.identity)
        if verdict.admitted:
            return True
        if verdict is Admission.TOO_MANY_SESSIONS:
            self._error(
                conn,
                "too_many_sessions",
                f"a connection may use at most {MAX_SESSIONS_PER_CONNECTION} sessionIds",
            )
        # Otherwise a stock peer forwarding someone's message back to us, or a
        # copy we already relayed: dropped without a word (docs/protocol.md).
        return False

    def _relay_ephemeral(self, conn: Connection, frame: EphemeralFrame) -> None:
        self.counters.relayed_local += 1
        doc_id = frame.document_id
        if self._held and doc_id in self._held:
            self._unhold_join(doc_id, conn)  # its join goes before its message, everywhere
        if self.bus is not None:
            self.bus.relayed(doc_id, conn, frame.count, frame.session_id, frame.data)
        members = self._docs.get(doc_id)
        if not members:
            return
        if self._scoped and doc_id not in conn.docs:
            # Not present here: the members may not know who is speaking.
            self._introduce(conn, members.values())
        prefix = ephemeral_prefix(
            conn.target_suffix, doc_id, frame.count, frame.session_id, frame.data
        )
        for other in members.values():
            if other is not conn:
                other.outbox.send_ephemeral(prefix, other.target_suffix)

    # ------------------------------------------------------------------ automerge sync

    def _on_sync(self, conn: Connection, frame: RequestFrame | SyncFrame) -> None:
        """A stock automerge-repo peer subscribing to a document: it never sends a
        presence join, so a request/sync counts as one. The relay stores no
        documents, so a request is answered with doc-unavailable."""
        doc_id = frame.document_id
        if not self._server_presence and doc_id.startswith(EPHEMERAL_PREFIX):
            return  # upstream: "Invalid AutomergeUrl", no answer
        self._join(conn, doc_id, send_state=doc_id not in conn.docs)
        if not isinstance(frame, RequestFrame) or doc_id not in conn.docs:
            return
        if self._server_presence:
            reply: Frame = DocUnavailableFrame(self.server_peer_id, conn.peer_id, doc_id)
        else:
            # Upstream answers a request with a sync message; with nothing stored,
            # the empty document's own sync message is the truthful answer.
            reply = SyncFrame(self.server_peer_id, conn.peer_id, doc_id, frame.data)
        conn.outbox.send(encode(reply))


def ephemeral_prefix(
    sender: bytes, document_id: str, count: int, session_id: str, data: bytes
) -> bytes:
    """A relayed ephemeral frame up to its ``targetId`` value (``sender`` is the
    CBOR text of the sender's peer id). Encoded once per message, with targetId
    last, so each recipient's id is spliced onto the end: no per-recipient
    re-encoding of the payload."""
    return b"".join(
        (
            EPHEMERAL_HEAD,
            KEY_SENDER_ID,
            sender,
            KEY_DOCUMENT_ID,
            cbor_text(document_id),
            KEY_COUNT,
            cbor_uint(count),
            KEY_SESSION_ID,
            cbor_text(session_id),
            KEY_DATA,
            cbor_bytes(data),
            KEY_TARGET_ID,
        )
    )
