"""The peers on the other relays of a cluster, as one relay knows them. Pure: no I/O.

:class:`RemotePresence` is the model of the remote peers: who is connected to
each other node, and who of them is present in the documents this relay has
local peers in. The Redis driver feeds it what the other relays said
(:meth:`~RemotePresence.apply`) and state read from Redis
(:meth:`~RemotePresence.replace_node`, :meth:`~RemotePresence.reset`,
:meth:`~RemotePresence.doc_fetched`); what the local peers must hear about it
goes out through the core's own writers: the identity and presence frames of
:class:`~ratatoskr_client.server.core.visibility.Visibility` (the same rules of
identity scope as for local peers) and the fan-out of
:meth:`~ratatoskr_client.server.core.relay.RelayCore.deliver_remote`.

When the first local peer joins a document, the relay subscribes to the
document's channel and then reads the others' presence there (a *fetch*);
until the fetch is in, joiners wait for their ``doc_presence_state`` and the
document's messages from other relays change nothing (the fetch, read after
them, already includes their effect). A fetch result lists, per node, the
peers present: applying it sends ``peer_left_doc`` and ``peer_joined_doc`` for
the differences, so a view that was only stale converges without anyone seeing
a peer leave and come back.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from ...protocol import PeerDisconnectedFrame, PeerIdentityFrame, UserInfo, encode
from ..core.relay import Connection, RelayCore
from .tables import ClusterStats, NodeSnapshot, RemotePeer
from .wire import BusMessage, Bye, Joined, Left, Moved, PeerGone, PeerUp, Relayed

__all__ = ["RemotePresence"]


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


class RemotePresence:
    """The peers of the other relays, and their presence in our documents."""

    def __init__(self, core: RelayCore, node_id: str) -> None:
        self.core = core
        self.node_id = node_id
        #: node -> its peers by peer id
        self._nodes: dict[str, dict[str, RemotePeer]] = {}
        #: every remote peer by peer id
        self._peers: dict[str, RemotePeer] = {}
        #: the documents with local peers present
        self._docs: dict[str, _Doc] = {}
        self._gen = itertools.count(1)
        #: synchronised with Redis since the link came up
        self.connected = False
        #: called when the documents to subscribe to, or to fetch, changed
        self.on_documents: Callable[[], None] = _nothing

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

    def peers(self) -> Iterable[RemotePeer]:
        """Every peer connected to another node."""
        return self._peers.values()

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

    # ------------------------------------------------------------------ questions of the core

    def others_present(self, document_id: str) -> bool:
        """True unless the document is known to have no peer on another relay."""
        doc = self._docs.get(document_id)
        return doc is None or doc.fetch or bool(doc.remote)

    def presence_state(self, document_id: str, conn: Connection) -> tuple[RemotePeer, ...] | None:
        """The remote peers present, for ``conn``'s ``doc_presence_state``;
        None until the fetch is in (then ``conn`` gets it once it is)."""
        doc = self._docs.get(document_id)
        if doc is None:
            return ()
        if not doc.synced:
            doc.waiting.append(conn)
            return None
        return tuple(doc.remote.values())

    def holder(self, peer_id: str) -> str | None:
        """The node ``peer_id`` is connected to (or held by), if another one."""
        peer = self._peers.get(peer_id)
        return peer.node if peer is not None else None

    def knows(self, conn: Connection, peer_id: str, skip: str | None) -> bool:
        """The remote peer is shown to ``conn`` in a document other than
        ``skip`` (present there, and the local peers were told who is there)."""
        peer = self._peers.get(peer_id)
        if peer is None:
            return False
        local = conn.docs
        again = conn.reintroduce  # (resumed: only the documents joined since count)
        for doc_id in peer.docs:
            if doc_id != skip and doc_id in local and (again is None or doc_id not in again):
                doc = self._docs.get(doc_id)
                if doc is not None and doc.synced and peer_id in doc.remote:
                    return True
        return False

    # ------------------------------------------------------------------ local documents

    def joined(self, document_id: str) -> None:
        """A local peer became present in a document: track it."""
        if document_id not in self._docs:
            # Connected: joiners wait for the fetch. Not: they get what is known
            # now, and the fetch after reconnecting announces the differences.
            self._docs[document_id] = _Doc(next(self._gen), synced=not self.connected)
            self.on_documents()

    def left(self, document_id: str, conn: Connection) -> None:
        """A local peer is no longer present in a document."""
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

    # ------------------------------------------------------------------ handovers

    def handed_off(self, conn: Connection, node: str, documents: Iterable[str]) -> None:
        """Our peer ``conn`` is ``node``'s now, present in ``documents``: it
        stays present, silently, in those we track (our members were told it
        is there; it just is elsewhere now)."""
        user = UserInfo(conn.user_id, conn.name, conn.is_anonymous)
        peer = RemotePeer(node, conn.peer_id, user, conn.identity_frame, identity=conn.identity)
        self._nodes.setdefault(node, {})[conn.peer_id] = peer
        self._peers[conn.peer_id] = peer
        for doc_id in documents:
            doc = self._docs.get(doc_id)
            if doc is not None:
                doc.remote[conn.peer_id] = peer
                peer.docs.add(doc_id)

    def adopted(self, peer_id: str) -> None:
        """The remote peer ``peer_id`` was handed over to this relay: it is
        one of ours now, and no longer anyone else's here (nobody is told)."""
        peer = self._peers.pop(peer_id, None)
        if peer is None:
            return
        for doc_id in peer.docs:
            doc = self._docs.get(doc_id)
            if doc is not None:
                doc.remote.pop(peer_id, None)
        node_peers = self._nodes.get(peer.node)
        if node_peers is not None:
            node_peers.pop(peer_id, None)
        self.core.release_remote((peer.node, peer_id))

    def _move(self, peer: RemotePeer, node: str) -> None:
        """``peer`` is connected to ``node`` now (a resume there): the same
        peer, present where it was; nobody is told."""
        if peer.node == node or node not in self._nodes:
            return
        old = self._nodes.get(peer.node)
        if old is not None:
            old.pop(peer.peer_id, None)
        self.core.release_remote((peer.node, peer.peer_id))
        peer.node = node
        self._nodes[node][peer.peer_id] = peer

    # ------------------------------------------------------------------ from Redis

    def link_down(self) -> None:
        """The link is gone: documents are fetched again once it is back, and
        joiners waiting for a fetch get what is known now."""
        self.connected = False
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
        if document_id is not None:
            doc = self._docs.get(document_id)
            if doc is None:
                return  # unsubscribed meanwhile
            if type(message) is Relayed:
                sender = peers.get(message.peer_id)
                if sender is not None:
                    self.core.deliver_remote(
                        (node, message.peer_id),
                        document_id,
                        message.count,
                        message.session_id,
                        message.data,
                        sender.identity,
                        sender,
                        present=message.peer_id in doc.remote,
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
        elif isinstance(message, Moved):
            moved = self._peers.get(message.peer_id)
            if moved is not None and moved.node == node:
                self._move(moved, message.node)
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

    # ------------------------------------------------------------------ changes, told locally

    def _add_peer(self, node: str, peer_id: str, user: UserInfo, identity: str | None) -> None:
        known = self._peers.get(peer_id)
        if known is not None:
            # (Another node's peer announced by this one: it was handed over.)
            self._move(known, node)
            return
        frame = encode(PeerIdentityFrame(peer_id, user))
        peer = RemotePeer(node, peer_id, user, frame, identity=identity)
        self._nodes.setdefault(node, {})[peer_id] = peer
        self._peers[peer_id] = peer
        self.core.visibility.broadcast(frame)

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
        self.core.visibility.broadcast(encode(PeerDisconnectedFrame(peer.peer_id)))

    def _add_member(self, document_id: str, doc: _Doc, peer: RemotePeer) -> None:
        if peer.peer_id in doc.remote:
            return
        doc.remote[peer.peer_id] = peer
        peer.docs.add(document_id)
        if doc.synced:
            self.core.visibility.tell_joined(document_id, peer)

    def _remove_member(
        self, document_id: str, doc: _Doc, peer: RemotePeer, *, gone: bool = False
    ) -> None:
        if doc.remote.pop(peer.peer_id, None) is None:
            return
        peer.docs.discard(document_id)
        if doc.synced:
            self.core.visibility.tell_left(document_id, peer, gone=gone)

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
            if document_id in conn.docs:
                self.core.visibility.send_presence_state(
                    conn, document_id, tuple(doc.remote.values())
                )
