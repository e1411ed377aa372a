"""The reference relay: the server side of Ratatoskr's ephemeral-messaging plan.

Run it with ``ratatoskr relay`` (see ``docs/server.md``), or in-process::

    from ratatoskr_client.server import RelayConfig, RelayServer

    async with RelayServer(RelayConfig(port=0, open=True)) as relay:
        ...  # connect clients to relay.url

The rules live in :class:`RelayCore` (no I/O); :class:`RelayServer` and
:func:`create_app` put it on aiohttp. With ``redis_url`` a relay joins a
cluster of relays that behave as one (:mod:`.cluster`, ``docs/cluster.md``).
"""

from .app import create_app
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
from .core import RelayCore, RelayStats
from .runner import RelayServer

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
    "RelayConfig",
    "RelayCore",
    "RelayServer",
    "RelayStats",
    "UserSpec",
    "create_app",
    "load_config",
]
