"""Drives per-peer state (automerge-repo ``Presence``) for one RatatoskrClient.

The rules live in :mod:`ratatoskr_client.state` (pure); this class owns the
timers around them: coalesced flushes of ``set_state``, the re-announce 500 ms
after hearing an unknown peer, heartbeats and pruning. It sends through the
client (paced like any ephemeral message) and reports through the client's
events.

Sharing (sending our own state) is what costs: every snapshot is fanned out to
everyone in the document, and every newcomer makes everyone re-announce. So on
a server with server-side presence a client shares its state in a document only
once the application calls ``set_state`` for it; on a server without (the
peer-to-peer fallback) sharing is how a client is seen at all, so it shares in
every entered document. Receiving other peers' state is always on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .errors import ConnectionClosed, RatatoskrError
from .state import (
    REANNOUNCE_DELAY,
    Coalescer,
    PeerStates,
    StateMessage,
    goodbye_payload,
    heartbeat_payload,
    snapshot_payload,
    update_payload,
)

if TYPE_CHECKING:
    from .client import RatatoskrClient

__all__ = ["StateSync"]

log = logging.getLogger("ratatoskr_client")


class StateSync:
    """Per-peer state for every document of one client."""

    def __init__(
        self, client: RatatoskrClient, *, interval: float, heartbeat: float, ttl: float
    ) -> None:
        self._client = client
        self.states = PeerStates(ttl)
        self._coalescer = Coalescer(interval)
        self.heartbeat = heartbeat
        #: peer-to-peer mode: membership comes from state messages
        self.p2p = False
        #: documents whose state we send (the application set state there, or p2p)
        self._sharing: set[str] = set()
        #: shared documents confirmed on the current connection
        self._live: set[str] = set()
        self._last_sent: dict[str, float] = {}
        self._reannounce: set[str] = set()

    # ------------------------------------------------------------------ queries

    def state(self, document_id: str, me: str | None) -> Mapping[str, Mapping[str, Any]]:
        """Peer id → state; our own entry (under ``me``) while we share it there
        on the current connection."""
        peers = self.states.state(document_id)
        if me is None or document_id not in self._live:
            return peers
        local = self.states.local(document_id)
        return MappingProxyType({me: local, **peers})

    # ------------------------------------------------------------------ application

    def set_local(self, document_id: str, channel: str, value: Any) -> None:
        """Record our state and send it: a snapshot the first time we share in the
        document, coalesced updates after that."""
        changed = self.states.set_local(document_id, channel, value)
        starting = document_id not in self._sharing
        self._sharing.add(document_id)
        if changed:
            self._client._emit_own_state(document_id, self.states.local(document_id))
        if document_id not in self._live:
            if starting and self._client._is_confirmed(document_id):
                self._go_live(document_id)
            return  # sent with the snapshot once the document is confirmed
        if not changed:
            return
        loop = asyncio.get_running_loop()
        delay = self._coalescer.offer(document_id, channel, value, loop.time())
        if delay is not None:
            self._client._spawn(self._flush(document_id, delay), "state-flush")

    async def _flush(self, document_id: str, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        loop = asyncio.get_running_loop()
        # Pace before taking, so values offered while we wait for a token are
        # coalesced into this flush instead of queueing behind it.
        await self._client._pace()
        for channel, value in self._coalescer.take(document_id, loop.time()):
            if document_id not in self._live:
                return
            await self._send(document_id, update_payload(channel, value), paced=False)

    # ------------------------------------------------------------------ lifecycle

    def confirmed(self, document_id: str, default_name: str) -> None:
        """The server confirmed our presence in a document (on this connection)."""
        if self.p2p:
            self._sharing.add(document_id)
        self.states.init_local(document_id, {"name": default_name})
        if document_id in self._sharing and document_id not in self._live:
            self._go_live(document_id)

    def _go_live(self, document_id: str) -> None:
        self._live.add(document_id)
        self._client._spawn(self._send_snapshot(document_id), "state-snapshot")

    async def _send_snapshot(self, document_id: str) -> None:
        await self._send(document_id, snapshot_payload(self.states.local(document_id)))

    async def left(self, document_id: str) -> None:
        """The application leaves a document: say goodbye, forget its state."""
        was_live = document_id in self._live
        self._live.discard(document_id)
        self._sharing.discard(document_id)
        self._coalescer.forget(document_id)
        self._reannounce.discard(document_id)
        self._last_sent.pop(document_id, None)
        for peer_id in self.states.peers(document_id):
            self._client._emit_state(document_id, peer_id, MappingProxyType({}))
        self.states.forget(document_id)
        if was_live:
            await self._send(document_id, goodbye_payload())

    def disconnected(self) -> None:
        """The connection is gone: peers' state goes with it; ours is kept and
        re-sent after reconnecting."""
        self._live.clear()
        self._coalescer.clear()
        self._reannounce.clear()
        self._last_sent.clear()
        cleared = [(d, p) for d in self.states.documents() for p in self.states.peers(d)]
        self.states.clear_peers()
        for doc_id, peer_id in cleared:
            self._client._emit_state(doc_id, peer_id, MappingProxyType({}))

    def reset(self) -> None:
        """The client is closed: forget everything."""
        self.disconnected()
        for doc_id in list(self._sharing):
            self.states.forget(doc_id)
        self._sharing.clear()

    # ------------------------------------------------------------------ remote

    def received(self, document_id: str, sender_id: str, message: StateMessage) -> None:
        """A Presence message from another peer."""
        loop = asyncio.get_running_loop()
        outcome = self.states.receive(document_id, sender_id, message, loop.time())
        if outcome.unknown_sender and document_id in self._live:
            self._schedule_reannounce(document_id)
        state = self.states.peer_state(document_id, sender_id) or MappingProxyType({})
        if self.p2p:
            if outcome.removed:
                self._client._p2p_gone(document_id, sender_id)
            elif outcome.changed:  # appeared, or maybe renamed
                self._client._p2p_seen(document_id, sender_id, state)
        if outcome.changed:
            self._client._emit_state(document_id, sender_id, state)

    def peer_left(self, document_id: str, peer_id: str) -> None:
        """The server says a peer left a document: its state there is gone."""
        if self.states.forget_peer(document_id, peer_id):
            self._client._emit_state(document_id, peer_id, MappingProxyType({}))

    def _schedule_reannounce(self, document_id: str) -> None:
        # automerge-repo re-announces once per message from an unknown peer; one
        # per document per REANNOUNCE_DELAY window is enough and bounds the storm
        # when many peers arrive at once.
        if document_id in self._reannounce:
            return
        self._reannounce.add(document_id)

        async def later() -> None:
            await asyncio.sleep(REANNOUNCE_DELAY)
            self._reannounce.discard(document_id)
            if document_id in self._live:
                await self._send_snapshot(document_id)

        self._client._spawn(later(), "state-reannounce")

    # ------------------------------------------------------------------ timers

    async def tick(self) -> None:
        """Heartbeat shared documents that have been quiet, prune silent peers."""
        now = asyncio.get_running_loop().time()
        for doc_id, peer_id in self.states.prune(now):
            log.debug("state of %s in %r expired", peer_id, doc_id)
            self._client._emit_state(doc_id, peer_id, MappingProxyType({}))
            if self.p2p:
                self._client._p2p_gone(doc_id, peer_id)
        for doc_id in list(self._live):
            if now - self._last_sent.get(doc_id, now) >= self.heartbeat:
                await self._send(doc_id, heartbeat_payload())

    # ------------------------------------------------------------------ sending

    async def _send(self, document_id: str, payload: dict[str, Any], *, paced: bool = True) -> None:
        try:
            await self._client._send_state_payload(document_id, payload, paced=paced)
        except ConnectionClosed:
            return  # re-sent as a snapshot after reconnecting
        except RatatoskrError as exc:  # pragma: no cover - payloads are ours and valid
            log.warning("could not send state for %r: %s", document_id, exc)
            return
        self._last_sent[document_id] = asyncio.get_running_loop().time()
