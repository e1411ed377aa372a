"""Chaos convergence: 50 clients over 5 documents, sockets killed without a close
frame, random enters and leaves, relay restarts, stuck peers — and after every
round, every live client's presence is exactly the truth.

The truth for a document is the set of live clients whose application entered
it. After each round's quiet period, for every document and every client:

* the relay's presence is exactly the truth (no ghost, nobody missing);
* every client that entered the document sees exactly the relay's list, in the
  relay's join order (so no duplicates either), and a client that did not enter
  it sees nothing;
* every client knows exactly the identities of the peers in the documents it
  entered (the relay's default identity scope), and itself.

Each round also adds "zombies": raw connections that join a document and then
never send again while their socket stays open and answers pings — an app
whose event loop is stuck. Only the presence TTL can remove them, so each
quiet period proves the TTL too, and bounds it.

A spy without read permission watches all of it and tries every way into the
protected document each round (see test_security.py for the rules); it must
never receive anything about it.

The randomness is seeded; the seed is printed, and ``RATATOSKR_SEED=<seed>``
replays a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any

import pytest

from ratatoskr_client import Peer, RatatoskrClient
from ratatoskr_client.server import AclEntry, DocumentSpec, RelayServer, UserSpec
from ratatoskr_client.testing import TEST_BACKOFF

from ..integration.fakeserver import abort_transport
from .support import Changes, RecordingPeer, assert_never_about, seeded, try_to_break_in

CLIENTS = 50
ALICES = 10  # clients authenticated as alice, who may read the vault
DOCS = [f"doc-{i}" for i in range(5)]
VAULT = "vault"
ROUNDS = 8
RESTARTS = 2
TTL = 1.0
SWEEP = min(1.0, TTL / 10)
HEARTBEAT = TTL / 4
#: The quiet period must converge within this (zombies need TTL + sweep; a killed
#: client needs a reconnect, at most TEST_BACKOFF.max_delay away) plus slack for a
#: loaded 2-core machine running 50 clients and the relay in one process.
CONVERGENCE_BOUND = TTL + SWEEP + TEST_BACKOFF.max_delay + 4.0

USERS = [UserSpec(token="alice-secret", id="alice", name="Alice")]
DOCUMENTS = [DocumentSpec(d, acl=(AclEntry("public"),)) for d in DOCS] + [
    DocumentSpec(VAULT, owner="alice")
]


def ids(peers: tuple[Peer, ...]) -> list[str]:
    return [p.peer_id for p in peers]


class World:
    """The clients, the relay, the zombies and the spy, and the truth about them."""

    def __init__(self, relay: RelayServer) -> None:
        self.relay = relay
        self.clients: list[RatatoskrClient] = []
        self.changes = Changes()
        self.zombies: list[RecordingPeer] = []
        self.spy: RecordingPeer | None = None
        #: (document, sender peer id, payload) of every message any client received
        self.messages: list[tuple[str, str, Any]] = []
        #: every peer id any alice client ever had
        self.alice_ids: set[str] = set()
        #: the sender of each message from the spy, as the receiving client saw it
        self.spy_senders: list[Peer] = []

    def add(self, client: RatatoskrClient) -> None:
        self.clients.append(client)
        for event in ("presence-changed", "connected", "peer-identity", "peer-disconnected"):
            client.on(event, self.changes.poke)
        client.on("ephemeral-message", self._message)

    def _message(self, doc: str, sender: Peer, payload: Any) -> None:
        self.messages.append((doc, sender.peer_id, payload))
        if isinstance(payload, dict) and "spy" in payload:
            self.spy_senders.append(sender)

    def watch_relay(self) -> None:
        self.changes.watch_relay(self.relay.core)

    # ------------------------------------------------------------------ the truth

    def open_connections(self) -> set[str]:
        out = {c.me.peer_id for c in self.clients if c.is_connected}
        out |= {z.peer_id for z in self.zombies if not z.closed}
        if self.spy is not None and not self.spy.closed:
            out.add(self.spy.peer_id)
        return out

    def describe(self, where: str = "") -> str:
        problems = self.problems()
        return f"{where}: {len(problems)} problems, first ones: {problems[:5]}"

    def problems(self) -> list[str]:
        """Everything that differs from the truth (empty once converged)."""
        out: list[str] = []
        down = [i for i, c in enumerate(self.clients) if not c.is_connected]
        if down:
            return [f"clients not connected: {down}"]
        core = self.relay.core
        for doc in [*DOCS, VAULT]:
            truth = {c.me.peer_id for c in self.clients if doc in c.entered_documents}
            relay = list(core.presence(doc))
            if set(relay) != truth or len(relay) != len(truth):
                ghosts = set(relay) - truth
                missing = truth - set(relay)
                out.append(f"relay {doc}: ghosts {ghosts}, missing {missing}")
                continue
            for i, c in enumerate(self.clients):
                seen = ids(c.presence(doc))
                want = relay if doc in c.entered_documents else []
                if seen != want:
                    extra, lacking = set(seen) - set(want), set(want) - set(seen)
                    dupes = len(seen) - len(set(seen))
                    out.append(
                        f"client {i} {doc}: ghosts {extra}, missing {lacking}, duplicates {dupes}"
                        + ("" if extra or lacking or dupes else ", another order")
                    )
        live = self.open_connections()
        if self.relay.stats().peers != len(live):
            out.append(f"relay has {self.relay.stats().peers} peers, {len(live)} connections open")
        for i, c in enumerate(self.clients):
            # The relay scopes identities to documents: a client knows itself
            # and the peers of the documents it entered, nobody else.
            sharing = {c.me.peer_id}
            for doc in c.entered_documents:
                sharing.update(core.presence_shown(doc))
            if set(c.peers) != sharing:
                extra, lacking = set(c.peers) - sharing, sharing - set(c.peers)
                out.append(f"client {i} identities: ghosts {extra}, missing {lacking}")
        return out


@pytest.mark.slow
@pytest.mark.ratatoskr_relay(users=USERS, documents=DOCUMENTS, presence_ttl=TTL)
async def test_chaos_converges_after_every_round(ratatoskr_relay: RelayServer) -> None:
    rng, seed = seeded("chaos")
    loop = asyncio.get_running_loop()
    relay = ratatoskr_relay
    world = World(relay)
    world.watch_relay()
    figures: list[str] = []
    denied_expected = 0
    try:
        # ------------------------------------------------------------ setup
        for i in range(CLIENTS):
            client = RatatoskrClient(
                relay.url,
                token="alice-secret" if i < ALICES else None,
                heartbeat_interval=HEARTBEAT,
                backoff=TEST_BACKOFF,
                request_timeout=30,
            )
            world.add(client)
            await client.connect()
            if i < ALICES:
                world.alice_ids.add(client.me.peer_id)
                client.on("connected", lambda me, ids=world.alice_ids: ids.add(me.peer_id))
        for i, client in enumerate(world.clients):
            for doc in DOCS:
                if rng.random() < 0.5:
                    await client.enter_document(doc)
            if i < ALICES and rng.random() < 0.7:
                await client.enter_document(VAULT)
        world.spy = await RecordingPeer.open(relay.ws_url, "spy")
        spy = world.spy
        took = await world.changes.until(
            lambda: not world.problems(), 30, functools.partial(world.describe, f"seed {seed}")
        )
        figures.append(f"setup {took:.2f}s")

        restart_rounds = set(rng.sample(range(1, ROUNDS), RESTARTS))
        totals = {"kills": 0, "toggles": 0, "zombies": 0, "restarts": 0}
        for rnd in range(ROUNDS):
            # -------------------------------------------------------- chaos
            connected = [c for c in world.clients if c.is_connected]
            for victim in rng.sample(connected, rng.randint(3, 8)):
                abort_transport(victim)  # no close frame, no leave: a crash
                totals["kills"] += 1
            restarting = rnd in restart_rounds
            if restarting:
                await relay.stop()
                world.zombies = []  # their sockets are gone with the relay
                totals["restarts"] += 1
            entering: list[asyncio.Task[Any]] = []
            pairs = rng.sample([(c, d) for c in world.clients for d in DOCS], rng.randint(8, 20))
            for client, doc in pairs:
                totals["toggles"] += 1
                if doc in client.entered_documents:
                    await client.leave_document(doc)
                else:
                    entering.append(asyncio.create_task(client.enter_document(doc)))
            if restarting:
                await relay.start()
                world.watch_relay()
                await spy.connect()
            # Stuck peers: joined, then silent forever with the socket open.
            for _ in range(rng.randint(1, 2)):
                zombie = await RecordingPeer.open(relay.ws_url, f"zombie-{rnd}")
                await zombie.join(rng.choice(DOCS))
                world.zombies.append(zombie)
                totals["zombies"] += 1
            # The spy tries every way into the vault; the alices talk in it, and
            # the spy forges a sender id into a public document.
            if rng.random() < 0.5 or restarting:
                victim_id = next(iter(world.alice_ids))
                denied_expected += await try_to_break_in(spy, VAULT, victim_id)
            for c in world.clients[:ALICES]:
                if c.is_connected and VAULT in c.entered_documents:
                    await c.send_ephemeral(VAULT, {"vault": rnd})
            await spy.ephemeral(
                rng.choice(DOCS), {"spy": rnd}, senderId=next(iter(world.alice_ids))
            )

            # -------------------------------------------------------- quiet period
            quiet_from = loop.time()
            await asyncio.wait_for(asyncio.gather(*entering), 60)
            await world.changes.until(
                lambda: not world.problems(),
                30,
                functools.partial(world.describe, f"seed {seed}, round {rnd}"),
            )
            took = loop.time() - quiet_from
            figures.append(f"round {rnd}{' (restart)' if restarting else ''} {took:.2f}s")
            assert took <= CONVERGENCE_BOUND, (
                f"seed {seed}, round {rnd}: converged in {took:.2f} s, bound {CONVERGENCE_BOUND} s"
            )
            # Zombies are gone from presence but still connected (TTL, not ping).
            for zombie in world.zombies:
                assert not zombie.closed
                assert not any(zombie.peer_id in relay.core.presence(d) for d in DOCS)
            for zombie in world.zombies:
                await zombie.close()
            world.zombies = []
            await world.changes.until(lambda: not world.problems(), 30, world.describe)

        print(f"chaos seed {seed}: {totals}; convergence: {', '.join(figures)}")
        assert totals["restarts"] == RESTARTS

        # ---------------------------------------------------------------- security
        await spy.barrier()
        answers = assert_never_about(spy.frames, VAULT)
        assert answers == {"permission_denied": denied_expected}
        vault_senders = {s for d, s, _ in world.messages if d == VAULT}
        assert vault_senders <= world.alice_ids
        assert any(d == VAULT for d, _, _ in world.messages)  # there was traffic to see
        spy_messages = [(d, s) for d, s, p in world.messages if isinstance(p, dict) and "spy" in p]
        assert spy_messages, "nobody was present where the spy sent"
        assert {s for _, s in spy_messages} <= set(spy.peer_ids)  # the real sender, always
        # Present in no document, the spy is known to its receivers only as
        # the server-verified sender of each of its messages.
        for sender in world.spy_senders:
            assert sender.is_anonymous and sender.user_id is None
            assert sender.name != sender.peer_id  # its identity, not a placeholder
        for client in world.clients:
            assert spy.peer_id not in client.peers
    finally:
        for zombie in world.zombies:
            await zombie.close()
        if world.spy is not None:
            await world.spy.close()
        for client in world.clients:
            with contextlib.suppress(Exception):
                await client.close()
