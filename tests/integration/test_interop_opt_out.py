"""How the interop tests behave on a machine that cannot run them.

Each case runs pytest in a subprocess on a copy of ``tests/interop``'s conftest
and Node project (with a one-line test that needs the installed project), so
the real checkout's ``node_modules`` is never touched. The registry is made
unreachable the way a user's network would make it: npm's own configuration
points at a closed loopback port, with an empty cache.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

INTEROP = Path(__file__).resolve().parents[1] / "interop"
#: What "fails within a few seconds" means here, generous for a busy 2-core machine.
FAST = 20.0

pytestmark = pytest.mark.skipif(
    shutil.which("npm") is None or shutil.which("node") is None,
    reason="needs Node and npm (the behaviour under test is npm's)",
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user-like copy of the interop test setup, without node_modules."""
    shutil.copy(INTEROP / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "node").mkdir()
    for name in ("package.json", "package-lock.json"):
        shutil.copy(INTEROP / "node" / name, tmp_path / "node" / name)
    (tmp_path / "test_needs_node.py").write_text(
        "def test_needs_the_node_project(interop_node_project):\n"
        "    assert (interop_node_project / 'node_modules').is_dir()\n"
    )
    return tmp_path


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on (bound, never listening: connect is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def run_pytest(project: Path, **env: str) -> tuple[int, str, float]:
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in {"RATATOSKR_INTEROP", "RATATOSKR_REQUIRE_INTEROP", "CI"}
    }
    environ.update(env)
    # The conftest under test uses no plugin: not importing the installed ones
    # (hypothesis, xdist, this project's own...) saves two thirds of each run's CPU.
    environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(project)],
        cwd=project,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def unreachable(port: int, cache: Path) -> dict[str, str]:
    return {"npm_config_registry": f"http://127.0.0.1:{port}/", "npm_config_cache": str(cache)}


def test_unreachable_registry_fails_fast_naming_the_cause_and_the_opt_out(
    project: Path, closed_port: int, tmp_path: Path
) -> None:
    code, out, elapsed = run_pytest(project, **unreachable(closed_port, tmp_path / "cache"))
    assert code == 1, out
    assert elapsed < FAST, f"took {elapsed:.1f} s"
    assert f"npm cannot reach its registry (http://127.0.0.1:{closed_port}/" in out
    assert "ECONNREFUSED" in out
    assert "Set RATATOSKR_INTEROP=0 to skip the interop tests" in out
    assert "1 error" in out


def test_opt_out_skips_with_one_line_and_never_runs_npm(
    project: Path, closed_port: int, tmp_path: Path
) -> None:
    env = unreachable(closed_port, tmp_path / "cache")
    code, out, _ = run_pytest(project, RATATOSKR_INTEROP="0", **env)
    assert code == 0, out
    assert "1 skipped" in out
    assert "RATATOSKR_INTEROP=0: automerge-repo interop tests not run" in out  # -rs
    summary = [line for line in out.splitlines() if line.startswith("RATATOSKR_INTEROP=0:")]
    assert summary == ["RATATOSKR_INTEROP=0: skipped the 1 automerge-repo interop tests in ./"]
    assert not (tmp_path / "cache").exists(), "npm ran"


def test_ci_cannot_opt_out(project: Path) -> None:
    code, out, _ = run_pytest(project, RATATOSKR_INTEROP="0", RATATOSKR_REQUIRE_INTEROP="1")
    assert code == pytest.ExitCode.USAGE_ERROR, out
    assert "RATATOSKR_INTEROP=0 cannot skip the interop tests: RATATOSKR_REQUIRE_INTEROP" in out


def test_opt_out_value_is_checked(project: Path) -> None:
    code, out, _ = run_pytest(project, RATATOSKR_INTEROP="maybe")
    assert code == pytest.ExitCode.USAGE_ERROR, out
    assert "RATATOSKR_INTEROP='maybe': expected 0" in out
