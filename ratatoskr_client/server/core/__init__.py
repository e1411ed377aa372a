"""The relay's rules, as a state machine without I/O: frames in, frames out through an outbox.

:class:`RelayCore` (:mod:`.relay`) applies the wire contract to every
connection of one relay; its parts are the rules of authentication
(:mod:`.auth`), of documents and relaying (:mod:`.documents`), of who sees
whose identity (:mod:`.visibility`), and the tables they keep
(:mod:`.connection`, :mod:`.names`, :mod:`.counters`, :mod:`.limits`,
:mod:`.identity`); :mod:`.bus` is its seam to the other relays of a cluster.
Nothing here imports asyncio or aiohttp: the aiohttp layer is
:mod:`ratatoskr_client.server.asyncio`.
"""

from .relay import (
    MAX_AUTH_FAILURE_ADDRESSES,
    MAX_CONNECTION_ADDRESSES,
    MAX_SESSION_TOMBSTONES,
    MAX_SESSIONS_PER_CONNECTION,
    PRESENCE_BURST,
    PRESENCE_DOC_BURST,
    PRESENCE_DOC_RATE,
    PRESENCE_HOLD,
    PRESENCE_RATE,
    PRESENCE_WINDOW,
    SESSION_TOMBSTONE_TTL,
    Bus,
    Connection,
    Outbox,
    RelayCore,
    RelayStats,
    RemoteSender,
    Session,
)

__all__ = [
    "MAX_AUTH_FAILURE_ADDRESSES",
    "MAX_CONNECTION_ADDRESSES",
    "MAX_SESSIONS_PER_CONNECTION",
    "MAX_SESSION_TOMBSTONES",
    "PRESENCE_BURST",
    "PRESENCE_DOC_BURST",
    "PRESENCE_DOC_RATE",
    "PRESENCE_HOLD",
    "PRESENCE_RATE",
    "PRESENCE_WINDOW",
    "SESSION_TOMBSTONE_TTL",
    "Bus",
    "Connection",
    "Outbox",
    "RelayCore",
    "RelayStats",
    "RemoteSender",
    "Session",
]
