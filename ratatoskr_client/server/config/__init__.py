"""Relay configuration: users, documents and their ACLs, limits and timers.

Build a :class:`RelayConfig` in code, or load one from a TOML file with
:func:`load_config`. Validation happens when the config is built, so a bad file
fails at start with a :class:`~ratatoskr_client.errors.ConfigError` that names
the file, the entry and the problem. The file format is in ``docs/server.md``.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal, cast

from ...errors import ConfigError
from ...protocol.constants import (
    AUTH_TIMEOUT,
    EPHEMERAL_PREFIX,
    MAX_FRAME_SIZE,
    PRESENCE_TTL,
    RATE_LIMIT,
)
from .acl import (
    PUBLIC,
    Access,
    AclEntry,
    DocumentSpec,
    Permission,
    UserSpec,
    validate_acl,
)
from .addresses import (
    Network,
    database_of,
    in_networks,
    parse_listen_address,
    parse_networks,
    redact_url,
    validate_redis_url,
)
from .identity import (
    DEFAULT_REAUTH_GRACE,
    HttpPermissions,
    IdentityProvider,
    JwtTokens,
    PermissionProvider,
    UpstreamApiTokens,
    UpstreamDatabase,
    UpstreamSessionTokens,
    load_identity,
    load_permissions,
    require_pyjwt,
)

__all__ = [
    "DEFAULT_ANONYMOUS_CONNECTION_LIMIT",
    "DEFAULT_AUTH_FAILURE_LIMIT",
    "DEFAULT_AUTH_TIMEOUT",
    "DEFAULT_CONNECTION_LIMIT_EXEMPT",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_IDENTITY_SCOPE",
    "DEFAULT_MAX_DOCUMENTS_PER_PEER",
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_NODE_TTL",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_PORT",
    "DEFAULT_PRESENCE_TTL",
    "DEFAULT_RATE_LIMIT",
    "DEFAULT_RESUME_GRACE",
    "EPHEMERAL_PREFIX",
    "IDENTITY_SCOPES",
    "PUBLIC",
    "Access",
    "AclEntry",
    "DocumentSpec",
    "HttpPermissions",
    "IdentityProvider",
    "IdentityScope",
    "JwtTokens",
    "PermissionProvider",
    "RelayConfig",
    "UpstreamApiTokens",
    "UpstreamDatabase",
    "UpstreamSessionTokens",
    "UserSpec",
    "database_of",
    "load_config",
    "parse_listen_address",
    "read_secret_file",
    "redact_url",
]

#: Who receives a peer's identity (see ``RelayConfig.identity_scope``).
IdentityScope = Literal["document", "global"]

DEFAULT_PORT: Final = 4151
DEFAULT_PRESENCE_TTL: Final = PRESENCE_TTL
#: Seconds a peer whose connection dropped without a close frame stays
#: present, waiting to be resumed (0: no resume).
DEFAULT_RESUME_GRACE: Final = 15.0
DEFAULT_RATE_LIMIT: Final = RATE_LIMIT
DEFAULT_AUTH_TIMEOUT: Final = AUTH_TIMEOUT
DEFAULT_MAX_FRAME_SIZE: Final = MAX_FRAME_SIZE
DEFAULT_MAX_DOCUMENTS_PER_PEER: Final = 1000
DEFAULT_PING_INTERVAL: Final = 30.0
DEFAULT_HANDSHAKE_TIMEOUT: Final = 5.0
DEFAULT_AUTH_FAILURE_LIMIT: Final = 30
DEFAULT_NODE_TTL: Final = 10.0
#: Anonymous connections per minute per source address (as a burst).
DEFAULT_ANONYMOUS_CONNECTION_LIMIT: Final = 60
#: Source networks the connection limit does not apply to: the machine itself,
#: where test suites open thousands of connections and a same-host reverse
#: proxy gives every client one address.
DEFAULT_CONNECTION_LIMIT_EXEMPT: Final = ("127.0.0.0/8", "::1/128")
#: Who receives a peer's identity: the peers sharing a document with it
#: ("document"), or every connected peer ("global", the plan's broadcast).
DEFAULT_IDENTITY_SCOPE: Final[IdentityScope] = "document"
IDENTITY_SCOPES: Final = ("document", "global")
#: The shortest node TTL accepted: nodes heartbeat every TTL/5 seconds, and a
#: shorter TTL would declare a busy node dead for a garbage-collection pause.
MIN_NODE_TTL: Final = 1.0


@dataclass(frozen=True)
class RelayConfig:
    """Everything the relay needs to run. Immutable; derive variants with :meth:`with_`.

    Attributes:
        host, port: where to listen; port 0 picks a free port.
        users: token-authenticated users.
        documents: documents the relay knows, with their ACLs.
        open: open mode: every document not listed in ``documents`` exists and is
            readable by every peer. The CLI turns it on when no config file is given.
        presence_ttl: seconds without join/heartbeat after which a peer is removed
            from a document.
        resume_grace: seconds a peer whose connection was lost without a close
            frame stays present, with its peer id, name, documents and state,
            for the client to resume it (``auth`` with ``resume``); past it the
            peer leaves as usual. 0 turns resuming off.
        rate_limit: relayed ephemeral messages per minute per connection (the burst
            allowance is the same number).
        handshake_timeout: seconds a TCP connection may take to complete its
            HTTP request (the WebSocket upgrade); idle and trickling sockets are
            closed after it. Plain HTTP requests (``/health``) are answered and
            their connection closed.
        auth_timeout: seconds a socket may stay unauthenticated after the
            upgrade before it is closed.
        auth_failure_limit: failed auth attempts (bad or missing token) allowed
            per minute from one source address, as a burst; beyond it every
            auth attempt from that address is refused with ``rate_limited`` and
            a ``retryAfter`` until the allowance refills.
        max_frame_size: largest frame, in bytes, the relay processes; larger ones get
            an ``invalid_message`` error (up to 16 × this size, beyond which the
            WebSocket layer closes the socket with 1009).
        max_documents_per_peer: presence memberships one connection may hold.
        ping_interval: seconds without a complete frame after which the relay
            pings a socket; one from which no complete frame (a pong included)
            has arrived for 1.5 x this long is closed, whatever bytes trickle in.
        identity_scope: ``"document"`` (the default): a peer's identity goes
            only to the peers that share a document with it, just before the
            presence frame (or message) that needs it, and ``peer_disconnected``
            only to those; nobody learns who else is connected. ``"global"``:
            every identity to every connected peer, as the plan describes
            (a connect then costs a frame to everyone). See ``docs/server.md``.
        anonymous_connection_limit: anonymous connections allowed per minute
            from one source address, as a burst; beyond it an anonymous
            ``auth`` is refused with ``rate_limited`` and a ``retryAfter``, and
            the socket closed.
        connection_limit_exempt: source networks (CIDR strings) the
            anonymous connection limit does not apply to; loopback by default.
        server_presence: False makes the relay behave like today's upstream
            Ratatoskr server: ``auth_ok`` without ``features`` or names, no
            identity or presence frames, ephemeral messages relayed to the
            connections that sent ``request``/``sync`` for the document, ``eph:``
            ids ignored. For testing clients' peer-to-peer fallback.
        redis_url: join the relay cluster that shares this Redis server
            (``redis://HOST:PORT/DB``, ``rediss://`` or ``unix://``); needs
            the ``cluster`` extra. None: a single relay (see ``docs/cluster.md``).
        node_ttl: seconds after which the other relays of a cluster remove the
            peers of a relay that stopped heartbeating (at least 1).
        reuse_port: listen with ``SO_REUSEPORT``, so several relay processes
            can share one port (what ``ratatoskr relay --workers`` does).
        metrics_token: when set, ``GET /metrics`` needs the header
            ``Authorization: Bearer <token>`` (401 otherwise). Printable ASCII
            without spaces. Never shown in the config's ``repr``.
        admin_token: when set, the admin API (``/admin/api/...``) and the
            dashboard (``/admin/``) are served, and every API call needs the
            header ``Authorization: Bearer <token>`` (401 otherwise); None
            (the default): they do not exist (404). Printable ASCII without
            spaces. Never shown in the config's ``repr`` nor logged. In a TOML
            file, ``admin_token_file`` (a path, relative to the file) reads it
            from a file instead.
        webhook_url: when set, the relay POSTs signed batches of events
            (document occupied/vacated, user joined/left) to this ``http(s)``
            URL (see ``docs/server.md``, "Webhooks"); needs ``webhook_secret``.
        webhook_secret: the shared secret of the webhook signatures
            (HMAC-SHA256). Never shown in ``repr``. In a TOML file,
            ``webhook_secret_file`` reads it from a file.
        identity: identity providers tried in order after ``users``' tokens
            (:mod:`.identity`; ``[[identity]]`` tables in the TOML file).
        permissions: who may read which document, instead of ``documents``'
            ACLs: :class:`HttpPermissions` or :class:`UpstreamDatabase`
            (``[permissions]`` in the TOML file). None: ``documents``.
        reauth_grace: seconds a peer whose token expired (``token_expired``)
            has to send a new ``auth`` for the same user before it is closed.
        metrics_listen: ``"HOST:PORT"`` (``"[::1]:9464"`` for IPv6; port 0
            picks a free one): serve ``/metrics`` and ``/health`` on this second
            address, and not ``/metrics`` on the main one. None: ``/metrics``
            is served on the main address.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    users: tuple[UserSpec, ...] = ()
    documents: tuple[DocumentSpec, ...] = ()
    open: bool = False
    presence_ttl: float = DEFAULT_PRESENCE_TTL
    resume_grace: float = DEFAULT_RESUME_GRACE
    rate_limit: int = DEFAULT_RATE_LIMIT
    auth_timeout: float = DEFAULT_AUTH_TIMEOUT
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    auth_failure_limit: int = DEFAULT_AUTH_FAILURE_LIMIT
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    max_documents_per_peer: int = DEFAULT_MAX_DOCUMENTS_PER_PEER
    ping_interval: float = DEFAULT_PING_INTERVAL
    server_presence: bool = True
    identity_scope: IdentityScope = DEFAULT_IDENTITY_SCOPE
    anonymous_connection_limit: int = DEFAULT_ANONYMOUS_CONNECTION_LIMIT
    connection_limit_exempt: tuple[str, ...] = DEFAULT_CONNECTION_LIMIT_EXEMPT
    redis_url: str | None = None
    node_ttl: float = DEFAULT_NODE_TTL
    reuse_port: bool = False
    metrics_token: str | None = field(default=None, repr=False)
    metrics_listen: str | None = None
    admin_token: str | None = field(default=None, repr=False)
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    identity: tuple[IdentityProvider, ...] = ()
    permissions: PermissionProvider | None = None
    reauth_grace: float = DEFAULT_REAUTH_GRACE
    source: str | None = field(default=None, compare=False)
    _tokens: dict[str, UserSpec] = field(init=False, repr=False, compare=False)
    _readers: dict[str, frozenset[str]] = field(init=False, repr=False, compare=False)
    _exempt: tuple[Network, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Accept any iterable for users/documents but store tuples (hashable, frozen).
        object.__setattr__(self, "users", tuple(self.users))
        object.__setattr__(self, "documents", tuple(self.documents))
        if isinstance(self.connection_limit_exempt, list | tuple):
            object.__setattr__(self, "connection_limit_exempt", tuple(self.connection_limit_exempt))
        if isinstance(self.identity, list | tuple):
            object.__setattr__(self, "identity", tuple(self.identity))
        _validate(self)  # (the networks are parsed there: _exempt)
        tokens = {u.token: u for u in self.users}
        readers: dict[str, frozenset[str]] = {}
        for doc in self.documents:
            allowed = {e.principal for e in doc.acl}
            if doc.owner is not None:
                allowed.add(doc.owner)
            readers[doc.id] = frozenset(allowed)
        object.__setattr__(self, "_tokens", tokens)
        object.__setattr__(self, "_readers", readers)

    def with_(self, **changes: Any) -> RelayConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """``metrics_listen`` as (host, port), or None."""
        if self.metrics_listen is None:
            return None
        return parse_listen_address(self.metrics_listen)

    def user_for_token(self, token: str) -> UserSpec | None:
        """The user a token belongs to, or None."""
        return self._tokens.get(token)

    def connection_limited(self, address: str) -> bool:
        """True if the anonymous connection limit applies to ``address`` (a
        peer's IP address as text): it is an IP address outside
        ``connection_limit_exempt``. An address that is not one (a Unix
        socket's, or unknown) is not limited: it names no single client."""
        return in_networks(address, self._exempt) is False

    def access(self, user_id: str | None, document_id: str) -> Access:
        """May ``user_id`` (None for anonymous) read ``document_id``?"""
        if document_id.startswith(EPHEMERAL_PREFIX):
            return Access.ALLOWED
        readers = self._readers.get(document_id)
        if readers is None:
            return Access.ALLOWED if self.open else Access.NOT_FOUND
        if PUBLIC in readers or (user_id is not None and user_id in readers):
            return Access.ALLOWED
        return Access.DENIED


def _validate(cfg: RelayConfig) -> None:
    def positive(name: str, value: float, *, integer: bool = False) -> None:
        bad_type = not isinstance(value, int if integer else (int, float)) or isinstance(
            value, bool
        )
        if bad_type or not math.isfinite(value) or value <= 0:
            kind = "a positive integer" if integer else "a positive number"
            raise ConfigError(f"{name} must be {kind}, got {value!r}", path=cfg.source)

    positive("presence_ttl", cfg.presence_ttl)
    positive("rate_limit", cfg.rate_limit, integer=True)
    positive("auth_timeout", cfg.auth_timeout)
    positive("handshake_timeout", cfg.handshake_timeout)
    positive("auth_failure_limit", cfg.auth_failure_limit, integer=True)
    positive("max_frame_size", cfg.max_frame_size, integer=True)
    positive("max_documents_per_peer", cfg.max_documents_per_peer, integer=True)
    positive("ping_interval", cfg.ping_interval)
    grace = cfg.resume_grace
    if (
        not isinstance(grace, (int, float))
        or isinstance(grace, bool)
        or not math.isfinite(grace)
        or grace < 0
    ):
        raise ConfigError(f"resume_grace must be a number >= 0, got {grace!r}", path=cfg.source)
    positive("node_ttl", cfg.node_ttl)
    positive("anonymous_connection_limit", cfg.anonymous_connection_limit, integer=True)
    positive("reauth_grace", cfg.reauth_grace)
    _validate_providers(cfg)
    if cfg.identity_scope not in IDENTITY_SCOPES:
        raise ConfigError(
            f"identity_scope must be 'document' or 'global', got {cfg.identity_scope!r}",
            path=cfg.source,
        )
    exempt = cfg.connection_limit_exempt
    if not isinstance(exempt, tuple):
        raise ConfigError(
            f"connection_limit_exempt must be a list of networks, got {exempt!r}",
            path=cfg.source,
        )
    try:
        object.__setattr__(cfg, "_exempt", parse_networks(exempt))
    except ValueError as exc:
        raise ConfigError(f"connection_limit_exempt: {exc}", path=cfg.source) from exc
    if cfg.node_ttl < MIN_NODE_TTL:
        raise ConfigError(
            f"node_ttl must be at least {MIN_NODE_TTL:g} second, got {cfg.node_ttl!r}",
            path=cfg.source,
        )
    validate_redis_url(cfg.redis_url, cfg.source)
    _validate_metrics(cfg)
    if not isinstance(cfg.port, int) or not 0 <= cfg.port <= 65535:
        raise ConfigError(f"port must be an integer from 0 to 65535, got {cfg.port!r}")

    validate_acl(cfg.users, cfg.documents, cfg.source)


def _validate_providers(cfg: RelayConfig) -> None:
    kinds = (UpstreamSessionTokens, UpstreamApiTokens, JwtTokens)
    if not all(isinstance(p, kinds) for p in cfg.identity):
        raise ConfigError(
            "identity must be a sequence of UpstreamSessionTokens, UpstreamApiTokens or JwtTokens",
            path=cfg.source,
        )
    if any(isinstance(p, JwtTokens) for p in cfg.identity):
        require_pyjwt(cfg.source)
    if cfg.permissions is not None and not isinstance(
        cfg.permissions, HttpPermissions | UpstreamDatabase
    ):
        raise ConfigError(
            "permissions must be None, HttpPermissions or UpstreamDatabase", path=cfg.source
        )


def _validate_secret(cfg: RelayConfig, key: str) -> None:
    token = getattr(cfg, key)
    if token is not None and (
        not isinstance(token, str) or not token or not all("!" <= c <= "~" for c in token)
    ):
        # (the value itself is never shown: it is a secret)
        raise ConfigError(
            f"{key} must be a non-empty string of printable ASCII without spaces",
            path=cfg.source,
        )


def _validate_metrics(cfg: RelayConfig) -> None:
    for key in ("metrics_token", "admin_token", "webhook_secret"):
        _validate_secret(cfg, key)
    url = cfg.webhook_url
    if url is not None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(
                f"webhook_url must be an http:// or https:// URL, got {url!r}", path=cfg.source
            )
        if cfg.webhook_secret is None:
            raise ConfigError("webhook_url needs webhook_secret (the signing key)", path=cfg.source)
    listen = cfg.metrics_listen
    if listen is not None:
        if not isinstance(listen, str):
            raise ConfigError(f"metrics_listen must be a string, got {listen!r}", path=cfg.source)
        try:
            parse_listen_address(listen)
        except ValueError as exc:
            raise ConfigError(f"metrics_listen: {exc}", path=cfg.source) from exc


# --------------------------------------------------------------------------- TOML loading

_TOP_LEVEL_SETTINGS: Final[dict[str, type | tuple[type, ...]]] = {
    "open": bool,
    "server_presence": bool,
    "identity_scope": str,
    "anonymous_connection_limit": int,
    "connection_limit_exempt": list,
    "presence_ttl": (int, float),
    "resume_grace": (int, float),
    "rate_limit": int,
    "auth_timeout": (int, float),
    "handshake_timeout": (int, float),
    "auth_failure_limit": int,
    "max_frame_size": int,
    "max_documents_per_peer": int,
    "ping_interval": (int, float),
    "redis_url": str,
    "node_ttl": (int, float),
    "metrics_token": str,
    "metrics_listen": str,
    "admin_token": str,
    "webhook_url": str,
    "webhook_secret": str,
    "reauth_grace": (int, float),
}

#: Keys naming a file whose content (surrounding whitespace removed) is the
#: value of another key: secrets belong in files, not in a shared config.
_SECRET_FILES: Final = {"admin_token_file": "admin_token", "webhook_secret_file": "webhook_secret"}


def _table_list(raw: Mapping[str, Any], key: str, path: str) -> list[dict[str, Any]]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"'{key}' must be an array of tables ([[{key}]])", path=path)
    return value


def _check_keys(table: Mapping[str, Any], allowed: Iterable[str], path: str, entry: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}",
            path=path,
            entry=entry,
        )


def _field(table: Mapping[str, Any], key: str, path: str, entry: str, *, required: bool) -> Any:
    if key not in table:
        if required:
            raise ConfigError(f"missing required key {key!r}", path=path, entry=entry)
        return None
    value = table[key]
    if not isinstance(value, str):
        raise ConfigError(
            f"{key!r} must be a string, got {type(value).__name__}", path=path, entry=entry
        )
    return value


def read_secret_file(value: object, base: Path, key: str, where: str | None = None) -> str:
    """The secret in the file ``value`` (relative to ``base``), whitespace
    around it removed.

    Raises:
        ConfigError: ``value`` is not a string, or the file cannot be read.
    """
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key!r} must be a file path", path=where)
    file = base / value
    try:
        return file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(f"{key}: cannot read {str(file)!r}: {reason}", path=where) from exc


def load_config(path: str | Path, **overrides: Any) -> RelayConfig:
    """Load and validate a relay config from a TOML file.

    ``overrides`` (for example ``port=0`` or ``presence_ttl=5``) take precedence
    over the file, the way CLI flags do.

    Raises:
        ConfigError: the file cannot be read, is not UTF-8 text, is not TOML, or
            describes an invalid config. The message names the file, the entry and the problem.
    """
    where = str(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror or exc}", path=where) from exc
    try:
        # Decoded here, not by tomllib, so a non-UTF-8 file is a ConfigError too.
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise ConfigError(
            f"not UTF-8 text (TOML files must be UTF-8): byte 0x{data[exc.start]:02x} "
            f"at line {line}, column {column}",
            path=where,
        ) from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=where) from exc

    _check_keys(
        raw,
        ["users", "documents", "identity", "permissions", *_TOP_LEVEL_SETTINGS, *_SECRET_FILES],
        where,
        "top level",
    )
    settings: dict[str, Any] = {}
    for file_key, key in _SECRET_FILES.items():
        if file_key not in raw:
            continue
        if key in raw:
            raise ConfigError(f"give {key!r} or {file_key!r}, not both", path=where)
        settings[key] = read_secret_file(raw[file_key], Path(where).parent, file_key, where)
    for key, kind in _TOP_LEVEL_SETTINGS.items():
        if key in raw:
            value = raw[key]
            if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                raise ConfigError(
                    f"{key!r} has the wrong type ({type(value).__name__})",
                    path=where,
                    entry="top level",
                )
            settings[key] = value

    users = []
    for i, table in enumerate(_table_list(raw, "users", where)):
        entry = f"users[{i}]"
        _check_keys(table, ["token", "id", "name"], where, entry)
        uid = _field(table, "id", where, entry, required=True)
        entry = f"users[{i}] (id {uid!r})"
        token = _field(table, "token", where, entry, required=True)
        name = _field(table, "name", where, entry, required=False)
        if name is None:
            name = uid  # the display name defaults to the id
        users.append(UserSpec(token=token, id=uid, name=name))

    documents = []
    for i, table in enumerate(_table_list(raw, "documents", where)):
        entry = f"documents[{i}]"
        _check_keys(table, ["id", "owner", "acl"], where, entry)
        doc_id = _field(table, "id", where, entry, required=True)
        entry = f"documents[{i}] (id {doc_id!r})"
        owner = _field(table, "owner", where, entry, required=False)
        acl_raw = table.get("acl", [])
        if not isinstance(acl_raw, list):
            raise ConfigError("'acl' must be an array of tables", path=where, entry=entry)
        acl = []
        for j, item in enumerate(acl_raw):
            sub = f"{entry}.acl[{j}]"
            if not isinstance(item, dict):
                raise ConfigError(
                    'must be a table like { principal = "bob", permission = "read" }',
                    path=where,
                    entry=sub,
                )
            _check_keys(item, ["principal", "permission"], where, sub)
            principal = _field(item, "principal", where, sub, required=True)
            permission = _field(item, "permission", where, sub, required=False) or "read"
            # _validate() rejects anything but "read"/"write" with a clear message.
            acl.append(AclEntry(principal, cast(Permission, permission)))
        documents.append(DocumentSpec(id=doc_id, owner=owner, acl=tuple(acl)))

    settings["identity"] = tuple(
        load_identity(table, where, f"identity[{i}]")
        for i, table in enumerate(_table_list(raw, "identity", where))
    )
    if "permissions" in raw:
        table = raw["permissions"]
        if not isinstance(table, dict):
            raise ConfigError("'permissions' must be a table ([permissions])", path=where)
        settings["permissions"] = load_permissions(table, where)
    settings.update(overrides)
    return RelayConfig(users=tuple(users), documents=tuple(documents), source=where, **settings)
