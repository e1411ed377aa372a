"""Who a token belongs to, and who may read what, with the answers that need
a remote look-up: the relay's identity and permission providers. No I/O.

The verification that needs nothing but the token and a key is done here, at
once: the configured tokens, upstream session tokens (HMAC-SHA256 with
upstream's secret, compared in constant time), JWTs with a secret or with
keys already fetched. What needs the network or upstream's database is a
:class:`Lookup`: the core hands it to the I/O layer (``RelayCore.request``)
and is answered later (``RelayCore.answer``), and meanwhile the connection's
frames wait (:mod:`.relay`, "parked frames"). Each answer is cached with a
TTL, negative ones too, in bounded caches; one look-up is asked for per key
however many connections wait for it.

Times: ``now`` is the relay's monotonic clock (caches, deadlines); ``wall``
is Unix time, which token ``exp`` claims are in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from ..config import (
    Access,
    HttpPermissions,
    JwtTokens,
    PermissionProvider,
    RelayConfig,
    UpstreamApiTokens,
    UpstreamDatabase,
    UpstreamSessionTokens,
)

__all__ = [
    "MAX_CACHED_ANSWERS",
    "UNAVAILABLE_TTL",
    "Identities",
    "Identity",
    "Lookup",
    "Permissions",
    "Refused",
    "Unavailable",
    "verify_upstream_session",
]

log = logging.getLogger("ratatoskr_client.server")

#: The most answers each cache keeps (the oldest go first).
MAX_CACHED_ANSWERS: Final = 10_000
#: Seconds a failed look-up (the remote down) is remembered: during an outage
#: a flood of connections costs one remote call per key per this long.
UNAVAILABLE_TTL: Final = 1.0

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a token belongs to. ``expires``: its ``exp`` plus the allowed
    clock skew, in Unix time (None: it does not expire)."""

    user_id: str
    name: str
    expires: float | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """A token refused: ``code`` and ``message`` go in the ``auth_error``."""

    code: str = "invalid_token"
    message: str = "Invalid or expired token"


@dataclass(frozen=True, slots=True)
class Unavailable:
    """The remote that must answer did not (down, timed out, a bad answer):
    the relay fails closed."""

    message: str


@dataclass(frozen=True, slots=True)
class Lookup:
    """A question for the I/O layer. ``kind``: ``"userinfo"`` (``key`` =
    (token,)), ``"jwks"`` (key = ()), ``"permission"`` or ``"upstream-acl"``
    (key = (user id or "", document id)). ``provider`` is the index of the
    identity provider in ``config.identity`` (-1 for permissions).
    ``not_before``: the relay-clock time before which it must not be asked
    (JWKS fetches are paced)."""

    kind: str
    provider: int
    key: tuple[str, ...]
    not_before: float = field(default=0.0, compare=False)


Verdict = Identity | Refused | Unavailable | Lookup
"""What a token check gives: who, refused, fail closed, or wait for a look-up."""


class TtlCache(Generic[_T]):
    """Answers that expire, bounded: the oldest entry goes when it is full."""

    __slots__ = ("_entries", "_limit")

    def __init__(self, limit: int = MAX_CACHED_ANSWERS) -> None:
        self._entries: OrderedDict[Any, tuple[float, _T]] = OrderedDict()
        self._limit = limit

    def get(self, key: Any, now: float) -> _T | None:
        """The answer for ``key`` if still fresh at ``now``."""
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] <= now:
            del self._entries[key]
            return None
        return found[1]

    def put(self, key: Any, value: _T, until: float) -> None:
        """Keep ``value`` for ``key`` until ``until``."""
        entries = self._entries
        entries.pop(key, None)
        if len(entries) >= self._limit:
            entries.popitem(last=False)
        entries[key] = (until, value)

    def __len__(self) -> int:
        return len(self._entries)


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def verify_upstream_session(
    token: str, secret: str, wall: float, clock_skew: float
) -> Identity | Refused | None:
    """Upstream's ``verifySessionToken`` (``src/auth/tokens.ts``): None when
    ``token`` does not have a session token's shape (two parts); Refused when
    the signature is wrong, the payload unreadable or ``exp`` passed more than
    ``clock_skew`` seconds before ``wall``."""
    parts = token.split(".")
    if len(parts) != 2:
        return None
    data, signature = parts
    if not data or not signature:
        return Refused()
    expected = base64.urlsafe_b64encode(
        hmac.new(secret.encode(), data.encode(), hashlib.sha256).digest()
    ).rstrip(b"=")
    if not hmac.compare_digest(signature.encode(), expected):
        return Refused()
    try:
        payload = json.loads(_b64decode(data))
        sub, exp = payload["sub"], payload["exp"]
    except (ValueError, KeyError, TypeError):
        return Refused()
    if not isinstance(sub, str) or not sub or not isinstance(exp, int | float):
        return Refused()
    if exp + clock_skew < wall:
        return Refused("invalid_token", "Invalid or expired token")
    return Identity(sub, sub, float(exp) + clock_skew)


def _jwt_identity(claims: Mapping[str, Any], provider: JwtTokens) -> Identity | Refused:
    user = claims.get(provider.user_claim)
    if not isinstance(user, str) or not user:
        return Refused("invalid_token", f"the token has no {provider.user_claim!r} claim")
    name = claims.get(provider.name_claim)
    exp = claims["exp"]
    return Identity(
        user, name if isinstance(name, str) and name else user, float(exp) + provider.clock_skew
    )


def _jwt_decode(token: str, key: Any, provider: JwtTokens, wall: float) -> Identity | Refused:
    import jwt

    try:
        # exp and nbf are checked below against the relay's wall clock (which
        # a test may set), not by PyJWT against its own reading of time.
        claims = jwt.decode(
            token,
            key,
            algorithms=list(provider.algorithms),
            audience=provider.audience,
            issuer=provider.issuer,
            options={
                "require": ["exp"],
                "verify_iat": False,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_aud": provider.audience is not None,
            },
        )
    except jwt.InvalidTokenError as exc:
        return Refused("invalid_token", f"Invalid token: {exc}")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or exp + provider.clock_skew < wall:
        return Refused("invalid_token", "Invalid or expired token")
    nbf = claims.get("nbf")
    if isinstance(nbf, int | float) and nbf - provider.clock_skew > wall:
        return Refused("invalid_token", "the token is not valid yet")
    return _jwt_identity(claims, provider)


class _KeySet:
    """One JWKS provider's keys: by ``kid``, when fetched, and the pacing of fetches."""

    __slots__ = ("fetched_at", "keys")

    def __init__(self) -> None:
        self.keys: dict[str, Any] | None = None
        self.fetched_at = float("-inf")


class Identities:
    """The identity chain: ``config.users``' tokens, then ``config.identity``
    in order; the first provider that recognises a token's shape decides."""

    __slots__ = ("_answers", "_keysets", "config")

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        #: (provider, sha256 of the token) -> answer of a remote look-up
        self._answers: TtlCache[Identity | Refused | Unavailable] = TtlCache()
        self._keysets: dict[int, _KeySet] = {
            i: _KeySet()
            for i, p in enumerate(config.identity)
            if isinstance(p, JwtTokens) and p.jwks_url
        }

    def __len__(self) -> int:
        return len(self._answers)

    def verify(self, token: str, now: float, wall: float) -> Verdict:
        """Who ``token`` is at ``now`` (relay clock) and ``wall`` (Unix time)."""
        user = self.config.user_for_token(token)
        if user is not None:
            return Identity(user.id, user.name)
        for i, provider in enumerate(self.config.identity):
            verdict: Verdict | None
            if isinstance(provider, UpstreamSessionTokens):
                verdict = verify_upstream_session(token, provider.secret, wall, provider.clock_skew)
            elif isinstance(provider, UpstreamApiTokens):
                verdict = self._api_token(i, token, now)
            else:
                verdict = self._jwt(i, provider, token, now, wall)
            if verdict is not None:
                return verdict
        return Refused()

    def _api_token(self, i: int, token: str, now: float) -> Verdict | None:
        if not token.startswith("rat_"):
            return None
        cached = self._answers.get((i, _digest(token)), now)
        return Lookup("userinfo", i, (token,)) if cached is None else cached

    def _jwt(
        self, i: int, provider: JwtTokens, token: str, now: float, wall: float
    ) -> Verdict | None:
        if token.count(".") != 2:
            return None
        import jwt

        if provider.issuer is not None:
            # Several JWT providers are told apart by their issuer: a token
            # from another one is not this provider's to refuse.
            try:
                claims = jwt.decode(token, options={"verify_signature": False})
            except jwt.InvalidTokenError:
                return Refused("invalid_token", "Invalid token: unreadable claims")
            if claims.get("iss") != provider.issuer:
                return None
        if provider.secret is not None:
            return _jwt_decode(token, provider.secret, provider, wall)

        try:
            kid = jwt.get_unverified_header(token).get("kid") or ""
        except jwt.InvalidTokenError:
            return Refused("invalid_token", "Invalid token: unreadable header")
        keyset = self._keysets[i]
        stale = keyset.fetched_at + provider.jwks_ttl <= now
        if keyset.keys is None or stale or kid not in keyset.keys:
            # Unknown kid: perhaps a key rotation. Fetch again, but never more
            # often than jwks_min_refresh (the connection waits meanwhile).
            return Lookup("jwks", i, (), keyset.fetched_at + provider.jwks_min_refresh)
        return _jwt_decode(token, keyset.keys[kid], provider, wall)

    def answer(self, lookup: Lookup, result: Any, now: float) -> None:
        """The I/O layer's answer to ``lookup`` (see :class:`Lookup` for what
        each kind answers)."""
        if lookup.kind == "jwks":
            keyset = self._keysets[lookup.provider]
            if isinstance(result, Unavailable):
                log.warning("JWKS fetch failed: %s", result.message)
                keyset.fetched_at = now  # paced: no refetch before jwks_min_refresh
                if keyset.keys is None:
                    keyset.keys = {}
                return
            keyset.keys = dict(result)
            keyset.fetched_at = now
            return
        provider = self.config.identity[lookup.provider]
        assert isinstance(provider, UpstreamApiTokens)
        if isinstance(result, Identity):
            ttl = provider.cache_ttl
        elif isinstance(result, Refused):
            ttl = provider.negative_ttl
        else:
            ttl = UNAVAILABLE_TTL
        self._answers.put((lookup.provider, _digest(lookup.key[0])), result, now + ttl)

    def settled(self, lookup: Lookup, token: str, now: float, wall: float) -> Verdict:
        """``token``'s verdict once ``lookup`` was answered: a JWKS fetch that
        still does not know the token's key refuses it (no second fetch)."""
        verdict = self.verify(token, now, wall)
        if isinstance(verdict, Lookup) and verdict.kind == "jwks":
            provider = self.config.identity[verdict.provider]
            keyset = self._keysets[verdict.provider]
            assert isinstance(provider, JwtTokens)
            assert keyset.keys is not None
            import jwt

            kid = jwt.get_unverified_header(token).get("kid") or ""
            if kid not in keyset.keys:
                if not keyset.keys:
                    return Unavailable("the JWKS could not be fetched")
                return Refused("invalid_token", f"Invalid token: unknown key id {kid!r}")
        if isinstance(verdict, Lookup):  # (the answer was evicted at once: a full cache)
            return Unavailable("the identity provider's answer was lost")
        return verdict


def _digest(token: str) -> bytes:
    # Cached by hash: the cache does not keep the tokens themselves.
    return hashlib.sha256(token.encode()).digest()


class Permissions:
    """``config.permissions`` (or the TOML file's ACLs), with its answers
    cached ``ttl`` seconds (a denial too)."""

    __slots__ = ("_answers", "config", "provider")

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.provider: PermissionProvider | None = config.permissions
        self._answers: TtlCache[Access | Unavailable] = TtlCache()

    @property
    def remote(self) -> bool:
        """True when answers come from a look-up (and may change: revocation)."""
        return self.provider is not None

    def __len__(self) -> int:
        return len(self._answers)

    def access(
        self, user_id: str | None, document_id: str, now: float
    ) -> Access | Unavailable | Lookup:
        """May ``user_id`` (None: anonymous) read ``document_id`` now?"""
        provider = self.provider
        if provider is None:
            return self.config.access(user_id, document_id)
        if document_id.startswith("eph:"):
            return Access.ALLOWED  # relay-only documents: everyone (upstream's rule too)
        cached = self._answers.get((user_id, document_id), now)
        if cached is not None:
            return cached
        return self.lookup(user_id, document_id)

    def lookup(self, user_id: str | None, document_id: str) -> Lookup:
        """The look-up that answers for (``user_id``, ``document_id``)."""
        kind = "permission" if isinstance(self.provider, HttpPermissions) else "upstream-acl"
        return Lookup(kind, -1, (user_id or "", document_id))

    def fresh(self, user_id: str | None, document_id: str, now: float) -> bool:
        """True while an answer for the pair is cached."""
        return self._answers.get((user_id, document_id), now) is not None

    def answer(self, lookup: Lookup, result: Access | Unavailable, now: float) -> None:
        """The I/O layer's answer to a permission look-up."""
        provider = self.provider
        assert isinstance(provider, HttpPermissions | UpstreamDatabase)
        ttl = UNAVAILABLE_TTL if isinstance(result, Unavailable) else provider.ttl
        user, doc = lookup.key
        self._answers.put((user or None, doc), result, now + ttl)
