"""Keeps the tests that measure time apart from the tests that load the machine,
across the pytest-xdist workers of one run.

A test marked ``timed`` asserts a wall-clock bound (a latency, a deadline, a
CPU-time ratio) that holds on a loaded 2-core machine, but not when another
worker of the same run starts hundreds of clients, a Locust swarm or a flood
beside it. A test marked ``cpu_heavy`` is such a load. So: ``cpu_heavy`` tests
take a shared lock (any number run together), ``timed`` tests an exclusive one
(never beside a ``cpu_heavy`` test, nor beside another ``timed`` one); every
other test runs whenever a worker is free.

The lock is fair: a ``timed`` test waiting for it holds a gate that new
``cpu_heavy`` tests queue behind, so it waits at most for the ones already
running. Its files live in the run's base temporary directory (each worker's
is a directory in it), which pytest removes with the runs it no longer keeps.
Without xdist (``-n0``) one test runs at a time anyway, and nothing is locked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

try:
    import fcntl
except ImportError:  # Windows: no flock; the tests still run, unlocked
    fcntl = None  # type: ignore[assignment]

TIMED = "timed"
CPU_HEAVY = "cpu_heavy"


class RunLock:
    """A fair readers-writer lock over two files (``flock``)."""

    def __init__(self, base: Path) -> None:
        self._gate: IO[str] = base.with_suffix(".gate").open("a")
        self._main: IO[str] = base.with_suffix(".lock").open("a")

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        fcntl.flock(self._gate, fcntl.LOCK_EX)  # behind any timed test waiting
        try:
            fcntl.flock(self._main, fcntl.LOCK_SH)
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(self._main, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        fcntl.flock(self._gate, fcntl.LOCK_EX)  # no new shared holder from now on
        try:
            fcntl.flock(self._main, fcntl.LOCK_EX)  # the running ones finish
            try:
                yield
            finally:
                fcntl.flock(self._main, fcntl.LOCK_UN)
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)

    def close(self) -> None:
        self._gate.close()
        self._main.close()


def run_directory(config: pytest.Config) -> Path | None:
    """The run's base temporary directory, which its pytest-xdist workers
    share; None outside a worker. (xdist gives each worker <the run's
    basetemp>/popen-gwN as its basetemp.)"""
    if not hasattr(config, "workerinput") or config.option.basetemp is None:
        return None
    return Path(config.option.basetemp).parent


def for_this_run(config: pytest.Config) -> RunLock | None:
    """The lock shared by this run's workers, or None when there is nothing to
    keep apart (not an xdist worker, or no ``flock``)."""
    run = run_directory(config)
    if run is None or fcntl is None:
        return None
    return RunLock(run / "runlock")


def held_for(item: pytest.Item, lock: RunLock | None) -> contextlib.AbstractContextManager[None]:
    """What ``item`` must hold while it runs (setup, call and teardown)."""
    if lock is None:
        return contextlib.nullcontext()
    if item.get_closest_marker(TIMED) is not None:
        return lock.exclusive()
    if item.get_closest_marker(CPU_HEAVY) is not None:
        return lock.shared()
    return contextlib.nullcontext()
