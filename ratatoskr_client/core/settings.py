"""Every option a client takes, declared once: :class:`ClientOptions`, :class:`Settings`. No I/O.

:class:`ClientOptions` is what the application passes, as keyword arguments,
to :class:`~ratatoskr_client.RatatoskrClient`, to the blocking
:class:`ratatoskr_client.sync.RatatoskrClient` and through
``RatatoskrUser.client_options``: each key with its type, its meaning and its
default. :class:`Settings` holds the defaults (the one place they are) and
checks the values once; the core and the driver read it.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias, TypedDict
from urllib.parse import urlsplit, urlunsplit

from ..backoff import DEFAULT_BACKOFF, Backoff
from ..protocol.constants import (
    MAX_FRAME_SIZE,
    MAX_IDENTITIES,
    MAX_INCOMING_FRAME_SIZE,
    MAX_PRESENCE_PEERS,
    PRESENCE_HEARTBEAT_INTERVAL,
    RATE_LIMIT,
    STATE_HEARTBEAT,
    STATE_INTERVAL,
    STATE_TTL,
)

__all__ = [
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_REQUEST_TIMEOUT",
    "ENVELOPE_OVERHEAD",
    "OPTION_NAMES",
    "ClientOptions",
    "Settings",
    "TokenSource",
    "socket_url",
]

DEFAULT_PING_INTERVAL: Final = 20.0
DEFAULT_REQUEST_TIMEOUT: Final = 10.0
#: Envelope bytes around an ephemeral payload (ids, counters, keys): a generous bound.
ENVELOPE_OVERHEAD: Final = 512


def socket_url(url: str) -> str:
    """The WebSocket URL for a server URL: ``http(s)://`` becomes ``ws(s)://``
    and ``/sync`` is appended unless the path already ends with it.

    Raises:
        ValueError: not an http(s):// or ws(s):// URL with a host.
    """
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        # The usual slip is a bare host:port; say what would have worked.
        hint = f" (did you mean 'http://{url}'?)" if url and "://" not in url else ""
        raise ValueError(f"expected an http(s):// or ws(s):// URL, got {url!r}{hint}")
    path = parts.path.rstrip("/")
    if not path.endswith("/sync"):
        path += "/sync"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def _seconds(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value}")


TokenSource: TypeAlias = str | Callable[[], str] | Callable[[], Awaitable[str]] | None
"""What ``token=`` takes: a token, a callable (plain or ``async``) returning
one, or None (anonymous)."""


class ClientOptions(TypedDict, total=False):
    """The options of a client, passed as keyword arguments: every one may be
    left out, and then has the default given here.

    The same for the asyncio :class:`~ratatoskr_client.RatatoskrClient`, the
    blocking :class:`ratatoskr_client.sync.RatatoskrClient` and a Locust
    ``RatatoskrUser``'s ``client_options``. Under ``mypy --strict`` an
    unknown option or a value of the wrong type is an error; at run time an
    unknown option raises ``TypeError`` and a value out of range
    ``ValueError``. To pass options around, annotate the dict::

        options: ClientOptions = {"heartbeat_interval": 10, "reconnect": False}
        client = RatatoskrClient(url, **options)
    """

    token: TokenSource
    """The user's token; None connects anonymously. Or a callable returning
    one, plain or ``async`` (a blocking one runs in a worker thread): called
    before every connect, and ahead of the token's expiry when the client can
    read it (upstream session tokens, JWTs) and the server renews tokens in
    the connection (``docs/guide.md``, "Tokens that expire"). Default: ``None``."""

    heartbeat_interval: float
    """Seconds between presence heartbeats for each entered document (the
    relay's presence TTL is 90 s by default). Default: ``30.0``."""

    reconnect: bool
    """Reconnect after a lost connection (never after ``close()`` or refused
    credentials). Default: ``True``."""

    backoff: Backoff
    """The reconnect schedule: full jitter over windows of 0.25 s doubling to
    5 s, retrying forever. Default: ``Backoff()``."""

    rate_limit: int | None
    """Ephemeral messages per minute this client allows itself (keep it at or
    below the server's limit); ``send_ephemeral`` waits for a token. None
    disables this pacing (an anonymous client on a server without
    ``features`` still paces to that server's fixed window: ``docs/guide.md``,
    "Pacing"). Default: ``600``."""

    rate_burst: int | None
    """How many messages may go out at once; None: a tenth of a minute's
    worth, ``rate_limit // 6`` and at least 1 (100 by default), kept below the
    server's burst so that network jitter can never trip its limit.
    Default: ``None``."""

    request_timeout: float
    """Seconds ``enter_document`` waits for the server's confirmation unless
    given a ``timeout``. Default: ``10.0``."""

    connect_timeout: float
    """Seconds for opening the socket, and again for authenticating.
    Default: ``10.0``."""

    ping_interval: float | None
    """Seconds without a whole frame from the server after which a WebSocket
    ping is sent; after 1.5 × that without one (a pong is one) the connection
    is declared dead and reconnected. Bytes that do not complete a frame do
    not count, so a server trickling a frame cannot keep a connection alive.
    None disables it (a dead server is then only noticed by TCP).
    Default: ``20.0``."""

    max_frame_size: int
    """The largest frame this client sends, in bytes (the relay's default
    limit, 64 KiB); a larger payload raises ``PayloadError``.
    Default: ``65536``."""

    max_incoming_frame_size: int
    """The largest frame this client reads, in bytes (1 MiB, the relay's own
    hard limit). A larger one is refused from its header, never buffered: an
    ``error`` event (``ProtocolError``), then ``disconnected`` (code 1009) and
    the reconnect policy. Default: ``1048576``."""

    name: str | None
    """The name this client chooses for itself: the ``"name"`` in the state it
    shares (what automerge-repo ``Presence`` apps show), ``me.chosen_name``,
    and, on a server that gives no names (upstream), ``me.name`` too. The
    server's name for us (an account's name, an "Adjective Animal") stays
    ``me.name`` where there is one. Default: ``None``."""

    state_interval: float
    """At most one state update per document is sent per this many seconds;
    faster ``set_state`` calls are coalesced (the latest value wins).
    Default: ``0.05``."""

    state_heartbeat: float
    """Seconds of quiet after which a state heartbeat is sent for each
    document this client shares state in (automerge-repo's 15 s).
    Default: ``15.0``."""

    state_ttl: float
    """A peer whose state messages stop for this many seconds is forgotten
    (automerge-repo's 45 s); in peer-to-peer mode it also leaves presence.
    Default: ``45.0``."""

    resume: bool
    """After a connection lost without ``close()``, reconnect as the same peer
    (same peer id, name, documents and state; the others see no leave and no
    join) when the server offers it (feature ``"resume"``: our relay, within
    its ``resume_grace``). Elsewhere (upstream) a reconnection is a new peer,
    as without it. Default: ``True``."""


#: The names of the options (the keys of :class:`ClientOptions`).
OPTION_NAMES: Final = frozenset(ClientOptions.__optional_keys__)


@dataclass(frozen=True, slots=True)
class Settings:
    """The client's options, checked, with their defaults (the meaning of each
    is in :class:`ClientOptions`).

    Raises:
        ValueError: an option is out of range (checked when built).
    """

    url: str
    token: TokenSource = None
    heartbeat_interval: float = PRESENCE_HEARTBEAT_INTERVAL
    reconnect: bool = True
    backoff: Backoff = DEFAULT_BACKOFF
    rate_limit: int | None = RATE_LIMIT
    rate_burst: int | None = None
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    connect_timeout: float = DEFAULT_REQUEST_TIMEOUT
    ping_interval: float | None = DEFAULT_PING_INTERVAL
    max_frame_size: int = MAX_FRAME_SIZE
    max_incoming_frame_size: int = MAX_INCOMING_FRAME_SIZE
    name: str | None = None
    state_interval: float = STATE_INTERVAL
    state_heartbeat: float = STATE_HEARTBEAT
    state_ttl: float = STATE_TTL
    resume: bool = True
    # Not options of RatatoskrClient: the protocol's bounds (protocol/constants.py),
    # here so that the core's unit tests can make them small.
    max_presence_peers: int = MAX_PRESENCE_PEERS
    max_identities: int = MAX_IDENTITIES
    #: every relay URL the client may use, ``url`` first (see :meth:`from_options`)
    urls: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.urls:
            object.__setattr__(self, "urls", (self.url,))
        elif self.urls[0] != self.url:
            raise ValueError(f"urls must start with url ({self.url!r}), got {self.urls!r}")
        _seconds("heartbeat_interval", self.heartbeat_interval)
        _seconds("request_timeout", self.request_timeout)
        _seconds("connect_timeout", self.connect_timeout)
        if self.ping_interval is not None:
            _seconds("ping_interval", self.ping_interval)
        if self.rate_limit is not None and self.rate_limit < 1:
            raise ValueError(f"rate_limit must be >= 1 or None, got {self.rate_limit}")
        if self.rate_burst is not None and self.rate_burst < 1:
            raise ValueError(f"rate_burst must be >= 1 or None, got {self.rate_burst}")
        _seconds("state_heartbeat", self.state_heartbeat)
        _seconds("state_ttl", self.state_ttl)
        if not (math.isfinite(self.state_interval) and self.state_interval >= 0):
            raise ValueError(f"state_interval must be >= 0, got {self.state_interval}")
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise ValueError(f"name must be a non-empty string or None, got {self.name!r}")
        if self.max_frame_size <= ENVELOPE_OVERHEAD:
            raise ValueError(
                f"max_frame_size must be > {ENVELOPE_OVERHEAD}, got {self.max_frame_size}"
            )
        incoming = self.max_incoming_frame_size
        if type(incoming) is not int or incoming <= ENVELOPE_OVERHEAD:
            raise ValueError(
                f"max_incoming_frame_size must be an integer > {ENVELOPE_OVERHEAD},"
                f" got {incoming!r}"
            )
        if self.max_presence_peers < 1 or self.max_identities < 1:
            raise ValueError("max_presence_peers and max_identities must be >= 1")
        for url in self.urls:
            socket_url(url)  # raises ValueError for a bad URL
        if self.token is not None and not isinstance(self.token, str) and not callable(self.token):
            raise ValueError(
                f"token must be a string, a callable returning one, or None; got {self.token!r}"
            )

    @classmethod
    def from_options(cls, url: str | Sequence[str], options: Mapping[str, object]) -> Settings:
        """The settings for a client of ``url`` given ``options`` (the keyword
        arguments of :class:`ClientOptions`). ``url`` may be a sequence of
        the URLs of relays of one cluster: the client connects to the first
        and, after each lost connection or failed attempt, tries the next in
        turn (a peer resumes on any relay of its cluster).

        Raises:
            TypeError: an option that does not exist.
            ValueError: an option out of range, not a server URL, or no URL.
        """
        unknown = sorted(set(options) - OPTION_NAMES)
        if unknown:
            names = ", ".join(repr(name) for name in unknown)
            raise TypeError(f"unexpected client option{'s' * (len(unknown) > 1)} {names}")
        if isinstance(url, str):
            return cls(url, **options)  # type: ignore[arg-type]
        urls = tuple(url)
        if not urls or not all(isinstance(u, str) for u in urls):
            raise ValueError(f"url must be a URL or a non-empty sequence of URLs, got {url!r}")
        return cls(urls[0], **options, urls=urls)  # type: ignore[arg-type]

    @property
    def burst(self) -> int:
        """The pacing burst: ``rate_burst``, or a tenth of a minute's worth."""
        return self.rate_burst or max(1, (self.rate_limit or 0) // 6)
