"""The gossip and replay rule for ephemeral messages, as a pure table. No I/O.

automerge-repo peers forward every ephemeral message they receive to their
other peers, keeping its ``sessionId`` and ``count``; a peer connected to a
relay therefore sends copies of everyone's messages back to it. The rule that
tells an original from such a copy (``docs/protocol.md``, "Gossip copies"):

* **a sessionId belongs to one sender**, the first that used it: the same
  sessionId from any other sender is a copy;
* **counts must grow**: a message whose ``count`` is not above the last one
  accepted for its sessionId is a copy (or a replay).

:class:`SessionOwners` applies it, with two refinements saying when a session
may change hands:

* **identities** (the relay). Every sender has an *identity*: on the relay, the
  user a connection authenticated as (for anonymous connections, a keyed hash
  of the source address; see ``ratatoskr_client.server.core.identity``). The table
  remembers the owner's identity with every session and every tombstone, and a
  session changes hands only between senders of **the same identity**: a
  frame from another identity is a copy, whatever its count (an attacker who
  read a sessionId off a relayed frame cannot take it over), while a frame
  from the same identity with a count above the last one takes the session
  over (:attr:`Admission.REASSIGNED`), even from a live owner. That is a stock
  peer reconnecting, which keeps its sessionId, perhaps before the relay
  noticed that its old socket died. Copies cannot abuse it: the relay relays
  a message to everyone before anyone can forward it back, so a copy that came
  through the relay carries a count that is no longer new (see
  ``docs/protocol.md`` for two tabs of one user). A sender given no identity is
  its own identity: nobody else can ever take its sessions.
* **reassign** (a client behind a server that relabels copies;
  ``reassign=True``; the upstream server stamps a forwarded copy with the
  *forwarder's* peer id, see ``upstream-wire-notes``). Such a client cannot
  trust the first sender it saw: if it subscribed between a message and its
  copies, the first thing it saw was a relabelled copy. What it can trust is
  order: the server relays a message to everyone before any peer can forward
  it back, so **the first arrival of each new count comes from the real
  sender**, and copies of it always come later with a count that is no longer
  new. So a count above the last one *reassigns* the sessionId to whoever
  delivered it, whatever its identity, and a wrong first guess lasts until the
  real sender's next message.

The relay keys senders by connection; a client keys them by peer id. When a
sender goes away (:meth:`SessionOwners.release`) its sessionIds are remembered
for ``tombstone_ttl`` seconds with their last count and owner's identity, so
late copies stay dropped, while the same stock peer reconnecting with a higher
count takes its session back. The tombstones are bounded; when they are full,
the one forgotten is the oldest of the identity that holds the most, so
nobody can push another identity's tombstones out by closing connections of
their own.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from typing import Final, Generic, TypeVar

__all__ = ["Admission", "SessionOwners"]

SenderT = TypeVar("SenderT", bound=Hashable)


class Admission(enum.Enum):
    """What :meth:`SessionOwners.admit` decided about one message."""

    ACCEPTED = "accepted"  #: new, and really from this sender
    REASSIGNED = "reassigned"  #: new, and the sessionId now belongs to this sender
    COPY = "copy"  #: the sessionId belongs to another sender
    REPLAY = "replay"  #: the count is not above the last accepted one
    TOO_MANY_SESSIONS = "too_many_sessions"  #: the sender may not claim another sessionId

    @property
    def admitted(self) -> bool:
        """True for a new message that is the sender's own (accepted or reassigned)."""
        return self is Admission.ACCEPTED or self is Admission.REASSIGNED


_UNSEEN: Final = -1


class SessionOwners(Generic[SenderT]):
    """Which sender owns each sessionId, its identity, and the last count accepted.

    Args:
        max_per_sender: sessionIds one sender may own (None: no bound). A stock
            peer uses one; the bound keeps one sender from growing the table.
        max_sessions: sessionIds owned at once (None: no bound); beyond it the
            oldest is forgotten. For tables fed by others' traffic (a client
            keeps one per peer it hears from).
        tombstone_ttl: seconds a released sender's sessionIds are remembered.
        max_tombstones: remembered sessionIds at most; beyond it the oldest
            tombstone of the identity holding the most is forgotten.
        reassign: a count above the last one from another sender reassigns the
            sessionId to it, whatever its identity, instead of being a copy
            (behind a server that relabels copies; see the module docstring).
    """

    __slots__ = (
        "_by_sender",
        "_held",
        "_holders",
        "_max_held",
        "_owners",
        "_tombstones",
        "max_per_sender",
        "max_sessions",
        "max_tombstones",
        "reassign",
        "tombstone_ttl",
    )

    def __init__(
        self,
        *,
        max_per_sender: int | None = None,
        max_sessions: int | None = None,
        tombstone_ttl: float = 0.0,
        max_tombstones: int = 0,
        reassign: bool = False,
    ) -> None:
        self.max_per_sender = max_per_sender
        self.reassign = reassign
        self.max_sessions = max_sessions
        self.tombstone_ttl = tombstone_ttl
        self.max_tombstones = max_tombstones
        #: sessionId -> (owner, its identity, last accepted count), oldest first
        self._owners: dict[str, tuple[SenderT, Hashable, int]] = {}
        #: owner -> its sessionIds (for the per-sender bound and release)
        self._by_sender: dict[SenderT, set[str]] = {}
        #: sessionId of a released sender -> (its identity, last count, released
        #: at), oldest first
        self._tombstones: dict[str, tuple[Hashable, int, float]] = {}
        #: identity -> its one tombstone, or its tombstones oldest first (for the
        #: fair eviction; a lone sessionId is kept as is: the usual case, a stock
        #: peer has one, costs no dict of its own)
        self._held: dict[Hashable, str | dict[str, None]] = {}
        #: n -> the identities holding exactly n tombstones (n >= 2)
        self._holders: dict[int, dict[Hashable, None]] = {}
        #: the most tombstones one identity holds, if two or more (else 0)
        self._max_held = 0

    def __len__(self) -> int:
        """sessionIds currently owned."""
        return len(self._owners)

    @property
    def tombstones(self) -> int:
        """sessionIds remembered from released senders."""
        return len(self._tombstones)

    def sessions_of(self, sender: SenderT) -> int:
        """How many sessionIds ``sender`` owns."""
        return len(self._by_sender.get(sender, ()))

    def owner(self, session_id: str) -> SenderT | None:
        """The sender that owns ``session_id``, if any."""
        entry = self._owners.get(session_id)
        return entry[0] if entry is not None else None

    def admit(
        self,
        sender: SenderT,
        session_id: str,
        count: int,
        identity: Hashable | None = None,
    ) -> Admission:
        """Apply the rule to one message; an accepted one updates the table.

        ``identity`` is who ``sender`` is (the same for every message of one
        sender); None makes the sender its own identity.
        """
        ident = sender if identity is None else identity
        owners = self._owners
        entry = owners.get(session_id)
        if entry is not None:
            owner, owner_ident, last = entry
            if owner == sender:
                if count <= last:
                    return Admission.REPLAY
                owners[session_id] = (owner, owner_ident, count)
                return Admission.ACCEPTED
            if count <= last:
                return Admission.REPLAY if self.reassign else Admission.COPY
            if not self.reassign and owner_ident != ident:
                return Admission.COPY
            if self._full(sender):
                return Admission.TOO_MANY_SESSIONS
            self._forget(session_id)
            self._claim(sender, ident, session_id, count)
            return Admission.REASSIGNED
        # A sessionId nobody owns: perhaps a released sender's.
        tomb = self._tombstones.get(session_id)
        if tomb is not None:
            tomb_ident, last, _ = tomb
            if not self.reassign and tomb_ident != ident:
                return Admission.COPY  # not theirs, whatever the count
            if count <= last:
                return Admission.REPLAY  # a late copy of a gone sender's message
        if self._full(sender):
            return Admission.TOO_MANY_SESSIONS
        if tomb is not None:
            # A stock peer back on a new connection, carrying on its session.
            self._bury(session_id)
        if self.max_sessions is not None and len(owners) >= self.max_sessions:
            self._forget(next(iter(owners)))
        self._claim(sender, ident, session_id, count)
        return Admission.ACCEPTED

    def _full(self, sender: SenderT) -> bool:
        """True if ``sender`` may not own one more sessionId."""
        if self.max_per_sender is None:
            return False
        owned = self._by_sender.get(sender)
        return owned is not None and len(owned) >= self.max_per_sender

    def _claim(self, sender: SenderT, ident: Hashable, session_id: str, count: int) -> None:
        self._owners[session_id] = (sender, ident, count)
        owned = self._by_sender.get(sender)
        if owned is None:
            owned = self._by_sender[sender] = set()
        owned.add(session_id)

    def _forget(self, session_id: str) -> None:
        owner, _, _ = self._owners.pop(session_id)
        owned = self._by_sender.get(owner)
        if owned is not None:
            owned.discard(session_id)
            if not owned:
                del self._by_sender[owner]

    def release(self, sender: SenderT, now: float) -> None:
        """``sender`` is gone: its sessionIds become tombstones."""
        owned = self._by_sender.pop(sender, None)
        if not owned:
            return
        keep = self.tombstone_ttl > 0 and self.max_tombstones > 0
        for session_id in owned:
            _, ident, last = self._owners.pop(session_id)
            if keep:
                self._tomb(session_id, ident, last, now)

    def expire(self, now: float) -> None:
        """Forget tombstones older than ``tombstone_ttl``."""
        cutoff = now - self.tombstone_ttl
        tombstones = self._tombstones
        # Oldest first: stop at the first one still fresh.
        while tombstones:
            session_id, (_, _, released) = next(iter(tombstones.items()))
            if released >= cutoff:
                break
            self._bury(session_id)

    def clear(self) -> None:
        """Forget everything (a client's connection is gone)."""
        self._owners.clear()
        self._by_sender.clear()
        self._tombstones.clear()
        self._held.clear()
        self._holders.clear()
        self._max_held = 0

    # ------------------------------------------------------------------ tombstones

    def _tomb(self, session_id: str, ident: Hashable, last: int, now: float) -> None:
        """Remember a released session; when full, first forget the oldest
        tombstone of the identity that holds the most (perhaps this one): one
        identity closing many connections cannot push out another's
        tombstones, only its own, until every identity holds as few. Between
        identities holding one each, the oldest goes."""
        tombstones = self._tombstones
        if len(tombstones) >= self.max_tombstones:
            if self._max_held:
                top = self._held[next(iter(self._holders[self._max_held]))]
                assert type(top) is dict
                self._bury(next(iter(top)))
            else:
                self._bury(next(iter(tombstones)))
        tombstones[session_id] = (ident, last, now)
        held = self._held.get(ident)
        if held is None:
            self._held[ident] = session_id
            return
        if type(held) is str:
            held = self._held[ident] = {held: None}
        assert type(held) is dict
        held[session_id] = None
        self._move(ident, len(held) - 1, len(held))

    def _bury(self, session_id: str) -> None:
        """Forget one tombstone (claimed back, expired or evicted)."""
        ident, _, _ = self._tombstones.pop(session_id)
        held = self._held[ident]
        if type(held) is str:
            del self._held[ident]
            return
        assert type(held) is dict
        del held[session_id]
        if len(held) == 1:
            self._held[ident] = next(iter(held))
        self._move(ident, len(held) + 1, len(held))

    def _move(self, ident: Hashable, old: int, new: int) -> None:
        """``ident`` now holds ``new`` tombstones instead of ``old`` (one apart,
        and at least one of them two or more)."""
        holders = self._holders
        if old >= 2:
            bucket = holders[old]
            del bucket[ident]
            if not bucket:
                del holders[old]
                if self._max_held == old and new < old:
                    self._max_held = new if new >= 2 else 0
        if new >= 2:
            holders.setdefault(new, {})[ident] = None
            if new > self._max_held:
                self._max_held = new
