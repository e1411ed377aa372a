"""The C library, for the few calls the package makes into it.

It is the library the interpreter itself is linked with, so its functions are
looked up in the process's own symbols (``dlopen(NULL)``), once per process.
Not with ``ctypes.util.find_library``: that runs ``ldconfig`` in a subprocess,
which a forked child must not start, and which under gevent (a Locust worker)
fails when asked from any thread but the main one: the client's memory trim
runs on its event-loop thread.

:func:`trim` gives memory the process no longer uses back to the operating
system: CPython frees objects at once, but glibc's allocator keeps the pages it
served them from, and after a large release (many connections closed on a
relay, peer tables shared by many clients of one process) ``malloc_trim(0)``
returns them. It is a no-op where the C library has no ``malloc_trim``. When
to call it is decided by the I/O layers (``ratatoskr_client.asyncio.memory``,
``ratatoskr_client.server.asyncio.memory``).
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["libc_function", "trim"]


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if sys.platform == "win32":
        return None  # no malloc_trim or prctl there, and no dlopen(NULL)
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def libc_function(name: str) -> Any | None:
    """The C library's function ``name``, or None where there is no such
    library or function (``malloc_trim`` is glibc's, ``prctl`` Linux's)."""
    libc = _libc()
    return getattr(libc, name, None) if libc is not None else None


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    func = libc_function("malloc_trim")  # glibc only
    if func is None:
        return None
    func.argtypes = [ctypes.c_size_t]
    func.restype = ctypes.c_int
    return func  # type: ignore[no-any-return]


def trim() -> bool:
    """Return free heap memory to the OS. True if the C library could."""
    func = _malloc_trim()
    return bool(func(0)) if func is not None else False
