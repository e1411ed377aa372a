"""The relay's rules, without I/O: frames and time in, frames out through an outbox.

:class:`RelayCore` (:mod:`.relay`) applies the wire contract to every
connection of one relay. It is composed of parts that each own their state:
authentication (:mod:`.auth`), documents, presence and relaying
(:mod:`.documents`), who is told about whom (:mod:`.visibility`) and the error
answers (:mod:`.replies`); beside them are the tables and values they use
(:mod:`.connection`, :mod:`.names`, :mod:`.counters`, :mod:`.limits`,
:mod:`.identity`), the relay's time (:mod:`.clock`) and its seam to the other
relays of a cluster (:mod:`.bus`). Nothing here imports asyncio or aiohttp:
the aiohttp layer is :mod:`ratatoskr_client.server.asyncio`.
"""

from typing import Any as _Any

from .clock import AdvancingClock, Clock, ManualClock
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
    SWEEP_MAX_INTERVAL,
    Bus,
    Connection,
    Outbox,
    RelayCore,
    RelayStats,
    RemoteSender,
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
    "SWEEP_MAX_INTERVAL",
    "AdvancingClock",
    "Bus",
    "Clock",
    "Connection",
    "ManualClock",
    "Outbox",
    "RelayCore",
    "RelayStats",
    "RemoteSender",
]


def __getattr__(name: str) -> _Any:
    # ``Session``, the former name of Connection: deprecated (see connection.py).
    if name == "Session":
        from . import connection

        return connection.__getattr__(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
