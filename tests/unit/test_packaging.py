"""What a user gets from PyPI: the license in the wheel, the docs in the sdist,
and a README whose links and requirements read right on the package's page.

The wheel and sdist are built here with the project's own build backend
(hatchling, a dev dependency), offline.
"""

from __future__ import annotations

import re
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
SOURCE = PROJECT["urls"]["Source"]


def readme_links() -> list[str]:
    inline = re.findall(r"\]\(([^)\s]+)\)", README)
    references = re.findall(r"^\[[^\]]+\]:\s*(\S+)", README, re.M)
    return inline + references


def test_readme_links_are_absolute_and_point_at_files_that_exist():
    links = readme_links()
    assert links
    for link in links:
        assert re.match(r"https?://", link), f"{link!r} breaks on PyPI: make it absolute"
        if link.startswith(SOURCE + "/"):
            match = re.fullmatch(re.escape(SOURCE) + r"/(?:blob|tree)/main/(.+)", link)
            assert match, f"{link!r}: expected {SOURCE}/blob/main/PATH or /tree/main/PATH"
            assert (ROOT / match.group(1)).exists(), f"{link!r}: no {match.group(1)} here"


def test_readme_says_which_python_before_the_first_command():
    first_command = README.index("```sh")
    requirement = re.search(r"Python 3\.(\d+)", README)
    assert requirement and requirement.start() < first_command
    assert PROJECT["requires-python"] == f">=3.{requirement.group(1)}"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    hatchling_build = pytest.importorskip("hatchling.build")
    out = tmp_path_factory.mktemp("dist")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)  # a PEP 517 backend builds the project in the current directory
        wheel = out / hatchling_build.build_wheel(str(out))
        sdist = out / hatchling_build.build_sdist(str(out))
    return wheel, sdist


def test_wheel_ships_the_license(built: tuple[Path, Path]):
    wheel, _ = built
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert archive.read(license_file) == (ROOT / "LICENSE").read_bytes()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
    assert b"License-Expression: MIT" in metadata
    assert b"License-File: LICENSE" in metadata
    assert b"MIT License" in (ROOT / "LICENSE").read_bytes()
    assert f"Project-URL: Source, {SOURCE}".encode() in metadata


def test_sdist_ships_the_license_and_the_docs(built: tuple[Path, Path]):
    _, sdist = built
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    docs = {str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md")}
    assert docs
    assert {"LICENSE", "README.md", *docs} <= names


def test_wheel_ships_the_dashboard(built: tuple[Path, Path]):
    # The relay serves /admin/ from package data: a wheel without these files
    # would answer the dashboard with an error.
    wheel, _ = built
    shipped = ROOT / "ratatoskr_client" / "server" / "asyncio" / "dashboard"
    files = {p.name for p in shipped.iterdir()}
    assert {"index.html", "app.js", "app.css", "favicon.svg"} <= files
    with zipfile.ZipFile(wheel) as archive:
        for name in files:
            path = f"ratatoskr_client/server/asyncio/dashboard/{name}"
            assert archive.read(path) == (shipped / name).read_bytes(), path
