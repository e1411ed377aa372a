"""One bytecode cache for the whole run: compiled once, read by every process.

The suite starts five pytest-xdist workers and about two hundred Python child
processes (the CLI, relays, the documented commands, Locust). Compiling is a
good part of what each one costs when it starts:

- Where ``PYTHONDONTWRITEBYTECODE`` is set (some CI images, this project's
  development machines), nothing compiled is kept: every process compiled
  every module of this package it imported, and every worker rewrote and
  compiled every test module (pytest's assertion rewriting, about 3.4 s of CPU
  per worker).
- Even where bytecode is written, the workers of a fresh checkout start
  together and each compiles everything, because none finds the others' files.

So the controller (before any worker starts) makes a cache directory of its
own for the run, ``PYTHONPYCACHEPREFIX``, which every worker and child process
inherits; nothing is written into the checkout, and the directory goes with
the run. Python reads bytecode only from that prefix once it is set, so the
controller first links there the bytecode that already exists beside the
standard library and the installed packages (a link each, no compiling), and
the workers share the compiling of what their collections import
(:func:`compile_shared`): each module is compiled once, by one of them.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib.util
import os
import py_compile
import shutil
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

#: Set in the controller to the prefix it made: workers know the cache is the run's.
RUN_PREFIX = "RATATOSKR_TESTS_BYTECODE"
#: The checkout: its tests/ and ratatoskr_client/ are what collections import.
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Shared:
    """The run's cache, and the settings to put back when the run ends."""

    prefix: str
    dont_write_env: str | None
    pycache_prefix: str | None
    dont_write_bytecode: bool
    #: links the installed packages' bytecode while the workers start
    linking: threading.Thread

    def restore(self) -> None:
        """Put the interpreter's and the environment's settings back and remove
        the cache (pytest may run inside a longer-lived process)."""
        self.linking.join()
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
    # (Symlinks take about 0.1 ms each here: the few thousand of the installed
    # packages are made on a thread while the workers start, not before.)
    linking = threading.Thread(target=_seed_installed, name="bytecode-links", daemon=True)
    shared = Shared(
        prefix,
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None),
        sys.pycache_prefix,
        sys.dont_write_bytecode,
        linking,
    )
    os.environ["PYTHONPYCACHEPREFIX"] = os.environ[RUN_PREFIX] = prefix
    sys.pycache_prefix = prefix
    sys.dont_write_bytecode = False
    _seed_imported()
    linking.start()
    return shared


# Bytecode beside its source stays valid under the prefix (a .pyc names its
# source by size and mtime, not by path): a link to each is enough. Linked:
# the bytecode of every module the controller imported (the standard
# library's that pytest and its plugins use: what every worker imports first)
# and every .pyc of the installed packages, not only of those imported here:
# the workers and the child processes import many more (hypothesis, Locust,
# mkdocs, Selenium, redis: about 1,200 modules, 2.8 s of CPU to compile),
# which were compiled anew in every run. What has no bytecode yet (this
# checkout: the package and the tests) is compiled into the prefix by the
# first process that needs it (the workers share that compiling before
# collection: compile_shared()).


def _seed_imported() -> None:
    for module in list(sys.modules.values()):
        source = getattr(module, "__file__", None)
        compiled = getattr(module, "__cached__", None)
        if source and compiled and source.endswith(".py"):
            _link(compiled, source)


def _seed_installed() -> None:
    tag = f".{sys.implementation.cache_tag}.pyc"
    paths = sysconfig.get_paths()
    for root in dict.fromkeys((paths["purelib"], paths["platlib"])):
        for directory, _, files in os.walk(root):
            if os.path.basename(directory) != "__pycache__":
                continue
            package = os.path.dirname(directory)
            for name in files:
                if name.endswith(tag) and name.count(".") == 2:  # (not .opt-1/.opt-2)
                    source = os.path.join(package, name[: -len(tag)] + ".py")
                    _link(os.path.join(directory, name), source)


def _link(compiled: str, source: str) -> None:
    """Link ``compiled``, the bytecode beside ``source``, into the prefix."""
    target = importlib.util.cache_from_source(source)
    if target == compiled or os.path.lexists(target):
        return
    with contextlib.suppress(OSError):  # no bytecode, no source, a race: compiled later
        os.stat(source)
        os.stat(compiled)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.symlink(compiled, target)


def compile_shared(run_id: str, config: pytest.Config) -> None:
    """In a worker, before its collection: compile, together with the other
    workers, the modules every collection imports (the test modules with
    pytest's assertion rewriting, the test helpers, this package), each by
    one of them, none waiting for another.

    Each file is claimed by the first worker to create its claim file
    (``O_EXCL``), which compiles it; the others move on to the next. A
    worker that finds every file claimed starts collecting: at most the few
    files still being compiled are compiled again by whoever imports them
    first (a complete pyc is written atomically, so that is only work lost).
    Anything else (the user's own prefix, pytest's private rewriting API
    gone) compiles nothing here: collection compiles as it imports."""
    prefix = os.environ.get(RUN_PREFIX)
    if not prefix or prefix != sys.pycache_prefix:
        return
    claims = Path(prefix, f".claims-{run_id}")
    claims.mkdir(exist_ok=True)
    rewrite = _rewriter(config)
    patterns = [*config.getini("python_files"), "conftest.py"]
    for source in _collected_sources():
        claim = claims / "__".join(source.relative_to(ROOT).parts)
        try:
            os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue  # another worker's
        with contextlib.suppress(Exception):  # (compiled on import instead)
            if any(fnmatch.fnmatch(source.name, p) for p in patterns):
                if rewrite is not None:
                    rewrite(source)
            elif not os.path.exists(importlib.util.cache_from_source(str(source))):
                py_compile.compile(str(source), doraise=True)


def _collected_sources() -> list[Path]:
    return sorted([*(ROOT / "tests").rglob("*.py"), *(ROOT / "ratatoskr_client").rglob("*.py")])


def _rewriter(config: pytest.Config) -> Callable[[Path], None] | None:
    """What pytest's import hook does to a test module before it runs it
    (rewrite its asserts, write the special pyc the hook looks for), or None
    where pytest's private API for it is not the one known here."""
    try:
        from _pytest.assertion import rewrite as pytest_rewrite

        state = config.stash[pytest_rewrite.assertstate_key]
        rewrite_test = pytest_rewrite._rewrite_test
        write_pyc = pytest_rewrite._write_pyc
        cache_dir = pytest_rewrite.get_cache_dir
        tail = pytest_rewrite.PYC_TAIL
    except (ImportError, AttributeError, KeyError):
        return None

    def rewrite(source: Path) -> None:
        pyc = cache_dir(source) / (source.name[:-3] + tail)
        if pyc.exists():
            return
        pyc.parent.mkdir(parents=True, exist_ok=True)
        key, code = rewrite_test(source, config)
        write_pyc(state, code, key, pyc)

    return rewrite
