"""What the simulated users put in their messages to measure delivery, and the
bookkeeping receivers keep. Pure logic: no I/O, no clock of its own.

Two numbers are measured at the receivers, from wall-clock times
(``time.time()``) carried in the payloads, so they are comparable across
processes and machines as long as the clocks agree (NTP):

- **ephemeral delivery**: a payload sent by
  :meth:`~ratatoskr_client.locust.RatatoskrUser.send_ephemeral` carries its
  send time under :data:`SENT_AT`; each receiver reports ``now - sent``.
- **presence convergence**: a user that entered a document announces the time
  it *started* entering under :data:`ENTERED_AT` in one message to the
  document. Each peer already present noted when the server told it about the
  newcomer (``peer-joined``); when the announcement arrives it reports
  ``noted - entered``. Peers that entered after the newcomer learn of it in
  their own enter's presence, not through ``peer-joined``: they report nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = ["ENTERED_AT", "SENT_AT", "ConvergenceTracker", "delivery_delay", "stamped"]

#: Payload key: when the sender sent the message (seconds since the epoch).
SENT_AT: Final = "__locust_sent_at"
#: Payload key: when the sender started entering the document.
ENTERED_AT: Final = "__locust_entered_at"


def stamped(payload: Any, now: float) -> dict[str, Any]:
    """``payload`` with its send time: a mapping gains the :data:`SENT_AT` key,
    anything else is wrapped as ``{"payload": payload, SENT_AT: now}``."""
    if isinstance(payload, Mapping):
        return {**payload, SENT_AT: now}
    return {"payload": payload, SENT_AT: now}


def delivery_delay(payload: Any, now: float) -> float | None:
    """Seconds from send to ``now`` for a stamped payload (None if unstamped).
    Never negative: a receiver whose clock is behind the sender's reports 0."""
    if type(payload) is not dict:
        return None
    sent = payload.get(SENT_AT)
    if not isinstance(sent, int | float):
        return None
    return max(0.0, now - sent)


class ConvergenceTracker:
    """One receiver's view: when did it see each peer join each document?

    What it holds is short-lived (from a peer's join to its announcement, a
    message later): once empty it lets go of its table, which a dict keeps at
    the largest size it reached (0.2 KiB of each of a worker's users)."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], float] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def joined(self, document_id: str, peer_id: str, now: float) -> None:
        """The server told us ``peer_id`` entered ``document_id`` at ``now``."""
        self._seen[document_id, peer_id] = now

    def left(self, document_id: str, peer_id: str) -> None:
        """``peer_id`` left before announcing: forget it."""
        self._forget(document_id, peer_id)

    def _forget(self, document_id: str, peer_id: str) -> float | None:
        seen = self._seen.pop((document_id, peer_id), None)
        if seen is not None and not self._seen:
            self._seen = {}  # an empty dict without a table
        return seen

    def reset(self) -> None:
        """Our connection was lost: presence starts over, so does this."""
        self._seen.clear()

    def announced(self, document_id: str, peer_id: str, payload: Any) -> float | None:
        """A message from ``peer_id``: if it announces an enter we saw happen,
        return the seconds from its start to our sighting (at least 0)."""
        if type(payload) is not dict:
            return None
        entered = payload.get(ENTERED_AT)
        if not isinstance(entered, int | float):
            return None
        seen = self._forget(document_id, peer_id)
        if seen is None:
            return None
        return max(0.0, seen - entered)
