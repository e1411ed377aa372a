"""The relay's fixed limits: the bounds that are not configuration. No I/O."""

from __future__ import annotations

from typing import Final

__all__ = [
    "MAX_AUTH_FAILURE_ADDRESSES",
    "MAX_SESSIONS_PER_CONNECTION",
    "MAX_SESSION_TOMBSTONES",
    "PRESENCE_BURST",
    "PRESENCE_RATE",
    "SESSION_TOMBSTONE_TTL",
]

#: Distinct ephemeral ``sessionId``s one connection may use. A stock peer uses one;
#: the bound keeps a hostile client from growing the gossip table without limit.
MAX_SESSIONS_PER_CONNECTION: Final = 16
#: Seconds a closed connection's sessionIds are remembered, with their last count
#: and their owner's identity. Late gossip copies (count <= last) stay dropped,
#: other identities cannot take them, and a stock peer of the same identity that
#: reconnects with the same sessionId and a higher count takes it back.
SESSION_TOMBSTONE_TTL: Final = 60.0
#: Bound on remembered sessionIds of closed connections (when full, the oldest of
#: the identity holding the most is forgotten first). With sessionIds of at most
#: MAX_SESSION_ID_BYTES, the table stays under 8 MiB.
MAX_SESSION_TOMBSTONES: Final = 20_000
#: Source addresses whose failed auth attempts are remembered at once. Beyond
#: it the oldest is forgotten: many addresses cost each one its memory, not more.
MAX_AUTH_FAILURE_ADDRESSES: Final = 10_000
#: Presence control messages (join/leave/heartbeat) one connection may send per
#: document: a burst of PRESENCE_BURST, refilled at PRESENCE_RATE per second.
#: They are not relayed and not counted by the rate limit, but each join or
#: leave is fanned out to everyone present, so it needs a bound of its own.
PRESENCE_BURST: Final = 10
PRESENCE_RATE: Final = 5.0
