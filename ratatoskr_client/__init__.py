"""ratatoskr-client: real-time presence and ephemeral messaging for Ratatoskr servers.

The public API::

    from ratatoskr_client import RatatoskrClient, Peer

    async with RatatoskrClient("http://localhost:4151") as client:
        client.on("presence-changed", lambda doc, peers: print(doc, [p.name for p in peers]))
        await client.enter_document("doc-123")
        await client.send_ephemeral("doc-123", {"cursor": [3, 4]})

Exceptions are in :mod:`ratatoskr_client.errors` (all re-exported here), event
names and callback types in :mod:`ratatoskr_client.events`, the wire format in
:mod:`ratatoskr_client.protocol`, and the reference relay in
:mod:`ratatoskr_client.server`. How the client is built: ``docs/architecture.md``.
"""

from ._version import __version__
from .backoff import Backoff
from .client import RatatoskrClient, sidecar_id
from .errors import (
    AuthError,
    CallbackError,
    ConfigError,
    ConnectError,
    ConnectionClosed,
    DocumentNotFound,
    LimitExceeded,
    OperationTimeout,
    PayloadError,
    PermissionDenied,
    PresenceUnsupported,
    ProtocolError,
    RatatoskrError,
    RateLimited,
    ServerError,
    TransportError,
)
from .events import EventName
from .membership import Peer
from .status import ClientStats, ConnectionState

__all__ = [
    "AuthError",
    "Backoff",
    "CallbackError",
    "ClientStats",
    "ConfigError",
    "ConnectError",
    "ConnectionClosed",
    "ConnectionState",
    "DocumentNotFound",
    "EventName",
    "LimitExceeded",
    "OperationTimeout",
    "PayloadError",
    "Peer",
    "PermissionDenied",
    "PresenceUnsupported",
    "ProtocolError",
    "RatatoskrClient",
    "RatatoskrError",
    "RateLimited",
    "ServerError",
    "TransportError",
    "__version__",
    "sidecar_id",
]
