"""SDK clients spread over a cluster, and the truth their views must converge to.

The truth for a document is the set of connected clients whose application
entered it; the truth for a client's identities is itself and the clients
that entered one of its documents (the relays scope identities to documents).
A view has converged when every client that entered a document sees exactly
its truth (no ghost, nobody missing, nobody twice), every other client sees
nothing there, and every client knows exactly those identities. (Across
relays the order of a presence list is the order in which the client's own
relay learned of the joins, so only the sets are compared.)

Waiting re-checks after every client event that could change the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from ratatoskr_client import RatatoskrClient
from ratatoskr_client.testing import TEST_BACKOFF

from ..reliability.support import Changes

HEARTBEAT = 0.5


class World:
    """The clients of one test, and what they should see."""

    def __init__(self, docs: Iterable[str]) -> None:
        self.docs = list(docs)
        self.clients: list[RatatoskrClient] = []
        self.changes = Changes()
        #: loop time of every peer-left / peer-disconnected event: (client, kind, doc, peer id)
        self.departures: list[tuple[float, int, str, str | None, str]] = []

    async def add(self, url: str, token: str | None = None, **options: Any) -> RatatoskrClient:
        client = RatatoskrClient(
            url,
            token=token,
            heartbeat_interval=HEARTBEAT,
            backoff=TEST_BACKOFF,
            request_timeout=30,
            connect_timeout=5,
            **options,
        )
        number = len(self.clients)
        self.clients.append(client)
        for event in ("presence-changed", "connected", "peer-identity", "peer-disconnected"):
            client.on(event, self.changes.poke)
        loop = asyncio.get_running_loop()
        client.on(
            "peer-left",
            lambda doc, peer: self.departures.append(
                (loop.time(), number, "left", doc, peer.peer_id)
            ),
        )
        client.on(
            "peer-disconnected",
            lambda peer: self.departures.append(
                (loop.time(), number, "disconnected", None, peer.peer_id)
            ),
        )
        await client.connect()
        return client

    def live(self) -> set[str]:
        return {c.me.peer_id for c in self.clients if c.is_connected}

    def problems(self) -> list[str]:
        """Every difference from the truth (empty once converged)."""
        down = [i for i, c in enumerate(self.clients) if not c.is_connected]
        if down:
            return [f"clients not connected: {down}"]
        out: list[str] = []
        for doc in self.docs:
            truth = {c.me.peer_id for c in self.clients if doc in c.entered_documents}
            for i, client in enumerate(self.clients):
                seen = [p.peer_id for p in client.presence(doc)]
                want = truth if doc in client.entered_documents else set()
                if set(seen) != want or len(seen) != len(set(seen)):
                    out.append(
                        f"client {i} {doc}: ghosts {set(seen) - want}, missing "
                        f"{want - set(seen)}, duplicates {len(seen) - len(set(seen))}"
                    )
        # Identities are scoped to documents (the relays' default): a client
        # knows itself and the clients of the documents it entered.
        for i, client in enumerate(self.clients):
            known = set(client.peers)
            want = {client.me.peer_id} | {
                c.me.peer_id
                for c in self.clients
                if set(c.entered_documents) & set(client.entered_documents)
            }
            if known != want:
                out.append(f"client {i} identities: ghosts {known - want}, missing {want - known}")
        return out

    def describe(self) -> str:
        problems = self.problems()
        return f"{len(problems)} problems, first ones: {problems[:6]}"

    async def converge(self, timeout: float) -> float:
        """Seconds until every view equals the truth."""
        return await self.changes.until(lambda: not self.problems(), timeout, self.describe)

    async def close(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.close()


async def states_within(
    client: RatatoskrClient, doc: str, expected: Mapping[str, Mapping[str, Any]], timeout: float
) -> None:
    """Wait until ``client`` shows every peer of ``expected`` with exactly that
    state in ``doc`` (re-checked at each ``state-changed``)."""
    done = asyncio.Event()

    def check(*_: Any) -> None:
        states = client.state(doc)
        if all(dict(states.get(p) or {}) == dict(s) for p, s in expected.items()):
            done.set()

    client.on("state-changed", check)
    check()
    try:
        await asyncio.wait_for(done.wait(), timeout)
    except TimeoutError:
        raise AssertionError(f"states never matched: {dict(client.state(doc))}") from None
    finally:
        client.off("state-changed", check)
