"""ClientCore: every rule of the client as one state machine, without I/O or asyncio.

Inputs are method calls with the bytes or values that arrived and ``now`` (a
time on the driver's clock); outputs are effects appended to :attr:`ClientCore.effects`
(:mod:`ratatoskr_client.core.effects`, which also describes the driver's two
shortcuts): bytes to send, events to emit, waiters to resolve or fail, the next
time to be called back. The driver
(:mod:`ratatoskr_client.asyncio.driver`) turns them into I/O; the unit tests read them
with a fake clock, so reconnects, TTLs, heartbeats, coalescing and pacing run in
simulated time.

What lives here: the connection's life (handshake, loss, the reconnect policy,
when a silent connection is dead (:mod:`._liveness`), the one teardown), one
membership record per entered document (:mod:`._documents`), identities and
membership (:mod:`.membership`), per-peer state (:mod:`.peer_state`,
:mod:`._sharing`), the peer-to-peer fallback and its gossip filter
(:mod:`._peer_to_peer`), pacing (:mod:`._outgoing`), and the mapping of error
frames to exceptions. The class is split by direction: the connection's life,
documents and timers here; frames from the server in
:class:`._incoming.Incoming`; frames to the server in
:class:`._sending.Sending`; awaits in :class:`._waiters.Waiting`.
"""

from __future__ import annotations

import math
import random
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import (
    AuthError,
    ConnectionClosed,
    PresenceUnsupported,
    ProtocolError,
    RatatoskrError,
    RateLimited,
    error_from_frame,
)
from ..protocol import AuthErrorFrame, AuthFrame, AuthOkFrame, ErrorFrame, decode, encode
from ..protocol.constants import EPHEMERAL_PREFIX, FEATURE_PRESENCE
from ..status import ConnectionState
from .documents import ENTERING, LEAVING, PRESENT, Documents
from .effects import Drop, Effect, Emit, Fail, Resolve, WakeAt
from .incoming import Incoming
from .liveness import Liveness
from .membership import MembershipStore, Peer
from .outgoing import Outgoing, Paced, make_pacer
from .peer_state import EMPTY, PeerStates, ReadOnlyMap
from .peer_to_peer import PeerToPeer
from .sending import MIN_TIMER_STEP, Sending, check_document_id
from .settings import Settings
from .sharing import StateSharing
from .waiters import Waiters, Waiting

__all__ = ["ClientCore"]

IDLE = ConnectionState.IDLE
CONNECTING = ConnectionState.CONNECTING
CONNECTED = ConnectionState.CONNECTED
RECONNECTING = ConnectionState.RECONNECTING
CLOSED = ConnectionState.CLOSED


class ClientCore(Incoming, Sending, Waiting):
    """The state machine of one client. See the module docstring."""

    __slots__ = (
        "_announced",
        "_auth_at",
        "_heartbeat_at",
        "_new_session",
        "_rand",
        "_wake",
        "attempt",
        "deliver",
        "docs",
        "effects",
        "features",
        "floor",
        "listens",
        "liveness",
        "out",
        "p2p",
        "settings",
        "sharing",
        "state",
        "states",
        "store",
        "unsettled",
        "waiters",
    )

    def __init__(
        self,
        settings: Settings,
        *,
        rand: Callable[[], float] = random.random,
        new_session: Callable[[], str] = lambda: secrets.token_hex(8),
    ) -> None:
        self.settings = settings
        #: effects not yet applied by the driver, in order
        self.effects: list[Effect] = []
        #: set by the driver: ``deliver(event, *args)`` emits at once. Used for
        #: application messages when no effect is pending (the hot path).
        self.deliver: Callable[..., object] | None = None
        #: set by the driver: ``listens(event)`` says whether anyone listens;
        #: membership events nobody listens to make no effect (a reconnect
        #: storm brings N of them per client). None: every event is an effect.
        self.listens: Callable[[str], bool] | None = None
        self.state = IDLE
        self.store = MembershipStore(
            max_identities=settings.max_identities, max_peers=settings.max_presence_peers
        )
        #: documents whose presence changed and is not announced yet, in order
        self.unsettled: dict[str, None] = {}
        #: large document -> when it may be announced again (see :meth:`settle`)
        self._announced: dict[str, float] = {}
        self.liveness = Liveness(settings.ping_interval)
        self.states = PeerStates(settings.state_ttl)
        self.sharing = StateSharing(
            self.states, interval=settings.state_interval, heartbeat=settings.state_heartbeat
        )
        self.docs = Documents()
        self.waiters = Waiters()
        self.out = Outgoing()
        #: the peer-to-peer fallback, while connected to a server without presence
        self.p2p: PeerToPeer | None = None
        #: what the last server announced (None: none yet, or it sent no features)
        self.features: tuple[str, ...] | None = None
        self.attempt = 0  # reconnect attempts since the connection was lost
        self.floor = 0.0  # a server's retryAfter for the next attempt
        self._rand = rand
        self._new_session = new_session
        self._auth_at = 0.0
        self._heartbeat_at = math.inf
        self._wake = math.inf  # the earliest WakeAt not yet served

    # ================================================================== queries

    @property
    def me(self) -> Peer | None:
        """This connection's identity (the last one after a disconnect)."""
        return self.store.me

    @property
    def server_presence(self) -> bool:
        """True when the server announced server-side presence."""
        return self.features is not None and FEATURE_PRESENCE in self.features

    def presence(self, document_id: str) -> tuple[Peer, ...]:
        """Peers present in a document, in join order."""
        return self.store.presence(document_id)

    def state_of(self, document_id: str) -> Mapping[str, Mapping[str, Any]]:
        """Peer id → state in a document; ours too while we share it there."""
        peers = self.states.state(document_id)
        me = self.store.me
        if me is None or document_id not in self.sharing.live:
            return peers
        return ReadOnlyMap({me.peer_id: self.states.local_snapshot(document_id), **peers})

    def usable(self) -> None:
        """Raise ConnectionClosed unless the client was connected and is not closed."""
        if self.state is IDLE or self.state is CLOSED:
            raise ConnectionClosed(
                "client is closed" if self.state is CLOSED else "not connected yet: call connect()"
            )

    # ================================================================== connection

    def connect_started(self) -> None:
        """``connect()`` begins."""
        if self.state is CLOSED:
            self.sharing.reset()
        self.state = CONNECTING

    def connect_failed(self) -> None:
        """``connect()`` failed (and may be retried)."""
        if self.state is CONNECTING:
            self.state = IDLE

    def auth_frame(self, now: float) -> bytes:
        """The first frame of a connection (sent at ``now``)."""
        self._auth_at = now
        token = self.settings.token
        return encode(AuthFrame(token=token) if token is not None else AuthFrame(anonymous=True))

    def handshake(self, data: bytes, now: float) -> bool:
        """A frame before ``auth_ok``. True once authenticated.

        Raises:
            AuthError: the server refused the credentials.
            ServerError: the server answered with another error (e.g. ``rate_limited``).
        """
        try:
            frame = decode(data)
        except ProtocolError as exc:
            self.report(exc)
            return False
        if type(frame) is AuthOkFrame:
            self._authenticated(frame, now)
            return True
        if type(frame) is AuthErrorFrame:
            raise AuthError(frame.error, frame.message)
        if type(frame) is ErrorFrame:
            raise error_from_frame(
                frame.error, frame.message, document_id=frame.document_id,
                retry_after=frame.retry_after,
            )  # fmt: skip
        return False

    def _authenticated(self, frame: AuthOkFrame, now: float) -> None:
        settings = self.settings
        self.features = frame.features
        self.p2p = None if self.server_presence else PeerToPeer()
        self._dispatch(self.store.authenticated(frame, settings.name))
        self.settle(now, force=True)
        me = self.store.me
        assert me is not None
        user = frame.user
        anonymous = user is None or user.is_anonymous
        pacer = make_pacer(
            settings,
            anonymous=anonymous,
            upstream=self.p2p is not None,
            auth_at=self._auth_at,
            now=now,
        )
        self.out.start(self._new_session(), me.peer_id, frame.peer_id, pacer)
        self.state = CONNECTED
        self.attempt = 0
        self.floor = 0.0
        self.liveness.start(now)
        self.arm(self.liveness.deadline())
        for waiter in self.waiters.connect:
            self.effects.append(Resolve(waiter))
        self.waiters.connect.clear()
        self.effects.append(Emit("connected", (me,)))
        if self.p2p is not None:
            # Entered while we did not know yet: sidecars cannot work here.
            for doc_id, _ in self.docs.items():
                if doc_id.startswith(EPHEMERAL_PREFIX):
                    self._refuse(doc_id, self._unsupported(doc_id))
        for doc_id, _ in self.docs.items():  # restore presence after a reconnect
            self._join(doc_id, now)
        if self.server_presence:
            self._heartbeat_at = now + settings.heartbeat_interval
            self.arm(self._heartbeat_at)

    def connection_lost(self, reason: ConnectionClosed, now: float) -> None:
        """The socket closed (or died) while connected. A ``reason`` caused by
        a :class:`ProtocolError` (an oversized frame) is also an ``error`` event;
        a connection the core declared dead is lost for the core's reason."""
        if self.state is not CONNECTED:
            return
        reason = self.liveness.verdict or reason
        self.liveness.stop()
        if isinstance(reason.__cause__, ProtocolError):
            self.report(reason.__cause__)
        for entry in self.out.stop():
            if entry.waiter is not None and entry.waiter in self.waiters.paced:
                self.waiters.paced.discard(entry.waiter)
                self.effects.append(Fail(entry.waiter, reason))
        self.docs.connection_lost()
        self.sharing.connection_lost()
        self._clear_peer_states()
        if self.p2p is not None:
            self.p2p.clear()
        self._dispatch(self.store.reset())
        self.settle(now, force=True)
        self._heartbeat_at = math.inf
        self.effects.append(Emit("disconnected", (reason,)))
        self.state = RECONNECTING
        self.attempt = 0
        self.floor = 0.0
        if not self.settings.reconnect:
            # Not CONNECTED any more, so the teardown does not announce the
            # disconnection a second time: it was announced above, with its cause.
            self.shutdown(ConnectionClosed("client stopped reconnecting"), now)

    def next_attempt(self, now: float) -> float | None:
        """Seconds to wait before the next reconnect attempt; None when there is
        none (the client gave up: it is torn down)."""
        if self.state is not RECONNECTING:
            return None
        backoff = self.settings.backoff
        if backoff.gives_up(self.attempt):
            self.report(ConnectionClosed(f"gave up reconnecting after {self.attempt} attempts"))
            self.shutdown(ConnectionClosed("client stopped reconnecting"), now)
            return None
        delay = max(backoff.delay(self.attempt, self._rand), self.floor)
        self.attempt += 1
        self.effects.append(Emit("reconnecting", (self.attempt, delay)))
        return delay

    def attempt_failed(self, error: RatatoskrError, now: float) -> None:
        """A reconnect attempt failed with ``error`` (already translated)."""
        if isinstance(error, AuthError):
            self.report(error)  # never retried: the credentials will not get better
            self.shutdown(ConnectionClosed("client stopped reconnecting"), now)
        elif isinstance(error, RateLimited):
            self.floor = error.retry_after
        else:
            self.floor = 0.0

    def close(self, now: float) -> None:
        """``close()``: leave every document politely, then tear down."""
        if self.state is CLOSED:
            return
        if self.state is CONNECTED:
            for doc_id, record in self.docs.items():
                if doc_id in self.sharing.live and self.out.take(now) == 0:
                    self._send_state(doc_id, "goodbye", now)
                if self.server_presence and record.state is not LEAVING:
                    self._presence("leave", doc_id)
        self.shutdown(ConnectionClosed("client closed"), now)

    def shutdown(self, reason: ConnectionClosed, now: float) -> None:
        """The one teardown, for ``close()``, a reconnect that gave up, refused
        credentials and a fatal error: every waiter fails with ``reason``, every
        watch ends, presence and state empty, nothing is entered any more."""
        if self.state is CLOSED:
            return
        was_connected = self.state is CONNECTED
        self.state = CLOSED
        self.out.stop()
        self._dispatch(self.store.reset())  # watchers see the empty presence, then end
        self.settle(now, force=True)
        self._announced.clear()
        self.liveness.stop()
        for doc_id in list(self.store.tracked()):
            self.store.forget(doc_id)
        self.effects += self.waiters.release_all(reason)
        self._clear_peer_states()
        self.sharing.reset()
        self.states.clear()
        self.docs.clear()
        if self.p2p is not None:
            self.p2p.clear()
        self._heartbeat_at = math.inf
        self._wake = math.inf  # the driver's timer goes with the teardown
        if was_connected:
            self.effects.append(Emit("disconnected", (reason,)))

    # ================================================================== documents

    def enter(self, document_id: str, now: float) -> int | tuple[Peer, ...]:
        """``enter_document``: the presence at once if already present here,
        else a waiter id resolved with it once the server confirms.

        Raises:
            ValueError: a bad document id.
            ConnectionClosed: never connected, or closed.
            PresenceUnsupported: an ``eph:`` channel on a server without presence.
        """
        check_document_id(document_id)
        self.usable()
        if self.p2p is not None and document_id.startswith(EPHEMERAL_PREFIX):
            raise self._unsupported(document_id)
        record = self.docs.get(document_id)
        if record is not None and record.state is PRESENT and self.state is CONNECTED:
            return self.store.presence(document_id)
        if record is None:
            self.store.track(document_id)
        else:
            self._unqueue(document_id)  # re-entered while its goodbye waited
        record = self.docs.enter(document_id)
        waiter = self.waiters.new()
        self.waiters.enter.setdefault(document_id, []).append(waiter)
        if self.state is CONNECTED and not record.join_sent:
            self._join(document_id, now)
        return waiter

    def enter_abandoned(self, document_id: str, waiter: int, now: float) -> None:
        """An ``enter_document`` gave up (timeout or cancelled): unless another
        call still waits, do not stay in a document the caller cannot know it entered."""
        self.waiters.cancel(waiter)
        record = self.docs.get(document_id)
        if (
            document_id not in self.waiters.enter
            and record is not None
            and record.state is ENTERING
        ):
            self.leave(document_id, now)

    def leave(self, document_id: str, now: float) -> None:
        """``leave_document``: the server and the peers are told; presence and
        state of the document are forgotten at once."""
        record = self.docs.get(document_id)
        if record is None or record.state is LEAVING:
            return
        self.effects += self.waiters.fail_enter(
            document_id, RatatoskrError(f"left {document_id!r} before the server confirmed")
        )
        self._dispatch(self.store.forget(document_id, now))
        self.arm(self.store.linger_until)  # (document scope: see MembershipStore.forget)
        self.settle(now, force=True)
        had_state = self.states.peers(document_id)
        for peer_id in had_state:
            self._emit_state(document_id, peer_id, EMPTY)
        self.states.forget(document_id)
        if self.p2p is not None:  # peers known only from this document are gone
            for peer_id in had_state:
                if not self.states.has_peer(peer_id):
                    self._dispatch(self.store.disconnected(peer_id))
        owes_goodbye = self.sharing.left(document_id)
        if self.state is not CONNECTED:
            self.docs.drop(document_id)
        elif owes_goodbye:
            record.state = LEAVING  # until the goodbye (paced) is out, then the leave
            self._submit(Paced("goodbye", document_id), now)
            self._submit(Paced("leave", document_id), now)
        else:
            self.docs.drop(document_id)
            if self.server_presence:
                self._presence("leave", document_id)

    def _join(self, document_id: str, now: float) -> None:
        record = self.docs.get(document_id)
        if record is None or record.state is LEAVING:
            return
        record.join_sent = True
        record.rejoin_at = None
        if self.server_presence:
            self._presence("join", document_id)
        else:  # subscribe the connection like automerge-repo does (paced: upstream counts it)
            self._submit(Paced("request", document_id), now)

    def _refuse(self, document_id: str, error: RatatoskrError) -> None:
        """The server (or the server's kind) refuses our membership: the record
        ends REFUSED and is dropped; whoever waits gets ``error``, else it is an
        ``error`` event."""
        self.docs.drop(document_id)
        self._dispatch(self.store.forget(document_id))
        self.sharing.left(document_id)
        self.states.forget(document_id)
        failed = self.waiters.fail_enter(document_id, error)
        if failed:
            self.effects += failed
        else:
            self.report(error)

    def _unsupported(self, document_id: str) -> PresenceUnsupported:
        announced = "none" if self.features is None else list(self.features)
        return PresenceUnsupported(
            f"the server at {self.settings.url} has no server-side presence (features "
            f"announced: {announced}) and cannot relay sidecar channels such as {document_id!r}"
        )

    # ================================================================== timers

    def arm(self, when: float) -> None:
        """Ask to be called back at ``when`` (if earlier than already asked)."""
        if when < self._wake:
            self._wake = when
            self.effects.append(WakeAt(when))

    def on_timer(self, now: float) -> None:
        """The time asked for has come: do everything that is due, then ask for
        the next time."""
        self._wake = math.inf
        if self.state is not CONNECTED:
            return
        alive = self.liveness.check(now)  # a Ping, a Drop, or None
        if alive is not None:
            self.effects.append(alive)
            if type(alive) is Drop:
                return  # the driver reports the connection lost (connection_lost)
        settings = self.settings
        for doc_id, record in self.docs.items():
            if record.rejoin_at is not None and record.rejoin_at <= now:
                self._join(doc_id, now)
        if now >= self._heartbeat_at:
            self._heartbeat_at = now + settings.heartbeat_interval
            # Joins still unanswered get a heartbeat too: the server treats it as
            # a join, so a lost join heals itself.
            for doc_id, record in self.docs.items():
                if record.state is not LEAVING:
                    self._presence("heartbeat", doc_id)
        for doc_id, kind in self.sharing.due(now):
            self._submit(Paced(kind, doc_id), now)
        if now >= self.store.share_at:
            self.store.share()
        self.store.stop_lingering(now)
        self.prune(now)
        self._release(now)
        if self.store.changed:  # (expired peers: changes that came with no frame)
            self.store.touched(now)
        self.settle(now)
        self.arm(max(self._next_deadline(), now + MIN_TIMER_STEP))

    def _next_deadline(self) -> float:
        store = self.store
        at = min(self._heartbeat_at, self.sharing.deadline(), self.states.deadline())
        at = min(at, store.due(), self.liveness.deadline())
        for _, record in self.docs.items():
            if record.rejoin_at is not None:
                at = min(at, record.rejoin_at)
        return at

    # ================================================================== errors

    def report(self, error: RatatoskrError) -> None:
        """An ``error`` event."""
        self.effects.append(Emit("error", (error,)))

    def _rejoin_later(self, document_id: str, at: float) -> None:
        record = self.docs.get(document_id)
        if record is not None and record.state is ENTERING:
            record.rejoin_at = at
            self.arm(at)
