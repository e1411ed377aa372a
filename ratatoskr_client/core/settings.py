"""Every option a client takes, checked once: :class:`Settings`. No I/O.

:class:`~ratatoskr_client.RatatoskrClient` builds one from its keyword
arguments (its docstring documents each); the core and the driver read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final
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
    "Settings",
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
        raise ValueError(f"expected an http(s):// or ws(s):// URL, got {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/sync"):
        path += "/sync"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def _seconds(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value}")


@dataclass(frozen=True, slots=True)
class Settings:
    """The client's options (see :class:`~ratatoskr_client.RatatoskrClient`).

    Raises:
        ValueError: an option is out of range (checked when built).
    """

    url: str
    token: str | None = None
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
    # Not options of RatatoskrClient: the protocol's bounds (protocol/constants.py),
    # here so that the core's unit tests can make them small.
    max_presence_peers: int = MAX_PRESENCE_PEERS
    max_identities: int = MAX_IDENTITIES

    def __post_init__(self) -> None:
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
        socket_url(self.url)  # raises ValueError for a bad URL

    @property
    def burst(self) -> int:
        """The pacing burst: ``rate_burst``, or a tenth of a minute's worth."""
        return self.rate_burst or max(1, (self.rate_limit or 0) // 6)
