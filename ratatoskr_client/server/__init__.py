"""The reference relay: the server side of Ratatoskr's ephemeral-messaging plan.

Run it with ``ratatoskr relay`` (see ``docs/server.md``), or in-process::

    from ratatoskr_client.server import RelayConfig, RelayServer

    async with RelayServer(RelayConfig(port=0, open=True)) as relay:
        ...  # connect clients to relay.url

The rules live in :class:`RelayCore` (no I/O); :class:`RelayServer` and
:func:`create_app` put it on aiohttp. With ``redis_url`` a relay joins a
cluster of relays that behave as one (:mod:`.cluster`, ``docs/cluster.md``).
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from .config import (
    DEFAULT_ANONYMOUS_CONNECTION_LIMIT,
    DEFAULT_AUTH_FAILURE_LIMIT,
    DEFAULT_AUTH_TIMEOUT,
    DEFAULT_CONNECTION_LIMIT_EXEMPT,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_IDENTITY_SCOPE,
    DEFAULT_MAX_DOCUMENTS_PER_PEER,
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_NODE_TTL,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PORT,
    DEFAULT_PRESENCE_TTL,
    DEFAULT_RATE_LIMIT,
    PUBLIC,
    Access,
    AclEntry,
    DocumentSpec,
    RelayConfig,
    UserSpec,
    load_config,
)
from .core.clock import ManualClock
from .core.relay import RelayCore, RelayStats

if _TYPE_CHECKING:
    from .asyncio.app import create_app
    from .asyncio.runner import RelayServer

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
    "PUBLIC",
    "Access",
    "AclEntry",
    "DocumentSpec",
    "ManualClock",
    "RelayConfig",
    "RelayCore",
    "RelayServer",
    "RelayStats",
    "UserSpec",
    "create_app",
    "load_config",
]

# The aiohttp layer is loaded on first use, so that importing the relay's rules
# (``ratatoskr_client.server.core``, ``.config``) does not load aiohttp.
_LAZY = {"RelayServer": "asyncio.runner", "create_app": "asyncio.app"}


def __getattr__(name: str) -> _Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
