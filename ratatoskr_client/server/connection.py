"""One relay connection, the outbox it writes through, and the relay's table sizes.

A :class:`Connection` is one WebSocket connection, before and after
authentication; it is not the wire's ``sessionId`` (which names a sender's
stream of ephemeral messages: one connection may use several). No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..pacing import TokenBucket

__all__ = ["Connection", "Outbox", "RelayStats", "Session"]


class Outbox(Protocol):
    """Where the core puts the frames for one connection. Calls never block."""

    def send(self, frame: bytes) -> None:
        """Deliver a control frame (identity, presence, errors). Never dropped."""

    def send_ephemeral(self, prefix: bytes, suffix: bytes) -> None:
        """Deliver the frame ``prefix + suffix``. May be dropped if the connection
        is too far behind: ephemeral messages are fire-and-forget."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection after the frames already sent."""


class Connection:
    """One WebSocket connection, before and after authentication.

    (Not the wire's ``sessionId``: that names a sender's stream of ephemeral
    messages, and one connection may use several.)
    """

    __slots__ = (
        "address",
        "authenticated",
        "bucket",
        "control",
        "docs",
        "identity",
        "identity_frame",
        "is_anonymous",
        "name",
        "outbox",
        "peer_id",
        "target_suffix",
        "user_id",
    )

    def __init__(self, outbox: Outbox, address: str = "") -> None:
        self.outbox = outbox
        #: the peer's network address (for per-address limits); "" if unknown
        self.address = address
        self.authenticated = False
        self.peer_id = ""
        self.user_id: str | None = None
        self.name = ""
        self.is_anonymous = True
        #: who the connection is for the gossip rule (see :mod:`.identity`): the
        #: user, or for an anonymous peer a keyed hash of its address
        self.identity = ""
        #: document id -> monotonic time of the last join/heartbeat (or other activity)
        self.docs: dict[str, float] = {}
        self.bucket: TokenBucket | None = None
        #: document id -> bucket for presence control messages (created on demand)
        self.control: dict[str, TokenBucket] = {}
        self.identity_frame = b""
        self.target_suffix = b""

    def __repr__(self) -> str:
        who = self.peer_id or "unauthenticated"
        return f"<Connection {who} {self.name!r} docs={len(self.docs)}>"


#: The former name of :class:`Connection`, kept so existing imports work.
Session = Connection


@dataclass(frozen=True, slots=True)
class RelayStats:
    """Sizes of every table the relay keeps; all return to zero when everyone leaves."""

    connections: int
    peers: int
    documents: int
    memberships: int
    gossip_sessions: int
    session_tombstones: int
    rate_buckets: int
    anonymous_names: int
    auth_failure_addresses: int = 0
