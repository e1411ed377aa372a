"""The relay's authentication rules, part of :class:`~.relay.RelayCore`. No I/O.

The first frame of a connection must be ``auth``: a configured token, or
anonymous (a server-chosen "Adjective Animal" name), within ``auth_timeout``
seconds of the connection's opening; a connection still unauthenticated then
gets ``auth_timeout`` and is closed (counted as an ``auth`` refusal). Failed
attempts spend a per-address allowance (``auth_failure_limit`` a minute, as a
burst); while it is empty every attempt from that address is refused with
``rate_limited``. Anonymous connections spend another
(``anonymous_connection_limit``), except from the exempt networks (loopback
by default).

In document scope (``identity_scope``) nothing follows ``auth_ok``; in global
scope the newcomer gets everyone's identity and everyone gets its own
(:meth:`~.visibility.Visibility.greet`).
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import Final

from ...protocol import (
    FEATURE_REAUTH,
    FEATURE_SCOPED_IDENTITY,
    FEATURES,
    AuthErrorFrame,
    AuthFrame,
    Frame,
    PeerDisconnectedFrame,
    PeerIdentityFrame,
    UserInfo,
    encode,
)
from ...protocol.constants import FEATURE_RESUME, FEATURE_STATE_REPLAY
from ...protocol.rates import TokenBucket
from ...protocol.writers import auth_ok, target_suffix, upstream_auth_ok
from ..config import RelayConfig
from .bus import Bus
from .connection import Connection, LimitBucket, forget_full
from .counters import RelayCounters, refusal_reason
from .identities import Identities, Identity, Lookup, Refused, Unavailable
from .identity import identity_key, identity_of
from .limits import MAX_AUTH_FAILURE_ADDRESSES, MAX_CONNECTION_ADDRESSES
from .names import NameAllocator
from .replies import Replies
from .resume import DETACHED, Claim, HandedPeer, Resumption, digest
from .visibility import Visibility

__all__ = ["Authentication"]

log = logging.getLogger("ratatoskr_client.server")

#: ``features`` in global scope, and in document scope.
_FEATURES = (*FEATURES, FEATURE_REAUTH)
_SCOPED_FEATURES = (*FEATURES, FEATURE_SCOPED_IDENTITY, FEATURE_REAUTH)


def _no_resumed(new: Connection, held: Connection) -> None:
    pass


def _no_wake(when: float) -> None:
    pass


def _no_adopt(conn: Connection, peer: HandedPeer) -> None:
    pass


#: What :meth:`Authentication._resume` did: resumed the peer here, or asked
#: the relay of the cluster that holds it (falsy: neither, a new peer).
_RESUMED: Final = 1
_ASKED: Final = 2


class Authentication:
    """``auth`` frames: who a connection is, the auth deadline, and the
    per-address allowances.

    It owns ``peers`` (the authenticated connections by peer id, in connection
    order; the core creates it and the other parts read it), the anonymous
    names in use, the connections waiting for their ``auth`` and the two
    per-address budgets.
    """

    __slots__ = (
        "_budget",
        "_failures",
        "_identity_key",
        "_pending",
        "_presence",
        "_replies",
        "adopt_documents",
        "bus",
        "clock",
        "config",
        "counters",
        "features",
        "identities",
        "names",
        "on_resumed",
        "peers",
        "resumption",
        "server_peer_id",
        "visibility",
        "wait",
        "wake_claims",
        "wall",
    )

    def __init__(
        self,
        config: RelayConfig,
        clock: Callable[[], float],
        counters: RelayCounters,
        replies: Replies,
        visibility: Visibility,
        peers: dict[str, Connection],
        *,
        names: NameAllocator | None,
        server_peer_id: str,
        resumption: Resumption | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.counters = counters
        self.visibility = visibility
        self.server_peer_id = server_peer_id
        #: authenticated connections by peer id, in connection order
        self.peers = peers
        #: the anonymous names in use
        self.names = names or NameAllocator()
        #: the cluster link (None for a relay on its own)
        self.bus: Bus | None = None
        self._replies = replies
        #: what anonymous identities are hashed with (the same on every relay of a cluster)
        self._identity_key = identity_key(config.redis_url)
        #: connections waiting for their auth -> their deadline, in opening order
        #: (so in deadline order: the timeout is the same for all)
        self._pending: dict[Connection, float] = {}
        #: source address -> bucket of failed auth attempts (see _allowed)
        self._failures: dict[str, TokenBucket] = {}
        #: source address -> bucket of anonymous connections (see _anonymous_allowed)
        self._budget: dict[str, TokenBucket] = {}
        self._presence = config.server_presence
        #: the resume secrets and the held peers (:mod:`.resume`)
        self.resumption = resumption if resumption is not None else Resumption(0.0)
        #: called when a connection resumed a peer: (the new connection, the
        #: peer's, which carries the new socket from now on)
        self.on_resumed: Callable[[Connection, Connection], None] = _no_resumed
        #: called when a claim is pending, with its deadline (the core's wake-up)
        self.wake_claims: Callable[[float], None] = _no_wake
        #: makes a handed-over peer present in its documents (the core's documents)
        self.adopt_documents: Callable[[Connection, HandedPeer], None] = _no_adopt
        base = _SCOPED_FEATURES if visibility.scoped else _FEATURES
        extra = (FEATURE_STATE_REPLAY,) + ((FEATURE_RESUME,) if self.resumption.enabled else ())
        #: what ``auth_ok`` announces (with server-side presence)
        self.features: tuple[str, ...] = (*base, *extra)
        #: Unix time (token ``exp`` claims are in it)
        self.wall: Callable[[], float] = time.time
        #: the identity providers
        self.identities = Identities(config)
        #: park a connection's frames until a look-up is answered (the core's
        #: RelayCore.wait); False: that look-up was just answered for it
        self.wait: Callable[[Connection, Lookup], bool] = lambda conn, lookup: False

    # ------------------------------------------------------------------ sizes

    def failure_addresses(self) -> int:
        """Source addresses whose failed-auth allowance is refilling."""
        return len(self._failures)

    def connection_addresses(self) -> int:
        """Source addresses whose anonymous-connection allowance is refilling."""
        return len(self._budget)

    # ------------------------------------------------------------------ the deadline

    def opened(self, conn: Connection, now: float) -> float:
        """A connection opened at ``now``: it has until the returned time to
        authenticate."""
        deadline = now + self.config.auth_timeout
        self._pending[conn] = deadline
        return deadline

    def next_deadline(self) -> float:
        """The earliest auth deadline of a connection still waiting (``inf``: none)."""
        for deadline in self._pending.values():
            return deadline
        return math.inf

    def check_deadlines(self, now: float) -> int:
        """Refuse every connection whose auth deadline has passed at ``now``:
        ``auth_timeout``, closed (1008). Frames other than a valid ``auth``
        never extend it. Returns how many were refused."""
        pending = self._pending
        late: list[Connection] = []
        for conn, deadline in pending.items():
            if deadline > now:
                break  # in deadline order: the rest are later
            late.append(conn)
        for conn in late:
            del pending[conn]
            log.debug("closing %r: no auth within %g s", conn, self.config.auth_timeout)
            self._replies.refuse_and_close(
                conn, "auth_timeout", f"no auth within {self.config.auth_timeout:g} s"
            )
        return len(late)

    def closed(self, conn: Connection) -> None:
        """``conn``'s connection is gone (after its leaves): it is no longer
        a peer; in global scope everyone is told (``peer_disconnected``)."""
        self._pending.pop(conn, None)
        if not conn.authenticated:
            return
        del self.peers[conn.peer_id]
        if conn.is_anonymous:
            self.names.release(conn.name)
        if self.bus is not None:
            self.bus.peer_closed(conn)
        self.visibility.broadcast(encode(PeerDisconnectedFrame(conn.peer_id)))
        log.debug("peer %s (%s) disconnected", conn.peer_id, conn.name)

    def forget_idle(self, now: float) -> None:
        """Forget the per-address buckets that are full again."""
        if self._failures:
            forget_full(self._failures, now)
        if self._budget:
            forget_full(self._budget, now)

    # ------------------------------------------------------------------ auth frames

    def receive(self, conn: Connection, frame: Frame) -> None:
        """A frame from ``conn`` before it authenticated: only ``auth`` is accepted."""
        if not isinstance(frame, AuthFrame):
            self._replies.error(conn, "not_authenticated", "the first frame must be an auth frame")
            return
        if not self._allowed(conn):
            return
        resumable = frame.resume and self.resumption.enabled
        resuming = resumable and frame.resume_peer is not None
        if frame.token is not None:
            verdict = self._verify(conn, frame.token)
            if verdict is None:
                return  # waits for a look-up
            if isinstance(verdict, Refused):
                self._refuse(conn, verdict.code, verdict.message)
            elif isinstance(verdict, Unavailable):
                log.warning("auth for %r failed closed: %s", conn, verdict.message)
                self._pending.pop(conn, None)
                self.counters.refusal(refusal_reason("auth_unavailable"))
                conn.outbox.send(
                    encode(
                        AuthErrorFrame("auth_unavailable", "the identity provider is unavailable")
                    )
                )
                conn.outbox.close(1008, "auth_unavailable")
            elif resuming and (outcome := self._resume(conn, frame, verdict)):
                if outcome == _RESUMED:
                    self._set_expiry(conn.successor or conn, verdict)
                # (_ASKED: another relay holds it; see claim_answered)
            else:
                self._authenticate(
                    conn, verdict.user_id, verdict.name, anonymous=False, resumable=resumable
                )
                self._set_expiry(conn, verdict)
        elif frame.anonymous:
            if not self._anonymous_allowed(conn):
                return
            if resuming and self._resume(conn, frame, None):
                return
            name = self.names.allocate()
            self._authenticate(conn, None, name, anonymous=True, resumable=resumable)
        else:
            self._refuse(conn, "missing_credentials", "send a token, or anonymous: true")

    def _verify(self, conn: Connection, token: str) -> Identity | Refused | Unavailable | None:
        """``token``'s verdict, or None when ``conn`` now waits for a look-up
        (its frames are parked; the frame is replayed once it is answered).
        A look-up that goes to a remote costs one of the address's failed-auth
        allowance up front: a flood of unknown tokens makes no more remote
        calls than that allowance (and the cache) permit."""
        now = self.clock()
        wall = self.wall()
        verdict = self.identities.verify(token, now, wall)
        if isinstance(verdict, Lookup):
            if self.wait(conn, verdict):
                if verdict.kind == "userinfo":
                    self._spend(conn)
                return None
            verdict = self.identities.settled(verdict, token, now, wall)
            assert not isinstance(verdict, Lookup)
        return verdict

    def _set_expiry(self, conn: Connection, identity: Identity) -> None:
        """The connection's token expires when ``identity`` says (plus the skew)."""
        conn.expiry_told = False
        if identity.expires is None or not self._presence:
            # (Upstream-compatible mode: like upstream, a token is checked
            # only when the connection authenticates.)
            conn.expires = math.inf
            return
        conn.expires = self.clock() + (identity.expires - self.wall())

    def check_expiry(self, conn: Connection, now: float) -> None:
        """``conn``'s token expired (``conn.expires <= now``): the first time,
        it is told (``token_expired``, ``retryAfter`` = the grace) and has
        ``reauth_grace`` seconds to send a new ``auth``; then it is closed."""
        if not conn.expiry_told:
            grace = self.config.reauth_grace
            conn.expiry_told = True
            conn.expires = now + grace
            log.debug("token of %r expired: %g s to re-authenticate", conn, grace)
            self._replies.error(
                conn,
                "token_expired",
                f"the token expired: send a new auth within {grace:g} s",
                retry_after=grace,
            )
            return
        conn.expires = math.inf  # closed once
        self._replies.refuse_and_close(conn, "token_expired", "the token expired")

    def reauth(self, conn: Connection, frame: AuthFrame) -> None:
        """An ``auth`` frame on an authenticated connection: a new token for the
        same user. Accepted: ``auth_ok`` again (same peer id; documents and
        state are kept, nobody sees anything) and the new expiry. Refused
        (``invalid_token``, ``user_mismatch``, ``auth_unavailable``): an
        ``error`` frame; the connection keeps its old token until it expires."""
        if frame.token is None:
            self._replies.error(conn, "invalid_message", "a re-auth needs a token")
            return
        bucket = self._failures.get(conn.address)
        if bucket is not None and bucket.tokens(self.clock()) < 1.0:
            self._replies.error(
                conn,
                "rate_limited",
                "too many failed auth attempts from this address",
                retry_after=(1.0 - bucket.tokens(self.clock())) / bucket.rate,
            )
            return
        verdict = self._verify(conn, frame.token)
        if verdict is None:
            return
        if isinstance(verdict, Unavailable):
            self._replies.error(
                conn, "auth_unavailable", "the identity provider is unavailable", retry_after=1.0
            )
        elif isinstance(verdict, Refused):
            self._spend(conn)
            self._replies.error(conn, verdict.code, verdict.message)
        elif conn.is_anonymous or verdict.user_id != conn.user_id:
            self._spend(conn)
            self._replies.error(
                conn, "user_mismatch", "a re-auth must be for the connection's own user"
            )
        else:
            self._set_expiry(conn, verdict)
            user = UserInfo(conn.user_id, conn.name, False)
            conn.outbox.send(auth_ok(self.server_peer_id, conn.peer_id, user, self.features))
            log.debug("peer %s re-authenticated", conn.peer_id)

    def _spend(self, conn: Connection) -> None:
        """Spend one of the address's failed-auth allowance."""
        now = self.clock()
        failures = self._failures
        bucket = failures.get(conn.address)
        if bucket is None:
            if len(failures) >= MAX_AUTH_FAILURE_ADDRESSES:
                del failures[next(iter(failures))]
            limit = self.config.auth_failure_limit
            bucket = failures[conn.address] = TokenBucket.per_minute(limit, now)
        bucket.take(now)

    def _allowed(self, conn: Connection) -> bool:
        """Refuse every auth attempt from an address whose failed attempts used
        up their allowance (``auth_failure_limit`` per minute, as a burst): a
        token cannot be guessed faster than that, and a flood of bad auths from
        one address is answered with one short frame each."""
        bucket = self._failures.get(conn.address)
        if bucket is None:
            return True
        tokens = bucket.tokens(self.clock())
        if tokens >= 1.0:
            return True
        log.debug("auth from %s refused: too many failed attempts", conn.address or "?")
        self._pending.pop(conn, None)  # answered: no auth_timeout after this
        self._replies.refuse_and_close(
            conn,
            "rate_limited",
            "too many failed auth attempts from this address",
            retry_after=(1.0 - tokens) / bucket.rate,
        )
        return False

    def _anonymous_allowed(self, conn: Connection) -> bool:
        """Spend one of the address's anonymous connections
        (``anonymous_connection_limit`` per minute, as a burst); refuse with
        ``rate_limited`` and close when there is none. Exempt networks
        (``connection_limit_exempt``, loopback by default) spend nothing."""
        address = conn.address
        if not self.config.connection_limited(address):
            return True
        now = self.clock()
        budget = self._budget
        bucket = budget.get(address)
        if bucket is None:
            if len(budget) >= MAX_CONNECTION_ADDRESSES:
                del budget[next(iter(budget))]
            limit = self.config.anonymous_connection_limit
            bucket = budget[address] = TokenBucket.per_minute(limit, now)
        wait = bucket.take(now)
        if wait <= 0:
            return True
        log.debug("anonymous connection from %s refused: over its limit", address)
        self._pending.pop(conn, None)  # answered: no auth_timeout after this
        self._replies.refuse_and_close(
            conn,
            "rate_limited",
            f"more than {self.config.anonymous_connection_limit} anonymous connections "
            "per minute from this address",
            retry_after=wait,
        )
        return False

    def _refuse(self, conn: Connection, code: str, message: str) -> None:
        """Credentials refused: spend the address's allowance, answer
        ``auth_error`` and close."""
        log.debug("auth failed for %r: %s", conn, code)
        if conn.answered is None or conn.answered.kind != "userinfo":
            self._spend(conn)  # (a userinfo look-up was paid for when it was asked)
        self._pending.pop(conn, None)  # answered: no auth_timeout after this
        self.counters.refusal(refusal_reason(code))
        conn.outbox.send(encode(AuthErrorFrame(code, message)))
        conn.outbox.close(1008, code)

    def _resume(self, conn: Connection, frame: AuthFrame, verdict: Identity | None) -> int:
        """``conn`` asks to resume a peer (:mod:`.resume`), its token verified
        as ``verdict`` (None: anonymous): ``_RESUMED`` if it did, ``_ASKED``
        if another relay of the cluster holds the peer and was asked for it
        (``conn`` waits: :meth:`claim_answered`). Otherwise (0: unknown peer,
        wrong secret, other credentials) it goes on as a new peer: a resume
        is never refused, it just does not happen."""
        assert frame.resume_peer is not None
        assert frame.resume_secret is not None
        user_id = verdict.user_id if verdict is not None else None
        peer_id = frame.resume_peer
        held = self.resumption.held.get(peer_id)
        candidate = held[0] if held is not None else self.peers.get(peer_id)
        if candidate is None and self.bus is not None:
            node = self.bus.holder(peer_id)
            if node is not None:
                presented = digest(frame.resume_secret)
                request = self.resumption.ask(
                    conn, verdict, frame.resume and self.resumption.enabled, presented, self.clock()
                )
                conn.waiting = ("resume", request)  # its later frames are parked
                self.bus.claim(node, request, peer_id, presented, user_id)
                self.wake_claims(self.resumption.next_claim_deadline())
                log.debug("asked node %s for peer %s (request %s)", node, peer_id, request)
                return _ASKED
        if candidate is None or candidate is conn:
            return 0
        peer = self.resumption.take(
            peer_id, digest(frame.resume_secret), user_id, frame.token is None, candidate
        )
        if peer is None:
            return 0
        self._pending.pop(conn, None)
        now = self.clock()
        old = peer.outbox
        peer.outbox = conn.outbox
        peer.address = conn.address
        peer.heard = True
        peer.heard_at = now
        peer.pinged = False
        for doc_id in peer.docs:
            peer.docs[doc_id] = now  # present since now: the grace is not held against it
        # Its client joins its documents again: told who is there, as a joiner is.
        peer.reintroduce = set(peer.docs)
        # A new socket starts with the allowances of one (its joins come at once).
        peer.control.clear()
        peer.flood = None
        conn.successor = peer
        info = UserInfo(peer.user_id, peer.name, peer.is_anonymous)
        secret = self.resumption.issue(peer)
        # Its documents, so that its client leaves at once those it left while
        # away (and joins those it entered: it joins all of its own anyway).
        peer.outbox.send(
            auth_ok(
                self.server_peer_id,
                peer_id,
                info,
                self.features,
                secret,
                resumed=True,
                documents=tuple(peer.docs),
            )
        )
        self.visibility.reintroduce(peer)
        if old is not DETACHED:
            # Its old socket is still open here (the relay has not noticed it
            # died): it carries nothing of the peer any more.
            old.close(1000, "resumed")
        self.on_resumed(conn, peer)
        self.counters.resume("here")
        log.debug("peer %s (%s) resumed", peer_id, peer.name)
        return _RESUMED

    def claim_answered(self, claim: Claim, peer: HandedPeer | None) -> None:
        """The relay that held the peer ``claim`` asked for answered: ``peer``
        is handed over (adopted on the claim's connection), or None (refused,
        or no answer in time): the connection authenticates as a new peer, as
        it would have without the resume."""
        conn, verdict = claim.conn, claim.verdict
        if peer is not None:
            self._adopt(conn, peer)
            if verdict is not None:
                self._set_expiry(conn, verdict)
        elif verdict is not None:
            self._authenticate(
                conn, verdict.user_id, verdict.name, anonymous=False, resumable=claim.resumable
            )
            self._set_expiry(conn, verdict)
        else:
            name = self.names.allocate()
            self._authenticate(conn, None, name, anonymous=True, resumable=claim.resumable)

    def handed_off(self, conn: Connection) -> None:
        """``conn``'s peer was handed over to another relay: it is no longer
        one of ours (nobody is told: it is still connected, elsewhere)."""
        if self.peers.get(conn.peer_id) is conn:
            del self.peers[conn.peer_id]
        if conn.is_anonymous:
            self.names.release(conn.name)

    def adopt_quietly(self, conn: Connection, peer: HandedPeer) -> None:
        """Take ``peer`` over on ``conn`` without a client to tell (a handover
        that came too late: the caller closes it at once, a normal leave)."""
        self._adopt(conn, peer, reply=False)

    def _adopt(self, conn: Connection, peer: HandedPeer, *, reply: bool = True) -> None:
        """``conn`` is ``peer``, handed over by the relay that held it: it
        takes its id, name, identity, documents and state here, and nobody
        is told anything (to them it is the same peer, on another relay)."""
        now = self.clock()
        peer_id = peer.peer_id
        user = peer.user
        self._pending.pop(conn, None)
        conn.authenticated = True
        conn.peer_id = peer_id
        conn.user_id = user.id
        conn.name = user.name or ""
        conn.is_anonymous = user.is_anonymous
        conn.identity = peer.identity
        conn.bucket = LimitBucket.per_minute(self.config.rate_limit, now)
        conn.target_suffix = target_suffix(peer_id)
        conn.identity_frame = encode(PeerIdentityFrame(peer_id, user))
        if conn.is_anonymous:
            self.names.reserve(conn.name)
        self.peers[peer_id] = conn
        self.adopt_documents(conn, peer)
        if self.bus is not None:
            self.bus.adopted(conn)
        if not reply:
            return
        self.counters.resume("adopted")
        if peer.documents:
            # Its client joins its documents again: told who is there, as a joiner is.
            conn.reintroduce = set(peer.documents)
        secret = self.resumption.issue(conn)
        conn.outbox.send(
            auth_ok(
                self.server_peer_id,
                peer_id,
                user,
                self.features,
                secret,
                resumed=True,
                documents=peer.documents,
            )
        )
        self.visibility.reintroduce(conn)
        log.debug("peer %s (%s) resumed from another relay", peer_id, conn.name)

    def _authenticate(
        self,
        conn: Connection,
        user_id: str | None,
        name: str,
        *,
        anonymous: bool,
        resumable: bool = False,
    ) -> None:
        peer_id = f"peer-{secrets.token_hex(8)}"
        user = UserInfo(user_id, name, anonymous)
        self._pending.pop(conn, None)
        conn.authenticated = True
        conn.peer_id = peer_id
        conn.user_id = user_id
        conn.name = name
        conn.is_anonymous = anonymous
        conn.identity = identity_of(user_id, conn.address, self._identity_key)
        conn.bucket = LimitBucket.per_minute(self.config.rate_limit, self.clock())
        conn.target_suffix = target_suffix(peer_id)
        conn.identity_frame = encode(PeerIdentityFrame(peer_id, user))

        out = conn.outbox
        if not self._presence:
            # What today's upstream server sends: no features, no name.
            out.send(upstream_auth_ok(self.server_peer_id, peer_id, user_id))
        else:
            secret = self.resumption.issue(conn) if resumable else None
            out.send(auth_ok(self.server_peer_id, peer_id, user, self.features, secret))
            self.visibility.greet(conn)  # global scope: everyone's identity, its own to all
        self.peers[peer_id] = conn
        if self.bus is not None:
            self.bus.peer_authenticated(conn)
        log.debug("peer %s authenticated as %r (user %s)", peer_id, name, user_id)
