"""Who is told about whom, and when: identity scope and the presence budget. No I/O.

Part of :class:`~.relay.RelayCore` (:class:`Visibility`), and the one place
where identity and membership frames are written to the local peers: for the
relay's own peers and, through the same methods, for the peers of the other
relays of a cluster (:mod:`ratatoskr_client.server.cluster`). Two rules decide
which of those frames a connection receives:

* **Identity scope** (``identity_scope``). In ``"global"`` scope every
  identity goes to every connection when it authenticates (the plan's
  broadcast). In ``"document"`` scope a connection is told a peer's identity
  only when it needs it: just before the first presence frame that names the
  peer in a document they share (a ``peer_joined_doc``, or the
  ``doc_presence_state`` of its own join), or just before a message the peer
  sends into a document it is not present in. ``peer_disconnected`` goes only
  to the connections that still knew the peer through a shared document.
  Nothing is sent after ``auth_ok``, so a connect costs O(1) frames whatever
  the number of peers, and nobody can list who else is connected.

  A connection *knows* a peer exactly while the peer is **shown** in one of
  the documents the connection is present in (what its members were told;
  see below). The relay keeps no per-pair table: the question is answered
  from the documents' member tables, and the client applies the same rule to
  what it was told (it forgets an identity once the peer is in none of its
  documents). So an identity is sent again when two peers come to share a
  document again: a few frames, instead of memory for every pair.

* **The presence budget** (:data:`~.limits.PRESENCE_WINDOW`,
  :data:`~.limits.PRESENCE_DOC_BURST`, :data:`~.limits.PRESENCE_DOC_RATE`,
  :data:`~.limits.PRESENCE_HOLD`). Every join and leave is a frame to each
  member of the document. A peer's change goes out at once unless the same
  peer's last two changes in that document were announced less than a window
  ago (or the document's own budget, a burst then a rate, is spent): then it
  is *held*. The document keeps the membership its members were told (``shown``)
  beside the real one (who receives its messages); every ``PRESENCE_HOLD``
  seconds the held changes whose window is over go out as the net
  difference, oldest first, as the document's budget allows. A peer that
  left and came back in between is never seen to leave; one that joined and
  left is never announced (nor its identity sent). So each peer adds at most
  two changes per window to what the members hear, a crowd's first joins and
  a quick visit go out at once, and a document's members hear at most its
  budget. Before the relay
  relays a message from a peer whose join is held, it announces that join, so
  a message never arrives before its sender's join and identity. A closing
  connection's leaves go out at once (never held), each followed by its
  ``peer_disconnected`` where due, so no closed connection stays shown.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Final

from ...protocol import (
    DocPresenceStateFrame,
    PeerDisconnectedFrame,
    PeerJoinedDocFrame,
    PeerLeftDocFrame,
    encode,
    encode_payload,
)
from ...protocol.constants import PRESENCE_MARKER
from ...protocol.rates import TokenBucket
from ...protocol.writers import ephemeral_prefix, target_suffix
from ..config import RelayConfig
from .connection import Connection
from .limits import PRESENCE_DOC_BURST, PRESENCE_DOC_RATE, PRESENCE_HOLD, PRESENCE_WINDOW
from .states import PeerStateCache

#: The sessionId prefix of the nudges a relay sends for a peer (see _nudge).
NUDGE_SESSION: Final = "relay-nudge-"
_NUDGE: Final = encode_payload({PRESENCE_MARKER: {"type": "heartbeat"}})

if TYPE_CHECKING:
    from .bus import Bus, Member

__all__ = ["ANNOUNCE", "CANCELLED", "HELD", "SILENT", "HeldChanges", "Visibility"]

#: What became of a membership change (see :meth:`Visibility.decide`).
SILENT: Final = 0  # nothing to tell anyone (no server-side presence)
ANNOUNCE: Final = 1  # tell the members now
HELD: Final = 2  # held for the next flush
CANCELLED: Final = 3  # it undid a held change of the same peer: nothing to tell

_NOBODY: Final[Mapping[str, Connection]] = {}


class HeldChanges:
    """A document whose members have not been told every change yet."""

    __slots__ = ("due", "pending", "shown")

    def __init__(self, shown: dict[str, Connection], due: float) -> None:
        #: what the members were told: peer id -> connection, in join order
        self.shown = shown
        #: the peers whose change is held, in the order of their changes; a
        #: peer present in the real table has a held join, otherwise a held leave
        self.pending: dict[str, Connection] = {}
        #: when to flush
        self.due = due


class Visibility:
    """Identity scope and the presence budget: who is told about whom, and when.

    It owns the held changes, the documents' presence budgets and the recent
    announcements; it reads the tables of the other parts: ``members``
    (document id -> present connections by peer id, in join order: the
    documents' table) and ``peers`` (authenticated connections by peer id:
    authentication's table).
    """

    __slots__ = (
        "_doc_budget",
        "_held",
        "_members",
        "_nudged",
        "_peers",
        "_presence",
        "_recent",
        "bus",
        "clock",
        "scoped",
        "states",
        "wake_at",
    )

    def __init__(
        self,
        config: RelayConfig,
        clock: Callable[[], float],
        members: dict[str, dict[str, Connection]],
        peers: dict[str, Connection],
        wake_at: Callable[[float], None],
        states: PeerStateCache | None = None,
    ) -> None:
        self.clock = clock
        #: each present peer's latest per-peer state, replayed to joiners
        #: (documents writes it; :meth:`send_presence_state` reads it)
        self.states = states if states is not None else PeerStateCache()
        #: called with a time when held changes must be flushed then (or earlier)
        self.wake_at = wake_at
        #: the cluster link (None for a relay on its own)
        self.bus: Bus | None = None
        self._members = members
        self._peers = peers
        self._presence = config.server_presence
        #: identities are scoped to documents (``identity_scope = "document"``,
        #: with server-side presence)
        self.scoped = config.server_presence and config.identity_scope == "document"
        #: documents with held changes
        self._held: dict[str, HeldChanges] = {}
        #: document id -> its presence budget (created on demand, dropped when full)
        self._doc_budget: dict[str, TokenBucket] = {}
        #: documents whose peers on other relays were asked for their states
        #: since this relay has local peers there (see _nudge)
        self._nudged: set[str] = set()
        #: document id -> peer id -> when its last two changes there were announced
        self._recent: dict[str, dict[str, tuple[float, float]]] = {}

    # ------------------------------------------------------------------ queries

    def shown(self, doc_id: str) -> Mapping[str, Connection]:
        """The local members of ``doc_id`` as its members were told them."""
        held = self._held.get(doc_id)
        if held is not None:
            return held.shown
        return self._members.get(doc_id) or _NOBODY

    def _knows(self, a: Connection, b: Connection, skip: str | None) -> bool:
        """True if ``a`` was told ``b``'s identity through a document other
        than ``skip`` that they still share (``b`` is shown there, ``a`` present).
        A peer that resumed on a new socket (:mod:`.resume`) was told nothing
        there yet: only the documents it joined again since count."""
        pid = b.peer_id
        a_docs = a.docs
        again = a.reintroduce
        if again is not None:
            shown = self.shown
            return any(d != skip and d not in again and pid in shown(d) for d in a_docs)
        b_held = b.held
        shown = self.shown
        # Walk the shorter list: b's documents are the ones it is present in
        # and the ones where it has a held change (a held leave still shows it).
        if len(a_docs) <= len(b.docs) + (len(b_held) if b_held else 0):
            return any(d != skip and pid in shown(d) for d in a_docs)
        for d in b.docs:
            if d != skip and d in a_docs and pid in shown(d):
                return True
        if b_held:
            for d in b_held:
                if d != skip and d in a_docs and pid in shown(d):
                    return True
        return False

    def knows(self, conn: Connection, member: Member, skip: str | None) -> bool:
        """Document scope: True if the local ``conn`` was told the identity of
        ``member`` (a local connection, or a peer on another relay) through a
        document other than ``skip`` that they still share."""
        if type(member) is Connection:
            return self._knows(conn, member, skip)
        bus = self.bus
        return bus is not None and bus.knows(conn, member.peer_id, skip)

    def presence_shown(self, document_id: str) -> tuple[str, ...]:
        """Local peer ids present in a document as its members were told, in
        join order (differs from the real table only while changes are held)."""
        return tuple(self.shown(document_id))

    def held_documents(self) -> int:
        """Documents with presence changes held for the next flush."""
        return len(self._held)

    def next_flush(self) -> float:
        """When held changes are due next (``inf``: nothing is held)."""
        return min((h.due for h in self._held.values()), default=math.inf)

    # ------------------------------------------------------------------ the budget

    def decide(self, doc_id: str, conn: Connection, now: float, *, force: bool = False) -> int:
        """What to do with a change of ``conn``'s membership in ``doc_id``;
        call it *before* changing the real member table."""
        held = self._held.get(doc_id)
        pid = conn.peer_id
        if held is not None and held.pending.pop(pid, None) is not None:
            _unmark(conn, doc_id)
            return CANCELLED
        members = self._members.get(doc_id)
        if (
            held is None
            and (not members or (len(members) == 1 and pid in members))
            and (self.bus is None or not self.bus.others_present(doc_id))
        ):
            return ANNOUNCE  # nobody else is there to tell: it costs nothing
        bucket = self._doc_budget.get(doc_id)
        if bucket is None:
            bucket = self._doc_budget[doc_id] = TokenBucket(
                PRESENCE_DOC_RATE, PRESENCE_DOC_BURST, now
            )
        if force:
            bucket.take(now)  # spent if there is one; a closing peer's leave never waits
            return ANNOUNCE
        if self._may_announce(doc_id, pid, now) and bucket.take(now) <= 0:
            return ANNOUNCE
        if held is None:
            held = self._held[doc_id] = HeldChanges(
                dict(members) if members else {}, now + PRESENCE_HOLD
            )
            self.wake_at(held.due)
        held.pending[pid] = conn
        if conn.held is None:
            conn.held = set()
        conn.held.add(doc_id)
        return HELD

    def _may_announce(self, doc_id: str, peer_id: str, now: float) -> bool:
        """False while the peer's last two announced changes in the document
        are both less than PRESENCE_WINDOW old (an enter and a quick leave go
        out at once; a third change within the window waits)."""
        recent = self._recent.get(doc_id)
        seen = recent.get(peer_id) if recent else None
        return seen is None or now - seen[0] >= PRESENCE_WINDOW

    def _announced(self, doc_id: str, peer_id: str) -> None:
        recent = self._recent.get(doc_id)
        if recent is None:
            recent = self._recent[doc_id] = {}
        seen = recent.get(peer_id)
        recent[peer_id] = (seen[1] if seen else -math.inf, self.clock())

    def settle(self, doc_id: str) -> None:
        """A held change was cancelled: if none is left, what the members were
        told is the real table again."""
        held = self._held.get(doc_id)
        if held is not None and not held.pending:
            self._release(doc_id, held)

    def _release(self, doc_id: str, held: HeldChanges) -> None:
        del self._held[doc_id]
        members = self._members.get(doc_id)
        if members and list(members) != list(held.shown) and members.keys() == held.shown.keys():
            # A peer that left and came back within the window was never seen
            # to leave: it keeps its place in the join order.
            ordered = [(pid, members[pid]) for pid in held.shown]
            members.clear()
            members.update(ordered)

    def unsubscribed(self, doc_id: str) -> None:
        """No local peer is left in ``doc_id``: what this relay kept of its
        peers' states is dropped (in a cluster it stops hearing the document,
        so what it has of the other relays' peers would go stale), and the
        next first peer there asks the others again."""
        self.states.drop(doc_id)
        self._nudged.discard(doc_id)

    def drop_held(self, doc_id: str) -> None:
        """Nobody is left in the document here to tell: the held changes (all
        of them leaves, then) go to the other relays now, if any."""
        held = self._held.pop(doc_id, None)
        if held is not None:
            for conn in held.pending.values():
                _unmark(conn, doc_id)
                if self.bus is not None:
                    self.bus.announce(doc_id, conn, False)

    def flush_held(self, now: float | None = None) -> float:
        """Announce the held changes that are due, as far as each document's
        budget allows. Returns when to call again (``inf``: nothing is held)."""
        now = self.clock() if now is None else now
        for doc_id in [d for d, h in self._held.items() if h.due <= now]:
            held = self._held[doc_id]
            bucket = self._doc_budget.get(doc_id)
            if bucket is None:
                bucket = self._doc_budget[doc_id] = TokenBucket(
                    PRESENCE_DOC_RATE, PRESENCE_DOC_BURST, now
                )
            pending = held.pending
            members = self._members.get(doc_id) or _NOBODY
            for pid in [p for p in pending if self._may_announce(doc_id, p, now)]:
                if bucket.take(now) > 0:
                    break  # the document's budget: the rest waits
                conn = pending.pop(pid)
                _unmark(conn, doc_id)
                if pid in members:
                    self.announce_join(doc_id, conn)
                else:
                    self.announce_leave(doc_id, conn, gone=False)
            if pending:
                held.due = now + PRESENCE_HOLD
            else:
                self._release(doc_id, held)
        return self.next_flush()

    def unhold_join(self, doc_id: str, conn: Connection) -> None:
        """``conn`` speaks in ``doc_id``: if its join there is held, announce
        it now, so its message does not arrive before it."""
        held = self._held.get(doc_id)
        if held is not None and held.pending.pop(conn.peer_id, None) is not None:
            _unmark(conn, doc_id)
            self.announce_join(doc_id, conn)
            self.settle(doc_id)

    def closed(self, conn: Connection) -> None:
        """``conn``'s connection closed (after its leaves): the leaves of it
        that were held are announced now, so no closed connection stays shown."""
        if conn.held is None:
            return
        for doc_id in list(conn.held):
            held = self._held.get(doc_id)
            if held is not None and held.pending.pop(conn.peer_id, None) is not None:
                self.announce_leave(doc_id, conn, gone=True)
                self.settle(doc_id)
        conn.held = None

    def hand_off(self, conn: Connection) -> None:
        """``conn`` is handed over to another relay (:mod:`.resume`) and
        leaves its documents here unannounced: its held changes are announced
        now (what the members were told must be true when it stops being
        ours), then it is taken out of what they were told, silently."""
        pid = conn.peer_id
        if conn.held is not None:
            for doc_id in list(conn.held):
                held = self._held.get(doc_id)
                if held is not None and held.pending.pop(pid, None) is not None:
                    if doc_id in conn.docs:
                        self.announce_join(doc_id, conn)
                    else:
                        self.announce_leave(doc_id, conn, gone=False)
                    self.settle(doc_id)
            conn.held = None
        for doc_id in conn.docs:
            held = self._held.get(doc_id)
            if held is not None:
                held.shown.pop(pid, None)

    def adopted(self, conn: Connection) -> None:
        """``conn`` was handed over from another relay (:mod:`.resume`) and is
        a member of its documents here now, unannounced: the members knew it
        already, as a peer of that relay. So it is shown at once, also where
        changes are held (what a joiner is told in that window must list it:
        no announcement will)."""
        pid = conn.peer_id
        for doc_id in conn.docs:
            held = self._held.get(doc_id)
            if held is not None:
                held.shown[pid] = conn

    def forget_idle(self, now: float) -> None:
        """Drop the recent announcements older than the window, and the
        documents' budgets that are full again (and hold nothing)."""
        if self._recent:
            for doc_id in list(self._recent):
                recent = self._recent[doc_id]
                for pid in [p for p, t in recent.items() if now - t[1] >= PRESENCE_WINDOW]:
                    del recent[pid]
                if not recent:
                    del self._recent[doc_id]
        if self._doc_budget:
            held = self._held
            budgets = self._doc_budget
            for doc_id in [d for d, b in budgets.items() if d not in held]:
                if budgets[doc_id].tokens(now) >= budgets[doc_id].capacity:
                    del budgets[doc_id]

    # ------------------------------------------------------------------ announcing

    def announce_join(self, doc_id: str, conn: Connection) -> None:
        """Announce that the local ``conn`` is present in ``doc_id``: to the
        other relays, and to the members here (:meth:`tell_joined`)."""
        held = self._held.get(doc_id)
        if held is not None:
            held.shown[conn.peer_id] = conn
        self._announced(doc_id, conn.peer_id)
        if self.bus is not None:
            self.bus.announce(doc_id, conn, True)
        self.tell_joined(doc_id, conn)

    def announce_leave(self, doc_id: str, conn: Connection, *, gone: bool) -> None:
        """Announce that the local ``conn`` left ``doc_id`` (``gone``: its
        connection closed): to the other relays, and to the members here
        (:meth:`tell_left`)."""
        held = self._held.get(doc_id)
        if held is not None:
            held.shown.pop(conn.peer_id, None)
        if not gone:
            self._announced(doc_id, conn.peer_id)
        if self.bus is not None:
            self.bus.announce(doc_id, conn, False, gone)
        self.tell_left(doc_id, conn, gone=gone)

    # ------------------------------------------------------------------ telling the local peers

    def tell_joined(self, doc_id: str, member: Member) -> None:
        """Tell the local members of ``doc_id`` that ``member`` (a local
        connection, or a peer on another relay) is present there; in document
        scope its identity first, to each one that does not know it."""
        members = self._members.get(doc_id)
        if not members or not self._presence:
            return
        joined = encode(PeerJoinedDocFrame(doc_id, member.peer_id))
        if self.scoped:
            identity = member.identity_frame
            for other in members.values():
                if other is not member:
                    if not self.knows(other, member, doc_id):
                        other.outbox.send(identity)
                    other.outbox.send(joined)
        else:
            for other in members.values():
                if other is not member:
                    other.outbox.send(joined)

    def tell_left(self, doc_id: str, member: Member, *, gone: bool) -> None:
        """Tell the local members of ``doc_id`` that ``member`` is no longer
        present there (call it once it is out of the document's table); if its
        connection is ``gone`` (document scope), each member that no longer
        knows it through another document also gets its ``peer_disconnected``."""
        members = self._members.get(doc_id)
        if not members or not self._presence:
            return
        left = encode(PeerLeftDocFrame(doc_id, member.peer_id))
        if gone and self.scoped:
            bye = encode(PeerDisconnectedFrame(member.peer_id))
            for other in members.values():
                other.outbox.send(left)
                if not self.knows(other, member, None):
                    other.outbox.send(bye)
        else:
            for other in members.values():
                other.outbox.send(left)

    def introduce(self, speaker: Member, present: bool, members: Iterable[Connection]) -> None:
        """``speaker`` (a local connection, or a peer on another relay) sends
        a message to ``members``, the members of a document where it is
        ``present`` or not. In document scope, if it is not, they may not know
        who is speaking: its identity goes first to each that does not."""
        if present or not self.scoped:
            return
        identity = speaker.identity_frame
        for other in members:
            if other is not speaker and not self.knows(other, speaker, None):
                other.outbox.send(identity)

    def greet(self, conn: Connection) -> None:
        """Global scope: ``conn`` just authenticated (and is not in ``peers``
        yet): it and every connected peer exchange identities, in connection
        order, then it gets those of the peers on the other relays. Nothing in
        document scope: identities travel with the documents, so a connect
        costs the same with 0 or 10,000 peers."""
        if not self._presence or self.scoped:
            return
        out = conn.outbox
        identity = conn.identity_frame
        for other in self._peers.values():
            out.send(other.identity_frame)
            other.outbox.send(identity)
        if self.bus is not None:
            for peer in self.bus.remote_peers():
                out.send(peer.identity_frame)

    def _nudge(self, conn: Connection, doc_id: str) -> None:
        """``conn`` is this relay's first peer in ``doc_id``, which has peers on
        other relays: this relay was not subscribed to the document, so it
        holds none of their states to replay. It sends them, through the
        cluster only, a Presence heartbeat from ``conn`` (on a session of the
        relay's making): automerge-repo peers and ours re-send their snapshot
        when they hear a peer they do not know, and those snapshots, relayed
        here, reach ``conn`` and fill this relay's copy. Once per document
        per subscription: later joiners are replayed from that copy."""
        assert self.bus is not None
        self._nudged.add(doc_id)
        conn.nudges += 1
        self.bus.relayed(doc_id, conn, conn.nudges, f"{NUDGE_SESSION}{conn.peer_id}", _NUDGE)

    def reintroduce(self, conn: Connection) -> None:
        """``conn`` resumed its peer (:mod:`.resume`) on a new socket, whose
        client forgot who is where when its old one dropped: in global scope
        it is told every identity again now; in document scope, those of each
        document's members with the ``doc_presence_state`` that answers its
        join there. Nobody else hears of it."""
        if not self._presence or self.scoped:
            return  # (in document scope, with each doc_presence_state: send_presence_state)
        out = conn.outbox
        for other in self._peers.values():
            if other is not conn:
                out.send(other.identity_frame)
        if self.bus is not None:
            for peer in self.bus.remote_peers():
                out.send(peer.identity_frame)

    def broadcast(self, frame: bytes) -> None:
        """Global scope: ``frame`` (an identity, a ``peer_disconnected``) goes
        to every authenticated local peer. Nothing in document scope: there
        identities and disconnections go with the documents."""
        if self._presence and not self.scoped:
            for other in self._peers.values():
                other.outbox.send(frame)

    def send_presence_state(
        self,
        conn: Connection,
        doc_id: str,
        remote: tuple[Member, ...] = (),
        *,
        rejoin: bool = False,
    ) -> None:
        """Tell ``conn`` who is in ``doc_id``: the peers of other relays
        (``remote``), then ours as the members were told them, so a joiner is
        listed last. In document scope the identities it does not know go
        first. ``rejoin``: ``conn`` was already present there (it knows them)."""
        shown = self.shown(doc_id)
        again = conn.reintroduce
        if again is not None and doc_id in again:
            again.discard(doc_id)
            if not again:
                conn.reintroduce = None
            if self.scoped:
                # Resumed: its client forgot everyone when its socket dropped.
                for peer in remote:
                    conn.outbox.send(peer.identity_frame)
                for other in shown.values():
                    if other is not conn:
                        conn.outbox.send(other.identity_frame)
        elif self.scoped and not rejoin:
            skip = doc_id
            bus = self.bus
            for peer in remote:
                if bus is None or not bus.knows(conn, peer.peer_id, skip):
                    conn.outbox.send(peer.identity_frame)
            for other in shown.values():
                if other is not conn and not self._knows(conn, other, skip):
                    conn.outbox.send(other.identity_frame)
        peers = tuple(p.peer_id for p in remote) + tuple(shown)
        if conn.peer_id not in shown:
            peers += (conn.peer_id,)  # its own join is held: it still sees itself
        conn.outbox.send(encode(DocPresenceStateFrame(doc_id, peers)))
        # (A rejoin is an explicit join for a document it is in: a client
        # that lost track, or resumed; it is told the states again too.)
        self.replay_states(conn, doc_id, peers)
        if remote and self.bus is not None and doc_id not in self._nudged:
            self._nudge(conn, doc_id)

    def replay_states(self, conn: Connection, doc_id: str, present: Iterable[str]) -> None:
        """Send ``conn`` the latest per-peer state of everyone in ``present``
        that has some in ``doc_id`` (:mod:`.states`): one snapshot frame per
        peer, as if that peer had just sent it, right after the presence
        frame that introduced them."""
        target = conn.target_suffix
        for peer_id, entry, data in self.states.replay(doc_id, present, conn.peer_id):
            conn.outbox.send_ephemeral(
                ephemeral_prefix(
                    target_suffix(peer_id), doc_id, entry.count, entry.session_id, data
                ),
                target,
            )


def _unmark(conn: Connection, doc_id: str) -> None:
    held = conn.held
    if held is not None:
        held.discard(doc_id)
        if not held:
            conn.held = None
