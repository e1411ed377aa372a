"""The order the pytest-xdist workers take the tests in.

With ``--dist load`` and small chunks (pyproject.toml) the workers take tests
from one queue, in collection order, two at a time; five workers share two
cores. Most tests outside ``tests/unit/`` spend their time waiting: on
sockets, timers, child processes. The unit tests only compute. In file order
all the waiting came in stretches (the slow tests together, then all of
``integration``, which sorts before ``unit``), and while most workers waited
at once a core stood idle. So the queue is, in three parts:

1. **The slow tests** (marked ``slow``: seconds each, most of it waiting),
   those also marked ``cpu_heavy`` first, each followed by its share of the
   first unit modules (:data:`SLOW_SPREAD`): they all start early (started
   late, one of them would keep a single worker busy while the others had
   finished), beside tests that compute.
2. **The other modules and the unit modules, alternating** in proportion to
   their numbers of tests; among the waiting ones the directories whose
   tests take longest come first (:data:`WAITING_ORDER`).
3. **The last unit modules**: many short tests, so the workers finish
   together.

A module's tests stay together, in their file order, so that a module-scoped
fixture (a cluster of relays, a built wheel) is set up at most once per
worker. On an idle 2-core machine a whole run leaves its cores idle for 3 to
6 s in all (about 30 s in file order, slow tests first, on four workers).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from .runlock import CPU_HEAVY

#: The share of the unit tests the slow tests are spread over, from the start
#: (over 0.4, the heaviest of them started after half the run and, on a
#: loaded machine, sometimes finished after everything else).
SLOW_SPREAD = 0.2
#: The share of the unit tests kept for the end of the run.
UNIT_TAIL = 0.15
#: The directories of waiting tests, those whose tests take longest first, so
#: that the last of them to run are short (tests/integration: 357 tests, most
#: under a second; tests/reliability: scenarios of seconds).
WAITING_ORDER = ("reliability", "cluster", "loadtest", "browser", "interop", "docs", "integration")


def order(items: Sequence[pytest.Item]) -> list[pytest.Item]:
    """``items`` in the order to run them (a permutation: none added or lost)."""
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    # The heaviest first: they take longest, and while one runs a test marked
    # timed waits for it (tests/runlock.py), its worker idle.
    slow.sort(key=lambda item: item.get_closest_marker(CPU_HEAVY) is None)
    rest = [item for item in items if item.get_closest_marker("slow") is None]
    computing = _modules([item for item in rest if _is_unit(item)])
    waiting = _modules(sorted((item for item in rest if not _is_unit(item)), key=_directory_rank))
    unit_count = sum(len(module) for module in computing)
    ordered: list[pytest.Item] = []
    taken_unit = 0

    def take_unit() -> None:
        nonlocal taken_unit
        module = computing.pop(0)
        taken_unit += len(module)
        ordered.extend(module)

    # 1. Each slow test followed by its share of unit modules.
    for done, test in enumerate(slow, 1):
        ordered.append(test)
        while computing and taken_unit < unit_count * SLOW_SPREAD * done / len(slow):
            take_unit()
    # 2. The other modules and the unit modules, alternating in proportion.
    start_unit = taken_unit
    mixed_unit = max(unit_count * (1 - UNIT_TAIL) - start_unit, 1)
    waiting_count = max(sum(len(module) for module in waiting), 1)
    taken_waiting = 0
    while waiting:
        if computing and (taken_unit - start_unit) / mixed_unit <= taken_waiting / waiting_count:
            take_unit()
        else:
            module = waiting.pop(0)
            taken_waiting += len(module)
            ordered.extend(module)
    # 3. The last unit modules.
    while computing:
        take_unit()
    return ordered


def _directory_rank(item: pytest.Item) -> int:
    """Where ``item``'s directory comes among the waiting ones (a stable sort
    keeps the file order within each)."""
    directory = _directory(item)
    return WAITING_ORDER.index(directory) if directory in WAITING_ORDER else len(WAITING_ORDER)


def _is_unit(item: pytest.Item) -> bool:
    return _directory(item) == "unit"


def _directory(item: pytest.Item) -> str:
    """The name of the directory of ``item``'s file (``unit``, ``cluster``...)."""
    return item.path.parent.name


def _modules(items: list[pytest.Item]) -> list[list[pytest.Item]]:
    """``items`` grouped by module, modules in their first test's order."""
    groups: dict[object, list[pytest.Item]] = {}
    for item in items:
        groups.setdefault(item.path, []).append(item)
    return list(groups.values())
