"""The send side of a client's connection: session, counts, pacing, the queue. No I/O.

Every ephemeral frame a client sends carries its connection's ``sessionId`` and
a ``count`` that grows by one per frame across all documents (the gossip rule,
:mod:`ratatoskr_client.protocol.gossip`), so counts are given out here, at the
moment a frame is built, and frames leave in the order they were built. A
frame that must wait for a pacing token waits in :attr:`Outgoing.queue`, in
call order, and is built when its turn comes.
"""

from __future__ import annotations

from collections import deque
from typing import Literal, TypeAlias

from ..protocol import RequestFrame, encode
from ..protocol.constants import EMPTY_DOC_SYNC, UPSTREAM_ANONYMOUS_LIMIT, UPSTREAM_ANONYMOUS_WINDOW
from ..protocol.writers import ephemeral_frame, ephemeral_head, ephemeral_tail
from .pacing import FixedWindow, Pacer, TokenBucket
from .settings import Settings

__all__ = ["Outgoing", "Paced", "PacedKind", "make_pacer"]

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


class Paced:
    """One frame waiting for its pacing token."""

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
    reconnects, so counts keep growing; the session is new per connection)."""

    __slots__ = ("_head", "_tail", "count", "pacer", "peer_id", "queue", "server_id", "session_id")

    def __init__(self) -> None:
        self.session_id = ""
        self.peer_id = ""
        self.server_id = ""
        self.count = 0
        self.pacer: Pacer | None = None
        self.queue: deque[Paced] = deque()
        self._head = b""
        self._tail = b""

    def start(self, session_id: str, peer_id: str, server_id: str, pacer: Pacer | None) -> None:
        """A new connection: our peer id, the server's, a new session and pacing."""
        self.session_id = session_id
        self.peer_id = peer_id
        self.server_id = server_id
        self.pacer = pacer
        self.queue.clear()
        # Pre-encoded, in automerge-repo's key order (the protocol's writer):
        # our frames look exactly like a JS peer's.
        self._head = ephemeral_head(peer_id, server_id)
        self._tail = ephemeral_tail(session_id)

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

    def take(self, now: float) -> float:
        """A pacing token for a frame to go out now: 0.0, or the seconds to wait
        (frames already queued go first: then the answer is "wait", always)."""
        if self.queue:
            return float("inf")
        pacer = self.pacer
        return 0.0 if pacer is None else pacer.take(now)

    def stop(self) -> list[Paced]:
        """The connection is gone: the queue is emptied; returns what was in it."""
        waiting = list(self.queue)
        self.queue.clear()
        self.pacer = None
        return waiting


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
