"""The relay's authentication rules, part of :class:`~.core.RelayCore`. No I/O.

The first frame of a connection must be ``auth``: a configured token, or
anonymous (a server-chosen "Adjective Animal" name). Failed attempts spend a
per-address allowance (``auth_failure_limit`` a minute, as a burst); while it is
empty every attempt from that address is refused with ``rate_limited``.
Anonymous connections spend another (``anonymous_connection_limit``), except
from the exempt networks (loopback by default).

In document scope (``identity_scope``) nothing follows ``auth_ok``; in global
scope the newcomer gets everyone's identity and everyone gets its own.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

import cbor2

from ...protocol import (
    FEATURE_SCOPED_IDENTITY,
    FEATURES,
    AuthErrorFrame,
    AuthFrame,
    AuthOkFrame,
    Frame,
    PeerIdentityFrame,
    UserInfo,
    cbor_text,
    encode,
)
from ...protocol.rates import TokenBucket
from ..config import RelayConfig
from .bus import Bus
from .connection import Connection, LimitBucket
from .counters import RelayCounters, refusal_reason
from .identity import identity_of
from .limits import MAX_AUTH_FAILURE_ADDRESSES, MAX_CONNECTION_ADDRESSES
from .names import NameAllocator

__all__ = ["AuthRules"]

log = logging.getLogger("ratatoskr_client.server")

#: ``features`` in document scope.
_SCOPED_FEATURES = (*FEATURES, FEATURE_SCOPED_IDENTITY)


class AuthRules:
    """``auth`` frames: who a connection is, and the failed-attempt allowance."""

    __slots__ = ()

    # What these rules use of the RelayCore they are part of.
    config: RelayConfig
    clock: Callable[[], float]
    server_peer_id: str
    counters: RelayCounters
    bus: Bus | None
    _names: NameAllocator
    _peers: dict[str, Connection]
    _auth_failures: dict[str, TokenBucket]
    _connection_budget: dict[str, TokenBucket]
    _identity_key: bytes
    _server_presence: bool
    _scoped: bool

    def _error(
        self,
        conn: Connection,
        code: str,
        message: str,
        *,
        document_id: str | None = None,
        retry_after: float | None = None,
        reason: str | None = None,
    ) -> None:
        raise NotImplementedError

    def _receive_unauthenticated(self, conn: Connection, frame: Frame) -> None:
        if not isinstance(frame, AuthFrame):
            self._error(conn, "not_authenticated", "the first frame must be an auth frame")
            return
        if not self._auth_allowed(conn):
            return
        if frame.token is not None:
            user = self.config.user_for_token(frame.token)
            if user is None:
                self._auth_error(conn, "invalid_token", "Invalid or expired token")
                return
            self._authenticate(conn, user.id, user.name, anonymous=False)
        elif frame.anonymous:
            if not self._connection_allowed(conn):
                return
            self._authenticate(conn, None, self._names.allocate(), anonymous=True)
        else:
            self._auth_error(conn, "missing_credentials", "send a token, or anonymous: true")

    def _auth_allowed(self, conn: Connection) -> bool:
        """Refuse every auth attempt from an address whose failed attempts used
        up their allowance (``auth_failure_limit`` per minute, as a burst): a
        token cannot be guessed faster than that, and a flood of bad auths from
        one address is answered with one short frame each."""
        bucket = self._auth_failures.get(conn.address)
        if bucket is None:
            return True
        now = self.clock()
        tokens = bucket.tokens(now)
        if tokens >= 1.0:
            return True
        log.debug("auth from %s refused: too many failed attempts", conn.address or "?")
        self._error(
            conn,
            "rate_limited",
            "too many failed auth attempts from this address",
            retry_after=(1.0 - tokens) / bucket.rate,
        )
        conn.outbox.close(1008, "rate_limited")
        return False

    def _connection_allowed(self, conn: Connection) -> bool:
        """Spend one of the address's anonymous connections
        (``anonymous_connection_limit`` per minute, as a burst); refuse with
        ``rate_limited`` and close when there is none. Exempt networks
        (``connection_limit_exempt``, loopback by default) spend nothing."""
        address = conn.address
        if not self.config.connection_limited(address):
            return True
        now = self.clock()
        budget = self._connection_budget
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
        self._error(
            conn,
            "rate_limited",
            f"more than {self.config.anonymous_connection_limit} anonymous connections "
            "per minute from this address",
            retry_after=wait,
        )
        conn.outbox.close(1008, "rate_limited")
        return False

    def _auth_error(self, conn: Connection, code: str, message: str) -> None:
        log.debug("auth failed for %r: %s", conn, code)
        now = self.clock()
        failures = self._auth_failures
        bucket = failures.get(conn.address)
        if bucket is None:
            if len(failures) >= MAX_AUTH_FAILURE_ADDRESSES:
                del failures[next(iter(failures))]
            limit = self.config.auth_failure_limit
            bucket = failures[conn.address] = TokenBucket.per_minute(limit, now)
        bucket.take(now)
        self.counters.refusal(refusal_reason(code))
        conn.outbox.send(encode(AuthErrorFrame(code, message)))
        conn.outbox.close(1008, code)

    def _authenticate(
        self, conn: Connection, user_id: str | None, name: str, *, anonymous: bool
    ) -> None:
        peer_id = f"peer-{secrets.token_hex(8)}"
        user = UserInfo(user_id, name, anonymous)
        conn.authenticated = True
        conn.peer_id = peer_id
        conn.user_id = user_id
        conn.name = name
        conn.is_anonymous = anonymous
        conn.identity = identity_of(user_id, conn.address, self._identity_key)
        conn.bucket = LimitBucket.per_minute(self.config.rate_limit, self.clock())
        conn.target_suffix = cbor_text(peer_id)
        conn.identity_frame = encode(PeerIdentityFrame(peer_id, user))

        out = conn.outbox
        if not self._server_presence:
            # What today's upstream server sends: no features, no name.
            wire_user = None if anonymous else {"id": user_id}
            out.send(
                cbor2.dumps(
                    {
                        "type": "auth_ok",
                        "peerId": self.server_peer_id,
                        "clientPeerId": peer_id,
                        "user": wire_user,
                    }
                )
            )
            self._peers[peer_id] = conn
            if self.bus is not None:
                self.bus.peer_authenticated(conn)
            return
        if self._scoped:
            # Identities travel with the documents: nothing more to send now,
            # whoever is connected (a connect costs the same with 0 or 10,000 peers).
            out.send(encode(AuthOkFrame(self.server_peer_id, peer_id, user, _SCOPED_FEATURES)))
            self._peers[peer_id] = conn
            if self.bus is not None:
                self.bus.peer_authenticated(conn)
            log.debug("peer %s authenticated as %r (user %s)", peer_id, name, user_id)
            return
        out.send(encode(AuthOkFrame(self.server_peer_id, peer_id, user, FEATURES)))
        for other in self._peers.values():  # initial sync, in connection order
            out.send(other.identity_frame)
            other.outbox.send(conn.identity_frame)
        self._peers[peer_id] = conn
        if self.bus is not None:  # then the peers on the other relays
            for frame in self.bus.peer_authenticated(conn):
                out.send(frame)
        log.debug("peer %s authenticated as %r (user %s)", peer_id, name, user_id)
