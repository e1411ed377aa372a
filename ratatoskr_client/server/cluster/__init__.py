"""A relay cluster on Redis: relay processes on one machine or many behave as one.

Every relay started with the same Redis URL serves the same documents; a
client may connect to any of them. See ``docs/cluster.md``. The pieces:

* :mod:`.wire` — channel and key names, and the message format (pure);
* :mod:`.registry` — node liveness and link timers (pure, time as an argument);
* :mod:`.view` — the core's bus (pure), in two parts: :mod:`.remote`, the
  peers on the other relays and their presence in our documents, and
  :mod:`.publisher`, what this relay tells the others (its outbound queue);
  :mod:`.tables` holds their plain records;
* :mod:`.redis_link` — the Redis I/O (``redis.asyncio``), with reconnection;
  :mod:`.reads` — the commands that read the others' state.

:class:`Cluster` puts them together for one relay. Only :mod:`.redis_link`
and :mod:`.reads` import ``redis``, which comes with the ``cluster`` extra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

from ..._version import install_hint
from ...errors import ConfigError
from ..config import RelayConfig
from ..core.relay import RelayCore
from .registry import Timing
from .view import ClusterStats, ClusterView
from .wire import Names, is_node_id, new_node_id

if TYPE_CHECKING:
    from .redis_link import RedisLink

__all__ = [
    "JOIN_TIMEOUT",
    "MISSING_EXTRA",
    "Cluster",
    "ClusterStats",
    "ClusterView",
    "require_redis",
]

#: Seconds :class:`~ratatoskr_client.server.RelayServer` waits, before it
#: listens, for its cluster link (so its first clients see the whole cluster).
JOIN_TIMEOUT: Final = 2.0

#: What to do when the ``redis`` package is missing.
MISSING_EXTRA: Final = f"the relay cluster needs the redis package: {install_hint('cluster')}"


def require_redis() -> None:
    """Raise :class:`ConfigError` (one line saying what to install) if
    ``redis.asyncio`` cannot be imported."""
    try:
        importlib.import_module("redis.asyncio")
    except ImportError as exc:
        raise ConfigError(MISSING_EXTRA) from exc


class Cluster:
    """One relay's membership in a cluster: its view and its Redis link.

    The node id is the hex part of the core's server peer id (``relay-<id>``,
    what clients see in ``auth_ok``), so logs, metrics and clients agree on
    which relay is which.

    Raises:
        ConfigError: ``config.redis_url`` is not set, or the ``redis`` package
            is missing.
    """

    def __init__(self, core: RelayCore, config: RelayConfig) -> None:
        if config.redis_url is None:
            raise ConfigError("a cluster needs redis_url")
        require_redis()
        from .redis_link import RedisLink

        suffix = core.server_peer_id.removeprefix("relay-")
        self.node_id = suffix if is_node_id(suffix) else new_node_id()
        self.view = ClusterView(core, self.node_id, Names.for_url(config.redis_url))
        self.link: RedisLink = RedisLink(self.view, config.redis_url, Timing(config.node_ttl))

    @property
    def redis_up(self) -> bool:
        """True while the Redis link is up and synchronised."""
        return self.link.up

    def start(self) -> None:
        """Start the Redis link (in the running event loop)."""
        self.link.start()

    async def wait_up(self, timeout: float = JOIN_TIMEOUT) -> bool:
        """Wait until the link is up and synchronised (True), or ``timeout``
        seconds (False: Redis is unreachable; the link keeps trying)."""
        return await self.link.wait_up(timeout)

    async def stop(self) -> None:
        """Say goodbye to the other relays and close the link."""
        await self.link.stop()

    def health(self) -> dict[str, Any]:
        """What ``GET /health`` adds for a relay in a cluster."""
        return {
            "redis": "up" if self.redis_up else "down",
            "node": self.node_id,
            "nodes": len(self.view.nodes()) + 1,
        }
