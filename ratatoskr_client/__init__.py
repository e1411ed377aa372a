"""ratatoskr-client: real-time presence and ephemeral messaging for Ratatoskr servers.

The public API::

    from ratatoskr_client import RatatoskrClient, Peer

    async with RatatoskrClient("http://localhost:4151") as client:
        client.on("presence-changed", lambda doc, peers: print(doc, [p.name for p in peers]))
        await client.enter_document("doc-123")
        await client.send_ephemeral("doc-123", {"cursor": [3, 4]})

Exceptions are in :mod:`ratatoskr_client.errors` (all re-exported here), the wire
format in :mod:`ratatoskr_client.protocol`, and the reference relay in
:mod:`ratatoskr_client.server`.
"""

from ._version import __version__
from .backoff import Backoff
from .client import ConnectionState, EventName, RatatoskrClient, sidecar_id
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
from .presence import Peer

__all__ = [
    "AuthError",
    "Backoff",
    "CallbackError",
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
