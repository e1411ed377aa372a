"""Shared test configuration.

The ``ratatoskr_relay`` / ``ratatoskr_client`` fixtures come from the package's
own pytest plugin (``ratatoskr_client.testing``), loaded through its entry point
exactly as in a user's project.

Under pytest-xdist, tests marked ``timed`` never run beside tests marked
``cpu_heavy`` (tests/runlock.py), and the workers take the tests in the order
tests/schedule.py makes (tests marked ``slow`` early).
"""

import gc
import logging
import signal
from collections.abc import Iterator

import pytest

from . import bytecode, schedule
from .runlock import CPU_HEAVY, TIMED, RunLock, for_this_run, held_for


@pytest.fixture
def ctrl_c_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt in this process, and the processes it
    starts meanwhile begin with Python's own SIGINT handler, as in a terminal,
    even when the suite was started with SIGINT ignored: a command started in
    the background (``pytest &``) by a shell without job control is, and
    Python then keeps ignoring it, as do its children (they inherit it)."""
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if previous is not None:  # (None: set outside Python; left as it is now)
            signal.signal(signal.SIGINT, previous)


@pytest.fixture(autouse=True)
def _no_errors_logged_by_default(caplog: pytest.LogCaptureFixture) -> None:
    # Capture at DEBUG so a failing test shows the protocol conversation.
    caplog.set_level(logging.DEBUG, logger="ratatoskr_client")


# --------------------------------------------------------------------------- xdist

_RUN_LOCK = pytest.StashKey[RunLock | None]()
#: the run's bytecode cache (tests/bytecode.py), in the controller
_BYTECODE = pytest.StashKey[bytecode.Shared | None]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{TIMED}: asserts a wall-clock bound; never runs beside a {CPU_HEAVY} test"
    )
    config.addinivalue_line(
        "markers", f"{CPU_HEAVY}: loads the machine (many clients, child processes, floods)"
    )
    config.stash[_RUN_LOCK] = for_this_run(config)
    if not hasattr(config, "workerinput"):  # the controller, before any worker starts
        config.stash[_BYTECODE] = bytecode.share()


def pytest_collection(session: pytest.Session) -> None:
    workerinput = getattr(session.config, "workerinput", None)
    if workerinput is not None:
        bytecode.compile_shared(str(workerinput["testrunuid"]), session.config)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The workers take tests from one queue in this order (tests/schedule.py).
    items[:] = schedule.order(items)


def pytest_collection_finish(session: pytest.Session) -> None:
    # What collection built (modules, test items, hypothesis's strategies)
    # lives until the end: out of the collector's way, a full collection no
    # longer walks it every time (about 3 % of a worker's CPU).
    gc.collect()
    gc.freeze()


def pytest_unconfigure(config: pytest.Config) -> None:
    lock = config.stash.get(_RUN_LOCK, None)
    if lock is not None:
        lock.close()
    shared = config.stash.get(_BYTECODE, None)
    if shared is not None:
        shared.restore()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    # Held from setup to teardown (a relay or a swarm starting loads the machine too).
    with held_for(item, item.config.stash.get(_RUN_LOCK, None)):
        yield
