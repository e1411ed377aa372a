"""When a process of many clients gives freed memory back to the operating system.

The clients of one process share their peer tables once quiet
(``ratatoskr_client.core.peer_tables``), dropping their own copies; glibc keeps
the pages those used until ``malloc_trim`` (:func:`ratatoskr_client._libc.trim`)
returns them. A trim walks the heap, so it is done once enough was released,
and once for a whole fleet of clients that share their tables within moments
of each other. The table of identity and presence frames decoded once for all
the clients (:func:`~ratatoskr_client.protocol.fastpaths.forget_shared`) is
emptied at the same moment: it served the burst that is over.
"""

from __future__ import annotations

import asyncio
from typing import Final

from .._libc import trim
from ..core.peer_tables import released_entries, take_released
from ..protocol.fastpaths import forget_shared

__all__ = ["TRIM_AFTER_ENTRIES", "TRIM_DELAY", "trim_soon"]

#: Entries of peer tables released (by sharing) before a trim is worth its cost:
#: a trim walks the heap (milliseconds for a large one); 20,000 entries are
#: about a megabyte.
TRIM_AFTER_ENTRIES: Final = 20_000
#: Seconds from the release that crossed the threshold to the trim: the clients
#: of a fleet share their tables within moments of each other, and one trim
#: after all of them returns what all of them released.
TRIM_DELAY: Final = 0.1
_scheduled = [False]


def trim_soon(loop: asyncio.AbstractEventLoop) -> None:
    """If enough was released, trim :data:`TRIM_DELAY` from now (once, however
    many clients ask). One client alone never releases enough to trim: this is
    for processes that run many clients."""
    if released_entries() < TRIM_AFTER_ENTRIES or _scheduled[0]:
        return
    _scheduled[0] = True
    loop.call_later(TRIM_DELAY, _trim_now)


def _trim_now() -> None:
    _scheduled[0] = False
    take_released()
    # The burst that filled the peer tables is over: so is the use of the
    # frames decoded once for all the clients of the process.
    forget_shared()
    trim()
