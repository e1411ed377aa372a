"""The gossip and replay rule for ephemeral messages, as a pure table. No I/O.

automerge-repo peers forward every ephemeral message they receive to their
other peers, keeping its ``sessionId`` and ``count``; a peer connected to a
relay therefore sends copies of everyone's messages back to it. The rule that
tells an original from such a copy (``docs/protocol.md``, "Gossip copies"):

* **a sessionId belongs to one sender**, the first that used it: the same
  sessionId from any other sender is a copy;
* **counts must grow**: a message whose ``count`` is not above the last one
  accepted for its sessionId is a copy (or a replay).

:class:`SessionOwners` applies it, with one parameter saying who the "first"
sender is:

* **the relay** (``reassign=False``) sees every connection directly, so the
  first connection to use a sessionId is its sender, for good: nobody else can
  take a session over, whatever count it sends.
* **a client behind a server that relabels copies** (``reassign=True``; the
  upstream server stamps a forwarded copy with the *forwarder's* peer id, see
  ``upstream-wire-notes``) cannot trust the first sender it saw: if it
  subscribed between a message and its copies, the first thing it saw was a
  relabelled copy. What it can trust is order: the server relays a message to
  everyone before any peer can forward it back, so **the first arrival of each
  new count comes from the real sender**, and copies of it always come later
  with a count that is no longer new. So a count above the last one *reassigns*
  the sessionId to whoever delivered it (:attr:`Admission.REASSIGNED`), and a
  wrong first guess lasts until the real sender's next message.

The relay keys senders by connection; a client keys them by peer id. When a
sender goes away (:meth:`SessionOwners.release`) its sessionIds are remembered
for ``tombstone_ttl`` seconds with their last count, so late copies stay
dropped, while the same stock peer reconnecting with a higher count takes its
session back.
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


_UNSEEN: Final = -1


class SessionOwners(Generic[SenderT]):
    """Which sender owns each sessionId, and the last count accepted for it.

    Args:
        max_per_sender: sessionIds one sender may own (None: no bound). A stock
            peer uses one; the bound keeps one sender from growing the table.
        max_sessions: sessionIds owned at once (None: no bound); beyond it the
            oldest is forgotten. For tables fed by others' traffic (a client
            keeps one per peer it hears from).
        tombstone_ttl: seconds a released sender's sessionIds are remembered.
        max_tombstones: remembered sessionIds at most (oldest forgotten first).
        reassign: a count above the last one from another sender reassigns the
            sessionId to it instead of being a copy (behind a server that
            relabels copies; see the module docstring).
    """

    __slots__ = (
        "_by_sender",
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
        #: sessionId -> (owner, last accepted count), oldest first
        self._owners: dict[str, tuple[SenderT, int]] = {}
        #: owner -> its sessionIds (for the per-sender bound and release)
        self._by_sender: dict[SenderT, set[str]] = {}
        #: sessionId of a released sender -> (last count, released at), oldest first
        self._tombstones: dict[str, tuple[int, float]] = {}

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

    def admit(self, sender: SenderT, session_id: str, count: int) -> Admission:
        """Apply the rule to one message; an accepted one updates the table."""
        owners = self._owners
        entry = owners.get(session_id)
        if entry is not None:
            owner, last = entry
            if count <= last:
                return Admission.REPLAY if owner == sender or self.reassign else Admission.COPY
            if owner == sender:
                owners[session_id] = (owner, count)
                return Admission.ACCEPTED
            if not self.reassign:
                return Admission.COPY
            self._forget(session_id)
            self._claim(sender, session_id, count)
            return Admission.REASSIGNED
        # A sessionId nobody owns: perhaps a released sender's.
        last = _UNSEEN
        tomb = self._tombstones.get(session_id)
        if tomb is not None:
            last = tomb[0]
            if count <= last:
                return Admission.REPLAY  # a late copy of a gone sender's message
        owned = self._by_sender.get(sender)
        if (
            self.max_per_sender is not None
            and owned is not None
            and len(owned) >= self.max_per_sender
        ):
            return Admission.TOO_MANY_SESSIONS
        if tomb is not None:
            # A stock peer back on a new connection, carrying on its session.
            del self._tombstones[session_id]
        if self.max_sessions is not None and len(owners) >= self.max_sessions:
            self._forget(next(iter(owners)))
        self._claim(sender, session_id, count)
        return Admission.ACCEPTED

    def _claim(self, sender: SenderT, session_id: str, count: int) -> None:
        self._owners[session_id] = (sender, count)
        owned = self._by_sender.get(sender)
        if owned is None:
            owned = self._by_sender[sender] = set()
        owned.add(session_id)

    def _forget(self, session_id: str) -> None:
        owner, _ = self._owners.pop(session_id)
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
            _, last = self._owners.pop(session_id)
            if keep:
                self._tombstones[session_id] = (last, now)
        while len(self._tombstones) > self.max_tombstones:
            del self._tombstones[next(iter(self._tombstones))]

    def expire(self, now: float) -> None:
        """Forget tombstones older than ``tombstone_ttl``."""
        cutoff = now - self.tombstone_ttl
        # Oldest first: stop at the first one still fresh.
        while self._tombstones:
            session_id, (_, released) = next(iter(self._tombstones.items()))
            if released >= cutoff:
                break
            del self._tombstones[session_id]

    def clear(self) -> None:
        """Forget everything (a client's connection is gone)."""
        self._owners.clear()
        self._by_sender.clear()
        self._tombstones.clear()
