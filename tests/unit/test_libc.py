"""The C library is found without starting a process.

``ctypes.util.find_library`` runs ``ldconfig`` in a subprocess: a forked relay
worker must not, and under gevent (a Locust worker) it failed with a traceback
whenever a client's memory trim ran on its event-loop thread.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from ratatoskr_client import _libc


@pytest.fixture
def no_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a process was started: {args!r}")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    _libc._libc.cache_clear()
    _libc._malloc_trim.cache_clear()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's functions")
@pytest.mark.usefixtures("no_processes")
def test_glibc_functions_are_found_in_the_process_itself() -> None:
    assert _libc.libc_function("prctl") is not None
    assert _libc.libc_function("malloc_trim") is not None
    assert _libc.trim() in (True, False)  # it ran
    assert _libc.libc_function("no_such_function_anywhere") is None


@pytest.mark.usefixtures("no_processes")
def test_trim_never_fails_where_there_is_nothing_to_call() -> None:
    assert isinstance(_libc.trim(), bool)
