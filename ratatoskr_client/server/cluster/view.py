"""The cluster as one relay sees it: the core's bus, and what the Redis driver talks to. Pure.

:class:`ClusterView` is the core's ``Bus`` (``ratatoskr_client.server.core.bus``)
and what the Redis driver (:mod:`.redis_link`) talks to. It is two parts:

* :class:`~.remote.RemotePresence` (``view.remote``): the peers on the other
  relays and who of them is present in our documents, from what the other
  relays say and what is read from Redis;
* :class:`~.publisher.Publisher` (``view.publisher``): what this relay tells
  the others, queued for the driver (:meth:`ClusterView.take_outgoing`).

The view routes each call to its part; the one rule it adds is that a
message is not published for a document known to have nobody elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from ..core.relay import Connection, RelayCore
from ..core.resume import HandedPeer
from .publisher import MAX_QUEUED, Outgoing, Publisher
from .remote import RemotePresence
from .tables import ClusterStats, NodeSnapshot, RemotePeer
from .wire import BusMessage, Claim, Handover, Names, Refusal

__all__ = ["MAX_QUEUED", "ClusterStats", "ClusterView", "NodeSnapshot", "Outgoing", "RemotePeer"]


class ClusterView:
    """The core's ``Bus``: local changes out (:attr:`publisher`), remote
    peers in (:attr:`remote`)."""

    def __init__(
        self, core: RelayCore, node_id: str, names: Names, *, max_queued: int = MAX_QUEUED
    ) -> None:
        self.core = core
        self.node_id = node_id
        self.names = names
        self.remote = RemotePresence(core, node_id)
        self.publisher = Publisher(core, node_id, names, max_queued=max_queued)
        #: called with a node found gone, after its peers were removed (the
        #: webhooks sweep its share of the cluster's occupancy)
        self.on_node_dropped: Callable[[str], None] = _ignore
        core.attach_bus(self)

    # ------------------------------------------------------------------ the core's bus

    def peer_authenticated(self, conn: Connection) -> None:
        """See ``Bus`` in ``ratatoskr_client.server.core.bus``."""
        self.publisher.peer_up(conn)

    def peer_closed(self, conn: Connection) -> None:
        """See ``Bus`` in ``ratatoskr_client.server.core.bus``."""
        self.publisher.peer_gone(conn)

    def joined(self, document_id: str, conn: Connection) -> None:
        """See ``Bus`` in ``ratatoskr_client.server.core.bus``."""
        self.remote.joined(document_id)

    def left(self, document_id: str, conn: Connection) -> None:
        """See ``Bus`` in ``ratatoskr_client.server.core.bus``."""
        self.remote.left(document_id, conn)

    def announce(
        self, document_id: str, conn: Connection, present: bool, gone: bool = False
    ) -> None:
        """See ``Bus`` in ``ratatoskr_client.server.core.bus``."""
        self.publisher.announce(document_id, conn, present, gone)

    def remote_peers(self) -> Iterable[RemotePeer]:
        """See ``Bus`` in ``ratatoskr_client.server.core.bus``."""
        return self.remote.peers()

    def others_present(self, document_id: str) -> bool:
        """See ``Bus`` in ``ratatoskr_client.server.core.bus``."""
        return self.remote.others_present(document_id)

    def presence_state(self, document_id: str, conn: Connection) -> tuple[RemotePeer, ...] | None:
        """See ``Bus`` in ``ratatoskr_client.server.core.bus``."""
        return self.remote.presence_state(document_id, conn)

    def knows(self, conn: Connection, peer_id: str, skip: str | None) -> bool:
        """See ``Bus`` in ``ratatoskr_client.server.core.bus``."""
        return self.remote.knows(conn, peer_id, skip)

    def relayed(
        self, document_id: str, sender: Connection, count: int, session_id: str, data: bytes
    ) -> None:
        """See ``Bus`` in ``ratatoskr_client.server.core.bus``: published unless
        the document is known to have nobody on another relay."""
        if self.remote.others_present(document_id):
            self.publisher.relayed(document_id, sender, count, session_id, data)

    # ------------------------------------------------------------------ resuming across relays

    def holder(self, peer_id: str) -> str | None:
        """See ``Bus`` in ``ratatoskr_client.server.core.bus``."""
        return self.remote.holder(peer_id)

    def claim(self, node: str, request: str, peer_id: str, digest: bytes, user: str | None) -> None:
        """See ``Bus`` in ``ratatoskr_client.server.core.bus``."""
        self.publisher.control(Claim(node, request, peer_id, digest, user))

    def hand_over(self, node: str, request: str, peer: HandedPeer | None) -> None:
        """See ``Bus`` in ``ratatoskr_client.server.core.bus``."""
        answer = Refusal(node, request) if peer is None else Handover(node, request, peer)
        self.publisher.control(answer)

    def handed_off(self, conn: Connection, node: str, documents: tuple[str, ...]) -> None:
        """See ``Bus`` in ``ratatoskr_client.server.core.bus``."""
        self.remote.handed_off(conn, node, documents)
        self.publisher.handed_off(conn, node, documents)

    def adopted(self, conn: Connection) -> None:
        """See ``Bus`` in ``ratatoskr_client.server.core.bus``."""
        self.remote.adopted(conn.peer_id)
        self.publisher.adopted(conn)

    # ------------------------------------------------------------------ the link

    def link_up(self) -> None:
        """The link is up: queue local changes from now on. Call it in the same
        step as reading :meth:`local_state` for the state write."""
        self.publisher.start()

    def link_down(self) -> None:
        """The link is gone: stop queueing; documents are fetched again once it
        is back, and joiners waiting for a fetch get what is known now."""
        self.publisher.stop()
        self.remote.link_down()

    def local_state(self) -> tuple[dict[str, bytes], dict[str, bytes]]:
        """This relay's whole state, for its hashes: (peers, docs)."""
        return self.publisher.local_state(self.remote.documents())

    def take_outgoing(self) -> Outgoing | None:
        """Everything queued for Redis since the last call (None if nothing)."""
        return self.publisher.take_outgoing()

    def apply(self, node: str, message: BusMessage, document_id: str | None) -> None:
        """A message from another node: a resume across relays addressed to
        this one goes to the core (others' are ignored); the rest, see
        :meth:`.RemotePresence.apply`."""
        if isinstance(message, Claim | Handover | Refusal):
            if message.to != self.node_id or node not in self.remote.nodes():
                return
            if isinstance(message, Claim):
                self.core.claim_requested(
                    node, message.request, message.peer_id, message.digest, message.user
                )
            else:
                peer = message.peer if isinstance(message, Handover) else None
                self.core.claim_answered(message.request, peer)
            return
        self.remote.apply(node, message, document_id)

    def replace_node(
        self, node: str, snapshot: NodeSnapshot, docs: Mapping[str, int] | None = None
    ) -> None:
        """``node``'s state read from Redis: see :meth:`.RemotePresence.replace_node`."""
        self.remote.replace_node(node, snapshot, docs)

    def reset(self, snapshots: Mapping[str, NodeSnapshot], docs: Mapping[str, int]) -> None:
        """The whole state read from Redis: see :meth:`.RemotePresence.reset`."""
        self.remote.reset(snapshots, docs)

    def doc_fetched(self, document_id: str, gen: int, members: Mapping[str, Sequence[str]]) -> None:
        """One document's presence read from Redis: see :meth:`.RemotePresence.doc_fetched`."""
        self.remote.doc_fetched(document_id, gen, members)

    def drop_node(self, node: str) -> None:
        """``node`` is gone: every peer of it leaves and disconnects."""
        self.remote.drop_node(node)
        self.on_node_dropped(node)

    def drop_all(self) -> None:
        """Forget every other node (cut off from Redis for too long)."""
        self.remote.drop_all()

    # ------------------------------------------------------------------ inspection

    @property
    def connected(self) -> bool:
        """The view has been synchronised with Redis since the link came up."""
        return self.remote.connected

    @property
    def unpublished(self) -> int:
        """Ephemeral messages not sent to the other relays (link down, queue full)."""
        return self.publisher.unpublished

    @property
    def on_outgoing(self) -> Callable[[], None]:
        """Called when something was queued for Redis (the driver's writer wakes)."""
        return self.publisher.on_outgoing

    @on_outgoing.setter
    def on_outgoing(self, callback: Callable[[], None]) -> None:
        self.publisher.on_outgoing = callback

    @property
    def on_documents(self) -> Callable[[], None]:
        """Called when the documents to subscribe to, or to fetch, changed."""
        return self.remote.on_documents

    @on_documents.setter
    def on_documents(self, callback: Callable[[], None]) -> None:
        self.remote.on_documents = callback

    def stats(self) -> ClusterStats:
        """Current table sizes."""
        return self.remote.stats()

    def nodes(self) -> tuple[str, ...]:
        """The other nodes whose peers this relay shows."""
        return self.remote.nodes()

    def remote_presence(self, document_id: str) -> tuple[str, ...]:
        """Peers on other relays present in a document this relay tracks."""
        return self.remote.remote_presence(document_id)

    def documents(self) -> Collection[str]:
        """The documents with local peers present: the channels to subscribe to."""
        return self.remote.documents()

    def docs_to_fetch(self) -> dict[str, int]:
        """Document -> generation, for every document whose remote presence
        must be read from Redis; pass the generation back to :meth:`doc_fetched`."""
        return self.remote.docs_to_fetch()


def _ignore(node: str) -> None:
    """The default :attr:`ClusterView.on_node_dropped`."""
