"""The documentation site, built once per run and read by every test that needs it.

``mkdocs build --strict`` of the whole site takes about 2 s of CPU. Two tests
read its result: tests/unit/test_api_reference.py checks that the build passes
and what the reference page says, tests/browser/ opens its pages in Chromium.
They may run on different pytest-xdist workers, so the first one to ask builds
the site into the run's base temporary directory (shared by the workers) and
records how the build ended; the others wait for it (``flock``) and read that.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import filelock, runlock

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Build:
    """How ``mkdocs build --strict`` of the repository's site ended."""

    returncode: int
    stderr: str
    site: Path


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """``mkdocs build --strict -f CONFIG -d SITE``, run from the repository."""
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def site(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Build:
    """The repository's site (mkdocs.yml), built once for the whole run."""
    if not filelock.AVAILABLE:  # (Windows) each caller builds its own site
        return _build(tmp_path_factory.getbasetemp() / "docs-site")
    run = runlock.run_directory(config) or tmp_path_factory.getbasetemp()
    record = run / "docs-site.json"
    with filelock.exclusive(run / "docs-site.lock"):
        if not record.exists():
            built = _build(run / "docs-site")
            record.write_text(
                json.dumps({"returncode": built.returncode, "stderr": built.stderr}),
                encoding="utf-8",
            )
        recorded = json.loads(record.read_text(encoding="utf-8"))
    return Build(recorded["returncode"], recorded["stderr"], run / "docs-site")


def _build(site: Path) -> Build:
    done = mkdocs_build(ROOT / "mkdocs.yml", site)
    return Build(done.returncode, done.stderr, site)
