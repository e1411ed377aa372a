"""Who a token belongs to and who may read what, beyond the TOML file's own
users and ACLs: the relay's identity and permission providers, as configured.
No I/O but reading the secret files named in the configuration (when the
configuration is built, like the TOML file itself).

Identity providers are tried in order after the configured ``[[users]]``
tokens; the first one that recognises a token's shape decides (see
``docs/server.md``, "Identities"):

* :class:`UpstreamSessionTokens`: upstream Ratatoskr session tokens
  (``base64url(JSON{sub,exp,iat,type}) "." base64url(HMAC-SHA256)``), checked
  offline with upstream's ``JWT_SECRET``;
* :class:`UpstreamApiTokens`: upstream API tokens (``rat_`` + 64 hex), which
  only upstream can check: ``GET /api/v1/auth/userinfo``;
* :class:`JwtTokens`: standard JWTs through PyJWT (the ``jwt`` extra): an
  HS256 secret, or RS256/ES256 keys from a JWKS URL.

One permission provider answers "may this user read this document?":
``None`` (the TOML file's ACLs), :class:`HttpPermissions` (a callback of the
application's) or :class:`UpstreamDatabase` (upstream's own rules, read from
its SQLite database).

Secrets come from a file or an environment variable, never from the command
line; they are never shown in a ``repr`` or a log line.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final
from urllib.parse import urlsplit

from ..._version import install_hint
from ...errors import ConfigError

__all__ = [
    "DEFAULT_CLOCK_SKEW",
    "DEFAULT_LOOKUP_TIMEOUT",
    "DEFAULT_NEGATIVE_TTL",
    "DEFAULT_PERMISSION_TTL",
    "DEFAULT_REAUTH_GRACE",
    "DEFAULT_TOKEN_CACHE_TTL",
    "HttpPermissions",
    "IdentityProvider",
    "JwtTokens",
    "PermissionProvider",
    "UpstreamApiTokens",
    "UpstreamDatabase",
    "UpstreamSessionTokens",
    "load_identity",
    "load_permissions",
    "read_secret",
]

#: Seconds a token is still accepted after its ``exp`` (clocks of the issuer
#: and the relay differ by that much at most).
DEFAULT_CLOCK_SKEW: Final = 5.0
#: Seconds a peer whose token expired has to send a new ``auth`` before it is closed.
DEFAULT_REAUTH_GRACE: Final = 10.0
#: Seconds a remote look-up (userinfo, JWKS, permission callback) may take.
DEFAULT_LOOKUP_TIMEOUT: Final = 5.0
#: Seconds a positive answer about a token is kept.
DEFAULT_TOKEN_CACHE_TTL: Final = 60.0
#: Seconds a negative answer (a refused token, a denied document) is kept.
DEFAULT_NEGATIVE_TTL: Final = 10.0
#: Seconds a permission answer is kept: a revoked permission takes effect within this.
DEFAULT_PERMISSION_TTL: Final = 10.0
#: Seconds a JWKS key set is kept before it is fetched again.
DEFAULT_JWKS_TTL: Final = 300.0
#: The shortest time between two JWKS fetches (an unknown ``kid`` asks for one).
DEFAULT_JWKS_MIN_REFRESH: Final = 1.0

_JWT_ALGORITHMS: Final = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384")


def read_secret(
    file: str | None, env: str | None, *, what: str, source: str | None, entry: str
) -> str:
    """The secret named by ``file`` (its content, surrounding whitespace
    stripped) or ``env`` (an environment variable's value): exactly one.

    Raises:
        ConfigError: neither or both given, the file unreadable, the variable
            unset, or the secret empty. The secret itself is never shown.
    """
    if (file is None) == (env is None):
        raise ConfigError(
            f"give the {what} as exactly one of secret_file or secret_env", path=source, entry=entry
        )
    if file is not None:
        try:
            with open(file, encoding="utf-8") as fh:
                value = fh.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(
                f"cannot read secret_file {file!r}: {reason or exc}", path=source, entry=entry
            ) from None
    else:
        assert env is not None
        found = os.environ.get(env)
        if found is None:
            raise ConfigError(
                f"secret_env: environment variable {env!r} is not set", path=source, entry=entry
            )
        value = found.strip()
    if not value:
        raise ConfigError(f"the {what} is empty", path=source, entry=entry)
    return value


def _http_url(value: object, key: str, source: str | None, entry: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key!r} must be an http(s) URL", path=source, entry=entry)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"{key!r} must be an http(s) URL, got {value!r}", path=source, entry=entry
        )
    return value


def _seconds(
    value: object, key: str, source: str | None, entry: str, *, zero: bool = False
) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero):  # type: ignore[operator]
        kind = "a number >= 0" if zero else "a positive number"
        raise ConfigError(f"{key!r} must be {kind} of seconds", path=source, entry=entry)
    return float(value)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class UpstreamSessionTokens:
    """Upstream session tokens, verified offline with upstream's ``JWT_SECRET``
    (upstream ``src/auth/tokens.ts``, ``verifySessionToken``): the HMAC
    compared in constant time, ``exp`` enforced with ``clock_skew`` seconds
    of allowance. The user id is ``sub``; the display name is the id."""

    secret: str = field(repr=False)
    clock_skew: float = DEFAULT_CLOCK_SKEW
    kind: ClassVar[str] = "upstream-session"


@dataclass(frozen=True, slots=True)
class UpstreamApiTokens:
    """Upstream API tokens (``rat_`` + 64 hex), resolved by upstream's
    ``GET userinfo_url`` with the token as a bearer token: 200 gives the
    user's ``id`` and ``name``; 401/404 refuses the token; anything else (or
    no answer within ``timeout``) fails closed (``auth_unavailable``).
    Answers are cached (``cache_ttl``; refusals ``negative_ttl``)."""

    userinfo_url: str
    timeout: float = DEFAULT_LOOKUP_TIMEOUT
    cache_ttl: float = DEFAULT_TOKEN_CACHE_TTL
    negative_ttl: float = DEFAULT_NEGATIVE_TTL
    kind: ClassVar[str] = "upstream-api-token"


@dataclass(frozen=True, slots=True)
class JwtTokens:
    """Standard JWTs (three dot-separated parts), verified by PyJWT.

    Either ``secret`` (HMAC algorithms) or ``jwks_url`` (RS256/ES256 keys, by
    ``kid``; fetched again after ``jwks_ttl``, and at once — at most every
    ``jwks_min_refresh`` seconds — when a token names a ``kid`` the relay
    does not know: a key rotation is picked up without a restart).
    ``issuer``/``audience``, when set, must match ``iss``/``aud``; ``exp`` is
    required and enforced with ``clock_skew`` seconds of allowance.
    ``user_claim`` gives the user id, ``name_claim`` the display name (the
    id when absent)."""

    secret: str | None = field(default=None, repr=False)
    jwks_url: str | None = None
    algorithms: tuple[str, ...] = ("HS256",)
    issuer: str | None = None
    audience: str | None = None
    user_claim: str = "sub"
    name_claim: str = "name"
    clock_skew: float = DEFAULT_CLOCK_SKEW
    timeout: float = DEFAULT_LOOKUP_TIMEOUT
    jwks_ttl: float = DEFAULT_JWKS_TTL
    jwks_min_refresh: float = DEFAULT_JWKS_MIN_REFRESH
    kind: ClassVar[str] = "jwt"


IdentityProvider = UpstreamSessionTokens | UpstreamApiTokens | JwtTokens


@dataclass(frozen=True, slots=True)
class HttpPermissions:
    """The application's permission callback: ``POST url`` with the JSON
    ``{"userId": id or null, "documentId": id}``; the answer
    ``{"read": bool, "write": bool}`` (``read`` or ``write`` lets the peer
    in; 404 means the document does not exist). Cached ``ttl`` seconds;
    a failure (or no answer within ``timeout``) fails closed."""

    url: str
    timeout: float = DEFAULT_LOOKUP_TIMEOUT
    ttl: float = DEFAULT_PERMISSION_TTL
    kind: ClassVar[str] = "http"


@dataclass(frozen=True, slots=True)
class UpstreamDatabase:
    """Upstream's own access rules (``src/sync/permissions.ts``,
    ``src/lib/acl.ts``), read from its SQLite ``database`` opened read-only.
    Answers are cached ``ttl`` seconds: a revoked ACL entry takes effect
    within that."""

    database: str
    ttl: float = DEFAULT_PERMISSION_TTL
    kind: ClassVar[str] = "upstream-database"


PermissionProvider = HttpPermissions | UpstreamDatabase


def _check(
    table: Mapping[str, Any], allowed: tuple[str, ...], source: str | None, entry: str
) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}",
            path=source,
            entry=entry,
        )


def _str(table: Mapping[str, Any], key: str, source: str | None, entry: str) -> str | None:
    value = table.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{key!r} must be a non-empty string", path=source, entry=entry)
    return value


def load_identity(table: Mapping[str, Any], source: str | None, entry: str) -> IdentityProvider:
    """One ``[[identity]]`` table of the TOML file as a provider.

    Raises:
        ConfigError: an unknown type or key, a bad value, an unreadable
            secret, or a JWT provider without PyJWT installed.
    """
    kind = table.get("type")
    if kind == "upstream-session":
        _check(table, ("type", "secret_file", "secret_env", "clock_skew"), source, entry)
        secret = read_secret(
            _str(table, "secret_file", source, entry),
            _str(table, "secret_env", source, entry),
            what="upstream JWT_SECRET",
            source=source,
            entry=entry,
        )
        skew = _seconds(
            table.get("clock_skew", DEFAULT_CLOCK_SKEW), "clock_skew", source, entry, zero=True
        )
        return UpstreamSessionTokens(secret, skew)
    if kind == "upstream-api-token":
        _check(
            table, ("type", "userinfo_url", "timeout", "cache_ttl", "negative_ttl"), source, entry
        )
        return UpstreamApiTokens(
            _http_url(table.get("userinfo_url"), "userinfo_url", source, entry),
            _seconds(table.get("timeout", DEFAULT_LOOKUP_TIMEOUT), "timeout", source, entry),
            _seconds(table.get("cache_ttl", DEFAULT_TOKEN_CACHE_TTL), "cache_ttl", source, entry),
            _seconds(
                table.get("negative_ttl", DEFAULT_NEGATIVE_TTL), "negative_ttl", source, entry
            ),
        )
    if kind == "jwt":
        keys = (
            "type",
            "secret_file",
            "secret_env",
            "jwks_url",
            "algorithms",
            "issuer",
            "audience",
            "user_claim",
            "name_claim",
            "clock_skew",
            "timeout",
            "jwks_ttl",
            "jwks_min_refresh",
        )
        _check(table, keys, source, entry)
        has_secret = "secret_file" in table or "secret_env" in table
        jwks_url = table.get("jwks_url")
        if has_secret == (jwks_url is not None):
            raise ConfigError(
                "a jwt provider needs exactly one of a secret (secret_file or secret_env) "
                "or jwks_url",
                path=source,
                entry=entry,
            )
        jwt_secret: str | None = None
        if has_secret:
            jwt_secret = read_secret(
                _str(table, "secret_file", source, entry),
                _str(table, "secret_env", source, entry),
                what="JWT secret",
                source=source,
                entry=entry,
            )
        algorithms = table.get("algorithms", ["HS256"] if has_secret else ["RS256", "ES256"])
        if (
            not isinstance(algorithms, list)
            or not algorithms
            or not all(isinstance(a, str) and a in _JWT_ALGORITHMS for a in algorithms)
        ):
            raise ConfigError(
                f"'algorithms' must be a non-empty list of {', '.join(_JWT_ALGORITHMS)}",
                path=source,
                entry=entry,
            )
        hmac_only = all(a.startswith("HS") for a in algorithms)
        if has_secret != hmac_only:
            raise ConfigError(
                "HS* algorithms go with a secret, RS*/ES* ones with jwks_url",
                path=source,
                entry=entry,
            )
        provider = JwtTokens(
            secret=jwt_secret,
            jwks_url=None if jwks_url is None else _http_url(jwks_url, "jwks_url", source, entry),
            algorithms=tuple(algorithms),
            issuer=_str(table, "issuer", source, entry),
            audience=_str(table, "audience", source, entry),
            user_claim=_str(table, "user_claim", source, entry) or "sub",
            name_claim=_str(table, "name_claim", source, entry) or "name",
            clock_skew=_seconds(
                table.get("clock_skew", DEFAULT_CLOCK_SKEW), "clock_skew", source, entry, zero=True
            ),
            timeout=_seconds(
                table.get("timeout", DEFAULT_LOOKUP_TIMEOUT), "timeout", source, entry
            ),
            jwks_ttl=_seconds(table.get("jwks_ttl", DEFAULT_JWKS_TTL), "jwks_ttl", source, entry),
            jwks_min_refresh=_seconds(
                table.get("jwks_min_refresh", DEFAULT_JWKS_MIN_REFRESH),
                "jwks_min_refresh",
                source,
                entry,
                zero=True,
            ),
        )
        require_pyjwt(source)
        return provider
    raise ConfigError(
        f"unknown identity type {kind!r}; one of: upstream-session, upstream-api-token, jwt",
        path=source,
        entry=entry,
    )


def require_pyjwt(source: str | None) -> None:
    """Raise :class:`ConfigError` unless PyJWT (the ``jwt`` extra) is installed."""
    try:
        import jwt  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"a jwt identity provider needs PyJWT: {install_hint('jwt')}",
            path=source,
        ) from None


def load_permissions(table: Mapping[str, Any], source: str | None) -> PermissionProvider:
    """The ``[permissions]`` table of the TOML file as a provider.

    Raises:
        ConfigError: an unknown type or key, or a bad value.
    """
    entry = "permissions"
    kind = table.get("type")
    if kind == "http":
        _check(table, ("type", "url", "timeout", "ttl"), source, entry)
        return HttpPermissions(
            _http_url(table.get("url"), "url", source, entry),
            _seconds(table.get("timeout", DEFAULT_LOOKUP_TIMEOUT), "timeout", source, entry),
            _seconds(table.get("ttl", DEFAULT_PERMISSION_TTL), "ttl", source, entry),
        )
    if kind == "upstream-database":
        _check(table, ("type", "database", "ttl"), source, entry)
        database = _str(table, "database", source, entry)
        if database is None:
            raise ConfigError("missing required key 'database'", path=source, entry=entry)
        return UpstreamDatabase(
            database, _seconds(table.get("ttl", DEFAULT_PERMISSION_TTL), "ttl", source, entry)
        )
    raise ConfigError(
        f"unknown permissions type {kind!r}; one of: http, upstream-database",
        path=source,
        entry=entry,
    )
