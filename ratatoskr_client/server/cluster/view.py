"""The cluster as one relay sees it: the peers on the other relays, who of them
is present in the documents this relay has local peers in, and what this relay
must tell the others. Pure: no I/O, no asyncio.

:class:`ClusterView` is the core's ``Bus`` (``ratatoskr_client.server.core.bus``).
The core calls it with what its local peers do; the view queues the messages
and hash updates for the Redis driver (:meth:`ClusterView.take_outgoing`). The driver calls it with
what the other relays said (:meth:`ClusterView.apply`) and with state read
from Redis (:meth:`replace_node`, :meth:`reset`, :meth:`doc_fetched`); the
view turns that into the frames the local peers must receive, through the
core's sessions.

Per document with local peers the view knows, from Redis, the peers present on
the other relays. When the first local peer joins a document, the relay
subscribes to the document's channel and then reads the others' presence there
(a *fetch*); until the fetch is in, joiners wait for their
``doc_presence_state`` and the document's messages from other relays change
nothing (the fetch, read after them, already includes their effect). A fetch
result lists, per node, the peers present: applying it sends ``peer_left_doc``
and ``peer_joined_doc`` for the differences, so a view that was only stale
converges without anyone seeing a peer leave and come back.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Final

from ...protocol import (
    PeerDisconnectedFrame,
    PeerIdentityFrame,
    PeerJoinedDocFrame,
    PeerLeftDocFrame,
    UserInfo,
    encode,
)
from ..core.relay import Connection, RelayCore
from .tables import ClusterStats, NodeSnapshot, Outgoing, RemotePeer
from .wire import (
    BusMessage,
    Bye,
    Joined,
    Left,
    Names,
    PeerGone,
    PeerUp,
    Relayed,
    batch_messages,
    encode_body,
    encode_members,
    encode_user,
)

__all__ = ["MAX_QUEUED", "ClusterStats", "ClusterView", "NodeSnapshot", "Outgoing", "RemotePeer"]

#: Messages waiting for the Redis writer at most. Beyond it (Redis slower than
#: the relay's peers) ephemeral messages for other relays are dropped, as a
#: slow peer's are; presence and identity changes are always kept.
MAX_QUEUED: Final = 50_000


def _nothing() -> None:
    pass


class _Doc:
    """A document with local peers present."""

    __slots__ = ("fetch", "gen", "remote", "synced", "waiting")

    def __init__(self, gen: int, *, synced: bool) -> None:
        self.gen = gen
        #: the remote presence is known (or the link is down: the best known)
        self.synced = synced
        #: the remote presence must be read from Redis (again)
        self.fetch = True
        #: peers on other relays present here, in the order learned
        self.remote: dict[str, RemotePeer] = {}
        #: local sessions waiting for their doc_presence_state
        self.waiting: list[Connection] = []


class ClusterView:
    """The core's ``Bus`` (``ratatoskr_client.server.core.bus``): remote peers in,
    local changes out."""

    def __init__(
        self, core: RelayCore, node_id: str, names: Names, *, max_queued: int = MAX_QUEUED
    ) -> None:
        self.core = core
        self.node_id = node_id
        self.names = names
        self.max_queued = max_queued
        self._presence = core.config.server_presence
        #: identities are scoped to documents (see ``server/visibility.py``)
        self._scoped = self._presence and core.config.identity_scope == "document"
        self._nodes: dict[str, dict[str, RemotePeer]] = {}
        self._peers: dict[str, RemotePeer] = {}
        self._docs: dict[str, _Doc] = {}
        self._gen = itertools.count(1)
        #: local changes are queued for Redis (the link is up)
        self.publishing = False
        #: the view has been synchronised with Redis since the link came up
        self.connected = False
        self._messages: list[tuple[str, bool, bytes]] = []
        self._dirty_peers: dict[str, bytes | None] = {}
        self._dirty_docs: set[str] = set()
        #: ephemeral messages not sent to the other relays (link down, queue full)
        self.unpublished = 0
        #: called when something was queued for Redis (the driver's writer wakes)
        self.on_outgoing: Callable[[], None] = _nothing
        #: called when the documents to subscribe to, or to fetch, changed
        self.on_documents: Callable[[], None] = _nothing
        core.attach_bus(self)

    # ------------------------------------------------------------------ inspection

    def stats(self) -> ClusterStats:
        """Current table sizes."""
        return ClusterStats(
            nodes=len(self._nodes),
            remote_peers=len(self._peers),
            remote_memberships=sum(len(d.remote) for d in self._docs.values()),
            documents=len(self._docs),
        )

    def nodes(self) -> tuple[str, ...]:
        """The other nodes whose peers this relay shows."""
        return tuple(self._nodes)

    def remote_presence(self, document_id: str) -> tuple[str, ...]:
        """Peers on other relays present in a document this relay tracks."""
        doc = self._docs.get(document_id)
        return tuple(doc.remote) if doc is not None else ()

    def documents(self) -> Collection[str]:
        """The documents with local peers present: the channels to subscribe to."""
        return self._docs.keys()

    def docs_to_fetch(self) -> dict[str, int]:
        """Document -> generation, for every document whose remote presence
        must be read from Redis; pass the generation back to :meth:`doc_fetched`."""
        return {doc_id: d.gen for doc_id, d in self._docs.items() if d.fetch}

    # ------------------------------------------------------------------ the core's bus

    def peer_authenticated(self, conn: Connection) -> Iterable[bytes]:
        """See ``Bus`` in ``ratatoskr_client.server.core.bus``."""
        if self.publishing:
            user = UserInfo(conn.user_id, conn.name, conn.is_anonymous)
            self._dirty_peers[conn.peer_id] = encode_user(user, conn.identity)
            self._send(self.names.cluster_channel, False, PeerUp(conn.peer_id, user, conn.identity))
        if self._scoped:
            return []  # identities travel with the documents
        return [peer.identity_frame for peer in self._peers.values()]

    def peer_closed(self, conn: Connection) -> None:
        """See ``Bus`` in ``ratatoskr_client.server.core.bus``."""
        if self.publishing:
            self._dirty_peers[conn.peer_id] = None
            self._send(self.names.cluster_channel, False, PeerGone(conn.peer_id))

    def joined(self, document_id: str, conn: Connection) -> None:
        """See ``Bus`` in ``ratatoskr_client.server.core.bus``."""
        if document_id not in self._docs:
            # Connected: joiners wait for the fetch. Not: they get what is known
            # now, and the fetch after reconnecting announces the differences.
            self._docs[document_id] = _Doc(next(self._gen), synced=not self.connected)
            self.on_documents()

    def announce(
        self, document_id: str, conn: Connection, present: bool, gone: bool = False
    ) -> None:
        """See ``Bus`` in ``ratatoskr_client.server.core.bus``."""
        if self.publishing:
            self._dirty_docs.add(document_id)
            message = Joined(conn.peer_id) if present else Left(conn.peer_id, gone)
            self._send(self.names.doc_channel(document_id), True, message)

    def others_present(self, document_id: str) -> bool:
        """See ``Bus`` in ``ratatoskr_client.server.core.bus``."""
        doc = self._docs.get(document_id)
        return doc is None or doc.fetch or bool(doc.remote)

    def left(self, document_id: str, conn: Connection) -> None:
        """See ``Bus`` in ``ratatoskr_client.server.core.bus``."""
        doc = self._docs.get(document_id)
        if doc is None:
            return
        if conn in doc.waiting:
            doc.waiting.remove(conn)
        if not self.core.members(document_id):
            # No local peer left: stop listening, forget who is there elsewhere.
            del self._docs[document_id]
            for peer in doc.remote.values():
                peer.docs.discard(document_id)
            self.on_documents()

    def presence_state(self, document_id: str, conn: Connection) -> tuple[RemotePeer, ...] | None:
        """See ``Bus`` in ``ratatoskr_client.server.core.bus``."""
        doc = self._docs.get(document_id)
        if doc is None:
            return ()
        if not doc.synced:
            doc.waiting.append(conn)
            return None
        return tuple(doc.remote.values())

    def knows(self, conn: Connection, peer_id: str, skip: str | None) -> bool:
        """See ``Bus`` in ``ratatoskr_client.server.core.bus``: the remote peer is
        shown to ``conn`` in a document other than ``skip`` (present there,
        and the local peers were told who is there)."""
        peer = self._peers.get(peer_id)
        if peer is None:
            return False
        local = conn.docs
        for doc_id in peer.docs:
            if doc_id != skip and doc_id in local:
                doc = self._docs.get(doc_id)
                if doc is not None and doc.synced and peer_id in doc.remote:
                    return True
        return False

    def relayed(
        self, document_id: str, sender: Connection, count: int, session_id: str, data: bytes
    ) -> None:
        """See ``Bus`` in ``ratatoskr_client.server.core.bus``."""
        doc = self._docs.get(document_id)
        if doc is not None and not doc.fetch and not doc.remote:
            return  # known: nobody on another relay is present
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

    # ------------------------------------------------------------------ to Redis

    def link_up(self) -> None:
        """The link is up: queue local changes from now on. Call it in the same
        step as reading :meth:`local_state` for the state write."""
        self.publishing = True
        self._messages.clear()
        self._dirty_peers.clear()
        self._dirty_docs.clear()

    def local_state(self) -> tuple[dict[str, bytes], dict[str, bytes]]:
        """This relay's whole state, for its hashes: (peers, docs)."""
        peers = {
            s.peer_id: encode_user(UserInfo(s.user_id, s.name, s.is_anonymous), s.identity)
            for s in self.core.peers()
        }
        docs = {d: encode_members(self.core.presence_shown(d)) for d in self._docs}
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

    # ------------------------------------------------------------------ from Redis

    def link_down(self) -> None:
        """The link is gone: stop queueing; documents are fetched again once it
        is back, and joiners waiting for a fetch get what is known now."""
        self.publishing = False
        self.connected = False
        self._messages.clear()
        self._dirty_peers.clear()
        self._dirty_docs.clear()
        for doc_id, doc in self._docs.items():
            doc.fetch = True
            self._settle(doc_id, doc)

    def apply(self, node: str, message: BusMessage, document_id: str | None) -> None:
        """A message from another node; ``document_id`` when it came on a
        document channel. Messages from nodes this view does not know are
        ignored: the node's hello, and the read that follows, will tell."""
        peers = self._nodes.get(node)
        if peers is None:
            return
        kind = type(message)
        if document_id is not None:
            doc = self._docs.get(document_id)
            if doc is None:
                return  # unsubscribed meanwhile
            if kind is Relayed:
                relayed = message
                assert isinstance(relayed, Relayed)
                sender = peers.get(relayed.peer_id)
                if sender is not None:
                    # Document scope: a sender not present here may be unknown
                    # to the members; the core introduces it to those.
                    introduce = (
                        sender.identity_frame
                        if self._scoped and relayed.peer_id not in doc.remote
                        else None
                    )
                    self.core.deliver_remote(
                        (node, relayed.peer_id),
                        document_id,
                        relayed.count,
                        relayed.session_id,
                        relayed.data,
                        sender.identity,
                        introduce,
                    )
            elif not doc.fetch and isinstance(message, Joined | Left):
                peer = peers.get(message.peer_id)
                if peer is None:
                    return
                if isinstance(message, Joined):
                    self._add_member(document_id, doc, peer)
                else:
                    self._remove_member(document_id, doc, peer, gone=message.gone)
            return
        if isinstance(message, PeerUp):
            self._add_peer(node, message.peer_id, message.user, message.identity)
        elif isinstance(message, PeerGone):
            peer = peers.get(message.peer_id)
            if peer is not None:
                self._remove_peer(peer)
        elif isinstance(message, Bye):
            self.drop_node(node)

    def replace_node(
        self, node: str, snapshot: NodeSnapshot, docs: Mapping[str, int] | None = None
    ) -> None:
        """Make the view of ``node`` match its state read from Redis. Documents
        waiting for a fetch are left to it, except those in ``docs`` (document
        -> generation, read with this snapshot)."""
        if node == self.node_id:
            return
        peers = self._nodes.setdefault(node, {})
        for peer_id in [p for p in peers if p not in snapshot.peers]:
            self._remove_peer(peers[peer_id])
        for peer_id, user in snapshot.peers.items():
            self._add_peer(node, peer_id, user, snapshot.identities.get(peer_id))
        for doc_id, doc in self._docs.items():
            if not doc.fetch or (docs is not None and docs.get(doc_id) == doc.gen):
                self._set_members(doc_id, doc, {node: snapshot.docs.get(doc_id, ())}, node)

    def reset(self, snapshots: Mapping[str, NodeSnapshot], docs: Mapping[str, int]) -> None:
        """The link is back and the whole state was read: every live node's
        snapshot, with the presence in ``docs`` (document -> generation, from
        :meth:`docs_to_fetch`). Nodes missing from it are kept until their
        deadline passes (see :mod:`.registry`)."""
        for node, snapshot in snapshots.items():
            self.replace_node(node, snapshot, docs)
        for doc_id, gen in docs.items():
            doc = self._docs.get(doc_id)
            if doc is not None and doc.gen == gen and doc.fetch:
                doc.fetch = False
                self._settle(doc_id, doc)
        self.connected = True
        if any(doc.fetch for doc in self._docs.values()):
            self.on_documents()

    def doc_fetched(self, document_id: str, gen: int, members: Mapping[str, Sequence[str]]) -> None:
        """The presence in one document, per node, read after subscribing to it."""
        doc = self._docs.get(document_id)
        if doc is None or doc.gen != gen or not doc.fetch:
            return  # left, or left and joined again, meanwhile
        self._set_members(document_id, doc, members, None)
        doc.fetch = False
        self._settle(document_id, doc)

    def drop_node(self, node: str) -> None:
        """``node`` is gone: every peer of it leaves and disconnects."""
        peers = self._nodes.pop(node, None)
        if peers:
            for peer in list(peers.values()):
                self._remove_peer(peer)

    def drop_all(self) -> None:
        """Forget every other node (cut off from Redis for too long)."""
        for node in list(self._nodes):
            self.drop_node(node)

    # ------------------------------------------------------------------ frames to local peers

    def _broadcast(self, frame: bytes) -> None:
        # Global identity scope only: in document scope identities and
        # disconnections go with the documents (see _add_member, _remove_member).
        if self._presence and not self._scoped:
            for conn in self.core.peers():
                conn.outbox.send(frame)

    def _tell_present(self, document_id: str, frame: bytes) -> None:
        if self._presence:
            for conn in self.core.members(document_id):
                conn.outbox.send(frame)

    def _add_peer(self, node: str, peer_id: str, user: UserInfo, identity: str | None) -> None:
        if peer_id in self._peers:
            return
        frame = encode(PeerIdentityFrame(peer_id, user))
        peer = RemotePeer(node, peer_id, user, frame, identity=identity)
        self._nodes.setdefault(node, {})[peer_id] = peer
        self._peers[peer_id] = peer
        self._broadcast(frame)

    def _remove_peer(self, peer: RemotePeer) -> None:
        for doc_id in list(peer.docs):
            doc = self._docs.get(doc_id)
            if doc is not None:
                self._remove_member(doc_id, doc, peer, gone=True)
        node_peers = self._nodes.get(peer.node)
        if node_peers is not None:
            node_peers.pop(peer.peer_id, None)
        del self._peers[peer.peer_id]
        self.core.release_remote((peer.node, peer.peer_id))
        self._broadcast(encode(PeerDisconnectedFrame(peer.peer_id)))

    def _add_member(self, document_id: str, doc: _Doc, peer: RemotePeer) -> None:
        if peer.peer_id in doc.remote:
            return
        doc.remote[peer.peer_id] = peer
        peer.docs.add(document_id)
        if not doc.synced:
            return
        joined = encode(PeerJoinedDocFrame(document_id, peer.peer_id))
        if self._scoped:
            for conn in self.core.members(document_id):
                if not self.knows(conn, peer.peer_id, document_id):
                    conn.outbox.send(peer.identity_frame)
                conn.outbox.send(joined)
        else:
            self._tell_present(document_id, joined)

    def _remove_member(
        self, document_id: str, doc: _Doc, peer: RemotePeer, *, gone: bool = False
    ) -> None:
        if doc.remote.pop(peer.peer_id, None) is None:
            return
        peer.docs.discard(document_id)
        if not doc.synced:
            return
        left = encode(PeerLeftDocFrame(document_id, peer.peer_id))
        if gone and self._scoped:
            # Its connection closed: each local peer that no longer knows it
            # through another document hears so, after its last leave.
            bye = encode(PeerDisconnectedFrame(peer.peer_id))
            for conn in self.core.members(document_id):
                conn.outbox.send(left)
                if not self.knows(conn, peer.peer_id, None):
                    conn.outbox.send(bye)
        else:
            self._tell_present(document_id, left)

    def _set_members(
        self,
        document_id: str,
        doc: _Doc,
        members: Mapping[str, Sequence[str]],
        only_node: str | None,
    ) -> None:
        """Make ``doc``'s remote presence (of ``only_node``, or of every node)
        equal ``members``, announcing the differences. Peers whose identity is
        not known yet are skipped: their join message follows their identity."""
        want: dict[str, RemotePeer] = {}
        for node, peer_ids in members.items():
            node_peers = self._nodes.get(node)
            if node_peers is None:
                continue
            for peer_id in peer_ids:
                peer = node_peers.get(peer_id)
                if peer is not None:
                    want[peer_id] = peer
        for peer_id, peer in list(doc.remote.items()):
            if (only_node is None or peer.node == only_node) and peer_id not in want:
                self._remove_member(document_id, doc, peer)
        for peer in want.values():
            self._add_member(document_id, doc, peer)

    def _settle(self, document_id: str, doc: _Doc) -> None:
        """The remote presence is as known as it gets: answer the waiting joiners."""
        if doc.synced:
            return
        doc.synced = True
        waiting, doc.waiting = doc.waiting, []
        for conn in waiting:
            if document_id in conn.docs and self._presence:
                self.core.send_presence_state(conn, document_id, tuple(doc.remote.values()))
