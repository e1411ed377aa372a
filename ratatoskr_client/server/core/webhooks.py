"""The webhooks' rules: signatures, batches, the bounded queue, retries. No I/O.

The relay POSTs batches of membership events (:class:`~.roster.MembershipEvent`:
``document.occupied``, ``document.vacated``, ``user.joined``, ``user.left``)
to the configured URL, as JSON::

    {"deliveryId": "9f1c...", "node": "relay-...", "events": [
        {"type": "user.joined", "documentId": "doc-1", "user": "alice",
         "peerId": "peer-...", "name": "Alice", "at": 1767225600.123}, ...]}

with three headers:

* ``X-Ratatoskr-Timestamp``: the Unix time (seconds) of this attempt;
* ``X-Ratatoskr-Signature``: ``v1=`` and the hex HMAC-SHA256, keyed with the
  shared secret, of ``"<timestamp>." + body`` (:func:`sign`);
* ``X-Ratatoskr-Delivery``: the batch's id, the same on every retry of it (a
  receiver that saw it already answers 2xx and ignores it).

A receiver checks the signature and that the timestamp is within
:data:`REPLAY_WINDOW` seconds of its clock (:func:`verify`), so a captured
request cannot be replayed later. Delivery is at least once per batch and
relay: an answer lost on the way is retried, with the same delivery id.

Relaying never waits for any of it: events go into a bounded queue
(:class:`EventQueue`, :data:`MAX_QUEUED` events; beyond it new events are
dropped and counted), one batch at a time is sent, and a failed batch is
retried on :func:`retry_delay`'s schedule, then dropped and counted.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "DELIVERY_HEADER",
    "MAX_ATTEMPTS",
    "MAX_BATCH",
    "MAX_QUEUED",
    "REPLAY_WINDOW",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "EventQueue",
    "WebhookStats",
    "retry_delay",
    "sign",
    "verify",
]

SIGNATURE_HEADER: Final = "X-Ratatoskr-Signature"
TIMESTAMP_HEADER: Final = "X-Ratatoskr-Timestamp"
DELIVERY_HEADER: Final = "X-Ratatoskr-Delivery"
#: Seconds a signed request stays acceptable (either side of the receiver's clock).
REPLAY_WINDOW: Final = 300
#: Events waiting to be sent, at most; beyond it new events are dropped (counted).
MAX_QUEUED: Final = 10_000
#: Events per POST, at most.
MAX_BATCH: Final = 100
#: Attempts per batch before it is dropped (counted).
MAX_ATTEMPTS: Final = 8
#: The first retry's delay and the longest one, in seconds.
RETRY_FIRST: Final = 0.5
RETRY_MAX: Final = 30.0


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Ratatoskr-Signature`` value of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    window: float = REPLAY_WINDOW,
) -> bool:
    """True if ``body`` with these request ``headers`` was signed with
    ``secret`` within ``window`` seconds of ``now`` (constant-time compare).
    What a receiver runs (``ratatoskr webhook-echo`` does)."""
    stamp = headers.get(TIMESTAMP_HEADER, "")
    given = headers.get(SIGNATURE_HEADER, "")
    try:
        timestamp = int(stamp)
    except ValueError:
        return False
    if abs(now - timestamp) > window:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body).encode(), given.encode())


def retry_delay(attempt: int) -> float:
    """Seconds before retry number ``attempt`` (1, 2, ...): doubling from
    :data:`RETRY_FIRST`, at most :data:`RETRY_MAX`."""
    return float(min(RETRY_MAX, RETRY_FIRST * 2 ** (attempt - 1)))


@dataclass(slots=True)
class WebhookStats:
    """What ``/metrics`` shows of the webhooks."""

    #: events queued for sending
    queued: int = 0
    #: events dropped: the queue was full, or their batch failed every attempt
    dropped: dict[str, int] = field(default_factory=lambda: {"queue_full": 0, "failed": 0})
    #: POSTs by outcome (``ok``, ``error``)
    deliveries: dict[str, int] = field(default_factory=lambda: {"ok": 0, "error": 0})
    #: events delivered
    delivered: int = 0


class EventQueue:
    """The bounded queue of events to send (JSON-able dicts), oldest first."""

    __slots__ = ("_events", "limit", "stats")

    def __init__(self, stats: WebhookStats, limit: int = MAX_QUEUED) -> None:
        self._events: deque[dict[str, Any]] = deque()
        self.limit = limit
        self.stats = stats

    def __len__(self) -> int:
        return len(self._events)

    def put(self, event: dict[str, Any]) -> bool:
        """Queue ``event``; False (and counted) when the queue is full."""
        if len(self._events) >= self.limit:
            self.stats.dropped["queue_full"] += 1
            return False
        self._events.append(event)
        self.stats.queued = len(self._events)
        return True

    def take(self, limit: int = MAX_BATCH) -> list[dict[str, Any]]:
        """The next batch: up to ``limit`` events, oldest first, removed."""
        events = self._events
        batch = [events.popleft() for _ in range(min(limit, len(events)))]
        self.stats.queued = len(events)
        return batch
