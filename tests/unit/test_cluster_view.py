"""The cluster's view logic (``ClusterView``) with real relay cores and an
in-memory, synchronous stand-in for Redis: no I/O, no event loop.

:class:`Hub` does what the Redis driver does — moves each node's queued
messages to the nodes subscribed to their channel, keeps each node's hashes,
and reads them back for fetches, hellos and resets — in one thread, so every
interleaving a test wants can be staged exactly.
"""

from __future__ import annotations

import random
from typing import Any

import cbor2
import pytest

from ratatoskr_client.protocol import MAX_COUNT, UserInfo, decode
from ratatoskr_client.server import RelayConfig, RelayCore
from ratatoskr_client.server.cluster.view import ClusterView, NodeSnapshot
from ratatoskr_client.server.cluster.wire import (
    Joined,
    Names,
    PeerUp,
    decode_members,
    decode_message,
    decode_peer,
)
from ratatoskr_client.server.config import IdentityScope
from ratatoskr_client.server.core.relay import PRESENCE_WINDOW, Connection
from ratatoskr_client.server.core.visibility import NUDGE_SESSION

NAMES = Names("ratatoskr:0")
#: Every node of a cluster runs the same configuration, this URL included: it
#: keys the anonymous identities, which must agree across nodes.
CONFIG = RelayConfig(open=True, redis_url="redis://127.0.0.1:6379/0")


class Outbox:
    """Collects frames; ``view`` replays them as a client would see them."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        #: the state nudges of relays that had no copy of anyone's state yet
        #: (issue 22; Visibility._nudge), kept apart from what the tests count
        self.nudges: list[dict[str, Any]] = []

    def left(self, doc: str) -> None:
        """The peer itself left ``doc`` (no frame says so): a marker for
        :meth:`scoped_identities`."""
        self.frames.append({"type": "_left_myself", "documentId": doc})

    def send(self, frame: bytes) -> None:
        self.frames.append(cbor2.loads(frame))

    def send_ephemeral(self, prefix: bytes, suffix: bytes) -> None:
        frame = cbor2.loads(prefix + suffix)
        if frame["sessionId"].startswith(NUDGE_SESSION):
            self.nudges.append(frame)
            return
        self.frames.append(frame)

    def close(self, code: int, reason: str) -> None:
        pass

    def presence(self, doc: str) -> list[str]:
        """The peer's view of ``doc``: its last ``doc_presence_state`` (which
        replaces anything before it, as in the client) and the changes since."""
        frames = [f for f in self.frames if f.get("documentId") == doc]
        states = [i for i, f in enumerate(frames) if f["type"] == "doc_presence_state"]
        peers: list[str] = []
        for f in frames[states[-1] if states else 0 :]:
            if f["type"] == "doc_presence_state":
                peers = list(f["peers"])
            elif f["type"] == "peer_joined_doc":
                assert f["peerId"] not in peers, f"joined twice: {f}"
                peers.append(f["peerId"])
            elif f["type"] == "peer_left_doc" and f["peerId"] in peers:
                peers.remove(f["peerId"])
        return peers

    def identities(self) -> set[str]:
        known: set[str] = set()
        for f in self.frames:
            if f["type"] == "peer_identity":
                known.add(f["peerId"])
            elif f["type"] == "peer_disconnected":
                known.discard(f["peerId"])
        return known

    def scoped_identities(self) -> set[str]:
        """The identities a client keeps in document scope, replaying the
        frames under the scope's rules: an identity arrives right before the
        frame that needs it (a join, a state, a message); a peer's identity
        is kept while it is in one of our documents; ``peer_disconnected``
        comes only for a peer we knew, right after its last ``peer_left_doc``."""
        me = self.frames[0]["clientPeerId"]
        known: set[str] = set()
        docs: dict[str, set[str]] = {}
        incoming: set[str] = set()
        departing: set[str] = set()  # out of our last document by the frame before

        def forget(pids: set[str]) -> None:
            for pid in pids:
                if not any(pid in members for members in docs.values()):
                    departing.add(pid)

        for f in self.frames[1:]:
            kind, doc = f["type"], f.get("documentId")
            if kind == "peer_disconnected":
                assert f["peerId"] in departing, f"not right after its last leave: {f}"
                known.discard(f["peerId"])
            known -= departing
            departing.clear()
            if kind == "peer_identity":
                assert f["peerId"] != me
                (known if f["peerId"] in known else incoming).add(f["peerId"])
                continue
            if kind == "peer_joined_doc":
                assert f["peerId"] in known | incoming, f"joined before its identity: {f}"
                known.add(f["peerId"])
                docs.setdefault(doc, set()).add(f["peerId"])
            elif kind == "doc_presence_state":
                before = docs.get(doc, set())
                peers = set(f["peers"]) - {me}
                assert peers <= known | incoming, f"state before identities: {f}"
                known |= peers
                docs[doc] = peers
                forget(before - peers)
            elif kind == "peer_left_doc":
                if f["peerId"] == me:
                    forget(docs.pop(doc, set()))  # expired: nothing more about it
                else:
                    docs.get(doc, set()).discard(f["peerId"])
                    forget({f["peerId"]})
            elif kind == "_left_myself":
                forget(docs.pop(doc, set()))
            elif kind == "ephemeral":
                assert f["senderId"] in known | incoming, f"message from a stranger: {f}"
            incoming.clear()
        return known - departing

    def messages(self, doc: str) -> list[Any]:
        return [
            (f["senderId"], cbor2.loads(f["data"]))
            for f in self.frames
            if f["type"] == "ephemeral" and f["documentId"] == doc
        ]


class Node:
    def __init__(self, hub: Hub, node_id: str) -> None:
        self.hub = hub
        self.id = node_id
        config = CONFIG.with_(identity_scope=hub.scope)
        self.core = RelayCore(config, server_peer_id=f"relay-{node_id}", clock=hub.clock)
        self.view = ClusterView(self.core, node_id, NAMES)
        self.up = False
        self.peers: dict[str, Connection] = {}
        self.counts: dict[str, int] = {}

    # ------------------------------------------------------------------ peers

    def connect(self, address: str = "") -> Connection:
        session = self.core.open(Outbox(), address)
        self.core.receive(session, cbor2.dumps({"type": "auth", "anonymous": True}))
        self.peers[session.peer_id] = session
        return session

    def ephemeral(self, session: Connection, doc: str, payload: Any, **extra: Any) -> None:
        count = self.counts[session.peer_id] = self.counts.get(session.peer_id, 0) + 1
        frame = {
            "type": "ephemeral",
            "documentId": doc,
            "count": count,
            "sessionId": f"s-{session.peer_id}",
            "data": cbor2.dumps(payload),
            **extra,
        }
        self.core.receive(session, cbor2.dumps(frame))

    def presence(self, session: Connection, doc: str, status: str) -> None:
        if status == "leave" and doc in session.docs:
            assert isinstance(session.outbox, Outbox)
            session.outbox.left(doc)
        self.ephemeral(session, doc, {"type": "presence", "status": status, "documentId": doc})

    def close(self, session: Connection) -> None:
        self.core.close(session)
        del self.peers[session.peer_id]

    # ------------------------------------------------------------------ what Redis holds

    def snapshot(self, docs: Any = None) -> NodeSnapshot:
        decoded = {p: decode_peer(v) for p, v in self.hub.peers[self.id].items()}
        peers = {p: user for p, (user, _) in decoded.items()}
        identities = {p: i for p, (_, i) in decoded.items() if i is not None}
        held = self.hub.docs[self.id]
        wanted = held if docs is None else [d for d in docs if d in held]
        return NodeSnapshot(peers, {d: decode_members(held[d]) for d in wanted}, identities)


class Hub:
    """Redis, for a few ClusterViews: hashes, channels, subscriptions."""

    def __init__(self, scope: IdentityScope = "global") -> None:
        #: the identity scope of every node
        self.scope: IdentityScope = scope
        #: the nodes' clock (fake: moved by :meth:`settle` only)
        self.now = 1000.0
        self.nodes: dict[str, Node] = {}
        self.peers: dict[str, dict[str, bytes]] = {}
        self.docs: dict[str, dict[str, bytes]] = {}

    def add(self, node_id: str, *, connect: bool = True) -> Node:
        node = self.nodes[node_id] = Node(self, node_id)
        self.peers[node_id], self.docs[node_id] = {}, {}
        if connect:
            self.connect(node)
        return node

    def clock(self) -> float:
        return self.now

    def settle(self) -> None:
        """Let every held presence change go out (time passes), and deliver it."""
        while any(n.core.held_documents() for n in self.nodes.values()):
            self.now += 1.0
            for node in self.nodes.values():
                node.core.flush_held()
            self.pump()

    def live(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.up]

    def connect(self, node: Node) -> None:
        """The node's link comes up: state write, hello, full read."""
        node.view.link_up()
        peers, docs = node.view.local_state()
        self.peers[node.id], self.docs[node.id] = dict(peers), dict(docs)
        node.up = True
        for other in self.live():  # they hear its hello and read its state
            if other is not node and other.view.connected:
                other.view.replace_node(node.id, node.snapshot(other.view.documents()))
        fetch = node.view.docs_to_fetch()
        snaps = {o.id: o.snapshot(fetch) for o in self.live() if o is not node}
        node.view.reset(snaps, fetch)

    def disconnect(self, node: Node) -> None:
        node.up = False
        node.view.link_down()

    def pump(self) -> None:
        """Deliver everything queued, and do every pending fetch, until quiet."""
        busy = True
        while busy:
            busy = False
            for node in self.live():
                for doc, gen in node.view.docs_to_fetch().items():
                    if node.view.connected:
                        members = {
                            o.id: decode_members(self.docs[o.id][doc])
                            for o in self.live()
                            if o is not node and doc in self.docs[o.id]
                        }
                        node.view.doc_fetched(doc, gen, members)
                        busy = True
                out = node.view.take_outgoing()
                if out is None:
                    continue
                busy = True
                self.peers[node.id].update(out.peers_set)
                for p in out.peers_del:
                    self.peers[node.id].pop(p, None)
                self.docs[node.id].update(out.docs_set)
                for d in out.docs_del:
                    self.docs[node.id].pop(d, None)
                for channel, sharded, data in out.messages:
                    sender, bodies = decode_message(data)
                    doc = NAMES.document_of(channel)
                    assert sharded == (doc is not None)
                    for other in self.live():
                        if other is node:
                            continue
                        for body in bodies:
                            if doc is None or doc in other.view.documents():
                                other.view.apply(sender, body, doc)

    def check(self, docs: list[str]) -> None:
        """Every peer's view equals the truth, cluster-wide (once the held
        presence changes are out). Fails if there is nobody to check, or no
        peer in any of ``docs``: a check of nothing proves nothing."""
        self.settle()
        everyone = {p: n for n in self.live() for p in n.peers}
        assert everyone, "no peer to check"
        checked: list[tuple[str, str]] = []
        for node in self.live():
            for peer_id, session in node.peers.items():
                outbox = session.outbox
                assert isinstance(outbox, Outbox)
                if self.scope == "global":
                    assert outbox.identities() == set(everyone) - {peer_id}, peer_id
                else:
                    # Exactly the peers it shares a document with.
                    sharing = {
                        p
                        for doc in session.docs
                        for n in self.live()
                        for p in (*n.core.presence_shown(doc), *n.view.remote_presence(doc))
                    }
                    assert outbox.scoped_identities() == sharing - {peer_id}, peer_id
                for doc in docs:
                    if doc in session.docs:
                        truth = {p for n in self.live() for p in n.core.presence(doc)}
                        seen = outbox.presence(doc)
                        assert sorted(seen) == sorted(truth), (doc, peer_id)
                        checked.append((doc, peer_id))
        assert checked, f"no peer present in {docs}"


@pytest.fixture
def hub() -> Hub:
    """Nodes in the plan's global identity scope (what most tests here check)."""
    return Hub()


@pytest.fixture(params=["global", "document"])
def any_hub(request: pytest.FixtureRequest) -> Hub:
    """Nodes in either identity scope."""
    return Hub(request.param)


def test_presence_identities_and_messages_across_two_nodes(hub: Hub) -> None:
    a, b = hub.add("aaaaaaaaaaaa"), hub.add("bbbbbbbbbbbb")
    pa = a.connect()
    hub.pump()
    pb = b.connect()
    # b's initial sync lists a's peer, from a's identity message.
    assert [f["peerId"] for f in pb.outbox.frames[1:]] == [pa.peer_id]
    hub.pump()
    assert pa.outbox.identities() == {pb.peer_id}

    a.presence(pa, "doc", "join")
    # The first local join waits for the fetch of the others' presence.
    assert not [f for f in pa.outbox.frames if f["type"] == "doc_presence_state"]
    hub.pump()
    assert pa.outbox.presence("doc") == [pa.peer_id]
    b.presence(pb, "doc", "join")
    hub.pump()
    assert pb.outbox.presence("doc") == [pa.peer_id, pb.peer_id]  # remote first, joiner last
    assert pa.outbox.presence("doc") == [pa.peer_id, pb.peer_id]

    a.ephemeral(pa, "doc", "hello", senderId="forged")
    hub.pump()
    assert pb.outbox.messages("doc") == [(pa.peer_id, "hello")]
    assert pa.outbox.messages("doc") == []

    b.presence(pb, "doc", "leave")
    hub.pump()
    assert pa.outbox.presence("doc") == [pa.peer_id]
    b.close(pb)
    hub.pump()
    assert pa.outbox.identities() == set()
    assert hub.docs[b.id] == {} and hub.peers[b.id] == {}


def test_queued_messages_are_batched_per_channel_without_reordering_a_peer(hub: Hub) -> None:
    a, _ = hub.add("aaaaaaaaaaaa"), hub.add("bbbbbbbbbbbb")
    p1, p2 = a.connect(), a.connect()
    hub.pump()
    p3 = a.connect()  # identity (cluster channel)
    a.presence(p3, "d1", "join")
    a.ephemeral(p1, "d2", "x")
    a.ephemeral(p2, "d1", "y")
    a.presence(p3, "d2", "join")
    a.close(p2)  # leaves nothing, then its gone (cluster channel)
    out = a.view.take_outgoing()
    assert out is not None and out.count == 6
    shape = [
        (NAMES.document_of(c) or "cluster", [type(m).__name__ for m in decode_message(d)[1]])
        for c, _, d in out.messages
    ]
    assert shape == [
        ("cluster", ["PeerUp"]),
        ("d1", ["Joined", "Relayed"]),
        ("d2", ["Relayed", "Joined"]),
        ("cluster", ["PeerGone"]),
    ]


def test_messages_skip_redis_when_nobody_elsewhere_is_present(hub: Hub) -> None:
    a, _ = hub.add("aaaaaaaaaaaa"), hub.add("bbbbbbbbbbbb")
    p1, p2 = a.connect(), a.connect()
    for p in (p1, p2):
        a.presence(p, "doc", "join")
    hub.pump()
    a.ephemeral(p1, "doc", 1)
    out = a.view.take_outgoing()
    assert out is None  # known: no peer of another relay is present
    a.ephemeral(p1, "elsewhere", 2)  # a document this relay has no peer in
    out = a.view.take_outgoing()
    assert out is not None
    assert [NAMES.document_of(c) for c, _, _ in out.messages] == ["elsewhere"]


def test_the_gossip_rule_spans_nodes(hub: Hub) -> None:
    a, b = hub.add("aaaaaaaaaaaa"), hub.add("bbbbbbbbbbbb")
    author, stock = a.connect(), b.connect()
    hub.pump()
    for node, peer in ((a, author), (b, stock)):
        node.presence(peer, "doc", "join")
        hub.pump()
    a.ephemeral(author, "doc", "original")
    hub.pump()
    assert stock.outbox.messages("doc") == [(author.peer_id, "original")]
    copy = stock.outbox.frames[-1]
    # The stock peer forwards it back to its relay: a copy, dropped there.
    b.core.receive(stock, cbor2.dumps(copy))
    hub.pump()
    assert author.outbox.messages("doc") == []
    assert b.view.take_outgoing() is None


@pytest.mark.parametrize("announced", ["message", "snapshot"])
def test_a_session_follows_its_identity_across_nodes(hub: Hub, announced: str) -> None:
    """Issue #19, finding 1, in a cluster: a stock peer that reconnects to
    another relay carries on its session; an attacker on any relay cannot take
    it over while it reconnects. Identities travel with the peers'
    announcements (the PeerUp message, or the peers hash read on a hello)."""
    a, b = hub.add("aaaaaaaaaaaa"), hub.add("bbbbbbbbbbbb", connect=announced == "message")
    owner = a.connect("192.0.2.1")
    watcher = a.connect("192.0.2.9")
    attacker = b.connect("192.0.2.66")
    if announced == "snapshot":
        hub.connect(b)  # b's peers reach a by the read that follows b's hello
    hub.pump()
    for node, peer in ((a, owner), (a, watcher), (b, attacker)):
        node.presence(peer, "doc", "join")
        hub.pump()
    a.ephemeral(owner, "doc", "before", sessionId="stock", count=5)
    hub.pump()
    a.close(owner)
    hub.pump()
    # Both relays remember "stock" (a also the session its join came in).
    assert (a.core.stats().session_tombstones, b.core.stats().session_tombstones) == (2, 1)
    # While it reconnects, another identity tries to take its session over.
    b.ephemeral(attacker, "doc", "takeover", sessionId="stock", count=MAX_COUNT)
    hub.pump()
    # It comes back from the same address, on the other relay, and carries on.
    back = b.connect("192.0.2.1")
    hub.pump()
    b.presence(back, "doc", "join")
    for i in range(20):
        b.ephemeral(back, "doc", i, sessionId="stock", count=6 + i)
    hub.pump()
    assert watcher.outbox.messages("doc") == [(owner.peer_id, "before")] + [
        (back.peer_id, i) for i in range(20)
    ]
    assert attacker.outbox.messages("doc") == [(owner.peer_id, "before")] + [
        (back.peer_id, i) for i in range(20)
    ]


def test_joiners_get_what_is_known_when_the_link_is_down_and_the_rest_on_return(
    hub: Hub,
) -> None:
    a, b = hub.add("aaaaaaaaaaaa"), hub.add("bbbbbbbbbbbb")
    pb = b.connect()
    b.presence(pb, "doc", "join")
    hub.pump()
    hub.disconnect(a)
    pa = a.connect()
    a.presence(pa, "doc", "join")
    # Answered at once, with what a knows.
    assert pa.outbox.presence("doc") == [pa.peer_id]
    assert a.view.take_outgoing() is None  # nothing is queued while down
    hub.connect(a)
    hub.pump()
    hub.check(["doc"])
    assert sorted(pa.outbox.presence("doc")) == sorted([pa.peer_id, pb.peer_id])


def test_a_node_that_disappears_takes_its_peers_with_it(hub: Hub) -> None:
    a, b = hub.add("aaaaaaaaaaaa"), hub.add("bbbbbbbbbbbb")
    pa, pb1, pb2 = a.connect(), b.connect(), b.connect()
    for node, peer in ((a, pa), (b, pb1), (b, pb2)):
        node.presence(peer, "doc", "join")
        hub.pump()
    assert len(pa.outbox.presence("doc")) == 3
    mark = len(pa.outbox.frames)
    hub.nodes.pop(b.id)
    a.view.drop_node(b.id)
    news = [(f["type"], f["peerId"]) for f in pa.outbox.frames[mark:]]
    # Per peer: its leaves, then its disconnect.
    assert news == [
        ("peer_left_doc", pb1.peer_id),
        ("peer_disconnected", pb1.peer_id),
        ("peer_left_doc", pb2.peer_id),
        ("peer_disconnected", pb2.peer_id),
    ]
    assert a.view.stats().remote_peers == 0
    assert a.core.stats().gossip_sessions == 1  # only a's own peer's session


def test_replace_node_announces_only_the_differences(hub: Hub) -> None:
    a, b = hub.add("aaaaaaaaaaaa"), hub.add("bbbbbbbbbbbb")
    pa, stays, goes = a.connect(), b.connect(), b.connect()
    for node, peer in ((a, pa), (b, stays), (b, goes)):
        node.presence(peer, "doc", "join")
        hub.pump()
    # b's link breaks: what it does meanwhile reaches no one...
    hub.disconnect(b)
    b.presence(goes, "doc", "leave")
    b.close(goes)
    newcomer = b.connect()
    b.presence(newcomer, "doc", "join")
    hub.pump()
    mark = len(pa.outbox.frames)
    # ...until it is back: a reads b's state again and announces the changes.
    hub.connect(b)
    hub.pump()
    news = [(f["type"], f["peerId"]) for f in pa.outbox.frames[mark:]]
    assert sorted(news) == sorted(
        [
            ("peer_left_doc", goes.peer_id),
            ("peer_disconnected", goes.peer_id),
            ("peer_identity", newcomer.peer_id),
            ("peer_joined_doc", newcomer.peer_id),
        ]
    )
    assert ("peer_left_doc", stays.peer_id) not in news  # no flapping
    hub.check(["doc"])


def test_messages_from_unknown_nodes_and_docs_pending_a_fetch_are_ignored(hub: Hub) -> None:
    a = hub.add("aaaaaaaaaaaa")
    pa = a.connect()
    a.presence(pa, "doc", "join")
    a.view.apply("cccccccccccc", PeerUp("peer-x", UserInfo(None, "X", True)), None)
    assert a.view.stats().remote_peers == 0
    # "doc" waits for its fetch: a join heard meanwhile is left to the fetch.
    a.view.replace_node("bbbbbbbbbbbb", NodeSnapshot({"peer-y": UserInfo(None, "Y", True)}, {}))
    a.view.apply("bbbbbbbbbbbb", Joined("peer-y"), "doc")
    assert a.view.remote_presence("doc") == ()
    a.view.doc_fetched("doc", a.view.docs_to_fetch()["doc"], {"bbbbbbbbbbbb": ("peer-y",)})
    assert pa.outbox.presence("doc") == ["peer-y", pa.peer_id]


def test_leaving_the_last_local_peer_forgets_the_document(hub: Hub) -> None:
    a, b = hub.add("aaaaaaaaaaaa"), hub.add("bbbbbbbbbbbb")
    pa, pb = a.connect(), b.connect()
    calls: list[int] = []
    a.view.on_documents = lambda: calls.append(1)
    for node, peer in ((a, pa), (b, pb)):
        node.presence(peer, "doc", "join")
        hub.pump()
    assert calls == [1] and "doc" in a.view.documents()
    a.presence(pa, "doc", "leave")
    assert calls == [1, 1] and "doc" not in a.view.documents()
    assert a.view.stats().remote_memberships == 0


@pytest.mark.parametrize("seed", range(20))
def test_random_activity_on_three_nodes_converges(any_hub: Hub, seed: int) -> None:
    hub = any_hub
    rng = random.Random(seed)
    nodes = [hub.add(f"{c}" * 12) for c in "abc"]
    docs = ["d1", "d2", "d3"]
    for _ in range(300):
        node = rng.choice(nodes)
        action = rng.random()
        if action < 0.15 or not node.peers:
            node.connect()
        elif action < 0.25:
            node.close(node.peers[rng.choice(list(node.peers))])
        elif action < 0.3 and node.up and len(hub.live()) > 1:
            hub.disconnect(node)  # Redis link lost for a while
        elif action < 0.4 and not node.up:
            hub.connect(node)
        else:
            peer = node.peers[rng.choice(list(node.peers))]
            status = rng.choice(["join", "join", "leave", "heartbeat"])
            node.presence(peer, rng.choice(docs), status)
        if rng.random() < 0.5:
            hub.pump()
    for node in nodes:
        if not node.up:
            hub.connect(node)
    hub.pump()
    hub.check(docs)
    for node in nodes:  # nothing left queued, nothing left waiting
        assert node.view.take_outgoing() is None
        assert node.view.docs_to_fetch() == {}


def test_frames_from_the_view_are_valid_protocol_frames(hub: Hub) -> None:
    a, b = hub.add("aaaaaaaaaaaa"), hub.add("bbbbbbbbbbbb")
    pa, pb = a.connect(), b.connect()
    for node, peer in ((a, pa), (b, pb)):
        node.presence(peer, "doc", "join")
        hub.pump()
    b.ephemeral(pb, "doc", {"x": 1})
    b.close(pb)
    hub.pump()
    kinds = [frame["type"] for frame in pa.outbox.frames]
    # Every kind of frame the view makes a relay send about a remote peer.
    assert {"peer_identity", "peer_joined_doc", "ephemeral", "peer_left_doc"} <= set(kinds)
    assert "peer_disconnected" in kinds
    for frame in pa.outbox.frames:
        decode(cbor2.dumps(frame))  # raises on anything malformed


def test_the_presence_budget_paces_what_other_relays_hear(any_hub: Hub) -> None:
    """A relay tells the others of its peers' joins and leaves as it announces
    them to its own peers: a crowd's first joins at once, a peer's third change
    within its window held, and only the net difference."""
    hub = any_hub
    a, b = hub.add("aaaaaaaaaaaa"), hub.add("bbbbbbbbbbbb")
    watcher = b.connect()
    b.presence(watcher, "doc", "join")
    hub.pump()
    crowd = [a.connect() for _ in range(60)]
    for p in crowd:
        a.presence(p, "doc", "join")
    hub.pump()
    assert isinstance(watcher.outbox, Outbox)

    def heard(kind: str) -> int:
        return len([f for f in watcher.outbox.frames if f["type"] == kind])

    assert heard("peer_joined_doc") == 60
    for p in crowd[:5]:  # leave, come back, leave: the return is held, then undone
        for status in ("leave", "join", "leave"):
            a.presence(p, "doc", status)
    for p in crowd[5:10]:  # leave and come back: the return is held
        for status in ("leave", "join"):
            a.presence(p, "doc", status)
    hub.pump()
    assert heard("peer_left_doc") == 10
    assert heard("peer_joined_doc") == 60
    hub.now += PRESENCE_WINDOW
    a.core.flush_held()
    hub.pump()
    assert heard("peer_left_doc") == 10
    assert heard("peer_joined_doc") == 65
    assert a.core.held_documents() == 0
    hub.check(["doc"])
