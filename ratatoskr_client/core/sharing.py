"""When this client sends its own per-peer state: snapshots, updates, heartbeats. No I/O.

Sharing (sending our own state) is what costs: every snapshot is fanned out to
everyone in the document, and every newcomer makes everyone re-announce. So on
a server with server-side presence a client shares its state in a document only
once the application calls ``set_state`` for it; on a server without (the
peer-to-peer fallback) sharing is how a client is seen at all, so it shares in
every entered document. Receiving other peers' state is always on.

:class:`StateSharing` decides *what* to send and *when* (as deadlines); the
core (:mod:`ratatoskr_client.core.client`) sends it, paced like any message.
"""

from __future__ import annotations

import math
from typing import Any, Literal, TypeAlias

from ..protocol.constants import REANNOUNCE_DELAY
from .peer_state import Coalescer, PeerStates

__all__ = ["Due", "StateSharing"]

#: A state message that is due: (document, what to send).
Due: TypeAlias = tuple[str, Literal["update", "snapshot", "heartbeat"]]


class StateSharing:
    """Our own state in every document, and the timers around it."""

    __slots__ = (
        "_flush_at",
        "_last_sent",
        "_reannounce_at",
        "coalescer",
        "heartbeat",
        "live",
        "sharing",
        "states",
    )

    def __init__(self, states: PeerStates, *, interval: float, heartbeat: float) -> None:
        self.states = states  # its local state is ours
        self.coalescer = Coalescer(interval)
        self.heartbeat = heartbeat
        #: documents whose state we send (the application set state there, or p2p)
        self.sharing: set[str] = set()
        #: shared documents confirmed on the current connection (snapshot sent)
        self.live: set[str] = set()
        self._last_sent: dict[str, float] = {}
        self._flush_at: dict[str, float] = {}
        self._reannounce_at: dict[str, float] = {}

    # ------------------------------------------------------------------ decisions

    def set_local(
        self, document_id: str, channel: str, value: Any, now: float, *, confirmed: bool
    ) -> tuple[bool, bool]:
        """Record one channel of our state. Returns (changed, go_live): whether
        the value changed, and whether a snapshot must go out now (the first
        state in a document that is already confirmed). Otherwise an update is
        coalesced, due at :meth:`deadline`."""
        changed = self.states.set_local(document_id, channel, value)
        starting = document_id not in self.sharing
        self.sharing.add(document_id)
        if document_id not in self.live:
            go_live = starting and confirmed
            if go_live:
                self.live.add(document_id)
            return changed, go_live  # otherwise sent with the snapshot once confirmed
        if changed:
            delay = self.coalescer.offer(document_id, channel, value, now)
            if delay is not None:
                self._flush_at[document_id] = now + delay
        return changed, False

    def confirmed(self, document_id: str, default_name: str, *, share: bool) -> bool:
        """Our presence in a document is confirmed on this connection. ``share``:
        share here whatever the application did (peer-to-peer mode). True if a
        snapshot must go out now."""
        if share:
            self.sharing.add(document_id)
        self.states.init_local(document_id, {"name": default_name})
        if document_id in self.sharing and document_id not in self.live:
            self.live.add(document_id)
            return True
        return False

    def heard_unknown(self, document_id: str, now: float) -> bool:
        """A message from a peer we did not know: re-announce our snapshot
        REANNOUNCE_DELAY later (once per document per delay, which bounds the
        storm when many peers arrive at once). True if that was scheduled."""
        if document_id not in self.live or document_id in self._reannounce_at:
            return False
        self._reannounce_at[document_id] = now + REANNOUNCE_DELAY
        return True

    def left(self, document_id: str) -> bool:
        """The application leaves a document; True if a goodbye is owed."""
        was_live = document_id in self.live
        self.live.discard(document_id)
        self.sharing.discard(document_id)
        self.coalescer.forget(document_id)
        self._flush_at.pop(document_id, None)
        self._reannounce_at.pop(document_id, None)
        self._last_sent.pop(document_id, None)
        return was_live

    def sent(self, document_id: str, now: float) -> None:
        """A state message for ``document_id`` went out (heartbeats count from it)."""
        self._last_sent[document_id] = now

    # ------------------------------------------------------------------ timers

    def due(self, now: float) -> list[Due]:
        """Everything due at ``now``; each is removed from the timers."""
        out: list[Due] = []
        for doc_id, at in list(self._flush_at.items()):
            if at <= now:
                del self._flush_at[doc_id]
                if doc_id in self.live:
                    out.append((doc_id, "update"))
        for doc_id, at in list(self._reannounce_at.items()):
            if at <= now:
                del self._reannounce_at[doc_id]
                if doc_id in self.live:
                    out.append((doc_id, "snapshot"))
        for doc_id in self.live:
            if now - self._last_sent.get(doc_id, now) >= self.heartbeat:
                self._last_sent[doc_id] = now  # once per period, even while paced
                out.append((doc_id, "heartbeat"))
        return out

    def deadline(self) -> float:
        """The earliest time :meth:`due` has something (inf: nothing)."""
        at = math.inf
        if self._flush_at:
            at = min(self._flush_at.values())
        if self._reannounce_at:
            at = min(at, *self._reannounce_at.values())
        for doc_id in self.live:
            last = self._last_sent.get(doc_id)
            if last is not None:
                at = min(at, last + self.heartbeat)
        return at

    # ------------------------------------------------------------------ lifecycle

    def connection_lost(self) -> None:
        """Nothing is live any more; our state is kept and re-sent after reconnecting."""
        self.live.clear()
        self.coalescer.clear()
        self._flush_at.clear()
        self._reannounce_at.clear()
        self._last_sent.clear()

    def reset(self) -> None:
        """The client is closed: forget our state too."""
        self.connection_lost()
        self.sharing.clear()
