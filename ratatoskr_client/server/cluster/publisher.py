"""What one relay tells the others through Redis: its outbound queue. Pure: no I/O.

:class:`Publisher` turns what the relay's local peers do (the core's bus
calls, through :class:`~.view.ClusterView`) into messages for the cluster
channel and the document channels (:mod:`.wire`), and into the changes of this
relay's two hashes in Redis, and queues them for the Redis driver, which takes
them with :meth:`Publisher.take_outgoing` whenever :attr:`Publisher.on_outgoing`
wakes it. It queues only while the link is up (:meth:`Publisher.start`); what
happens while it is down is in the state the driver writes when it is back
(:meth:`Publisher.local_state`).

Presence and identity changes are always queued; ephemeral messages are
dropped (and counted, ``unpublished``) when the link is down or the queue
holds :data:`MAX_QUEUED` messages, as a slow peer's are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from ...protocol import UserInfo
from ..core.relay import Connection, RelayCore
from .wire import (
    BusMessage,
    Claim,
    Handover,
    Joined,
    Left,
    Moved,
    Names,
    PeerGone,
    PeerUp,
    Refusal,
    Relayed,
    batch_messages,
    encode_body,
    encode_members,
    encode_user,
)

__all__ = ["MAX_QUEUED", "Outgoing", "Publisher"]

#: Messages waiting for the Redis writer at most. Beyond it (Redis slower than
#: the relay's peers) ephemeral messages for other relays are dropped, as a
#: slow peer's are; presence and identity changes are always kept.
MAX_QUEUED: Final = 50_000


@dataclass(slots=True)
class Outgoing:
    """What the driver must write to Redis: the hashes first, then the messages
    in order (the order matters: a peer's identity before its joins)."""

    peers_set: dict[str, bytes]
    peers_del: list[str]
    docs_set: dict[str, bytes]
    docs_del: list[str]
    #: (channel, sharded, bytes of one Redis message), in the order to publish
    messages: list[tuple[str, bool, bytes]]
    #: how many messages those Redis messages carry
    count: int = 0


def _nothing() -> None:
    pass


class Publisher:
    """This relay's outbound queue to the cluster."""

    __slots__ = (
        "_dirty_docs",
        "_dirty_peers",
        "_messages",
        "core",
        "max_queued",
        "names",
        "node_id",
        "on_outgoing",
        "publishing",
        "unpublished",
    )

    def __init__(
        self, core: RelayCore, node_id: str, names: Names, *, max_queued: int = MAX_QUEUED
    ) -> None:
        self.core = core
        self.node_id = node_id
        self.names = names
        self.max_queued = max_queued
        #: local changes are queued for Redis (the link is up)
        self.publishing = False
        #: ephemeral messages not sent to the other relays (link down, queue full)
        self.unpublished = 0
        #: called when something was queued for Redis (the driver's writer wakes)
        self.on_outgoing: Callable[[], None] = _nothing
        self._messages: list[tuple[str, bool, bytes]] = []
        #: peer id -> its entry in our peers hash (None: delete it)
        self._dirty_peers: dict[str, bytes | None] = {}
        #: documents whose entry in our docs hash changed
        self._dirty_docs: set[str] = set()

    # ------------------------------------------------------------------ the link

    def start(self) -> None:
        """The link is up: queue local changes from now on. Call it in the same
        step as reading :meth:`local_state` for the state write."""
        self.publishing = True
        self._clear()

    def stop(self) -> None:
        """The link is gone: stop queueing, and forget what was queued (the
        state written when it is back includes it)."""
        self.publishing = False
        self._clear()

    def _clear(self) -> None:
        self._messages.clear()
        self._dirty_peers.clear()
        self._dirty_docs.clear()

    def local_state(self, documents: Iterable[str]) -> tuple[dict[str, bytes], dict[str, bytes]]:
        """This relay's whole state, for its hashes: (peers, docs), the docs
        of ``documents`` (those with local peers present)."""
        core = self.core
        peers = {
            s.peer_id: encode_user(UserInfo(s.user_id, s.name, s.is_anonymous), s.identity)
            for s in core.peers()
        }
        docs = {d: encode_members(core.presence_shown(d)) for d in documents}
        return peers, docs

    def take_outgoing(self) -> Outgoing | None:
        """Everything queued since the last call (None if nothing)."""
        if not (self._messages or self._dirty_peers or self._dirty_docs):
            return None
        peers = self._dirty_peers
        docs_set: dict[str, bytes] = {}
        docs_del: list[str] = []
        for doc_id in self._dirty_docs:
            present = self.core.presence_shown(doc_id)  # (what the other relays were told)
            if present:
                docs_set[doc_id] = encode_members(present)
            else:
                docs_del.append(doc_id)
        out = Outgoing(
            peers_set={p: v for p, v in peers.items() if v is not None},
            peers_del=[p for p, v in peers.items() if v is None],
            docs_set=docs_set,
            docs_del=docs_del,
            messages=batch_messages(self.node_id, self._messages),
            count=len(self._messages),
        )
        self._messages = []
        self._dirty_peers = {}
        self._dirty_docs = set()
        return out

    # ------------------------------------------------------------------ what the local peers do

    def peer_up(self, conn: Connection) -> None:
        """A local connection authenticated: its identity goes to the others."""
        if self.publishing:
            user = UserInfo(conn.user_id, conn.name, conn.is_anonymous)
            self._dirty_peers[conn.peer_id] = encode_user(user, conn.identity)
            self._send(self.names.cluster_channel, False, PeerUp(conn.peer_id, user, conn.identity))

    def peer_gone(self, conn: Connection) -> None:
        """An authenticated local connection closed."""
        if self.publishing:
            self._dirty_peers[conn.peer_id] = None
            self._send(self.names.cluster_channel, False, PeerGone(conn.peer_id))

    def announce(
        self, document_id: str, conn: Connection, present: bool, gone: bool = False
    ) -> None:
        """A local peer's join (``present``) or leave, as the core announces it."""
        if self.publishing:
            self._dirty_docs.add(document_id)
            message = Joined(conn.peer_id) if present else Left(conn.peer_id, gone)
            self._send(self.names.doc_channel(document_id), True, message)

    def handed_off(self, conn: Connection, node: str, documents: tuple[str, ...]) -> None:
        """A local peer was handed over to ``node``: it leaves our hashes, and
        the others are told it moved (not that it left)."""
        if self.publishing:
            self._dirty_peers[conn.peer_id] = None
            self._dirty_docs.update(documents)
            self._send(self.names.resume_channel, False, Moved(conn.peer_id, node))

    def adopted(self, conn: Connection) -> None:
        """A peer handed over to this relay: its identity and its presence go
        to the others as this relay's (to them, the same peer moved here)."""
        self.peer_up(conn)
        for document_id in conn.docs:
            self.announce(document_id, conn, True)

    def control(self, message: Claim | Handover | Refusal) -> None:
        """A resume across relays: a claim, or the answer to one."""
        if self.publishing:
            self._send(self.names.resume_channel, False, message)

    def relayed(
        self, document_id: str, sender: Connection, count: int, session_id: str, data: bytes
    ) -> None:
        """A local peer's ephemeral message, for the document's peers elsewhere."""
        if not self.publishing or len(self._messages) >= self.max_queued:
            self.unpublished += 1
            return
        message = Relayed(sender.peer_id, count, session_id, data)
        self._send(self.names.doc_channel(document_id), True, message)

    def _send(self, channel: str, sharded: bool, message: BusMessage) -> None:
        wake = not self._messages
        self._messages.append((channel, sharded, encode_body(message)))
        if wake:
            self.on_outgoing()
