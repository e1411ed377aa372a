#!/usr/bin/env python
"""What a newcomer costs the relay in a crowded document: state replay against re-announces.

    python benchmarks/state_replay.py [--peers 500] [--rounds 20]
    python -m benchmarks.state_replay ...

The relay's core (``RelayCore``, no sockets: what it writes is counted by a
fake outbox) holds ``--peers`` peers in one document, each with a shared
automerge-repo ``Presence`` state (a name, a colour, a cursor). Three things
are timed (CPU seconds of the relay's rules and frame writing, median of
``--rounds``):

* **floor**: one ordinary message relayed to everyone (one fan-out);
* **replay**: a newcomer joins and the relay replays every peer's state to it
  (feature ``state-replay``: one snapshot frame per peer, to the newcomer only);
* **re-announce**: what a join costs without it: every peer re-sends its
  snapshot (automerge-repo's answer to hearing a newcomer), each relayed to
  everyone.

Each is printed with its frames, bytes, and its ratio to the floor measured in
the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from ratatoskr_client.protocol import AuthFrame, EphemeralFrame, encode, encode_payload
from ratatoskr_client.server import RelayConfig, RelayCore
from ratatoskr_client.server.core.relay import Connection


class CountingOutbox:
    """Counts what the core writes to one connection."""

    __slots__ = ("bytes", "frames")

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0

    def send(self, frame: bytes) -> None:
        self.frames += 1
        self.bytes += len(frame)

    def send_ephemeral(self, prefix: bytes, suffix: bytes) -> None:
        self.frames += 1
        self.bytes += len(prefix) + len(suffix)

    def close(self, code: int, reason: str) -> None:
        pass

    def ping(self) -> None:
        pass


class Crowd:
    def __init__(self, peers: int) -> None:
        # No rate limit in the way: every peer sends a burst here.
        self.core = RelayCore(RelayConfig(open=True, rate_limit=1_000_000))
        self.outboxes: list[CountingOutbox] = []
        self.conns: list[Connection] = []
        self.counts: list[int] = []
        for n in range(peers):
            conn, _ = self.connect()
            self.send(n, conn, {"type": "presence", "status": "join", "documentId": "doc"})
            state = {"name": f"peer-{n}", "color": "#a1b2c3", "cursor": [n % 800, n % 600]}
            self.send(n, conn, {"__presence": {"type": "snapshot", "state": state}})

    def connect(self) -> tuple[Connection, CountingOutbox]:
        outbox = CountingOutbox()
        conn = self.core.open(outbox, "127.0.0.1")
        self.core.receive(conn, encode(AuthFrame(anonymous=True)))
        self.outboxes.append(outbox)
        self.conns.append(conn)
        self.counts.append(0)
        return conn, outbox

    def send(self, n: int, conn: Connection, payload: Any) -> None:
        self.counts[n] += 1
        frame = EphemeralFrame("", "", "doc", self.counts[n], f"s-{n}", encode_payload(payload))
        self.core.receive(conn, encode(frame))

    def written(self) -> tuple[int, int]:
        return sum(o.frames for o in self.outboxes), sum(o.bytes for o in self.outboxes)


def timed(action: Any, crowd: Crowd) -> tuple[float, int, int]:
    frames, size = crowd.written()
    start = time.process_time()
    action()
    took = time.process_time() - start
    after_frames, after_size = crowd.written()
    return took, after_frames - frames, after_size - size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=500, help="peers in the document (500)")
    parser.add_argument("--rounds", type=int, default=20, help="repetitions, median (20)")
    args = parser.parse_args()

    crowd = Crowd(args.peers)
    floor, replay, storm = [], [], []
    for _ in range(args.rounds):
        floor.append(timed(lambda: crowd.send(0, crowd.conns[0], {"cursor": [1, 2]}), crowd))
        n = len(crowd.conns)
        conn, _ = crowd.connect()
        join = {"type": "presence", "status": "join", "documentId": "doc"}
        replay.append(timed(lambda n=n, conn=conn, join=join: crowd.send(n, conn, join), crowd))
        crowd.core.close(conn)

        def reannounce() -> None:
            for i in range(args.peers):
                state = {"name": f"peer-{i}", "color": "#a1b2c3", "cursor": [i, i]}
                crowd.send(i, crowd.conns[i], {"__presence": {"type": "snapshot", "state": state}})

        storm.append(timed(reannounce, crowd))

    base = statistics.median(t for t, _, _ in floor)
    print(f"{args.peers} peers with state in one document; median of {args.rounds} rounds")
    print(f"{'what':<44} {'CPU ms':>9} {'x floor':>9} {'frames':>9} {'bytes':>11}")
    for label, runs in (
        ("floor: one message relayed to everyone", floor),
        ("a join with state replay (to the joiner)", replay),
        ("a join answered by re-announces (without)", storm),
    ):
        took = statistics.median(t for t, _, _ in runs)
        frames = int(statistics.median(f for _, f, _ in runs))
        size = int(statistics.median(b for _, _, b in runs))
        print(f"{label:<44} {took * 1000:>9.2f} {took / base:>9.1f} {frames:>9} {size:>11}")


if __name__ == "__main__":
    main()
