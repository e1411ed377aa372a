"""The C library, for the few calls the package makes into it. No I/O.

Finding it (``ctypes.util.find_library``) runs ``ldconfig`` in a subprocess on
Linux, so it is done once per process, and never in a forked child.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

__all__ = ["libc_function"]


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def libc_function(name: str) -> Any | None:
    """The C library's function ``name``, or None where there is no such
    library or function (``malloc_trim`` is glibc's, ``prctl`` Linux's)."""
    libc = _libc()
    return getattr(libc, name, None) if libc is not None else None
