"""ClientCore: every rule of the client, as one state machine without I/O or asyncio.

Inputs are method calls with the bytes or values that arrived and ``now`` (a
time on the driver's clock): a frame from the server, a call of the
application, the timer. Outputs go into the :class:`~.outbox.Outbox` the core
was given, which only records them; the driver
(:mod:`ratatoskr_client.asyncio.driver`) carries them out once the call has
returned, and the unit tests read them with a fake clock, so reconnects, TTLs,
heartbeats, coalescing and pacing run in simulated time. The core never calls
the application or the driver.

:class:`ClientCore` is one class composed of parts, each of which owns its
own state and its changes:

* the connection's life, its transition table and the reconnect schedule
  (:mod:`.connection`);
* when a silent connection is dead (:mod:`.liveness`);
* one membership record per entered document (:mod:`.documents`);
* identities and membership (:mod:`.membership`), announced in batches
  (:mod:`.batches`);
* per-peer state (:mod:`.peer_state`) and our own (:mod:`.sharing`);
* the peer-to-peer fallback and its gossip filter (:mod:`.peer_to_peer`);
* the send queue: session, counts, pacing (:mod:`.outgoing`);
* the application's pending awaits and presence watches (:mod:`.waiters`).

What is left here are the rules between the parts: what a frame means, what
an application call does, what the timer does, and the one teardown.

The hot path is :meth:`ClientCore.receive` for an application message: decode,
the gossip filter (only without server-side presence), decode the payload,
one ``ephemeral-message`` effect. Events nobody listens to (the application's
callbacks, which the driver reports through :meth:`ClientCore.listening`)
make no effect at all: a reconnect storm brings N identity and join frames to
every client.
"""

from __future__ import annotations

import math
import random
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from ..errors import (
    AuthError,
    ConnectionClosed,
    DisconnectedByAdmin,
    DocumentNotFound,
    LimitExceeded,
    PayloadError,
    PermissionDenied,
    PermissionRevoked,
    PresenceUnsupported,
    ProtocolError,
    RatatoskrError,
    RateLimited,
    ServerError,
    TokenExpired,
    TokenRefreshError,
    error_from_frame,
)
from ..protocol import (
    Admission,
    AuthErrorFrame,
    AuthFrame,
    AuthOkFrame,
    DocPresenceStateFrame,
    DocUnavailableFrame,
    EphemeralFrame,
    ErrorFrame,
    PeerDisconnectedFrame,
    PeerIdentityFrame,
    SyncFrame,
    decode,
    decode_payload,
    encode,
    encode_payload,
)
from ..protocol.constants import (
    EPHEMERAL_PREFIX,
    FEATURE_REAUTH,
    PRESENCE_MARKER,
    PRESENCE_TYPE,
)
from ..protocol.fastpaths import STATE_HEAD, decode_state
from ..status import ClientStats, ConnectionState, DocumentState
from .batches import PresenceBatches
from .connection import Connection
from .documents import Documents
from .liveness import Liveness
from .membership import (
    Change,
    IdentityAdded,
    IdentityRemoved,
    MembershipStore,
    Peer,
    PeerJoined,
    PeerLeft,
    Refused,
    SelfRemoved,
)
from .membership import PresenceChanged as StoreChanged
from .outbox import MIN_TIMER_STEP, Outbox, Send
from .outgoing import Outgoing, Paced, check_document_id, make_pacer
from .peer import server_peer
from .peer_state import (
    EMPTY,
    PeerStates,
    ReadOnlyMap,
    chosen_name_of,
    parse_state_payload,
    update_payload,
)
from .peer_to_peer import PeerToPeer
from .settings import ENVELOPE_OVERHEAD, Settings
from .sharing import StateSharing
from .tokens import Tokens
from .users import User, UserTracker, group_users
from .waiters import Waiters

__all__ = ["ClientCore"]

IDLE: Final = ConnectionState.IDLE
CONNECTING: Final = ConnectionState.CONNECTING
CONNECTED: Final = ConnectionState.CONNECTED
RECONNECTING: Final = ConnectionState.RECONNECTING
CLOSED: Final = ConnectionState.CLOSED
_LEAVING: Final = DocumentState.LEAVING
_REFUSED: Final = DocumentState.REFUSED
_REPLAY: Final = Admission.REPLAY
_COPY: Final = Admission.COPY
_REASSIGNED: Final = Admission.REASSIGNED
# Error codes by which the server refuses a presence membership.
_MEMBERSHIP_REFUSALS: Final = (PermissionDenied, DocumentNotFound, LimitExceeded)
# The events left out while nobody listens: a reconnect storm brings N of them
# to every client. The others are always recorded (the emitter drops an event
# nobody listens to; an unheard ``error`` is logged).
_MEMBERSHIP_EVENTS: Final = frozenset(
    (
        "peer-joined",
        "peer-left",
        "peer-identity",
        "peer-disconnected",
        "presence-changed",
        "user-joined",
        "user-left",
    )
)
_USER_EVENTS: Final = ("user-joined", "user-left")
#: The sets of unheard events in use, each held once for all the clients of a
#: process (a set of more than five strings is 0.7 KiB per client otherwise);
#: at most 2 ** len(_MEMBERSHIP_EVENTS) of them.
_UNHEARD: dict[frozenset[str], frozenset[str]] = {}


def _unheard_set(events: frozenset[str]) -> frozenset[str]:
    return _UNHEARD.setdefault(events, events)


class ClientCore:
    """The state machine of one client. See the module docstring.

    Args:
        settings: the client's options.
        outbox: where the effects of every input are recorded (a new one by
            default: :attr:`outbox`).
        rand: the reconnect jitter's random source (tests pass a fixed one).
        new_session: makes the ``sessionId`` of each new connection.
    """

    __slots__ = (
        "_effects",
        "_evicted",
        "_heartbeat_at",
        "_new_session",
        "_rand",
        "_resume",
        "_unheard",
        "_url_turn",
        "batches",
        "connection",
        "docs",
        "liveness",
        "out",
        "outbox",
        "p2p",
        "settings",
        "sharing",
        "states",
        "store",
        "tokens",
        "unsettled",
        "users",
        "waiters",
    )

    def __init__(
        self,
        settings: Settings,
        outbox: Outbox | None = None,
        *,
        rand: Callable[[], float] = random.random,
        new_session: Callable[[], str] = lambda: secrets.token_hex(8),
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.tokens = Tokens(settings.token, wall, rand)
        #: what the core asks for, in order (the driver carries it out)
        self.outbox = outbox = Outbox() if outbox is None else outbox
        self._effects = outbox.effects  # (the hot path appends to it directly)
        self.connection = Connection(reconnect=settings.reconnect)
        self.liveness = Liveness(settings.ping_interval)
        self.store = MembershipStore(
            max_identities=settings.max_identities, max_peers=settings.max_presence_peers
        )
        self.batches = PresenceBatches()
        #: documents whose presence changed and is not announced yet (the
        #: driver settles once it has handled a batch of frames: :meth:`settle`)
        self.unsettled = self.batches.unsettled
        self.states = PeerStates(settings.state_ttl)
        self.sharing = StateSharing(
            self.states, interval=settings.state_interval, heartbeat=settings.state_heartbeat
        )
        self.docs = Documents()
        #: the users last announced per document (``user-joined``/``user-left``)
        self.users = UserTracker()
        self.waiters = Waiters(outbox)
        self.out = Outgoing(outbox, self.docs, self.sharing)
        #: the peer-to-peer fallback, while connected to a server without presence
        self.p2p: PeerToPeer | None = None
        # Events the application has no callback for (see listening()): none
        # known until the driver says, so every event is recorded, but for the
        # user events, which cost a grouping per presence change: on once listened.
        self._unheard = _unheard_set(frozenset(_USER_EVENTS))
        self._rand = rand
        self._new_session = new_session
        self._heartbeat_at = float("inf")
        #: (peer id, secret) that resumes our peer after a drop (feature "resume")
        self._resume: tuple[str, str] | None = None
        #: which of ``settings.urls`` the next connection goes to
        self._url_turn = 0
        #: the operator closed this connection (disconnected_by_admin): why
        self._evicted: DisconnectedByAdmin | None = None

    # ================================================================== queries

    @property
    def state(self) -> ConnectionState:
        """Where the connection is (:mod:`.connection`)."""
        return self.connection.state

    @property
    def me(self) -> Peer | None:
        """This connection's identity (the last one after a disconnect)."""
        return self.store.me

    @property
    def features(self) -> tuple[str, ...] | None:
        """What the last server announced (None: none yet, or it sent none)."""
        return self.connection.features

    @property
    def server_presence(self) -> bool:
        """True when the server announced server-side presence."""
        return self.connection.server_presence

    @property
    def peers(self) -> Mapping[str, Peer]:
        """The identities known on this connection, by peer id (a live view)."""
        return self.store.identities

    def connection_state(self, *, socket_closed: bool) -> ConnectionState:
        """The state as the application sees it, given whether the driver's
        socket has closed (a socket that died before the receive loop noticed
        is already lost)."""
        return self.connection.visible_state(socket_closed=socket_closed)

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

    @property
    def url(self) -> str:
        """The relay URL the next (or current) connection goes to: the first
        of ``settings.urls``, then, after each lost connection or failed
        attempt, the next in turn (one URL: always that one)."""
        return self.settings.urls[self._url_turn]

    def _next_url(self) -> None:
        self._url_turn = (self._url_turn + 1) % len(self.settings.urls)

    def entered(self) -> tuple[str, ...]:
        """Documents the application entered and has not left, in order."""
        return self.docs.entered()

    def stats(
        self, *, socket_closed: bool, tasks: tuple[str, ...], callbacks: int, timers: int
    ) -> ClientStats:
        """What the client holds, with what only the driver knows (its socket,
        tasks, running callbacks and timers)."""
        return ClientStats(
            connection_state=self.connection_state(socket_closed=socket_closed),
            documents=self.docs.by_state(),
            tasks=tasks,
            callbacks=callbacks,
            timers=timers,
            paced_sends=len(self.out),
            waiters=self.waiters.count(),
            watchers=self.waiters.watcher_count(),
            peers=len(self.store.identities),
            peer_states=len(self.states),
            gossip_sessions=len(self.p2p) if self.p2p is not None else 0,
        )

    def listening(self, event: str, listened: bool) -> None:
        """Whether the application has a callback for ``event`` now (the
        driver says so whenever that changes). Membership events and
        ``presence-changed`` nobody listens to make no effect."""
        if listened:
            if event in _USER_EVENTS and not self._users_heard():
                # The users were not tracked while nobody listened: start from
                # who is here now, without announcing them.
                for doc_id in self.store.tracked():
                    self.users.update(doc_id, self.store.presence(doc_id))
            self._unheard = _unheard_set(self._unheard - {event})
        elif event in _MEMBERSHIP_EVENTS:
            self._unheard = _unheard_set(self._unheard | {event})

    def _users_heard(self) -> bool:
        unheard = self._unheard
        return "user-joined" not in unheard or "user-left" not in unheard

    def users_of(self, document_id: str) -> tuple[User, ...]:
        """A document's peers grouped by user, in order of each one's first peer."""
        return group_users(self.store.presence(document_id))

    # ================================================================== the connection

    def connect_started(self) -> bool:
        """``connect()`` begins. False when there is nothing to do (connected,
        or reconnecting on its own).

        Raises:
            RuntimeError: another ``connect()`` is in progress.
        """
        state = self.connection.state
        if state is CONNECTED or state is RECONNECTING:
            return False
        if state is CONNECTING:
            raise RuntimeError("connect() is already in progress")
        if state is CLOSED:
            self.sharing.reset()
        self.connection.apply("connect")
        return True

    def connect_failed(self) -> ConnectionClosed | None:
        """``connect()`` failed before authenticating. Returns the error the
        caller raises instead of the failure when ``close()`` was called
        meanwhile; None: the failure stands (and ``connect()`` may be retried)."""
        if self.connection.state is CLOSED:
            return ConnectionClosed("client closed while connecting")
        self.connection.apply("connect_failed")
        self._next_url()
        return None

    def auth_frame(self, now: float) -> bytes:
        """The first frame of a connection (sent at ``now``): the current
        token (with a ``token`` callable, the one the driver fetched just
        before: :meth:`token_fetched`)."""
        self.connection.auth_at = now
        token = self.tokens.current
        anonymous = token is None
        if not (self.settings.resume and self.settings.reconnect):
            # (A client that never reconnects cannot resume: the relay need not wait for it.)
            return encode(AuthFrame(token=token, anonymous=anonymous))
        # Asking costs nothing where resuming is unknown (upstream ignores the key).
        peer, secret = self._resume if self._resume is not None else (None, None)
        return encode(AuthFrame(token, anonymous, True, peer, secret))

    # ================================================================== tokens

    @property
    def renewable(self) -> bool:
        """True when ``token`` is a callable: the driver calls it before each
        connect, and when the core asks (a ``RefreshToken`` effect)."""
        return self.tokens.renewable

    def token_fetched(self, token: object, now: float) -> None:
        """The ``token`` callable returned ``token``. Before a connect, it is
        the one the connection authenticates with; on a connection whose
        server accepts re-authentication (``"reauth"`` in ``features``) it is
        sent at once (``auth``), and the server's ``auth_ok`` confirms it."""
        if not isinstance(token, str) or not token:
            kind = type(token).__name__
            self.token_failed(
                TokenRefreshError(f"the token callable returned {kind}, not a token"), now
            )
            return
        tokens = self.tokens
        tokens.fetched(token)
        if self.connection.state is not CONNECTED:
            return
        if FEATURE_REAUTH in (self.features or ()):
            tokens.reauth_pending = True
            self.outbox.send(encode(AuthFrame(token=token)))
        # Else (upstream today) the server checks a token only when a
        # connection opens: the fresh token is used at the next connect.

    def token_failed(self, error: RatatoskrError, now: float) -> None:
        """Fetching (or renewing) the token failed: a ``token-refresh-failed``
        event, and another try with backoff while connected (until the
        current token expires; the server then closes, and the reconnect
        fetches again)."""
        self.outbox.emit("token-refresh-failed", error)
        tokens = self.tokens
        tokens.reauth_pending = False
        if self.connection.state is CONNECTED and tokens.renewable:
            at = now + tokens.retry_delay()
            tokens.refresh_at = at
            self.outbox.wake_at(at)

    def _schedule_refresh(self, now: float) -> None:
        at = self.tokens.schedule(now, reauth=FEATURE_REAUTH in (self.features or ()))
        if at < math.inf:
            self.outbox.wake_at(at)

    def handshake(self, data: bytes, now: float) -> bool:
        """A frame before ``auth_ok``. True once authenticated.

        Raises:
            AuthError: the server refused the credentials.
            ServerError: the server answered with another error (e.g. ``rate_limited``).
            ConnectionClosed: ``close()`` was called meanwhile.
        """
        if self.connection.state is CLOSED:
            raise ConnectionClosed("client closed while connecting")
        try:
            frame = decode(data)
        except ProtocolError as exc:
            self.report(exc)
            return False
        if type(frame) is AuthOkFrame:
            self._authenticated(frame, now)
            return True
        if type(frame) is AuthErrorFrame:
            if frame.error == "auth_unavailable":  # the server's provider is down: retry
                raise ServerError(frame.error, frame.message)
            raise AuthError(frame.error, frame.message)
        if type(frame) is ErrorFrame:
            raise error_from_frame(
                frame.error, frame.message, document_id=frame.document_id,
                retry_after=frame.retry_after,
            )  # fmt: skip
        return False

    def _authenticated(self, frame: AuthOkFrame, now: float) -> None:
        settings = self.settings
        connection = self.connection
        connection.apply("authenticated")
        connection.features = frame.features
        secret = frame.resume_secret
        self._resume = (frame.client_peer_id, secret) if secret is not None else None
        self.p2p = None if connection.server_presence else PeerToPeer()
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
            auth_at=connection.auth_at,
            now=now,
        )
        self.out.start(
            self._new_session(),
            me.peer_id,
            frame.peer_id,
            pacer,
            server_presence=connection.server_presence,
        )
        self.liveness.start(now)
        self.outbox.wake_at(self.liveness.deadline())
        self.waiters.connected()
        self.outbox.emit("connected", me)
        if self.p2p is not None:
            # Entered while we did not know yet: sidecars cannot work here.
            for doc_id, _ in self.docs.items():
                if doc_id.startswith(EPHEMERAL_PREFIX):
                    self._refuse(doc_id, self._unsupported(doc_id))
        if frame.resumed and frame.documents is not None:
            self._reconcile(frame.documents)
        for doc_id, _ in self.docs.items():  # restore presence after a reconnect
            self._join(doc_id, now)
        if connection.server_presence:
            self._heartbeat_at = now + settings.heartbeat_interval
            self.outbox.wake_at(self._heartbeat_at)
        self._schedule_refresh(now)

    def _reconcile(self, held: tuple[str, ...]) -> None:
        """The relay resumed our peer, which it holds present in ``held``:
        leave at once every one of those the application no longer has
        entered (left while we were away, or left just before the drop with
        a leave that died with the old socket), so that nobody sees us linger
        there until the relay's presence TTL. Documents entered meanwhile are
        joined like every entered one (:meth:`_authenticated`)."""
        wanted = set(self.docs.entered())
        for doc_id in held:
            if doc_id not in wanted:
                self.out.presence("leave", doc_id)

    def connection_lost(self, reason: ConnectionClosed, now: float) -> ConnectionClosed:
        """The socket closed (or died) while connected. Returns the reason the
        connection is lost for: a connection the core declared dead is lost
        for the core's reason. A reason caused by a :class:`ProtocolError` (an
        oversized frame) is also an ``error`` event. A socket that closes once
        the client is closed is ``close()``'s doing: nothing more happens."""
        if self.connection.state is CLOSED:
            return reason
        self.connection.apply("lost")
        self._next_url()
        reason = self.liveness.verdict or reason
        evicted, self._evicted = self._evicted, None
        if evicted is not None:
            evicted.code = reason.code
            evicted.__cause__ = reason
            reason = evicted
            if evicted.retry_after is not None:
                self.connection.floor = evicted.retry_after
        self.liveness.stop()
        if isinstance(reason.__cause__, ProtocolError):
            self.report(reason.__cause__)
        self.out.stop(reason)
        self.docs.connection_lost()
        # Our own state leaves state() with the connection (it is shown while
        # shared on it), under the id it had: say so, as for every peer, so
        # that a map of states by peer id keeps no entry for an id we may not
        # have after reconnecting.
        me = self.store.me
        if me is not None:
            for doc_id in sorted(self.sharing.live):
                self.outbox.emit("state-changed", doc_id, me, EMPTY)
        self.sharing.connection_lost()
        self._clear_peer_states()
        if self.p2p is not None:
            self.p2p.clear()
        self._dispatch(self.store.reset())
        self.settle(now, force=True)
        self._heartbeat_at = float("inf")
        self.tokens.stop()
        self.outbox.emit("disconnected", reason)
        if evicted is not None and not evicted.reconnect:
            # The operator said not to come back: stop as close() would (the
            # disconnection was announced above, with its cause).
            self.shutdown(evicted, now)
        elif not self.settings.reconnect:
            # Not CONNECTED any more, so the teardown does not announce the
            # disconnection a second time: it was announced above, with its cause.
            self.shutdown(ConnectionClosed("client stopped reconnecting"), now)
        return reason

    def next_attempt(self, now: float) -> float | None:
        """Seconds to wait before the next reconnect attempt; None when there is
        none (the client is not reconnecting, or gave up: it is torn down)."""
        connection = self.connection
        if connection.state is not RECONNECTING:
            return None
        delay = connection.next_delay(self.settings.backoff, self._rand)
        if delay is None:
            self.report(
                ConnectionClosed(f"gave up reconnecting after {connection.attempt} attempts")
            )
            self.shutdown(ConnectionClosed("client stopped reconnecting"), now)
            return None
        self.outbox.emit("reconnecting", connection.attempt, delay)
        return delay

    def attempt_failed(self, error: RatatoskrError, now: float) -> None:
        """A reconnect attempt failed with ``error`` (already translated).
        Refused credentials are never retried: they will not get better."""
        if self.connection.state is CLOSED:
            return  # closed meanwhile: that is why it failed
        self._next_url()
        if self.tokens.renewable and isinstance(error, AuthError):
            # The callable's token was refused: a fresh one may do (a bot
            # must not stop for good on a token it will renew).
            self.outbox.emit("token-refresh-failed", error)
        if not self.connection.attempt_failed(error, renewable=self.tokens.renewable):
            self.report(error)
            self.shutdown(ConnectionClosed("client stopped reconnecting"), now)

    def close(self, now: float) -> None:
        """``close()``: leave every document politely, then tear down."""
        if self.connection.state is CLOSED:
            return
        if self.connection.state is CONNECTED:
            out = self.out
            for doc_id, record in self.docs.items():
                if doc_id in self.sharing.live and out.take(now) == 0:
                    out.send_state(doc_id, "goodbye", now)
                if self.server_presence and record.state is not _LEAVING:
                    out.presence("leave", doc_id)
        self.shutdown(ConnectionClosed("client closed"), now)

    def shutdown(self, reason: ConnectionClosed, now: float) -> None:
        """The one teardown, for ``close()``, a reconnect that gave up, refused
        credentials and a fatal error: every waiter fails with ``reason``, every
        watch ends, presence and state empty, nothing is entered any more."""
        connection = self.connection
        if connection.state is CLOSED:
            return
        was_connected = connection.state is CONNECTED
        connection.apply("close")
        self._resume = None  # (a closed client is gone for good)
        self.out.stop(reason)
        self._dispatch(self.store.reset())  # watchers see the empty presence, then end
        self.settle(now, force=True)
        self.batches.clear()
        self.liveness.stop()
        for doc_id in list(self.store.tracked()):
            self.store.forget(doc_id)
        self.waiters.release_all(reason)
        self.users.clear()
        self._clear_peer_states()
        self.sharing.reset()
        self.states.clear()
        self.docs.clear()
        if self.p2p is not None:
            self.p2p.clear()
        self._heartbeat_at = float("inf")
        self.tokens.stop()
        self.outbox.timer_fired()  # the driver's timer goes with the teardown
        if was_connected:
            self.outbox.emit("disconnected", reason)

    def report(self, error: RatatoskrError) -> None:
        """An ``error`` event."""
        self.outbox.emit("error", error)

    # ================================================================== frames

    def receive(self, data: bytes, now: float) -> None:
        """One binary frame from the server, while connected (whole: the
        connection is alive, :mod:`.liveness`)."""
        self.liveness.heard_at = now
        try:
            frame = decode(data)
        except ProtocolError as exc:
            self.report(exc)
            return
        store = self.store
        if type(frame) is EphemeralFrame:  # the hot path: one per message received
            if store.departed:
                store.departed.clear()
            self._ephemeral(frame, now)
            if store.incoming:  # (it introduced the sender: document scope)
                store.settle_incoming()
            if store.changed:  # (peers' own messages, without server presence)
                self.outbox.wake_at(store.touched(now))
            return
        kind = type(frame)
        if kind is PeerIdentityFrame:
            # Scoped identities travel just before the frame that needs them.
            self._dispatch(store.apply(frame))
            if store.changed:
                self.outbox.wake_at(store.touched(now))
            return
        if store.departed and kind is not PeerDisconnectedFrame:
            store.departed.clear()  # kept for the frame right after their leave only
        if kind is ErrorFrame:
            self._error_frame(frame, now)  # type: ignore[arg-type]
        elif kind is SyncFrame or kind is DocUnavailableFrame:
            # automerge-repo's answer to our `request` (peer-to-peer mode only;
            # with server-side presence we send none, and it means nothing).
            doc_id = frame.document_id  # type: ignore[attr-defined]
            record = self.docs.get(doc_id)
            if self.p2p is not None and record is not None and record.join_sent:
                self.p2p.subscribed(doc_id, now)
                # Subscribed now. Present: us, plus whoever already sent us state.
                me = self.store.me
                ids = (me.peer_id,) if me is not None else ()
                self._confirmed(doc_id, ids + self.states.peers(doc_id), now)
        elif kind is DocPresenceStateFrame:
            doc_id = frame.document_id  # type: ignore[attr-defined]
            self._confirmed(doc_id, frame.peers, now)  # type: ignore[attr-defined]
        elif kind is AuthOkFrame:
            self._reauthenticated(now)
        else:
            self._dispatch(store.apply(frame))
        if store.incoming:
            store.settle_incoming()  # introduced for that frame only
        if store.changed:
            self.outbox.wake_at(store.touched(now))

    def receive_text(self, now: float) -> None:
        """A text frame arrived: the protocol is binary CBOR only (the frame is
        whole, so the connection is alive; it is an ``error`` event)."""
        self.liveness.heard_at = now
        self.report(ProtocolError("server sent a text frame; expected binary CBOR"))

    def heard(self, now: float) -> None:
        """A whole WebSocket frame other than a message (a ping, a pong) arrived."""
        self.liveness.heard_at = now

    def _ephemeral(self, frame: EphemeralFrame, now: float) -> None:
        if frame.session_id == self.out.session_id:
            return  # our own message, echoed back by a gossiping peer
        doc_id = frame.document_id
        p2p = self.p2p
        if p2p is not None:
            if doc_id not in self.docs:
                return  # not entered: not ours to see (upstream sends them after a leave)
            verdict = p2p.admit(frame.sender_id, frame.session_id, frame.count)
            if verdict is _REPLAY or verdict is _COPY:
                return
            if verdict is _REASSIGNED:
                self._reassigned(frame.session_id, frame.sender_id)
        data = frame.data
        sender = frame.sender_id
        session = frame.session_id
        try:
            if data.startswith(STATE_HEAD):
                # Per-peer state: decoded once for the clients of the process,
                # ids included, since every one of them keeps what it decodes.
                sender, session, payload = decode_state(sender, session, data)
            else:
                payload = decode_payload(data)
        except ProtocolError as exc:
            self.report(exc)
            return
        if type(payload) is dict and PRESENCE_MARKER in payload:
            hidden = p2p is not None and not p2p.trusted(doc_id, now)
            self._state_message(doc_id, sender, session, payload, now, hidden=hidden)
            return
        # Outbox.emit, without its call and argument packing: once per message.
        self._effects.append(
            (
                "ephemeral-message",
                doc_id,
                self.store.peer(sender) if sender != self.out.server_id else server_peer(sender),
                payload,
            )
        )

    def _state_message(
        self,
        doc_id: str,
        sender: str,
        session: str,
        payload: dict[str, Any],
        now: float,
        *,
        hidden: bool = False,
    ) -> None:
        """An automerge-repo Presence message (from ``sender`` on ``session``):
        per-peer state, never an ``ephemeral-message``."""
        try:
            message = parse_state_payload(payload)
        except ProtocolError as exc:
            self.report(exc)
            return
        if message is None or not sender:
            return
        states = self.states
        outcome = states.receive(doc_id, sender, message, now, session=session, hidden=hidden)
        # A relay that replays states to joiners ("state-replay") spares every
        # peer re-sending its snapshot whenever someone arrives. A heartbeat
        # from a stranger still asks for it: a peer's first message is its
        # snapshot, so a heartbeat first is a relay of a cluster that has no
        # copy of our state yet, nudging us for it (server/core/visibility.py).
        if (
            outcome.unknown_sender
            and (not self.connection.state_replay or message.type == "heartbeat")
            and self.sharing.heard_unknown(doc_id, now)
        ):
            self.outbox.wake_at(self.sharing.deadline())
        if outcome.appeared:
            self.outbox.wake_at(states.deadline())
        if not outcome.changed:
            return
        view = states.peer_state(doc_id, sender)  # what is shown for the sender now
        chosen = chosen_name_of(view)
        p2p = self.p2p
        if p2p is not None:
            known = self.store.identities.get(sender)
            if outcome.appeared or outcome.removed or known is None or known.chosen_name != chosen:
                confirmed = self.docs.is_present(doc_id)
                self._dispatch(p2p.sync(doc_id, self.store, states, confirmed=confirmed))
        elif view is not None:
            self._dispatch(self.store.chosen_name(sender, chosen))
        self._emit_state(doc_id, sender, view if view is not None else EMPTY)

    def _reassigned(self, session_id: str, owner: str) -> None:
        """The gossip filter moved a session to its real sender: its state, and
        the presence that came with it, follow."""
        assert self.p2p is not None
        states = self.states
        for doc_id, previous in states.reassign(session_id, owner):
            confirmed = self.docs.is_present(doc_id)
            self._dispatch(self.p2p.sync(doc_id, self.store, states, confirmed=confirmed))
            for peer_id in (previous, owner):
                view = states.peer_state(doc_id, peer_id)
                self._emit_state(doc_id, peer_id, view if view is not None else EMPTY)

    def _reauthenticated(self, now: float) -> None:
        """``auth_ok`` on a connection: the server accepted the fresh token
        (same peer, documents and state). The next refresh is scheduled."""
        tokens = self.tokens
        if not tokens.reauth_pending:
            return  # not asked for: nothing changes
        tokens.confirmed()
        self._schedule_refresh(now)

    def _error_frame(self, frame: ErrorFrame, now: float) -> None:
        if frame.error == DisconnectedByAdmin.code_name:
            # The close follows: the reason it is lost for (connection_lost).
            self._evicted = DisconnectedByAdmin(frame.message, retry_after=frame.retry_after)
            return
        exc = error_from_frame(
            frame.error, frame.message, document_id=frame.document_id, retry_after=frame.retry_after
        )
        doc_id = frame.document_id
        tokens = self.tokens
        if isinstance(exc, TokenExpired) and tokens.renewable:
            # Renew now: the server closes after retryAfter seconds otherwise
            # (a renewal in flight may have been lost: ask again anyway).
            if tokens.refresh_at > now:
                tokens.refresh_at = now
                self.outbox.wake_at(now)
            return
        if (
            tokens.reauth_pending
            and doc_id is None
            and (isinstance(exc, AuthError) or frame.error in ("auth_unavailable", "rate_limited"))
        ):
            self.token_failed(exc, now)  # the fresh token was refused: try again later
            return
        if isinstance(exc, PermissionRevoked) and doc_id is not None and doc_id in self.docs:
            self._revoked(doc_id, exc)
            return
        if frame.error == "permission_unavailable" and doc_id is not None:
            # The server's permission provider is down (it fails closed): join
            # again once it may answer; whoever waits keeps waiting (its timeout).
            record = self.docs.get(doc_id)
            if record is not None and record.join_sent:
                self._rejoin_later(doc_id, now + min(frame.retry_after or 1.0, 60.0))
        if isinstance(exc, RateLimited):
            if doc_id is None:
                self.out.pause(now, exc.retry_after)
            else:
                record = self.docs.get(doc_id)
                if record is not None and record.join_sent:
                    # The relay's per-document bound on joins: try again when allowed.
                    self._rejoin_later(doc_id, now + exc.retry_after)
        if doc_id is not None and isinstance(exc, _MEMBERSHIP_REFUSALS) and doc_id in self.docs:
            self._refuse(doc_id, exc)
            return
        self.report(exc)

    def _confirmed(self, document_id: str, peer_ids: tuple[str, ...], now: float) -> None:
        """The server confirmed our presence in a document (or answered a join
        that was already confirmed)."""
        changes = self.store.present(document_id, peer_ids)
        self._dispatch(changes)
        if changes and type(changes[0]) is Refused:
            return  # refused whole (too many peers): it confirms nothing either
        if not self.docs.confirmed(document_id):
            return
        self.batches.unthrottle(document_id)  # enter_document returns after it
        me = self.store.me
        if me is None:
            return
        share = self.p2p is not None
        if self.sharing.confirmed(document_id, me.chosen_name or me.name, share=share):
            self.out.submit(Paced("snapshot", document_id), now)
            # (Shown in state() again from now on, under our id on this connection.)
            self.outbox.emit(
                "state-changed", document_id, me, self.states.local_snapshot(document_id)
            )
            self._show_own_name(document_id)
        if self.p2p is not None:
            self._dispatch(self.p2p.sync(document_id, self.store, self.states, confirmed=True))
        self.waiters.resolve_enter(document_id, self.store.presence(document_id))

    def _dispatch(self, changes: list[Change]) -> None:
        """Membership changes become events (once or twice per presence frame,
        N of them per client in a reconnect storm: plain type tests, no cast()
        calls, and no effect for an event nobody listens to)."""
        if not changes:
            return
        self.store.changed = True
        unheard = self._unheard
        emit = self.outbox.emit
        for change in changes:
            kind = type(change)
            if kind is StoreChanged:
                # Announced by settle(), once per document per batch.
                self.batches.mark(change.document_id)  # type: ignore[union-attr]
            elif kind is PeerJoined:
                if "peer-joined" not in unheard:
                    emit("peer-joined", change.document_id, change.peer)  # type: ignore[union-attr]
            elif kind is IdentityAdded:
                if "peer-identity" not in unheard:
                    emit("peer-identity", change.peer)  # type: ignore[union-attr]
            elif kind is PeerLeft:
                doc_id, peer = change.document_id, change.peer  # type: ignore[union-attr]
                if self.p2p is None and self.states.forget_peer(doc_id, peer.peer_id):
                    self._emit_state(doc_id, peer.peer_id, EMPTY)
                if "peer-left" not in unheard:
                    emit("peer-left", doc_id, peer)
            elif kind is IdentityRemoved:
                if "peer-disconnected" not in unheard:
                    emit("peer-disconnected", change.peer)  # type: ignore[union-attr]
            elif kind is SelfRemoved:
                doc_id = change.document_id  # type: ignore[union-attr]
                # The server expired our presence (a stall): join again, at once.
                if self.connection.state is CONNECTED and self.docs.expired(doc_id):
                    self._rejoin_later(doc_id, 0.0)
            elif kind is Refused:  # a frame beyond a bound: nothing of it was applied
                self.report(change.error)  # type: ignore[union-attr]

    # ================================================================== announcing presence

    def settle(self, now: float, *, force: bool = False) -> None:
        """Announce the presence of every document that changed and is not
        held back (:mod:`.batches`; ``force``: none is, for the ends of a
        connection and leaving): ``presence-changed``, then the document's
        watches (``watch_presence``, ``wait_for_presence``)."""
        if not self.unsettled:
            return
        store = self.store
        documents, later = self.batches.due(now, store.size, force=force)
        announce = "presence-changed" not in self._unheard
        users = self._users_heard()
        waiters = self.waiters
        emit = self.outbox.emit
        for document_id in documents:
            watched = waiters.watched(document_id)
            if not announce and not watched and not users:
                continue
            peers = store.presence(document_id)
            if announce:
                emit("presence-changed", document_id, peers)
            if watched:
                waiters.presence_changed(document_id, peers)
            if users:
                # After presence-changed: a user leaves with its last peer.
                arrived, left = self.users.update(document_id, peers)
                for user in left:
                    emit("user-left", document_id, user)
                for user in arrived:
                    emit("user-joined", document_id, user)
        if later != float("inf"):
            self.outbox.wake_at(later)

    def _emit_state(self, document_id: str, peer_id: str, state: Mapping[str, Any]) -> None:
        # A snapshot: a callback that keeps it must not see it change later.
        # (The dict under a ReadOnlyMap is copied directly: ``dict()`` of a
        # Mapping goes through the ABC's generic iterator, 10 times slower.)
        if not state:
            snapshot = EMPTY
        elif type(state) is ReadOnlyMap:
            snapshot = ReadOnlyMap(state.copy_dict())
        else:
            snapshot = ReadOnlyMap(dict(state))
        self.outbox.emit("state-changed", document_id, self.store.peer(peer_id), snapshot)

    def _clear_peer_states(self) -> None:
        """Every peer's state is gone (the connection is): say so, per peer."""
        states = self.states
        cleared = [(d, p) for d in states.documents() for p in states.peers(d)]
        states.clear_peers()
        for doc_id, peer_id in cleared:
            self._emit_state(doc_id, peer_id, EMPTY)

    def _prune(self, now: float) -> None:
        """Forget peers whose state went silent for the TTL (without server-side
        presence, that is also how a peer that vanished leaves)."""
        for doc_id, peer_id in self.states.prune(now):
            self._emit_state(doc_id, peer_id, EMPTY)
            if self.p2p is not None:
                self._dispatch(self.p2p.gone(doc_id, peer_id, self.store, self.states))

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
        self.connection.usable()
        if self.p2p is not None and document_id.startswith(EPHEMERAL_PREFIX):
            raise self._unsupported(document_id)
        if self.docs.is_present(document_id) and self.connection.state is CONNECTED:
            return self.store.presence(document_id)
        if document_id in self.docs and not self.docs.is_refused(document_id):
            self.out.unqueue(document_id)  # re-entered while its goodbye waited
        else:
            self.store.track(document_id)
        record = self.docs.enter(document_id)
        waiter = self.waiters.wait_enter(document_id)
        if self.connection.state is CONNECTED and not record.join_sent:
            self._join(document_id, now)
        return waiter

    def enter_timeout(self, timeout: float | None) -> float:
        """How long an ``enter_document`` waits for the server: its own
        ``timeout``, else the ``request_timeout`` option."""
        return self.settings.request_timeout if timeout is None else timeout

    def enter_abandoned(self, document_id: str, waiter: int, now: float) -> None:
        """An ``enter_document`` gave up (timeout or cancelled): unless another
        call still waits, do not stay in a document the caller cannot know it
        entered. That includes an answer the core gave the call already, which
        its caller never saw: a cancellation and the server's confirmation can
        arrive in one turn of the event loop, the cancellation first."""
        answered = waiter not in self.waiters.enter.get(document_id, ())
        self.waiters.cancel(waiter)
        if document_id in self.waiters.enter:
            return
        if self.docs.is_entering(document_id) or (answered and self.docs.is_present(document_id)):
            self.leave(document_id, now)

    def leave(self, document_id: str, now: float) -> None:
        """``leave_document``: the server and the peers are told; presence and
        state of the document are forgotten at once."""
        record = self.docs.get(document_id)
        if record is None or record.state is _LEAVING:
            return
        self.waiters.fail_enter(
            document_id, RatatoskrError(f"left {document_id!r} before the server confirmed")
        )
        self._dispatch(self.store.forget(document_id, now))
        self.outbox.wake_at(self.store.linger_until)  # (document scope: MembershipStore.forget)
        self.settle(now, force=True)
        had_state = self.states.peers(document_id)
        for peer_id in had_state:
            self._emit_state(document_id, peer_id, EMPTY)
        self.states.forget(document_id)
        if self.p2p is not None:  # peers known only from this document are gone
            self.p2p.left(document_id)
            for peer_id in had_state:
                if not self.states.has_peer(peer_id):
                    self._dispatch(self.store.disconnected(peer_id))
        owes_goodbye = self.sharing.left(document_id)
        if self.connection.state is not CONNECTED:
            self.docs.drop(document_id)
        elif owes_goodbye:
            self.docs.leaving(document_id)  # until the goodbye (paced) is out, then the leave
            self.out.submit(Paced("goodbye", document_id), now)
            self.out.submit(Paced("leave", document_id), now)
        else:
            self.docs.drop(document_id)
            if self.server_presence:
                self.out.presence("leave", document_id)

    def _join(self, document_id: str, now: float) -> None:
        if not self.docs.joining(document_id):
            return  # being left
        if self.server_presence:
            self.out.presence("join", document_id)
        else:  # subscribe the connection like automerge-repo does (paced: upstream counts it)
            self.out.submit(Paced("request", document_id), now)

    def _rejoin_later(self, document_id: str, at: float) -> None:
        if self.docs.rejoin_at(document_id, at):
            self.outbox.wake_at(at)

    def _refuse(self, document_id: str, error: RatatoskrError) -> None:
        """The server (or the server's kind) refuses our membership: the record
        is dropped; whoever waits gets ``error``, else it is an ``error`` event."""
        self.docs.drop(document_id)
        self._dispatch(self.store.forget(document_id))
        self.sharing.left(document_id)
        self.states.forget(document_id)
        if not self.waiters.fail_enter(document_id, error):
            self.report(error)

    def _revoked(self, document_id: str, error: PermissionRevoked) -> None:
        """The server revoked our permission on an entered document: it is
        REFUSED (kept, not joined again, until the application leaves it or
        enters it again); its presence and state are forgotten (watchers see
        it empty), whoever waits for it gets ``error``, and a
        ``document-refused`` event fires."""
        self.docs.refused(document_id)
        self._dispatch(self.store.forget(document_id))
        self.sharing.left(document_id)
        self.states.forget(document_id)
        self.waiters.fail_enter(document_id, error)
        self.outbox.emit("document-refused", error)

    def _unsupported(self, document_id: str) -> PresenceUnsupported:
        announced = "none" if self.features is None else list(self.features)
        return PresenceUnsupported(
            f"the server at {self.url} has no server-side presence (features "
            f"announced: {announced}) and cannot relay sidecar channels such as {document_id!r}"
        )

    # ================================================================== sending

    def send_ephemeral(
        self, document_id: str, payload: Any, now: float, *, socket_closed: bool = False
    ) -> int | None:
        """``send_ephemeral``: None if the frame went out (a Send effect), else
        the id of a waiter resolved when it does (paced). ``socket_closed``:
        the driver's socket has closed and the receive loop has not said so yet.

        Raises:
            ValueError: a bad document id.
            PayloadError: not encodable, too large, or a reserved shape.
            ConnectionClosed: not connected (nothing is queued).
        """
        check_document_id(document_id)
        # Any mapping goes on the wire as a CBOR map (the type test first: an
        # isinstance() against an ABC is slow on this hot path).
        if type(payload) is dict or isinstance(payload, Mapping):
            if payload.get("type") == PRESENCE_TYPE:
                raise PayloadError('payloads with "type": "presence" are reserved for presence')
            if PRESENCE_MARKER in payload:
                raise PayloadError(
                    f"payloads with a {PRESENCE_MARKER!r} key are automerge-repo Presence "
                    "messages: share state with set_state()"
                )
        data = encode_payload(payload)
        if len(data) + ENVELOPE_OVERHEAD > self.settings.max_frame_size:
            raise PayloadError(
                f"payload of {len(data)} bytes is too large for a "
                f"{self.settings.max_frame_size}-byte frame"
            )
        if socket_closed or self.connection.state is not CONNECTED:
            self.connection.sendable(socket_closed=socket_closed)  # raises
        out = self.out
        if out.take(now) == 0:
            # Outbox.send, without its call: once per message sent.
            self._effects.append(Send(out.ephemeral(document_id, data)))
            return None
        waiter = self.waiters.new()
        out.queue_message(document_id, data, waiter, now)
        return waiter

    def set_state(self, document_id: str, channel: str, value: Any, now: float) -> None:
        """``set_state``: merge one channel into our state in a document and share it.

        Raises:
            ValueError: a bad document id or channel.
            PayloadError: the value cannot be sent.
        """
        check_document_id(document_id)
        if not isinstance(channel, str) or not channel:
            raise ValueError(f"channel must be a non-empty string, got {channel!r}")
        try:
            size = len(encode_payload(update_payload(channel, value)))
        except PayloadError:
            # Say it in the caller's terms ("state 'tags' is a set"), not the
            # envelope's; the value alone is only encoded when sending failed.
            encode_payload(value, f"state {channel!r}")
            raise
        if size + ENVELOPE_OVERHEAD > self.settings.max_frame_size:
            raise PayloadError(
                f"state value of {size} bytes is too large for a "
                f"{self.settings.max_frame_size}-byte frame"
            )
        confirmed = self.connection.state is CONNECTED and self.docs.is_present(document_id)
        changed, go_live = self.sharing.set_local(
            document_id, channel, value, now, confirmed=confirmed
        )
        me = self.store.me
        if changed and me is not None:
            local = self.states.local_snapshot(document_id)
            self.outbox.emit("state-changed", document_id, me, local)
        if go_live:
            self.out.submit(Paced("snapshot", document_id), now)
        if changed:
            self._show_own_name(document_id)
        self.outbox.wake_at(self.sharing.deadline())

    def _show_own_name(self, document_id: str) -> None:
        """Server mode, our state shared in ``document_id``: the others show us
        with the name it carries as ``chosen_name``; our own entry in our
        tables (``peers``, ``presence()``) shows the same. That makes it the
        one :class:`Peer` of the process for us, so the clients of a process
        in one document hold equal tables, which they then share (a Locust
        worker's users: 2 KiB each). :attr:`me` keeps the ``name=`` argument."""
        me = self.store.me
        if self.p2p is not None or me is None or document_id not in self.sharing.live:
            return
        name = chosen_name_of(self.states.local(document_id))
        self._dispatch(self.store.chosen_name(me.peer_id, name))

    # ================================================================== waiting

    def wait_presence(self, document_id: str) -> int:
        """``wait_for_presence`` (whose predicate did not hold at once): a
        watch of ``document_id`` that gets every new presence (take them with
        :meth:`next_presence`); it ends with ``ConnectionClosed`` at teardown.

        Raises:
            ConnectionClosed: never connected, or closed.
        """
        self.connection.usable()
        return self.waiters.watch(document_id, counted=True)

    def watch(self, document_id: str) -> int:
        """``watch_presence``: a watch of ``document_id`` that gets every new
        presence, once per settle (a closed client's watch ends at once)."""
        if self.connection.state is CLOSED:
            return self.waiters.ended_watch(document_id, ConnectionClosed("client is closed"))
        return self.waiters.watch(document_id, counted=False)

    def next_presence(self, watcher: int) -> tuple[Peer, ...] | ConnectionClosed | None:
        """The next value of a presence watch: a presence; None when there is
        none yet (wait for a :class:`~.outbox.Push`); or, once every value is
        taken, why the watch is over. A consumer more than
        :data:`~.waiters.WATCH_BACKLOG` values behind loses the oldest."""
        return self.waiters.take(watcher)

    def wait_connected(self, *, socket_closed: bool) -> int | None:
        """``wait_connected``: None if connected now (``socket_closed``: the
        driver's socket has closed), else a waiter id resolved on the next
        connection.

        Raises:
            ConnectionClosed: never connected, or closed.
        """
        self.connection.usable()
        if self.connection_state(socket_closed=socket_closed) is CONNECTED:
            return None
        return self.waiters.wait_connect()

    def cancel(self, waiter: int) -> None:
        """The caller of ``waiter`` (an await or a watch) went away."""
        self.waiters.cancel(waiter)
        self.out.cancel(waiter)

    # ================================================================== the timer

    def on_timer(self, now: float) -> None:
        """The time asked for has come: do everything that is due, then ask for
        the next time."""
        outbox = self.outbox
        outbox.timer_fired()
        if self.connection.state is not CONNECTED:
            return
        alive = self.liveness.check(now)
        if alive == "ping":
            outbox.ping()
        elif alive == "dead":
            assert self.liveness.verdict is not None
            outbox.drop(self.liveness.verdict)
            return  # the driver reports the connection lost (connection_lost)
        settings = self.settings
        for doc_id in self.docs.due(now):
            self._join(doc_id, now)
        if now >= self._heartbeat_at:
            self._heartbeat_at = now + settings.heartbeat_interval
            # Joins still unanswered get a heartbeat too: the server treats it as
            # a join, so a lost join heals itself.
            for doc_id, record in self.docs.items():
                if record.state is not _LEAVING and record.state is not _REFUSED:
                    self.out.presence("heartbeat", doc_id)
        for doc_id, kind in self.sharing.due(now):
            self.out.submit(Paced(kind, doc_id), now)
        tokens = self.tokens
        if now >= tokens.refresh_at:
            tokens.refresh_at = math.inf
            outbox.refresh_token()  # the driver calls the token callable
        store = self.store
        if now >= store.share_at:
            store.share()
        store.stop_lingering(now)
        self._prune(now)
        self.out.release(now)
        if store.changed:  # (expired peers: changes that came with no frame)
            store.touched(now)
        self.settle(now)
        outbox.wake_at(max(self._next_deadline(), now + MIN_TIMER_STEP))

    def _next_deadline(self) -> float:
        return min(
            self._heartbeat_at,
            self.sharing.deadline(),
            self.states.deadline(),
            self.store.due(),
            self.liveness.deadline(),
            self.docs.deadline(),
            self.tokens.refresh_at,
        )
