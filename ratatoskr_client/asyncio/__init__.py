"""The asyncio client: the core driven over one aiohttp WebSocket.

:class:`RatatoskrClient` (also ``ratatoskr_client.RatatoskrClient``) is the
facade; :mod:`.driver` turns the core's effects into I/O and the network into
core inputs; :mod:`.socket` is the one place where aiohttp's errors become
ours; :mod:`.emitter` runs the application's callbacks so that none can harm
another.
"""

from .client import RatatoskrClient, sidecar_id

__all__ = ["RatatoskrClient", "sidecar_id"]
