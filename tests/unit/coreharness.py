"""Driving a ClientCore by hand: a fake clock, a fake server, effects as lists.

No socket, no event loop: :class:`Harness` calls the core the way the driver
does and takes the effects from its outbox for the test to read.
:meth:`Harness.advance` moves the clock and runs the core's timer every time it
asked to be woken, so minutes of heartbeats, TTLs, coalescing and pacing run in
milliseconds. Every event is listened to (the core records them all).
"""

from __future__ import annotations

import math
from typing import Any

import cbor2

from ratatoskr_client.backoff import Backoff
from ratatoskr_client.core.client import ClientCore
from ratatoskr_client.core.membership import MembershipStore, Peer
from ratatoskr_client.core.outbox import (
    Effect,
    Fail,
    Outbox,
    Ping,
    Push,
    Resolve,
    Send,
    WakeAt,
)
from ratatoskr_client.core.settings import Settings
from ratatoskr_client.errors import ConnectionClosed

FULL = ["identity", "presence", "ephemeral"]


def unshared(store: MembershipStore) -> bool:
    """True if some non-empty table of ``store`` is its own, not shared with
    the other clients of the process (white box: nothing public shows it)."""
    tables = [store._identities, *store._docs.values()]
    return any(table and not table.shared for table in tables)


class Pushed:
    """A presence watch's values, taken when its Push was (a ConnectionClosed:
    its end, and why)."""

    __slots__ = ("values", "watcher")

    def __init__(self, watcher: int, values: list[tuple[Peer, ...] | ConnectionClosed]) -> None:
        self.watcher = watcher
        self.values = values

    def __repr__(self) -> str:
        return f"<Pushed {self.watcher} {self.values!r}>"


class Harness:
    def __init__(self, **options: Any) -> None:
        self.sessions = iter(f"session-{n}" for n in range(1, 1000))
        self.outbox = Outbox()
        self.core = ClientCore(
            Settings("http://relay.test", **options),
            self.outbox,
            rand=lambda: 0.5,
            new_session=lambda: next(self.sessions),
        )
        self.now = 1000.0
        self.wake = math.inf
        #: every effect so far, in order
        self.log: list[Effect | Pushed] = []
        self.connections = 0
        #: the fake server answers every ping at once (False: it stays silent)
        self.pongs = True

    # ------------------------------------------------------------------ effects

    def take(self) -> list[Effect | Pushed]:
        """The effects since the last take (and remember when to wake the
        core); a Push comes with the values its watch held then."""
        effects: list[Effect | Pushed] = []
        for effect in self.outbox.take():
            if type(effect) is WakeAt and effect.when < self.wake:
                self.wake = effect.when
            elif type(effect) is Ping and self.pongs:
                self.core.heard(self.now)  # a live server's pong
            if type(effect) is Push:
                effects.append(Pushed(effect.watcher, self.drain(effect.watcher)))
            else:
                effects.append(effect)
        self.log += effects
        return effects

    def drain(self, watcher: int) -> list[tuple[Peer, ...] | ConnectionClosed]:
        """Every value a presence watch holds now, as its consumer takes them
        (a ConnectionClosed: its end)."""
        values: list[tuple[Peer, ...] | ConnectionClosed] = []
        while True:
            item = self.core.next_presence(watcher)
            if item is None:
                return values
            values.append(item)
            if isinstance(item, ConnectionClosed):
                return values

    def advance(self, seconds: float) -> list[Effect | Pushed]:
        """Move the clock, waking the core whenever it asked; the effects."""
        end = self.now + seconds
        out = self.take()
        while self.wake <= end:
            self.now = max(self.now, self.wake)
            self.wake = math.inf
            self.core.on_timer(self.now)
            out += self.take()
        self.now = end
        return out

    # ------------------------------------------------------------------ views

    @staticmethod
    def sent(effects: list[Effect | Pushed]) -> list[dict[str, Any]]:
        """The frames among ``effects``, decoded, with ``payload`` for ephemerals."""
        frames = []
        for effect in effects:
            if type(effect) is Send:
                frame = cbor2.loads(effect.data)
                if frame["type"] == "ephemeral":
                    frame["payload"] = cbor2.loads(frame["data"])
                frames.append(frame)
        return frames

    @staticmethod
    def events(effects: list[Effect | Pushed], name: str | None = None) -> list[tuple[Any, ...]]:
        """(event, *args) of every Emit (a tuple) among ``effects``;
        ``presence-changed`` as (event, document_id) (its peers are the core's
        presence then)."""
        out: list[tuple[Any, ...]] = []
        for effect in effects:
            if type(effect) is tuple and (name is None or effect[0] == name):
                out.append(effect[:2] if effect[0] == "presence-changed" else effect)
        return out

    @staticmethod
    def finished(effects: list[Effect | Pushed]) -> dict[int, Any]:
        """Waiter id -> value (Resolve) or exception (Fail); presence watch ->
        the values it was given (a ConnectionClosed last: its end)."""
        out: dict[int, Any] = {}
        for effect in effects:
            if type(effect) is Resolve:
                out[effect.waiter] = effect.value
            elif type(effect) is Fail:
                out[effect.waiter] = effect.error
            elif type(effect) is Pushed:
                out.setdefault(effect.watcher, []).extend(effect.values)
        return out

    # ------------------------------------------------------------------ the server

    def connect(
        self, *, features: list[str] | None = FULL, user: dict[str, Any] | None = None
    ) -> list[Effect | Pushed]:
        """A connection and its handshake; returns the effects."""
        core = self.core
        if core.state.value in ("idle", "closed"):
            core.connect_started()
        core.auth_frame(self.now)
        self.connections += 1
        auth_ok: dict[str, Any] = {
            "type": "auth_ok",
            "peerId": "server",
            "clientPeerId": f"me-{self.connections}",
            "user": user,
        }
        if features is not None:
            auth_ok["features"] = features
        assert core.handshake(cbor2.dumps(auth_ok), self.now)
        return self.take()

    def server(self, frame: dict[str, Any]) -> list[Effect | Pushed]:
        """The server sends ``frame`` (a batch of one, as the driver sees a frame
        that arrives alone); the effects."""
        return self.batch(frame)

    def batch(self, *frames: dict[str, Any]) -> list[Effect | Pushed]:
        """The server sends ``frames``, read at once: the driver handles them
        all, then settles presence; the effects."""
        for frame in frames:
            self.core.receive(cbor2.dumps(frame), self.now)
        self.core.settle(self.now)
        return self.take()

    def ephemeral(
        self, sender: str, session: str, count: int, doc: str, payload: Any
    ) -> list[Effect | Pushed]:
        """An ephemeral message from ``sender`` (as the server stamped it)."""
        return self.server(
            {
                "type": "ephemeral",
                "senderId": sender,
                "targetId": self.core.me.peer_id if self.core.me else "",
                "documentId": doc,
                "count": count,
                "sessionId": session,
                "data": cbor2.dumps(payload),
            }
        )

    def enter(self, doc: str, peers: list[str] | None = None) -> Any:
        """Enter ``doc`` and, with server-side presence, confirm it with ``peers``
        (default: just us). Returns the waiter id or presence tuple."""
        result = self.core.enter(doc, self.now)
        self.take()
        if peers is not None or self.core.server_presence:
            me = self.core.me
            assert me is not None
            ids = [me.peer_id] if peers is None else peers
            self.server({"type": "doc_presence_state", "documentId": doc, "peers": ids})
        return result

    def presence_ids(self, doc: str) -> list[str]:
        return [p.peer_id for p in self.core.presence(doc)]

    def states(self, doc: str) -> dict[str, dict[str, Any]]:
        """Other peers' states in ``doc`` (ours left out)."""
        me = self.core.me
        mine = me.peer_id if me is not None else None
        return {k: dict(v) for k, v in self.core.state_of(doc).items() if k != mine}


__all__ = ["FULL", "Backoff", "Harness", "Pushed", "unshared"]
