"""ratatoskr-client: real-time presence and ephemeral messaging for Ratatoskr servers.

The public API::

    from ratatoskr_client import RatatoskrClient, Peer

    async with RatatoskrClient("http://localhost:4151") as client:
        client.on("presence-changed", lambda doc, ps: print(doc, [p.display_name for p in ps]))
        await client.enter_document("doc-123")
        await client.send_ephemeral("doc-123", {"cursor": [3, 4]})

Exceptions are in :mod:`ratatoskr_client.errors` (all re-exported here), the
client's options in :class:`ClientOptions`, event names and callback types in
:mod:`ratatoskr_client.events`, the wire format in
:mod:`ratatoskr_client.protocol`, and the reference relay in
:mod:`ratatoskr_client.server`. How the client is built: ``docs/architecture.md``.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from . import _aliases
from ._version import __version__
from .backoff import Backoff
from .core.membership import Peer
from .core.settings import ClientOptions
from .core.users import User
from .errors import (
    AuthError,
    CallbackError,
    ConfigError,
    ConnectError,
    ConnectionClosed,
    DisconnectedByAdmin,
    DocumentNotFound,
    LimitExceeded,
    OperationTimeout,
    PayloadError,
    PermissionDenied,
    PermissionRevoked,
    PresenceUnsupported,
    ProtocolError,
    RatatoskrError,
    RateLimited,
    ServerError,
    TokenExpired,
    TokenRefreshError,
    TransportError,
)
from .events import EventName

if _TYPE_CHECKING:
    from .asyncio.client import RatatoskrClient, sidecar_id
from .status import ClientStats, ConnectionState

__all__ = [
    "AuthError",
    "Backoff",
    "CallbackError",
    "ClientOptions",
    "ClientStats",
    "ConfigError",
    "ConnectError",
    "ConnectionClosed",
    "ConnectionState",
    "DisconnectedByAdmin",
    "DocumentNotFound",
    "EventName",
    "LimitExceeded",
    "OperationTimeout",
    "PayloadError",
    "Peer",
    "PermissionDenied",
    "PermissionRevoked",
    "PresenceUnsupported",
    "ProtocolError",
    "RatatoskrClient",
    "RatatoskrError",
    "RateLimited",
    "ServerError",
    "TokenExpired",
    "TokenRefreshError",
    "TransportError",
    "User",
    "__version__",
    "sidecar_id",
]

# The asyncio client is loaded on first use (``from ratatoskr_client import
# RatatoskrClient`` as usual), so that importing the sans-I/O layers
# (``ratatoskr_client.core``, ``.protocol``, ``.server.core``) does not load
# asyncio and aiohttp: their no-I/O promise holds for whoever imports them.
_LAZY = {"RatatoskrClient": "asyncio.client", "sidecar_id": "asyncio.client"}


def __getattr__(name: str) -> _Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


_aliases.install()
