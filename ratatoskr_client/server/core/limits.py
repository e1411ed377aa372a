"""The relay's fixed limits: the bounds that are not configuration. No I/O."""

from __future__ import annotations

from typing import Final

__all__ = [
    "FLOOD_ALLOWANCE",
    "FLOOD_REFILL",
    "LIVENESS_FACTOR",
    "MAX_AUTH_FAILURE_ADDRESSES",
    "MAX_CONNECTION_ADDRESSES",
    "MAX_SESSIONS_PER_CONNECTION",
    "MAX_SESSION_TOMBSTONES",
    "PRESENCE_BURST",
    "PRESENCE_DOC_BURST",
    "PRESENCE_DOC_RATE",
    "PRESENCE_HOLD",
    "PRESENCE_RATE",
    "PRESENCE_WINDOW",
    "ROUND_SECONDS",
    "SESSION_TOMBSTONE_TTL",
    "TURN_BYTES",
    "TURN_FRAMES",
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
#: Source addresses whose anonymous connections are counted at once (the
#: ``anonymous_connection_limit``); beyond it the oldest is forgotten.
MAX_CONNECTION_ADDRESSES: Final = 10_000
#: Presence control messages (join/leave/heartbeat) one connection may send per
#: document: a burst of PRESENCE_BURST, refilled at PRESENCE_RATE per second.
#: They are not relayed and not counted by the rate limit, but each join or
#: leave is fanned out to everyone present, so it needs a bound of its own.
PRESENCE_BURST: Final = 10
PRESENCE_RATE: Final = 5.0
#: How a document's membership changes (joins and leaves) reach its members:
#: a peer's change goes out at once, unless the same peer's last two changes
#: there were announced less than PRESENCE_WINDOW seconds ago; then it is held
#: until the window is over and sent as the net difference (a peer that left
#: and came back in between is never seen to leave). So a peer adds at most two
#: changes per window to what a document's members hear, and one per window
#: once it keeps toggling, whatever it sends; a crowd's first joins, and a
#: quick visit (enter, leave), go out at once. On top, each document announces at most a burst of
#: PRESENCE_DOC_BURST changes, then PRESENCE_DOC_RATE per second, whoever makes
#: them; held changes are looked at every PRESENCE_HOLD seconds.
PRESENCE_WINDOW: Final = 1.0
PRESENCE_DOC_BURST: Final = 500
PRESENCE_DOC_RATE: Final = 200.0
PRESENCE_HOLD: Final = 0.25

# ---------------------------------------------------------------------- fairness
# (docs/reliability.md, "Rate limits and fairness", has the measurements behind these.)

#: Frames from one connection the relay handles in one turn (see
#: :class:`~.turns.Turns`) before it lets the other connections have theirs. aiohttp
#: hands out the messages already buffered without yielding, so without this
#: a flooding connection's whole read buffer (thousands of frames) is
#: processed before anyone else's next frame.
TURN_FRAMES: Final = 32
#: The same bound in bytes of payload (large frames cost more to decode).
TURN_BYTES: Final = 64 * 1024
#: Seconds of work (decoding, the rules, the frames written: the relay
#: thread's CPU time) that one turn may take, and that one round of turns
#: takes while connections wait for theirs (see :class:`~.turns.Turns`): so what a
#: frame arriving on a quiet connection waits for, however many flood.
ROUND_SECONDS: Final = 0.005
#: Frames a connection may still send, after being told ``rate_limited``, that
#: its limit refuses before the ``retryAfter`` it was given has passed (they are
#: dropped unanswered), as a burst refilled at :data:`FLOOD_REFILL` per second.
#: A peer that obeys ``retryAfter`` only sends what was in flight when it was
#: told: our client's largest burst (100 messages, written before any answer
#: can arrive) fits the burst, and a peer told ten times a second (the default
#: rate limit's windows) with five frames in flight each time stays within the
#: refill. One that exceeds this ignores the relay, and is disconnected. An
#: unanswered refusal costs the relay about 6 us, so what the refill tolerates
#: is cheap; a flood is cut off within a fraction of a second.
FLOOD_ALLOWANCE: Final = 100
FLOOD_REFILL: Final = 50.0

#: A connection from which no complete WebSocket frame (a pong included) has
#: arrived for this many ``ping_interval``s is closed, whatever bytes trickle in.
#: It is pinged after one ``ping_interval`` of silence, so a live peer has half
#: an interval to answer.
LIVENESS_FACTOR: Final = 1.5
