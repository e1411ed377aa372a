"""Shared test configuration.

The ``ratatoskr_relay`` / ``ratatoskr_client`` fixtures come from the package's
own pytest plugin (``ratatoskr_client.testing``), loaded through its entry point
exactly as in a user's project.

Under pytest-xdist, tests marked ``timed`` never run beside tests marked
``cpu_heavy`` (tests/runlock.py), and tests marked ``slow`` run first.
"""

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator

import pytest

from .runlock import CPU_HEAVY, TIMED, RunLock, for_this_run, held_for


@pytest.fixture(autouse=True)
def _no_errors_logged_by_default(caplog: pytest.LogCaptureFixture) -> None:
    # Capture at DEBUG so a failing test shows the protocol conversation.
    caplog.set_level(logging.DEBUG, logger="ratatoskr_client")


# --------------------------------------------------------------------------- xdist

_RUN_LOCK = pytest.StashKey[RunLock | None]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{TIMED}: asserts a wall-clock bound; never runs beside a {CPU_HEAVY} test"
    )
    config.addinivalue_line(
        "markers", f"{CPU_HEAVY}: loads the machine (many clients, child processes, floods)"
    )
    config.stash[_RUN_LOCK] = for_this_run(config)
    if not hasattr(config, "workerinput"):  # the controller, before any worker starts
        _share_bytecode(config)


#: the run's bytecode directory, and what to put back when the run ends
_BYTECODE = pytest.StashKey[tuple[str, str | None, str | None, bool]]()


def _share_bytecode(config: pytest.Config) -> None:
    # The suite starts about two hundred Python processes (the CLI, relays, the
    # documented commands, Locust). Where PYTHONDONTWRITEBYTECODE is set, as on
    # some CI images, each of them compiled every module it imported, about
    # 0.06 s of CPU per process for this package alone. So this run compiles
    # each module once, into a cache directory of its own that every worker and
    # child process inherits (nothing is written into the checkout, and the
    # directory goes with the run).
    if os.environ.get("PYTHONPYCACHEPREFIX"):
        return  # the user's own choice
    prefix = tempfile.mkdtemp(prefix="ratatoskr-tests-bytecode-")
    config.stash[_BYTECODE] = (
        prefix,
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None),
        sys.pycache_prefix,
        sys.dont_write_bytecode,
    )
    os.environ["PYTHONPYCACHEPREFIX"] = sys.pycache_prefix = prefix
    sys.dont_write_bytecode = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The workers take tests from one queue in this order (``--dist load`` with
    # small chunks, pyproject.toml). The few tests that take seconds go first,
    # longest-first scheduling: started last, one of them would keep a single
    # worker busy while the others had finished. (A stable sort: the rest keep
    # the file order.)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_unconfigure(config: pytest.Config) -> None:
    lock = config.stash.get(_RUN_LOCK, None)
    if lock is not None:
        lock.close()
    bytecode = config.stash.get(_BYTECODE, None)
    if bytecode is not None:  # as it was (pytest may run inside a longer-lived process)
        prefix, dont_write, sys.pycache_prefix, sys.dont_write_bytecode = bytecode
        os.environ.pop("PYTHONPYCACHEPREFIX", None)
        if dont_write is not None:
            os.environ["PYTHONDONTWRITEBYTECODE"] = dont_write
        shutil.rmtree(prefix, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    # Held from setup to teardown (a relay or a swarm starting loads the machine too).
    with held_for(item, item.config.stash.get(_RUN_LOCK, None)):
        yield
