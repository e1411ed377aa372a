"""The relay's copy of each present peer's per-peer state (a part of the core). No I/O.

automerge-repo's ``Presence`` protocol (payload ``{"__presence": message}``:
``snapshot``, ``update``, ``heartbeat``, ``goodbye``) has no server: a peer
learns another's state from that peer's snapshot, and snapshots are sent
again only when someone hears a peer it does not know. A client that never
shares state (a dashboard, a logger, a test observer) is never heard, so it
would never learn anything. The relay already decodes every payload it
relays, so it keeps the latest state of every peer per document
(:class:`PeerStateCache`), merged the way automerge-repo merges it (a
snapshot merges its keys, an update sets one key, a goodbye forgets), and
replays it to a joiner right after its ``doc_presence_state``: one ordinary
ephemeral ``snapshot`` frame per peer that has state, from that peer's
``senderId`` on its own ``sessionId``, with the ``count`` of its last state
message. Stock automerge-repo peers and our clients take it as that peer's
snapshot (the joiner has not seen that count yet; the peer's next message has
a higher one). Announced as the ``"state-replay"`` feature in ``auth_ok``:
clients that see it need not re-announce their state when they hear a
stranger, which is what a join costs everyone without it.

Bounded, since hostile peers share the relay: a peer's state is kept up to
:data:`MAX_STATE_BYTES` (measured as the encoded size of the messages that
built it: the last snapshot plus the last update of each key since), a
document's states up to :data:`MAX_DOCUMENT_STATE_BYTES`; a peer beyond either
is not kept (and so not replayed: a joiner learns its state from its next
snapshot, as without the feature).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from ...protocol import encode_payload
from ...protocol.constants import PRESENCE_MARKER

__all__ = ["MAX_DOCUMENT_STATE_BYTES", "MAX_STATE_BYTES", "CachedState", "PeerStateCache"]

#: The most bytes of state the relay keeps for one peer in one document.
MAX_STATE_BYTES: Final = 16 * 1024
#: The most bytes of state the relay keeps for all the peers of one document.
MAX_DOCUMENT_STATE_BYTES: Final = 4 * 1024 * 1024


class CachedState:
    """One peer's latest state in one document, and how to replay it."""

    __slots__ = ("count", "data", "session_id", "sizes", "snapshot_size", "state")

    def __init__(self, session_id: str, count: int) -> None:
        self.session_id = session_id
        self.count = count
        self.state: dict[str, Any] = {}
        #: the size of the last snapshot, and of each update since (by key)
        self.snapshot_size = 0
        self.sizes: dict[str, int] = {}
        #: the snapshot payload's encoding, made on first replay after a change
        self.data: bytes | None = None

    @property
    def size(self) -> int:
        """The bytes this state counts for against the bounds."""
        return self.snapshot_size + sum(self.sizes.values())


class PeerStateCache:
    """document -> peer id -> :class:`CachedState`; see the module docstring."""

    __slots__ = ("_bytes", "_docs", "max_document_bytes", "max_peer_bytes")

    def __init__(
        self,
        max_peer_bytes: int = MAX_STATE_BYTES,
        max_document_bytes: int = MAX_DOCUMENT_STATE_BYTES,
    ) -> None:
        self.max_peer_bytes = max_peer_bytes
        self.max_document_bytes = max_document_bytes
        self._docs: dict[str, dict[str, CachedState]] = {}
        self._bytes: dict[str, int] = {}

    def observe(
        self, doc_id: str, peer_id: str, session_id: str, count: int, payload: object, size: int
    ) -> None:
        """A message relayed in ``doc_id`` from ``peer_id`` (``size``: its
        payload's encoded size): keep what it says about the sender's state."""
        if type(payload) is not dict:
            return
        message = payload.get(PRESENCE_MARKER)
        if type(message) is not dict:
            return
        kind = message.get("type")
        peers = self._docs.get(doc_id)
        entry = peers.get(peer_id) if peers is not None else None
        if kind == "goodbye":
            self.forget(doc_id, peer_id)
            return
        if kind == "heartbeat":
            if entry is not None and entry.session_id == session_id:
                entry.count = count  # (a heartbeat is no state, but it is the latest count)
            return
        if kind == "snapshot":
            state = message.get("state")
            if type(state) is not dict:
                return
            incoming: dict[Any, Any] = state
        elif kind == "update":
            channel = message.get("channel")
            if type(channel) is not str:
                return
            incoming = {channel: message.get("value")}
        else:
            return
        if peers is None:
            peers = self._docs[doc_id] = {}
        before = 0
        if entry is None:
            entry = peers[peer_id] = CachedState(session_id, count)
        else:
            before = entry.size
            entry.session_id = session_id
            entry.count = count
        entry.state.update(incoming)
        entry.data = None
        if kind == "snapshot":
            # Keys it lacks are kept (automerge-repo merges), and still count.
            for key in incoming:
                entry.sizes.pop(key, None)
            entry.snapshot_size = size
        else:
            entry.sizes[next(iter(incoming))] = size
        total = self._bytes.get(doc_id, 0) - before + entry.size
        if entry.size > self.max_peer_bytes or total > self.max_document_bytes:
            self._bytes[doc_id] = total - entry.size
            del peers[peer_id]  # beyond a bound: not kept, not replayed
            self._drop_if_empty(doc_id)
            return
        self._bytes[doc_id] = total

    def forget(self, doc_id: str, peer_id: str) -> None:
        """``peer_id`` is no longer in ``doc_id`` (left, expired, gone, goodbye)."""
        peers = self._docs.get(doc_id)
        if peers is None:
            return
        entry = peers.pop(peer_id, None)
        if entry is not None:
            self._bytes[doc_id] -= entry.size
            self._drop_if_empty(doc_id)

    def drop(self, doc_id: str) -> None:
        """Forget every state of ``doc_id`` (no local peer is there any more)."""
        self._docs.pop(doc_id, None)
        self._bytes.pop(doc_id, None)

    def _drop_if_empty(self, doc_id: str) -> None:
        if not self._docs.get(doc_id):
            self._docs.pop(doc_id, None)
            self._bytes.pop(doc_id, None)

    def replay(
        self, doc_id: str, present: Iterable[str], joiner: str
    ) -> list[tuple[str, CachedState, bytes]]:
        """What to replay to ``joiner`` in ``doc_id``: (peer id, its state, the
        snapshot payload's bytes) for every peer in ``present`` that has state.
        Entries of peers no longer present are dropped here."""
        peers = self._docs.get(doc_id)
        if not peers:
            return []
        here = set(present)
        out = []
        for peer_id in [p for p in peers if p not in here]:
            self.forget(doc_id, peer_id)
        for peer_id, entry in peers.items():
            if peer_id == joiner or not entry.state:
                continue
            data = entry.data
            if data is None:
                data = entry.data = encode_payload(
                    {PRESENCE_MARKER: {"type": "snapshot", "state": entry.state}}
                )
            out.append((peer_id, entry, data))
        return out

    def entry(self, doc_id: str, peer_id: str) -> CachedState | None:
        """``peer_id``'s state in ``doc_id``, if any is kept."""
        peers = self._docs.get(doc_id)
        return peers.get(peer_id) if peers is not None else None

    def state(self, doc_id: str) -> dict[str, dict[str, Any]]:
        """Peer id -> its latest state in ``doc_id`` (a copy; for queries, e.g.
        an admin API)."""
        return {p: dict(e.state) for p, e in self._docs.get(doc_id, {}).items()}

    def documents(self) -> int:
        """Documents with some state kept."""
        return len(self._docs)

    def bytes(self, doc_id: str) -> int:
        """The bytes of state kept for ``doc_id`` (as counted against the bound)."""
        return self._bytes.get(doc_id, 0)
