"""When a document's presence is announced: once per batch of frames, throttled when large. No I/O.

A frame that changes a document's presence only marks the document
(:meth:`PresenceBatches.mark`); the core announces every marked document
(``presence-changed``, then the document's watches) when it settles —
called by the driver once it has handled every frame it had read, and by the
core at the end of every other input. Building the presence tuple costs
O(peers), so doing it per frame made a burst of N joins cost O(N²) (40,000
joins: 8.6 s of CPU). Batches alone do not bound it: a server whose frames
arrive one at a time makes batches of one. So a document of
:data:`THROTTLE_PEERS` or more is announced at most once per
:data:`ANNOUNCE_SPACING` × its size (40 ms at 40,000 peers) while it keeps
changing — the last change always announced, on the core's timer — which
keeps building the tuple under 1 % of the time (a few nanoseconds per peer
per microsecond per peer) whatever the arrival pattern: O(1) per change,
amortized. Smaller documents cost too little to matter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

__all__ = ["ANNOUNCE_SPACING", "THROTTLE_PEERS", "PresenceBatches"]

#: Documents with this many peers or more are throttled (see the module docstring).
THROTTLE_PEERS: Final = 1000
#: Seconds per peer present between two announcements of a throttled document.
ANNOUNCE_SPACING: Final = 1e-6


class PresenceBatches:
    """Documents whose presence changed and is not announced yet, and when a
    large one may be announced again."""

    __slots__ = ("_announced", "unsettled")

    def __init__(self) -> None:
        #: documents whose presence changed and is not announced yet, in order
        #: (cleared in place, never replaced: the driver keeps a reference)
        self.unsettled: dict[str, None] = {}
        # Large document -> when it may be announced again.
        self._announced: dict[str, float] = {}

    def mark(self, document_id: str) -> None:
        """``document_id``'s presence changed."""
        self.unsettled[document_id] = None

    def due(
        self, now: float, size: Callable[[str], int], *, force: bool
    ) -> tuple[list[str], float]:
        """The marked documents to announce now (unmarked), and when to come
        back for those held back (inf: none is). ``force``: none is held back
        (the ends of a connection, leaving)."""
        announced = self._announced
        out: list[str] = []
        later = math.inf
        for document_id in list(self.unsettled):
            peers = size(document_id)
            if peers >= THROTTLE_PEERS and not force:
                due = announced.get(document_id, now)
                if now < due:  # announced a moment ago: once more when allowed
                    later = min(later, due)
                    continue
                announced[document_id] = now + peers * ANNOUNCE_SPACING
            elif announced:
                announced.pop(document_id, None)
            del self.unsettled[document_id]
            out.append(document_id)
        return out, later

    def unthrottle(self, document_id: str) -> None:
        """Announce ``document_id``'s next change at once (our presence in it
        was just confirmed: ``enter_document`` returns after it)."""
        self._announced.pop(document_id, None)

    def clear(self) -> None:
        """Forget when documents were announced (the client is closed)."""
        self._announced.clear()
