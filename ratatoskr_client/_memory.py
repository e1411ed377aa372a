"""Giving memory the process no longer uses back to the operating system.

CPython frees objects at once, but glibc's allocator keeps the pages it served
them from. After a large release (many connections closed on a relay, peer
tables shared by many clients of one process) ``malloc_trim(0)`` returns them.
:func:`trim` calls it where the C library has it (glibc) and is a no-op elsewhere.
"""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Callable
from typing import Final

from ._libc import libc_function

__all__ = ["released", "trim", "trim_soon"]


def _load_trim() -> Callable[[int], int] | None:
    func = libc_function("malloc_trim")  # glibc only
    if func is None:
        return None
    func.argtypes = [ctypes.c_size_t]
    func.restype = ctypes.c_int
    return func  # type: ignore[no-any-return]


_MALLOC_TRIM: Final = _load_trim()


def trim() -> bool:
    """Return free heap memory to the OS. True if the C library could."""
    if _MALLOC_TRIM is None:
        return False
    return bool(_MALLOC_TRIM(0))


#: Entries of peer tables released (by sharing) before a trim is worth its cost:
#: a trim walks the heap (milliseconds for a large one); 20,000 entries are
#: about a megabyte.
TRIM_AFTER_ENTRIES: Final = 20_000
#: Seconds from the release that crossed the threshold to the trim: the clients
#: of a fleet share their tables within moments of each other, and one trim
#: after all of them returns what all of them released.
TRIM_DELAY: Final = 0.1
_pending = {"released": 0, "scheduled": False}


def released(entries: int) -> None:
    """Peer-table entries were freed (a process-wide count)."""
    _pending["released"] += entries


def trim_soon(loop: asyncio.AbstractEventLoop) -> None:
    """If enough was released, trim :data:`TRIM_DELAY` from now (once, however
    many clients ask). One client alone never releases enough to trim: this is
    for processes that run many clients."""
    if _pending["released"] < TRIM_AFTER_ENTRIES or _pending["scheduled"]:
        return
    _pending["scheduled"] = True
    loop.call_later(TRIM_DELAY, _trim_now)


def _trim_now() -> None:
    _pending["scheduled"] = False
    _pending["released"] = 0
    trim()
