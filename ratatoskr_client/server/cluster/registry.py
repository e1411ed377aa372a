"""Which relays of a cluster are alive, and for how long the Redis link has been
down. Pure: time is always an argument.

Every node writes, at each heartbeat, the time after which it counts as dead
into the node table (a sorted set scored in Redis *server* milliseconds, so no
two machines' clocks are compared). :class:`NodeRegistry` keeps the latest
deadline seen for each node and says which ones have passed. A node missing
from the table is not dead for that: after a Redis restart the table is empty
until every node has written itself again. And no node is blamed for the time
Redis was unreachable: when the link comes back every known node gets a full
window to write itself again (:meth:`NodeRegistry.extend`), which its own
reconnection always fits, so a Redis outage shorter than ``node_ttl`` makes no
one leave.

:class:`Timing` derives every period from ``node_ttl``; :class:`LinkWatch`
says when a node cut off from Redis for ``node_ttl`` must stop showing the
peers of the others (it cannot know they are still there).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

__all__ = [
    "ROUND_TRIP_BUCKETS",
    "LinkWatch",
    "NodeRegistry",
    "PingWatch",
    "RoundTrips",
    "Timing",
    "own_deadline_passed",
]


@dataclass(frozen=True, slots=True)
class Timing:
    """The cluster's periods, all derived from ``node_ttl`` (seconds).

    * a node heartbeats every ``beat`` = TTL/5 seconds, writing a deadline
      ``window`` = 3 beats ahead: it may miss two beats (a long pause) and
      stay alive;
    * the others read the table at every beat of theirs, so a dead node is
      noticed at most ``window + beat`` = 0.8 × TTL after its last heartbeat,
      which is within TTL of its death;
    * its hashes expire ``key_ttl`` = 2 × TTL after its last heartbeat;
    * a node whose link has been down for TTL drops the other nodes' peers.
    """

    node_ttl: float

    @property
    def beat(self) -> float:
        """Seconds between two heartbeats."""
        return self.node_ttl / 5

    @property
    def window_ms(self) -> int:
        """How far ahead of a heartbeat its deadline lies, in ms."""
        return round(self.node_ttl * 600)

    @property
    def key_ttl_ms(self) -> int:
        """Expiry of a node's hashes after its last heartbeat, in ms."""
        return round(self.node_ttl * 2000)

    @property
    def forget_after_ms(self) -> int:
        """Entries this long past their deadline are deleted from the node table."""
        return round(self.node_ttl * 10_000)

    @property
    def command_timeout(self) -> float:
        """Seconds a Redis command may take before the link counts as broken."""
        return max(1.0, self.node_ttl / 2)

    @property
    def max_backoff(self) -> float:
        """Longest wait between two reconnection attempts."""
        return min(2.0, self.beat)


class NodeRegistry:
    """The latest deadline of every other node (Redis server ms)."""

    __slots__ = ("_deadlines", "_now", "own", "window_ms")

    def __init__(self, own: str, window_ms: int) -> None:
        self.own = own
        self.window_ms = window_ms
        #: node -> deadline; None: introduced before the first sweep
        self._deadlines: dict[str, int | None] = {}
        self._now: int | None = None

    def __contains__(self, node: object) -> bool:
        return node in self._deadlines

    def __len__(self) -> int:
        return len(self._deadlines)

    def introduce(self, node: str) -> None:
        """``node`` announced itself (its hello, or a snapshot): it gets a full
        window from the last known server time, unless it has a later deadline."""
        if node == self.own:
            return
        current = self._deadlines.get(node)
        fresh = None if self._now is None else self._now + self.window_ms
        if current is None or (fresh is not None and fresh > current):
            self._deadlines[node] = fresh

    def extend(self, now_ms: int) -> None:
        """The link is back at server time ``now_ms``: give every known node
        until ``now_ms + window`` at least, to write itself again."""
        self._now = now_ms
        fresh = now_ms + self.window_ms
        for node, deadline in self._deadlines.items():
            if deadline is None or deadline < fresh:
                self._deadlines[node] = fresh

    def forget(self, node: str) -> None:
        """``node`` said goodbye."""
        self._deadlines.pop(node, None)

    def sweep(self, now_ms: int, live: Mapping[str, int]) -> list[str]:
        """Merge the node table's ``live`` deadlines read at server time
        ``now_ms``; return (and forget) the nodes whose deadline has passed."""
        self._now = now_ms
        deadlines = self._deadlines
        for node, deadline in deadlines.items():
            if deadline is None:
                deadlines[node] = now_ms + self.window_ms
        for node, deadline in live.items():
            if node != self.own and node in deadlines:
                known = deadlines[node]
                if known is None or deadline > known:
                    deadlines[node] = deadline
        dead = [n for n, d in deadlines.items() if d is not None and d < now_ms]
        for node in dead:
            del deadlines[node]
        return dead


def own_deadline_passed(previous_ms: int, now_ms: int) -> bool:
    """At a heartbeat at Redis time ``now_ms``: True if this node's previous
    deadline (``previous_ms``; -1 when the node table had no entry for it) has
    passed. The other nodes have then dropped this node's peers (a long pause,
    or Redis lost its table): it must announce itself again."""
    return previous_ms < now_ms


class PingWatch:
    """Whether the subscription connection still answers: a ping sent down it
    at every heartbeat must come back before the next-but-one. Pure: time is
    an argument (the link's clock, seconds)."""

    __slots__ = ("_sent", "patience")

    def __init__(self, beat: float) -> None:
        #: seconds a ping may stay unanswered: two heartbeats
        self.patience = 2 * beat
        #: marker -> when it was sent
        self._sent: dict[str, float] = {}

    def sent(self, marker: str, now: float) -> None:
        """A ping carrying ``marker`` went down the connection at ``now``."""
        self._sent[marker] = now

    def answered(self, marker: str) -> None:
        """The ping carrying ``marker`` came back."""
        self._sent.pop(marker, None)

    def stalled(self, now: float) -> bool:
        """True if a ping has gone unanswered for longer than :attr:`patience`."""
        return any(now - sent > self.patience for sent in self._sent.values())

    def clear(self) -> None:
        """A new connection: nothing is outstanding."""
        self._sent.clear()


class LinkWatch:
    """Tells, once, when the Redis link has been down for ``grace`` seconds."""

    __slots__ = ("_fired", "_since", "grace")

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._since: float | None = None
        self._fired = False

    @property
    def is_down(self) -> bool:
        """True between :meth:`down` and :meth:`up`."""
        return self._since is not None

    def down(self, now: float) -> None:
        """The link is down (again) at ``now``; a repeated call keeps the first time."""
        if self._since is None:
            self._since = now
            self._fired = False

    def up(self) -> None:
        """The link is back."""
        self._since = None
        self._fired = False

    def due(self, now: float) -> bool:
        """True the first time this is asked ``grace`` seconds after the link went down."""
        if self._since is None or self._fired or now - self._since < self.grace:
            return False
        self._fired = True
        return True

    def remaining(self, now: float) -> float | None:
        """Seconds until :meth:`due` becomes true (None if it cannot any more)."""
        if self._since is None or self._fired:
            return None
        return max(0.0, self._since + self.grace - now)


#: Upper bounds (seconds) of the Redis round-trip histogram's buckets.
ROUND_TRIP_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class RoundTrips:
    """A histogram of Redis round trips, in the shape Prometheus exports."""

    __slots__ = ("counts", "sum", "total")

    def __init__(self) -> None:
        #: observations per bucket of ROUND_TRIP_BUCKETS, plus one for +Inf
        self.counts = [0] * (len(ROUND_TRIP_BUCKETS) + 1)
        self.total = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        """Record one round trip."""
        self.counts[bisect.bisect_left(ROUND_TRIP_BUCKETS, seconds)] += 1
        self.total += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count of observations <= le)`` pairs, ending with ``+Inf``."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip((*map(str, ROUND_TRIP_BUCKETS), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out
