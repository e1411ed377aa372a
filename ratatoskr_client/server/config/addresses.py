"""Addresses and URLs in the relay's configuration: parsed, checked, redacted. No I/O."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final, TypeAlias
from urllib.parse import parse_qs, urlsplit

from ...errors import ConfigError

__all__ = [
    "Network",
    "database_of",
    "in_networks",
    "parse_listen_address",
    "parse_networks",
    "redact_url",
    "validate_redis_url",
]

#: An IP network (``10.0.0.0/8``; a single address is a network of one).
Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

_REDIS_SCHEMES: Final = ("redis", "rediss", "unix")


def parse_listen_address(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (or ``"[IPv6]:PORT"``) as (host, port).

    Raises:
        ValueError: not of that form, or the port is not 0-65535.
    """
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port must be 0-65535, got {port}")
    return host, port


def parse_networks(values: Iterable[object]) -> tuple[Network, ...]:
    """Networks written as ``"10.0.0.0/8"`` or single addresses (host bits
    set are allowed: ``"10.1.2.3/8"`` is ``10.0.0.0/8``).

    Raises:
        ValueError: one is not such a string; the message names it.
    """
    networks = []
    for value in values:
        try:
            if not isinstance(value, str):
                raise ValueError("not a string")
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError as exc:
            raise ValueError(
                f"{value!r} is not a network like '10.0.0.0/8' or an address ({exc})"
            ) from exc
    return tuple(networks)


def in_networks(address: str, networks: Iterable[Network]) -> bool | None:
    """Is ``address`` (a peer's IP address as text; an IPv4-mapped IPv6
    address counts as its IPv4 one) in one of ``networks``? None when it is
    not an IP address (a Unix socket's, or unknown)."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


def database_of(url: str) -> int:
    """The Redis database number a URL selects (``/N`` or ``?db=N``; default 0).

    Raises:
        ValueError: the URL names a database that is not a number.
    """
    parts = urlsplit(url)
    db = parse_qs(parts.query).get("db")
    if db:
        return int(db[0])
    path = parts.path.strip("/")
    if parts.scheme != "unix" and path:
        return int(path)
    return 0


def redact_url(url: str) -> str:
    """``url`` without its password (``redis://user:***@host``), for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def validate_redis_url(url: object, source: str | None) -> None:
    """Check ``redis_url`` (None: no cluster), naming ``source`` (the config
    file) in the error.

    Raises:
        ConfigError: not a Redis URL; the message never shows its password.
    """
    if url is None:
        return
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"redis_url must be a non-empty string, got {url!r}", path=source)
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"redis_url {shown!r} is not a valid URL: {exc}", path=source) from exc
    if parts.scheme not in _REDIS_SCHEMES:
        raise ConfigError(
            "redis_url must start with redis://, rediss:// or unix:// "
            f"(like redis://HOST:PORT/DB), got {shown!r}",
            path=source,
        )
    # What follows names the part that is wrong, not Python's "invalid literal
    # for int() with base 10".
    try:
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        raise ConfigError(
            f"redis_url {shown!r}: the port is not a number from 0 to 65535", path=source
        ) from None
    try:
        database_of(url)
    except ValueError:
        raise ConfigError(
            f"redis_url {shown!r}: the database (/DB or ?db=) is not a number", path=source
        ) from None
    if parts.scheme == "unix" and not parts.path:
        raise ConfigError(f"redis_url {shown!r} names no socket path", path=source)
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"redis_url {shown!r} names no host", path=source)
