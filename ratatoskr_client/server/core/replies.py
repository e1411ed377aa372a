"""How the relay says no: its error frames, when a refusal is answered, and the counts. No I/O.

Part of :class:`~.relay.RelayCore`; every other part refuses through it, so
each refusal is answered the same way and counted once, by reason
(``ratatoskr_refused_total{reason}`` in ``/metrics``, :mod:`.counters`):

* :meth:`Replies.error` sends one ``error`` frame (``retryAfter`` rounded up
  to the millisecond);
* :meth:`Replies.rate_limited` answers a refusal by a rate limit once per
  ``retryAfter`` and closes a connection that keeps sending after being told;
* :meth:`Replies.refuse_and_close` sends an error and closes (a refused
  connection: too many failed auths, too many anonymous connections, no auth
  in time);
* :meth:`Replies.internal_error` is the answer to a frame the relay failed on
  (a bug of its own): the frame is dropped, the connection stays, and the
  failure is logged with its traceback and counted
  (``ratatoskr_internal_errors_total``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from ...protocol import ErrorFrame, encode
from ...protocol.rates import TokenBucket
from ..config import RelayConfig
from .connection import Connection, LimitBucket
from .counters import RelayCounters, refusal_reason
from .limits import FLOOD_ALLOWANCE, FLOOD_REFILL, PRESENCE_BURST

__all__ = ["INTERNAL_ERROR", "Replies"]

log = logging.getLogger("ratatoskr_client.server")

#: The frame that answers a frame the relay failed on (always the same bytes).
INTERNAL_ERROR = encode(ErrorFrame("internal_error", "the relay failed on this frame"))


class Replies:
    """The relay's error answers, and what they count."""

    __slots__ = ("clock", "config", "counters")

    def __init__(
        self, config: RelayConfig, clock: Callable[[], float], counters: RelayCounters
    ) -> None:
        self.config = config
        self.clock = clock
        self.counters = counters

    def error(
        self,
        conn: Connection,
        code: str,
        message: str,
        *,
        document_id: str | None = None,
        retry_after: float | None = None,
        reason: str | None = None,
    ) -> None:
        """Send an error frame and count the refusal (``reason``: the metric's
        label, by default the one of ``code``). ``retry_after`` (seconds) goes
        out rounded up to the millisecond: a client that waits that long finds
        its token."""
        if retry_after is not None:
            retry_after = math.ceil(retry_after * 1000) / 1000
        self.counters.refusal(reason or refusal_reason(code))
        conn.outbox.send(encode(ErrorFrame(code, message, document_id, retry_after)))

    def refuse_and_close(
        self, conn: Connection, code: str, message: str, *, retry_after: float | None = None
    ) -> None:
        """Refuse the connection itself: an error frame saying why, then
        closed (1008, with ``code`` as the close reason)."""
        self.error(conn, code, message, retry_after=retry_after)
        conn.outbox.close(1008, code)

    def rate_limited(
        self, conn: Connection, bucket: LimitBucket, wait: float, document_id: str | None = None
    ) -> None:
        """A frame refused by ``bucket`` (the message rate, or one document's
        presence bound), whose next token comes in ``wait`` seconds.

        The first refusal is answered with ``rate_limited`` and ``retryAfter``;
        until that time has passed, further refusals by the same bucket are
        dropped unanswered (a counter increment, no encoding, no frame). A
        peer that obeys ``retryAfter`` only sends what was already in flight;
        one that sends more than FLOOD_ALLOWANCE such frames (refilled at
        FLOOD_REFILL per second) is told why and closed."""
        now = self.clock()
        if now >= bucket.told_until:
            bucket.told_until = now + wait
            if document_id is None:
                message = f"more than {self.config.rate_limit} ephemeral messages per minute"
            else:
                message = f"more than {PRESENCE_BURST} presence messages in a row for this document"
            self.error(conn, "rate_limited", message, document_id=document_id, retry_after=wait)
            return
        self.counters.unanswered += 1
        flood = conn.flood
        if flood is None:
            flood = conn.flood = TokenBucket(FLOOD_REFILL, FLOOD_ALLOWANCE, now)
        if flood.take(now) > 0:
            log.debug("closing %r: it kept sending after rate_limited", conn)
            self.counters.flood_disconnects += 1
            self.error(
                conn,
                "rate_limited",
                "kept sending after rate_limited: connection closed",
                document_id=document_id,
                retry_after=wait,
            )
            conn.outbox.close(1008, "rate_limited")

    def internal_error(self, conn: Connection) -> None:
        """The relay failed on a frame from ``conn`` (an exception escaped its
        rules): a bug must cost that frame, never the connection or the
        process. Logged with the traceback (call it from the ``except``
        block), counted, and answered with ``internal_error``."""
        log.exception("internal error while handling a frame from %r", conn)
        self.counters.internal_errors += 1
        conn.outbox.send(INTERNAL_ERROR)
