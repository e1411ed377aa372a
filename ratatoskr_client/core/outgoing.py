"""The send queue: every frame a client sends leaves through :class:`Outgoing`. No I/O.

Every ephemeral frame a client sends carries its connection's ``sessionId`` and
a ``count`` that grows by one per frame across all documents (the gossip rule,
:mod:`ratatoskr_client.protocol.gossip`), so counts are given out here, at the
moment a frame is built, and frames leave in the order they were built.

Application messages and per-peer state are paced (:mod:`.pacing`): a frame
goes out at once when a token is free and nothing waits before it; otherwise
it waits in :attr:`Outgoing.queue`, in call order, and is built when its turn
comes, so that coalesced state takes the latest value — and an entry that is
no longer wanted by then (a cancelled send, a document left meanwhile) is
skipped. Presence control messages (join, leave, heartbeat) are not paced:
the relay does not count them. A presence ``leave`` that must follow a state
goodbye waits in the queue behind it, without a token.
"""

from __future__ import annotations

from collections import deque
from typing import Literal, TypeAlias

from ..errors import ConnectionClosed
from ..protocol import (
    PresenceMessage,
    PresenceStatus,
    RequestFrame,
    encode,
    encode_payload,
    fits_utf8,
)
from ..protocol.constants import (
    EMPTY_DOC_SYNC,
    MAX_DOCUMENT_ID_BYTES,
    UPSTREAM_ANONYMOUS_LIMIT,
    UPSTREAM_ANONYMOUS_WINDOW,
)
from ..protocol.writers import ephemeral_frame, ephemeral_head, ephemeral_tail
from .documents import Documents
from .outbox import MIN_TIMER_STEP, Outbox
from .pacing import FixedWindow, Pacer, TokenBucket
from .peer_state import goodbye_payload, heartbeat_payload, snapshot_payload, update_payload
from .settings import Settings
from .sharing import StateSharing

__all__ = ["Outgoing", "Paced", "PacedKind", "check_document_id", "make_pacer"]

#: What a queued entry sends once its turn comes.
PacedKind: TypeAlias = Literal[
    "app",  # an application payload (a send_ephemeral call waits for it)
    "request",  # automerge-repo's empty-document request (peer-to-peer mode)
    "snapshot",  # our whole state in a document
    "update",  # the coalesced state updates of a document, one per token
    "heartbeat",  # a state heartbeat
    "goodbye",  # a state goodbye (we leave the document)
    "leave",  # the presence leave after a goodbye: not paced, only ordered
]


def check_document_id(document_id: object) -> None:
    """Raise ValueError unless ``document_id`` is a document id we may send."""
    if not isinstance(document_id, str) or not document_id:
        raise ValueError(f"document_id must be a non-empty string, got {document_id!r}")
    if not document_id.isascii():
        try:
            document_id.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"document_id is not valid Unicode text: {document_id!r}") from None
    if not fits_utf8(document_id, MAX_DOCUMENT_ID_BYTES):
        raise ValueError(
            f"document_id must be at most {MAX_DOCUMENT_ID_BYTES} bytes in UTF-8, "
            f"got {len(document_id.encode('utf-8', 'surrogatepass'))}"
        )


class Paced:
    """One frame waiting for its turn."""

    __slots__ = ("data", "document_id", "kind", "waiter")

    def __init__(
        self, kind: PacedKind, document_id: str, data: bytes = b"", waiter: int | None = None
    ) -> None:
        self.kind: PacedKind = kind
        self.document_id = document_id
        self.data = data
        self.waiter = waiter

    def __repr__(self) -> str:
        return f"<Paced {self.kind} {self.document_id!r}>"


class Outgoing:
    """Session, counter, pacing and queue of one client (the counter survives
    reconnects, so counts keep growing; the session is new per connection).

    It writes what leaves into the core's outbox, reads the document records
    (:mod:`.documents`) and our own state (:mod:`.sharing`) to know whether a
    queued entry is still wanted and what it sends, and tells them when a
    goodbye or a state message went out.
    """

    __slots__ = (
        "_docs",
        "_head",
        "_outbox",
        "_paced",
        "_sharing",
        "_tail",
        "count",
        "pacer",
        "peer_id",
        "queue",
        "server_id",
        "server_presence",
        "session_id",
    )

    def __init__(self, outbox: Outbox, docs: Documents, sharing: StateSharing) -> None:
        self._outbox = outbox
        self._docs = docs
        self._sharing = sharing
        self.session_id = ""
        self.peer_id = ""
        self.server_id = ""
        #: the connection's server has server-side presence (it gets presence leaves)
        self.server_presence = False
        self.count = 0
        self.pacer: Pacer | None = None
        #: entries waiting for their turn, in call order (an empty tuple while
        #: none waits: most clients rarely queue, and a deque is 0.6 KiB)
        self.queue: deque[Paced] | tuple[()] = ()
        # send_ephemeral() calls waiting in the queue (and not cancelled).
        self._paced: set[int] = set()
        self._head = b""
        self._tail = b""

    def start(
        self,
        session_id: str,
        peer_id: str,
        server_id: str,
        pacer: Pacer | None,
        *,
        server_presence: bool,
    ) -> None:
        """A new connection: our peer id, the server's, a new session and pacing."""
        self.session_id = session_id
        self.peer_id = peer_id
        self.server_id = server_id
        self.server_presence = server_presence
        self.pacer = pacer
        self.queue = ()
        # Pre-encoded, in automerge-repo's key order (the protocol's writer):
        # our frames look exactly like a JS peer's.
        self._head = ephemeral_head(peer_id, server_id)
        self._tail = ephemeral_tail(session_id)

    def stop(self, reason: ConnectionClosed) -> None:
        """The connection is gone: the queue is emptied, and the
        ``send_ephemeral`` calls waiting in it fail with ``reason``."""
        outbox = self._outbox
        paced = self._paced
        for entry in self.queue:
            if entry.waiter is not None and entry.waiter in paced:
                outbox.fail(entry.waiter, reason)
        paced.clear()
        self.queue = ()
        self.pacer = None

    def __len__(self) -> int:
        """Entries waiting for their turn."""
        return len(self.queue)

    # ------------------------------------------------------------------ frames

    def ephemeral(self, document_id: str, data: bytes) -> bytes:
        """The next ephemeral frame: ``data`` (an encoded payload) for ``document_id``.

        The count stays far below the wire's bound (``MAX_COUNT``, 2**53 - 1):
        one per frame sent, it would take a million frames a second for 285
        years to reach it."""
        self.count += 1
        return ephemeral_frame(self._head, document_id, self.count, self._tail, data)

    def request(self, document_id: str) -> bytes:
        """automerge-repo's empty-document request, which subscribes us to the
        document's ephemeral messages on a server without server-side presence."""
        return encode(RequestFrame(self.peer_id, self.server_id, document_id, EMPTY_DOC_SYNC))

    # ------------------------------------------------------------------ sending

    def take(self, now: float) -> float:
        """A pacing token for a frame to go out now: 0.0, or the seconds to wait
        (frames already queued go first: then the answer is "wait", always)."""
        if self.queue:
            return float("inf")
        pacer = self.pacer
        return 0.0 if pacer is None else pacer.take(now)

    def queue_message(self, document_id: str, data: bytes, waiter: int, now: float) -> None:
        """An application message waits for its token; ``waiter`` is resolved
        when it goes out."""
        self._paced.add(waiter)
        self.submit(Paced("app", document_id, data, waiter), now)

    def cancel(self, waiter: int) -> None:
        """A waiting ``send_ephemeral`` was cancelled: its message is skipped."""
        self._paced.discard(waiter)

    def presence(self, status: PresenceStatus, document_id: str) -> None:
        """A presence control message: not paced (the relay does not count them)."""
        data = encode_payload(PresenceMessage(status, document_id).to_payload())
        self._outbox.send(self.ephemeral(document_id, data))

    def submit(self, entry: Paced, now: float) -> None:
        """Send ``entry`` now if its turn and a token allow, else queue it."""
        queue = self.queue
        if type(queue) is tuple:
            queue = self.queue = deque()
        queue.append(entry)  # type: ignore[union-attr]
        if len(queue) == 1:
            self.release(now)

    def release(self, now: float) -> None:
        """Send queued entries while tokens allow; wake up when the next one may go."""
        queue = self.queue
        if type(queue) is tuple:
            return  # nothing ever queued
        while queue:
            entry = queue[0]
            if not self._wanted(entry):
                queue.popleft()
                continue
            if entry.kind != "leave":
                pacer = self.pacer
                wait = 0.0 if pacer is None else pacer.take(now)
                if wait > 0:
                    # At least a millisecond: a wait of a few ulps would round to
                    # `now` and wake us in a loop without the bucket refilling.
                    self._outbox.wake_at(now + max(wait, MIN_TIMER_STEP))
                    return
            if entry.kind != "update":  # (an update stays while values wait: _wanted)
                queue.popleft()
            self._send(entry, now)
        if self.queue is queue:
            # Drained: back to the empty tuple (a deque keeps its 0.6 KiB
            # block, and a client is idle, not queueing, most of its life).
            self.queue = ()

    def pause(self, now: float, seconds: float) -> None:
        """The server refused a message for its rate: nothing paced goes out
        for ``seconds``."""
        pacer = self.pacer
        if pacer is not None:
            pacer.pause(now, seconds)
            self.release(now)  # asks to be woken when the pause ends

    def unqueue(self, document_id: str) -> None:
        """``document_id`` is entered again while its goodbye waited: what was
        queued for the old membership goes (application messages stay)."""
        queue = self.queue
        kept = [e for e in queue if e.document_id != document_id or e.kind == "app"]
        if len(kept) != len(queue):
            self.queue = deque(kept)

    def send_state(self, document_id: str, kind: PacedKind, now: float) -> None:
        """Our state message of ``kind`` for ``document_id`` goes out now."""
        sharing = self._sharing
        if kind == "update":
            item = sharing.coalescer.take_one(document_id, now)
            if item is None:
                return
            payload = update_payload(*item)
        elif kind == "snapshot":
            payload = snapshot_payload(sharing.states.local(document_id))
        elif kind == "heartbeat":
            payload = heartbeat_payload()
        else:
            payload = goodbye_payload()
        self._outbox.send(self.ephemeral(document_id, encode_payload(payload)))
        sharing.sent(document_id, now)

    def _wanted(self, entry: Paced) -> bool:
        doc = entry.document_id
        kind = entry.kind
        if kind == "app":
            return entry.waiter in self._paced
        if kind == "request":
            return self._docs.is_entering(doc)
        if kind == "goodbye" or kind == "leave":
            return self._docs.is_leaving(doc)
        sharing = self._sharing
        if kind == "update":
            return doc in sharing.live and sharing.coalescer.scheduled(doc)
        return doc in sharing.live

    def _send(self, entry: Paced, now: float) -> None:
        kind = entry.kind
        doc = entry.document_id
        if kind == "app":
            waiter = entry.waiter
            assert waiter is not None
            self._paced.discard(waiter)
            self._outbox.send(self.ephemeral(doc, entry.data))
            self._outbox.resolve(waiter)
        elif kind == "request":
            self._outbox.send(self.request(doc))
        elif kind == "leave":
            self._docs.drop(doc)  # the goodbye is out: the document is left
            if self.server_presence:
                self.presence("leave", doc)
        else:
            self.send_state(doc, kind, now)


def make_pacer(
    settings: Settings, *, anonymous: bool, upstream: bool, auth_at: float, now: float
) -> Pacer | None:
    """The pacing of a new connection: the client's own token bucket
    (``rate_limit``/``rate_burst``), and on a server without features (upstream)
    for an anonymous connection, upstream's fixed window, which counts every
    frame, the auth frame (sent at ``auth_at``) included."""
    bucket = None
    if settings.rate_limit is not None:
        bucket = TokenBucket.per_minute(settings.rate_limit, now, burst=settings.burst)
    window = None
    if upstream and anonymous:
        window = FixedWindow(UPSTREAM_ANONYMOUS_LIMIT, UPSTREAM_ANONYMOUS_WINDOW)
        window.spend(auth_at)
    if bucket is None and window is None:
        return None
    return Pacer(bucket, window)
