"""One bytecode cache for the whole run: compiled once, read by every process.

The suite starts four pytest-xdist workers and about two hundred Python child
processes (the CLI, relays, the documented commands, Locust). Compiling is a
good part of what each one costs when it starts:

- Where ``PYTHONDONTWRITEBYTECODE`` is set (some CI images, this project's
  development machines), nothing compiled is kept: every process compiled
  every module of this package it imported, and every worker rewrote and
  compiled every test module (pytest's assertion rewriting, about 3.4 s of CPU
  per worker).
- Even where bytecode is written, the four workers of a fresh checkout start
  together and each compiles everything, because none finds the others' files.

So the controller (before any worker starts) makes a cache directory of its
own for the run, ``PYTHONPYCACHEPREFIX``, which every worker and child process
inherits; nothing is written into the checkout, and the directory goes with
the run. Python reads bytecode only from that prefix once it is set, so the
controller first links there the bytecode that already exists beside the
standard library and the installed packages (a link each, no compiling), and
the workers take turns for their first collection (:func:`collecting`): the
first one compiles the test modules, the rest find them compiled.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; the workers collect side by side
    fcntl = None  # type: ignore[assignment]

#: Set in the controller to the prefix it made: workers know the cache is the run's.
RUN_PREFIX = "RATATOSKR_TESTS_BYTECODE"


@dataclass(frozen=True)
class Shared:
    """The run's cache, and the settings to put back when the run ends."""

    prefix: str
    dont_write_env: str | None
    pycache_prefix: str | None
    dont_write_bytecode: bool

    def restore(self) -> None:
        """Put the interpreter's and the environment's settings back and remove
        the cache (pytest may run inside a longer-lived process)."""
        sys.pycache_prefix = self.pycache_prefix
        sys.dont_write_bytecode = self.dont_write_bytecode
        os.environ.pop("PYTHONPYCACHEPREFIX", None)
        os.environ.pop(RUN_PREFIX, None)
        if self.dont_write_env is not None:
            os.environ["PYTHONDONTWRITEBYTECODE"] = self.dont_write_env
        shutil.rmtree(self.prefix, ignore_errors=True)


def share() -> Shared | None:
    """In the controller: make the run's cache and point this process and
    every process started after this at it. None where the user chose a
    prefix of their own (``PYTHONPYCACHEPREFIX``): theirs is used as it is."""
    if os.environ.get("PYTHONPYCACHEPREFIX"):
        return None
    prefix = tempfile.mkdtemp(prefix="ratatoskr-tests-bytecode-")
    shared = Shared(
        prefix,
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None),
        sys.pycache_prefix,
        sys.dont_write_bytecode,
    )
    os.environ["PYTHONPYCACHEPREFIX"] = os.environ[RUN_PREFIX] = prefix
    sys.pycache_prefix = prefix
    sys.dont_write_bytecode = False
    _seed()
    return shared


def _seed() -> None:
    # Bytecode beside its source stays valid under the prefix (a .pyc names
    # its source by size and mtime, not by path): a link to each is enough.
    # Without them every process recompiled the standard library and the
    # installed packages into the prefix, about 2.5 s of CPU per worker. The
    # modules linked are the ones this process imported: what every worker
    # imports before its conftest (pytest, its plugins and what they import).
    # The others are compiled into the prefix by the first process that needs
    # them (a worker's collection, see collecting()).
    for module in list(sys.modules.values()):
        source = getattr(module, "__file__", None)
        compiled = getattr(module, "__cached__", None)
        if not source or not compiled or not source.endswith(".py"):
            continue
        target = importlib.util.cache_from_source(source)
        if target == compiled or not os.path.exists(compiled):
            continue
        with contextlib.suppress(OSError):  # a race or an odd file: compiled later
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(compiled, target)


@contextlib.contextmanager
def collecting(run_id: str) -> Iterator[None]:
    """Around a worker's collection: the first worker of the run collects
    alone (it compiles the test modules into the run's cache); the others
    wait for it, then collect side by side from the cache. Anything else
    (the user's own prefix, no flock) collects at once."""
    prefix = os.environ.get(RUN_PREFIX)
    if fcntl is None or not prefix or prefix != sys.pycache_prefix:
        yield
        return
    done = Path(prefix, f".collected-{run_id}")
    with Path(prefix, f".collecting-{run_id}").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            first = not done.exists()
            if not first:
                fcntl.flock(lock, fcntl.LOCK_UN)
            yield
            if first:
                done.touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
