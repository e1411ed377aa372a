"""Who is told about whom, and when: identity scope and the presence budget. No I/O.

Part of :class:`~.core.RelayCore`. Two rules decide which identity and
membership frames a connection receives:

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
)
from ...protocol.rates import TokenBucket
from .connection import Connection
from .limits import PRESENCE_DOC_BURST, PRESENCE_DOC_RATE, PRESENCE_HOLD, PRESENCE_WINDOW

if TYPE_CHECKING:
    from .bus import Bus, Member

__all__ = ["ANNOUNCE", "CANCELLED", "HELD", "SILENT", "HeldChanges", "Visibility"]

#: What became of a membership change (see :meth:`Visibility._decide`).
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
    """Identity scope and the presence budget (a mixin of RelayCore)."""

    __slots__ = ()

    # What these rules use of the RelayCore they are part of.
    clock: Callable[[], float]
    bus: Bus | None
    _docs: dict[str, dict[str, Connection]]
    _server_presence: bool
    #: identities are scoped to documents
    _scoped: bool
    #: documents with held changes
    _held: dict[str, HeldChanges]
    #: document id -> its presence budget (created on demand, dropped when full)
    _doc_budget: dict[str, TokenBucket]
    #: document id -> peer id -> when its last two changes there were announced
    _recent: dict[str, dict[str, tuple[float, float]]]
    #: called with a time when held changes must be flushed then (or earlier)
    wake_at: Callable[[float], None]

    # ------------------------------------------------------------------ queries

    def _shown(self, doc_id: str) -> Mapping[str, Connection]:
        """The local members of ``doc_id`` as its members were told them."""
        held = self._held.get(doc_id)
        if held is not None:
            return held.shown
        return self._docs.get(doc_id) or _NOBODY

    def _knows(self, a: Connection, b: Connection, skip: str | None) -> bool:
        """True if ``a`` was told ``b``'s identity through a document other
        than ``skip`` that they still share (``b`` is shown there, ``a`` present)."""
        pid = b.peer_id
        a_docs = a.docs
        b_held = b.held
        # Walk the shorter list: b's documents are the ones it is present in
        # and the ones where it has a held change (a held leave still shows it).
        if len(a_docs) <= len(b.docs) + (len(b_held) if b_held else 0):
            return any(d != skip and pid in self._shown(d) for d in a_docs)
        for d in b.docs:
            if d != skip and d in a_docs and pid in self._shown(d):
                return True
        if b_held:
            for d in b_held:
                if d != skip and d in a_docs and pid in self._shown(d):
                    return True
        return False

    def presence_shown(self, document_id: str) -> tuple[str, ...]:
        """Local peer ids present in a document as its members were told, in
        join order (differs from :meth:`presence` only while changes are held)."""
        return tuple(self._shown(document_id))

    def held_documents(self) -> int:
        """Documents with presence changes held for the next flush."""
        return len(self._held)

    # ------------------------------------------------------------------ the budget

    def _decide(self, doc_id: str, conn: Connection, now: float, *, force: bool = False) -> int:
        """What to do with a change of ``conn``'s membership in ``doc_id``;
        call it *before* changing the real member table."""
        held = self._held.get(doc_id)
        pid = conn.peer_id
        if held is not None and held.pending.pop(pid, None) is not None:
            _unmark(conn, doc_id)
            return CANCELLED
        members = self._docs.get(doc_id)
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

    def _settle_held(self, doc_id: str) -> None:
        """A held change was cancelled: if none is left, what the members were
        told is the real table again."""
        held = self._held.get(doc_id)
        if held is not None and not held.pending:
            self._release(doc_id, held)

    def _release(self, doc_id: str, held: HeldChanges) -> None:
        del self._held[doc_id]
        members = self._docs.get(doc_id)
        if members and list(members) != list(held.shown) and members.keys() == held.shown.keys():
            # A peer that left and came back within the window was never seen
            # to leave: it keeps its place in the join order.
            ordered = [(pid, members[pid]) for pid in held.shown]
            members.clear()
            members.update(ordered)

    def _drop_held(self, doc_id: str) -> None:
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
            members = self._docs.get(doc_id) or _NOBODY
            for pid in [p for p in pending if self._may_announce(doc_id, p, now)]:
                if bucket.take(now) > 0:
                    break  # the document's budget: the rest waits
                conn = pending.pop(pid)
                _unmark(conn, doc_id)
                if pid in members:
                    self._announce_join(doc_id, conn)
                else:
                    self._announce_leave(doc_id, conn, gone=False)
            if pending:
                held.due = now + PRESENCE_HOLD
            else:
                self._release(doc_id, held)
        return min((h.due for h in self._held.values()), default=math.inf)

    def _unhold_join(self, doc_id: str, conn: Connection) -> None:
        """``conn`` speaks in ``doc_id``: if its join there is held, announce
        it now, so its message does not arrive before it."""
        held = self._held.get(doc_id)
        if held is not None and held.pending.pop(conn.peer_id, None) is not None:
            _unmark(conn, doc_id)
            self._announce_join(doc_id, conn)
            self._settle_held(doc_id)

    # ------------------------------------------------------------------ announcing

    def _announce_join(self, doc_id: str, conn: Connection) -> None:
        """Tell the members of ``doc_id`` that ``conn`` is present (its
        identity first, to those who do not know it)."""
        held = self._held.get(doc_id)
        if held is not None:
            held.shown[conn.peer_id] = conn
        self._announced(doc_id, conn.peer_id)
        if self.bus is not None:
            self.bus.announce(doc_id, conn, True)
        members = self._docs.get(doc_id)
        if not members:
            return
        joined = encode(PeerJoinedDocFrame(doc_id, conn.peer_id))
        if self._scoped:
            identity = conn.identity_frame
            for other in members.values():
                if other is not conn:
                    if not self._knows(other, conn, doc_id):
                        other.outbox.send(identity)
                    other.outbox.send(joined)
        else:
            for other in members.values():
                if other is not conn:
                    other.outbox.send(joined)

    def _announce_leave(self, doc_id: str, conn: Connection, *, gone: bool) -> None:
        """Tell the members of ``doc_id`` that ``conn`` left; if its connection
        is ``gone`` (document scope), each member that no longer knows it
        through another document also gets its ``peer_disconnected``."""
        held = self._held.get(doc_id)
        if held is not None:
            held.shown.pop(conn.peer_id, None)
        if not gone:
            self._announced(doc_id, conn.peer_id)
        if self.bus is not None:
            self.bus.announce(doc_id, conn, False, gone)
        members = self._docs.get(doc_id)
        if not members:
            return
        left = encode(PeerLeftDocFrame(doc_id, conn.peer_id))
        if gone and self._scoped:
            bye = encode(PeerDisconnectedFrame(conn.peer_id))
            for other in members.values():
                other.outbox.send(left)
                if not self._knows(other, conn, None):
                    other.outbox.send(bye)
        else:
            for other in members.values():
                other.outbox.send(left)

    def _introduce(self, conn: Connection, members: Iterable[Connection]) -> None:
        """``conn`` sends into a document it is not shown in (document scope):
        its identity goes first to each member that does not know it."""
        identity = conn.identity_frame
        for other in members:
            if other is not conn and not self._knows(other, conn, None):
                other.outbox.send(identity)

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
        shown = self._shown(doc_id)
        if self._scoped and not rejoin:
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


def _unmark(conn: Connection, doc_id: str) -> None:
    held = conn.held
    if held is not None:
        held.discard(doc_id)
        if not held:
            conn.held = None
