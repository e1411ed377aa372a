"""The package's former module paths, kept working after the layout of issue #20.

Until the package was laid out in layers (``docs/architecture.md``), every
module sat at the root (``ratatoskr_client.membership``,
``ratatoskr_client.server.app``...). Code that imported one of those paths
keeps working: importing a former path gives the module that now holds that
code (the same module object, so classes and their ``isinstance`` checks are
the same). Nothing is imported until a former path is asked for. New code
should use the paths of today; type checkers only know those.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Final

__all__ = ["FORMER_PATHS", "install"]

#: Former module path -> the module that holds its code now.
FORMER_PATHS: Final[dict[str, str]] = {
    "ratatoskr_client._core": "ratatoskr_client.core.client",
    "ratatoskr_client._incoming": "ratatoskr_client.core.client",
    "ratatoskr_client._sending": "ratatoskr_client.core.outgoing",
    "ratatoskr_client._outgoing": "ratatoskr_client.core.outgoing",
    "ratatoskr_client._documents": "ratatoskr_client.core.documents",
    "ratatoskr_client._sharing": "ratatoskr_client.core.sharing",
    "ratatoskr_client._peer_to_peer": "ratatoskr_client.core.peer_to_peer",
    "ratatoskr_client._waiters": "ratatoskr_client.core.waiters",
    "ratatoskr_client._effects": "ratatoskr_client.core.outbox",
    "ratatoskr_client._settings": "ratatoskr_client.core.settings",
    "ratatoskr_client._liveness": "ratatoskr_client.core.liveness",
    "ratatoskr_client.membership": "ratatoskr_client.core.membership",
    "ratatoskr_client.peer_state": "ratatoskr_client.core.peer_state",
    "ratatoskr_client._peer_tables": "ratatoskr_client.core.peer_tables",
    "ratatoskr_client.pacing": "ratatoskr_client.core.pacing",
    "ratatoskr_client.client": "ratatoskr_client.asyncio.client",
    "ratatoskr_client._views": "ratatoskr_client.asyncio.client",
    "ratatoskr_client._driver": "ratatoskr_client.asyncio.driver",
    "ratatoskr_client._socket": "ratatoskr_client.asyncio.socket",
    "ratatoskr_client._events": "ratatoskr_client.asyncio.emitter",
    "ratatoskr_client._memory": "ratatoskr_client.asyncio.memory",
    "ratatoskr_client.demo": "ratatoskr_client.cli.demo",
    "ratatoskr_client.watch": "ratatoskr_client.cli.watch",
    "ratatoskr_client._console": "ratatoskr_client.cli.console",
    "ratatoskr_client.server.auth": "ratatoskr_client.server.core.auth",
    "ratatoskr_client.server.documents": "ratatoskr_client.server.core.documents",
    "ratatoskr_client.server.connection": "ratatoskr_client.server.core.connection",
    "ratatoskr_client.server.limits": "ratatoskr_client.server.core.limits",
    "ratatoskr_client.server.names": "ratatoskr_client.server.core.names",
    "ratatoskr_client.server.counters": "ratatoskr_client.server.core.counters",
    "ratatoskr_client.server.bus": "ratatoskr_client.server.core.bus",
    "ratatoskr_client.server.identity": "ratatoskr_client.server.core.identity",
    "ratatoskr_client.server.app": "ratatoskr_client.server.asyncio.app",
    "ratatoskr_client.server.outbox": "ratatoskr_client.server.asyncio.outbox",
    "ratatoskr_client.server.guard": "ratatoskr_client.server.asyncio.guard",
    "ratatoskr_client.server.runner": "ratatoskr_client.server.asyncio.runner",
    "ratatoskr_client.server.workers": "ratatoskr_client.server.asyncio.workers",
    "ratatoskr_client.server.metrics": "ratatoskr_client.server.asyncio.metrics",
    "ratatoskr_client.server.memory": "ratatoskr_client.server.asyncio.memory",
    "ratatoskr_client._changes": "ratatoskr_client.core.changes",
    "ratatoskr_client._peer": "ratatoskr_client.core.peer",
    "ratatoskr_client._scope": "ratatoskr_client.core.scope",
    "ratatoskr_client.server.visibility": "ratatoskr_client.server.core.visibility",
    "ratatoskr_client.server.acl": "ratatoskr_client.server.config.acl",
    "ratatoskr_client.server.addresses": "ratatoskr_client.server.config.addresses",
    # ClientCore made of parts (issue #20): modules merged into others.
    "ratatoskr_client.core.effects": "ratatoskr_client.core.outbox",
    "ratatoskr_client.core.incoming": "ratatoskr_client.core.client",
    "ratatoskr_client.core.sending": "ratatoskr_client.core.outgoing",
    "ratatoskr_client.asyncio.views": "ratatoskr_client.asyncio.client",
    "ratatoskr_client.sync._callbacks": "ratatoskr_client.events",
    # The frame readers; the encoders it also held are in protocol.writers
    # (and, as ever, in ratatoskr_client.protocol).
    "ratatoskr_client.protocol.decoding": "ratatoskr_client.protocol.readers",
}


class _Former(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds a former path and loads it as the module that replaced it."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in FORMER_PATHS:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(FORMER_PATHS[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        pass  # already executed under its own name


_FINDER: Final = _Former()


def install() -> None:
    """Make the former paths importable (once per process)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.append(_FINDER)
