"""What the relay has done since it started, as plain integers. No I/O.

The core and the socket layer bump these on their hot paths (a dictionary
increment, nothing more); :mod:`ratatoskr_client.server.asyncio.metrics` reads them
when ``GET /metrics`` is scraped. Every label value comes from a fixed set, so
no client can grow the tables: frame types a client makes up count as
``unknown``.
"""

from __future__ import annotations

from typing import Final

__all__ = ["REFUSAL_REASONS", "RESUME_OUTCOMES", "RelayCounters", "refusal_reason"]

#: Error code sent to a client -> the ``reason`` label of refused frames.
_REASON_OF_CODE: Final = {
    "permission_denied": "permission",
    "document_not_found": "permission",
    "rate_limited": "rate_limit",
    "invalid_message": "invalid",
    "too_many_documents": "limit",
    "too_many_sessions": "limit",
    "not_authenticated": "auth",
    "already_authenticated": "invalid",
    "invalid_token": "auth",
    "missing_credentials": "auth",
    "auth_timeout": "auth",
    "auth_unavailable": "auth",
    "user_mismatch": "auth",
    "token_expired": "auth",
    "permission_revoked": "permission",
    "permission_unavailable": "permission",
}
#: Every ``reason`` label value (``oversized`` is counted where a frame is too large).
REFUSAL_REASONS: Final = (
    "permission",
    "rate_limit",
    "invalid",
    "oversized",
    "limit",
    "auth",
    "other",
)


def refusal_reason(code: str) -> str:
    """The ``reason`` label for an error ``code`` the relay sent."""
    return _REASON_OF_CODE.get(code, "other")


#: What became of a resume (``docs/server.md``, "Metrics"): ``here`` (a
#: client resumed a peer this relay held), ``adopted`` (a peer another relay
#: of the cluster handed over), ``handed_over`` (a peer this relay gave to
#: another), ``refused`` (the holder said no: a new peer), ``timed_out`` (the
#: holder did not answer in time: a new peer), ``late`` (a handover that came
#: after that: the peer left at once).
RESUME_OUTCOMES: Final = ("here", "adopted", "handed_over", "refused", "timed_out", "late")


class RelayCounters:
    """Monotonic counts of one relay's traffic (reset only by a restart)."""

    __slots__ = (
        "ephemeral_dropped",
        "ephemeral_out",
        "flood_disconnects",
        "frames_in",
        "frames_out",
        "internal_errors",
        "refused",
        "relayed_local",
        "relayed_remote",
        "resumes",
        "slow_disconnects",
        "unanswered",
        "unresponsive_disconnects",
    )

    def __init__(self) -> None:
        #: frames received, by type (``invalid``, ``oversized``, ``text``, ``unknown``
        #: for frames that have no usable type)
        self.frames_in: dict[str, int] = {}
        #: frames written to sockets, by type (ephemeral ones in ephemeral_out)
        self.frames_out: dict[str, int] = {}
        #: ephemeral frames written (an attribute, not a key: it is bumped per
        #: recipient of every message)
        self.ephemeral_out = 0
        #: frames refused with an error, by reason (see :data:`REFUSAL_REASONS`)
        self.refused: dict[str, int] = {}
        #: ephemeral messages accepted from a local peer and relayed
        self.relayed_local = 0
        #: ephemeral messages from peers on other relays delivered here
        self.relayed_remote = 0
        #: ephemeral frames not sent because the receiving peer was too far behind
        self.ephemeral_dropped = 0
        #: connections dropped because their peer stopped reading
        self.slow_disconnects = 0
        #: frames refused by a rate limit and not answered: the connection had
        #: been told ``rate_limited`` and its ``retryAfter`` had not passed yet
        self.unanswered = 0
        #: connections closed for sending too many frames after being told
        self.flood_disconnects = 0
        #: connections closed because no complete frame (nor pong) arrived in time
        self.unresponsive_disconnects = 0
        #: frames the relay failed on (a bug: answered with ``internal_error``)
        self.internal_errors = 0
        #: resumes by outcome (see :data:`RESUME_OUTCOMES`)
        self.resumes: dict[str, int] = {}

    def resume(self, outcome: str) -> None:
        """Count a resume (:data:`RESUME_OUTCOMES`)."""
        self.resumes[outcome] = self.resumes.get(outcome, 0) + 1

    def frame_in(self, kind: str) -> None:
        """One frame of type ``kind`` was received."""
        self.frames_in[kind] = self.frames_in.get(kind, 0) + 1

    def frame_out(self, kind: str) -> None:
        """One frame of type ``kind`` was written."""
        self.frames_out[kind] = self.frames_out.get(kind, 0) + 1

    def frames_sent(self) -> dict[str, int]:
        """Frames written to sockets, by type, ephemeral ones included."""
        out = dict(self.frames_out)
        if self.ephemeral_out:
            out["ephemeral"] = out.get("ephemeral", 0) + self.ephemeral_out
        return out

    def refusal(self, reason: str) -> None:
        """One frame was refused for ``reason``."""
        self.refused[reason] = self.refused.get(reason, 0) + 1
