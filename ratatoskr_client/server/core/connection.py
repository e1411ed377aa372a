"""One relay connection, the outbox it writes through, and the relay's table sizes.

A :class:`Connection` is one WebSocket connection, before and after
authentication; it is not the wire's ``sessionId`` (which names a sender's
stream of ephemeral messages: one connection may use several). No I/O.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ...protocol.rates import TokenBucket

__all__ = ["Connection", "LimitBucket", "Outbox", "RelayStats", "forget_full"]

_Bucket = TypeVar("_Bucket", bound=TokenBucket)


class Outbox(Protocol):
    """Where the core puts the frames for one connection. Calls never block."""

    def send(self, frame: bytes) -> None:
        """Deliver a control frame (identity, presence, errors). Never dropped."""

    def send_ephemeral(self, prefix: bytes, suffix: bytes) -> None:
        """Deliver the frame ``prefix + suffix``. May be dropped if the connection
        is too far behind: ephemeral messages are fire-and-forget."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection after the frames already sent."""

    def ping(self) -> None:
        """Send a WebSocket ping (the peer's pong proves it is alive)."""


class LimitBucket(TokenBucket):
    """A connection's token bucket for one of the relay's limits, which also
    remembers until when the connection has been told to wait (``rate_limited``
    with ``retryAfter``): refusals before then are not answered again."""

    __slots__ = ("told_until",)

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        super().__init__(rate, capacity, now)
        #: clock time until which the connection was told to wait (0: never told)
        self.told_until = 0.0


def forget_full(buckets: dict[str, _Bucket], now: float) -> None:
    """Forget the buckets that are full again at ``now``: a new one would be the same."""
    for key in [k for k, b in buckets.items() if b.tokens(now) >= b.capacity]:
        del buckets[key]


class Connection:
    """One WebSocket connection, before and after authentication.

    (Not the wire's ``sessionId``: that names a sender's stream of ephemeral
    messages, and one connection may use several.)
    """

    __slots__ = (
        "address",
        "answered",
        "authenticated",
        "bucket",
        "control",
        "docs",
        "expires",
        "expiry_told",
        "flood",
        "heard",
        "heard_at",
        "held",
        "identity",
        "identity_frame",
        "is_anonymous",
        "name",
        "nudges",
        "outbox",
        "parked",
        "peer_id",
        "pinged",
        "reintroduce",
        "successor",
        "target_suffix",
        "user_id",
        "waiting",
    )

    def __init__(self, outbox: Outbox, address: str = "", now: float = 0.0) -> None:
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
        self.bucket: LimitBucket | None = None
        #: documents where a change of this peer's membership is held (see
        #: :mod:`.visibility`); None when there is none (the usual case)
        self.held: set[str] | None = None
        #: document id -> bucket for presence control messages (created on demand)
        self.control: dict[str, LimitBucket] = {}
        #: frames refused unanswered that it may still send before it is cut off
        #: (created when the first one is refused; see limits.FLOOD_ALLOWANCE)
        self.flood: TokenBucket | None = None
        #: a complete frame arrived since the last liveness sweep (set per frame:
        #: a store, so the hot path does not read the clock for this)
        self.heard = False
        #: when the liveness sweep last saw it had heard from the peer
        self.heard_at = now
        #: pinged since heard_at
        self.pinged = False
        self.identity_frame = b""
        self.target_suffix = b""
        #: the peer this connection resumed (:mod:`.resume`): its socket
        #: carries that connection from then on; None otherwise
        self.successor: Connection | None = None
        #: documents whose members it must be told again when it joins them
        #: (it resumed its peer on a new socket); None: none
        self.reintroduce: set[str] | None = None
        #: relay-clock time the token expires at (inf: it does not); after the
        #: ``token_expired`` frame (``expiry_told``), the end of the grace
        self.expires = math.inf
        self.expiry_told = False
        #: the look-up this connection's frames wait for (see relay.py,
        #: "parked frames"), and those frames, in arrival order
        self.waiting: Any = None
        self.parked: list[bytes] | None = None
        #: the look-up just answered, while its frame is replayed
        self.answered: Any = None
        #: the count of the state nudges sent for it to other relays (see
        #: Visibility.replay_states)
        self.nudges = 0

    def __repr__(self) -> str:
        who = self.peer_id or "unauthenticated"
        return f"<Connection {who} {self.name!r} docs={len(self.docs)}>"


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
    #: source addresses whose anonymous-connection allowance is refilling
    connection_addresses: int = 0


def __getattr__(name: str) -> Any:
    # ``Session``: the name of :class:`Connection` before the relay's rules were
    # split by concern. Deprecated: it was renamed because it is not the wire's
    # ``sessionId`` (one connection may use several). Kept, with a warning, for
    # code that imports it from here, ``.relay`` or the package.
    if name == "Session":
        warnings.warn(
            "ratatoskr_client.server.core.Session is deprecated: use Connection",
            DeprecationWarning,
            stacklevel=2,
        )
        return Connection
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
