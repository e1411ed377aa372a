"""Fixtures for the cluster tests: a real Redis and relays as separate processes.

``cluster3`` is one Redis and three relays (``a``, ``b``, ``c``) shared by a
whole test module; tests that kill relays or Redis build their own with
:func:`make_cluster`. The tests are skipped, with a message, only where no
``redis-server`` (or no ``redis`` package) can be found, and never under
``RATATOSKR_REQUIRE_CLUSTER=1`` (CI).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .support import (
    RedisServer,
    RelayNode,
    eventually,
    require_cluster_tools,
    start_relays,
    write_config,
)

#: Short timers so the failure tests run in seconds.
NODE_TTL = 2.0
PRESENCE_TTL = 3.0
RATE_LIMIT = 120

CONFIG = """
open = true

[[users]]
token = "alice-secret"
id = "alice"
name = "Alice"

[[users]]
token = "bob-secret"
id = "bob"
name = "Bob"

[[documents]]
id = "vault"
owner = "alice"
"""


@dataclass
class Cluster:
    redis: RedisServer
    relays: list[RelayNode]
    config: Path
    args: list[str] = field(default_factory=list)

    @property
    def a(self) -> RelayNode:
        return self.relays[0]

    @property
    def b(self) -> RelayNode:
        return self.relays[1]

    @property
    def c(self) -> RelayNode:
        return self.relays[2]

    def add_relay(self, label: str = "") -> RelayNode:
        (node,) = start_relays(1, self.args, [label or f"relay{len(self.relays)}"])
        self.relays.append(node)
        return node

    async def ready(self, timeout: float = 20.0) -> float:
        """Seconds until every relay's link is up and sees all the others."""

        async def check() -> bool:
            for node in self.relays:
                health = await node.health()
                if health.get("redis") != "up" or health.get("nodes") != len(self.relays):
                    return False
            return True

        return await eventually(check, timeout, lambda: "the relays did not all join")

    def close(self) -> None:
        for node in self.relays:
            node.close()
        self.redis.close()
        self.config.unlink(missing_ok=True)


@contextlib.contextmanager
def make_cluster(relays: int, *extra: str, settings: str = "") -> Iterator[Cluster]:
    """A fresh Redis and ``relays`` relays joined to it; ``settings``: more
    top-level keys of their configuration file (TOML)."""
    require_cluster_tools()
    redis = RedisServer().start()
    config = write_config(settings + CONFIG)
    args = [
        "--config",
        str(config),
        "--redis",
        redis.url,
        "--node-ttl",
        str(NODE_TTL),
        "--presence-ttl",
        str(PRESENCE_TTL),
        "--rate-limit",
        str(RATE_LIMIT),
        *extra,
    ]
    cluster = Cluster(redis, [], config, args)
    try:
        cluster.relays = start_relays(relays, args, ["a", "b", "c", "d"][:relays])
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def cluster3() -> Iterator[Cluster]:
    with make_cluster(3) as cluster:
        yield cluster


@pytest.fixture(autouse=True)
def _cluster_tools() -> None:
    require_cluster_tools()
