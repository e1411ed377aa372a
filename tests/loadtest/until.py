"""Ends a headless Locust run as soon as its statistics show what a test waits for.

Loaded beside the example, as a second locustfile (``-f
examples/locustfile.py,tests/loadtest/until.py``), it adds three options:

``--until NAME=N``
    at least N requests named NAME were reported (succeeded or failed);
``--until-failure NAME=PREFIX``
    a failure of NAME was reported whose error (as in ``--csv``'s failures
    file) starts with PREFIX;
``--until-file PATH``
    PATH exists: the test saw, outside Locust, what it waited for.

Once every condition given holds (and Locust's ``--csv`` writer, which rewrites
its files once a second, has written them since), the runner quits exactly as
it does when ``--run-time`` is up (which stays the cap): users stop, statistics
are final, ``--json-file`` is written, the exit code says whether anything
failed. A test so asserts on a run that lasted as long as its assertions need,
instead of a fixed time chosen to be long enough on a slow machine.

Runs on the master (whose statistics include the workers', reported every
few seconds) or on a local runner; workers ignore it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import gevent
from locust import events
from locust.runners import WorkerRunner
from locust.stats import StatsError

#: Seconds between two looks at the statistics.
POLL = 0.1

log = logging.getLogger(__name__)


@events.init_command_line_parser.add_listener
def add_options(parser: Any) -> None:
    group = parser.add_argument_group("ending the run early (tests)")
    group.add_argument("--until", action="append", default=[], metavar="NAME=N")
    group.add_argument("--until-failure", action="append", default=[], metavar="NAME=PREFIX")
    group.add_argument("--until-file", default=None, metavar="PATH")


def _pairs(values: list[str]) -> list[tuple[str, str]]:
    out = []
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep:
            raise ValueError(f"expected NAME=VALUE, got {value!r}")
        out.append((name, rest))
    return out


def unmet(environment: Any) -> list[str]:
    """The conditions that do not hold yet (empty: the run may end)."""
    options = environment.parsed_options
    stats = environment.runner.stats
    missing = []
    for name, count in _pairs(options.until):
        seen = sum(e.num_requests for (n, _), e in stats.entries.items() if n == name)
        if seen < int(count):
            missing.append(f"{name}: {seen} of {count} requests")
    failures = [(e.name, StatsError.parse_error(e.error)) for e in stats.errors.values()]
    for name, prefix in _pairs(options.until_failure):
        if not any(n == name and error.startswith(prefix) for n, error in failures):
            missing.append(f"no {name} failure starting {prefix!r}")
    if options.until_file and not os.path.exists(options.until_file):
        missing.append(f"{options.until_file} does not exist")
    return missing


def _csv_written(prefix: str) -> int:
    """A stamp of the last write of ``--csv``'s files (0 before the first)."""
    try:
        return os.stat(f"{prefix}_stats.csv").st_mtime_ns
    except FileNotFoundError:
        return 0


def _watch(environment: Any) -> None:
    while unmet(environment):
        gevent.sleep(POLL)
    prefix = environment.parsed_options.csv_prefix
    if prefix:
        # Locust writes the CSV files only every CSV_STATS_INTERVAL_SEC, never at
        # the end: wait for a write that includes what the conditions saw. (The
        # writer's greenlet writes all four files without yielding, so a newer
        # stamp of the first one means all of them were written after now.)
        stamp = _csv_written(prefix)
        while _csv_written(prefix) == stamp:
            gevent.sleep(POLL)
    log.info("every --until condition holds: ending the run")
    environment.runner.quit()


@events.test_start.add_listener
def start_watching(environment: Any, **_: Any) -> None:
    options = environment.parsed_options
    wanted = options.until or options.until_failure or options.until_file
    if wanted and not isinstance(environment.runner, WorkerRunner):
        gevent.spawn(_watch, environment)
