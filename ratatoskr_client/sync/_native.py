"""Real OS threads, locks and waits, also under gevent's monkey-patching.

The blocking client runs the asyncio client on an event loop in a background
thread. In a process that gevent has monkey-patched (Locust does so on import)
``threading``, ``_thread``, ``select`` and ``selectors`` are greenlet-based: a
"thread" started through them is a greenlet of the calling thread, a lock
blocks by switching to gevent's hub, and ``selectors.DefaultSelector`` waits
through the hub. None of that may reach the loop thread, which must be a real
OS thread blocked in a real ``epoll``/``kqueue``/``select``, independent of the
gevent hub. So this module captures the *original* primitives (gevent keeps
them: ``gevent.monkey.get_original``) and uses only those for the loop thread,
for the locks between threads, and for name resolution.

Waiting is the other half. An OS thread waits for the loop on a real lock. A
greenlet must not: a real lock would block the hub and with it every other
greenlet (every other simulated Locust user). In a patched process a greenlet
waits in the gevent hub instead, for an ``async_`` watcher that the loop
thread fires (gevent's thread-safe wake-up), so hundreds of greenlets can wait
at once.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable
from typing import Any, Protocol

__all__ = [
    "Waiter",
    "allocate_lock",
    "get_ident",
    "getaddrinfo",
    "make_selector",
    "new_waiter",
    "start_thread",
    "threading_patched",
]

# How often a blocked main thread wakes up on Windows, where a lock wait cannot
# be interrupted by Ctrl-C. (On POSIX the wait itself is interruptible.)
_WINDOWS_SLICE = 0.1


def _original(module: str, name: str) -> Any:
    """``module.name`` as it was before gevent patched it (or as it is, unpatched)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        return monkey.get_original(module, name)
    return getattr(importlib.import_module(module), name)


# Captured once: before patching these are the originals, and after it
# get_original() returns them, so a later patch_all() cannot change them.
allocate_lock: Callable[[], Any] = _original("_thread", "allocate_lock")
get_ident: Callable[[], int] = _original("_thread", "get_ident")
_start_new_thread: Callable[..., int] = _original("_thread", "start_new_thread")
_default_selector: Callable[[], Any] = _original("selectors", "DefaultSelector")
getaddrinfo: Callable[..., Any] = _original("socket", "getaddrinfo")


def threading_patched() -> bool:
    """True if gevent has monkey-patched ``threading`` in this process."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))


def make_selector() -> Any:
    """A real selector (``epoll`` on Linux), whatever gevent patched."""
    return _default_selector()


def start_thread(target: Callable[[], None], name: str) -> Callable[[], None]:
    """Start ``target`` on a new OS thread; return a function that joins it.

    Without gevent this is a :class:`threading.Thread` (named, visible in
    ``threading.enumerate()``, joined completely). Under gevent's patching a
    ``threading.Thread`` would be a greenlet, so the original
    ``_thread.start_new_thread`` is used and the join waits on a real lock that
    the thread releases as its last act.
    """
    if not threading_patched():
        # daemon: the interpreter only reaches atexit (where the loop is stopped
        # and this thread joined) once every non-daemon thread has finished.
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread.join

    finished = allocate_lock()
    finished.acquire()

    def run() -> None:
        try:
            target()
        finally:
            finished.release()

    _start_new_thread(run, ())

    def join() -> None:
        finished.acquire()
        finished.release()

    return join


class Waiter(Protocol):
    """One caller waiting for one outcome from the loop thread."""

    def settle(self, outcome: Callable[[], Any]) -> None:
        """Called once, on the loop thread: ``outcome()`` returns or raises the result."""

    def wait(self) -> Callable[[], Any]:
        """Block the caller (thread or greenlet) until settled; the outcome
        (what :meth:`settle` was given: calling it returns or raises the
        result). Raises only when the wait itself is interrupted."""

    def abandon(self) -> None:
        """Nobody will wait (any more): release what the waiter holds. May be
        called more than once."""


class _ThreadWaiter:
    """Waits on a real lock: for OS threads, and for the shutdown path."""

    __slots__ = ("_done", "_outcome")

    def __init__(self) -> None:
        self._done = allocate_lock()
        self._done.acquire()
        self._outcome: Callable[[], Any] | None = None

    def settle(self, outcome: Callable[[], Any]) -> None:
        self._outcome = outcome
        self._done.release()

    def wait(self) -> Callable[[], Any]:
        # POSIX: the plain acquire() is interrupted by Ctrl-C in the main thread.
        # Windows: it is not, so wait in slices and let signals run in between.
        if sys.platform == "win32":  # pragma: no cover - not run on CI
            while not self._done.acquire(timeout=_WINDOWS_SLICE):
                pass
        else:
            self._done.acquire()
        outcome = self._outcome
        assert outcome is not None
        return outcome

    def abandon(self) -> None:
        pass


class _GreenWaiter:
    """Waits in the gevent hub for an ``async_`` watcher the loop thread fires.

    ``async_.send()`` is gevent's (libev's/libuv's) thread-safe wake-up. The
    watcher is started before the call is handed over (a send before the start
    would be lost) and, being referenced, keeps the hub running while this
    greenlet waits even if nothing else is scheduled (a plain gevent script).
    """

    __slots__ = ("_outcome", "_waiter", "_watcher")

    def __init__(self) -> None:
        # Imported by name: gevent is only present with the locust extra.
        hub = importlib.import_module("gevent").get_hub()
        self._waiter: Any = importlib.import_module("gevent.hub").Waiter(hub)
        self._watcher: Any = hub.loop.async_()
        self._watcher.start(self._waiter.switch, None)
        self._outcome: Callable[[], Any] | None = None

    def settle(self, outcome: Callable[[], Any]) -> None:
        self._outcome = outcome
        self._watcher.send()

    def wait(self) -> Callable[[], Any]:
        try:
            self._waiter.get()
        finally:
            self.abandon()
        outcome = self._outcome
        assert outcome is not None
        return outcome

    def abandon(self) -> None:
        self._watcher.stop()
        self._watcher.close()


def new_waiter() -> Waiter:
    """A waiter for the calling context: a greenlet-friendly one under gevent's
    patching, a real lock otherwise."""
    if threading_patched():
        return _GreenWaiter()
    return _ThreadWaiter()
