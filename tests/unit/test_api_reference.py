"""The API reference (mkdocs.yml, docs/reference.md, tools/api_reference.py):
every public name has a docstring, every public module is rendered or
deliberately left out, Sphinx roles become links, and a broken link or a
missing docstring fails ``mkdocs build --strict`` as CI runs it.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import griffe
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import api_reference  # noqa: E402 (tools/ is not a package)

from tests import docsite  # noqa: E402

REFERENCE = ROOT / "docs" / "reference.md"


@pytest.fixture(scope="module")
def package() -> griffe.Module:
    return griffe.load("ratatoskr_client", search_paths=[str(ROOT)])


def test_every_public_name_has_a_docstring(package: griffe.Module):
    missing = set(api_reference.undocumented(package))
    assert missing - api_reference.KNOWN_GAPS == set(), "add docstrings to these public names"
    assert api_reference.KNOWN_GAPS - missing == set(), (
        "these have docstrings now: remove them from KNOWN_GAPS in tools/api_reference.py"
    )


def test_the_check_walks_every_public_module_and_export(tmp_path: Path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        '"""A package."""\nfrom ._impl import hidden\nfrom .mod import Thing\n'
        '__all__ = ["Thing", "hidden"]\n'
    )
    (pkg / "_impl.py").write_text('"""Private."""\ndef hidden():\n    pass\n')
    (pkg / "mod.py").write_text(
        '"""Public."""\n__all__ = ["Thing", "VALUE"]\nVALUE = 1\n'
        "class Thing:\n"
        "    def method(self):\n        pass\n"
        "    def _private(self):\n        pass\n"
        "    @property\n    def size(self):\n        return 1\n"
        '    def documented(self):\n        """Yes."""\n'
    )
    (pkg / "sub" / "__init__.py").write_text("def orphan():\n    pass\n__all__ = ['orphan']\n")
    loaded = griffe.load("pkg", search_paths=[str(tmp_path)])
    assert api_reference.undocumented(loaded) == [
        "pkg._impl.hidden",  # private module, public name: exported by pkg
        "pkg.mod.Thing",
        "pkg.mod.Thing.method",
        "pkg.mod.Thing.size",
        "pkg.sub",
        "pkg.sub.orphan",
    ]


def test_sphinx_roles_become_crossrefs(package: griffe.Module):
    client = package["asyncio"]["client"]["RatatoskrClient"]
    testing = package["testing"]
    convert = api_reference.convert

    def link(path: str, title: str) -> str:
        return f'<autoref identifier="{path}" optional><code>{title}</code></autoref>'

    assert convert("call :meth:`connect` first", client) == (
        f"call {link('ratatoskr_client.asyncio.client.RatatoskrClient.connect', 'connect')} first"
    )
    assert convert(":class:`~ratatoskr_client.server.RelayServer`", testing) == link(
        "ratatoskr_client.server.RelayServer", "RelayServer"
    )  # a full path, although testing also has a member called ratatoskr_client
    assert convert(":class:`RelayConfig`", testing) == link(
        "ratatoskr_client.server.RelayConfig",
        "RelayConfig",  # as imported there
    )
    # What does not exist stays a required cross-reference: mkdocs --strict fails on it.
    assert (
        convert(":func:`ratatoskr_client.nope`", client)
        == "[`ratatoskr_client.nope`][ratatoskr_client.nope]"
    )
    assert convert(":class:`TimeoutError`", client) == "[`TimeoutError`][TimeoutError]"
    assert convert("like this::\n\n    code", None) == "like this:\n\n    code"


def rendered_and_excluded() -> tuple[list[str], list[str]]:
    text = REFERENCE.read_text(encoding="utf-8")
    rendered = re.findall(r"^::: (\S+)$", text, re.M)
    excluded_block = re.search(r"<!-- not rendered:.*?:\n(.*?)-->", text, re.S)
    assert excluded_block, "docs/reference.md lost its 'not rendered' list"
    return rendered, excluded_block.group(1).split()


def test_every_public_module_is_rendered_or_deliberately_left_out(package: griffe.Module):
    rendered, excluded = rendered_and_excluded()
    public = {m.path for m in api_reference.public_modules(package)}
    assert not set(rendered) & set(excluded)
    unlisted = public - set(rendered) - set(excluded)
    assert not unlisted, (
        f"add each to docs/reference.md (a ::: line, or the not-rendered list): {unlisted}"
    )
    assert set(rendered) | set(excluded) <= public, "docs/reference.md names a module that is gone"


@pytest.mark.slow
def test_docs_build_in_strict_mode(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
):
    built = docsite.site(pytestconfig, tmp_path_factory)  # (built once per run: tests/docsite.py)
    assert built.returncode == 0, built.stderr
    page = (built.site / "reference" / "index.html").read_text(encoding="utf-8")
    assert 'id="ratatoskr_client.RatatoskrClient.enter_document"' in page
    assert ":meth:" not in page and ":class:" not in page
    # The events and their callbacks are on the page, under public names only.
    for event in ("presence-changed", "ephemeral-message", "state-changed", "peer-joined"):
        assert f"<code>{event}</code>" in page, event
    assert 'id="ratatoskr_client.events.PresenceCallback"' in page
    # on() is one readable signature (not one overload per event group) that
    # points at the events.
    on = page[page.index('id="ratatoskr_client.RatatoskrClient.on"') :]
    on = re.sub(r"<[^>]+>", "", on[: on.index('id="ratatoskr_client.RatatoskrClient.once"')])
    assert len(re.findall(r"\bon\(\s*event", on)) == 1 and "PeerEvent" not in on, on
    assert "ratatoskr_client.events" in on and "PresenceCallback" in on
    assert not re.findall(r"\b_[A-Z]\w+", re.sub(r"<[^>]+>", "", page)), "a private name shows"
    # Defaults are values, not the names of constants.
    assert not re.findall(r"=\s*(?:<[^>]+>)*DEFAULT_", page)
    # Offline: highlighted at build time, every script and stylesheet served by the site.
    site = built.site
    for html in site.rglob("*.html"):
        text = html.read_text(encoding="utf-8")
        external = re.findall(r'<(?:script|link)\b[^>]*(?:src|href)="(https?:)?//[^"]*"', text)
        assert not external, f"{html.relative_to(site)} loads {external} from the network"
    assert 'class="highlight"' in (site / "guide" / "index.html").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("source", "error"),
    [
        (
            '"""A module.\n\nSee :class:`ratatoskr_client.NoSuchThing`."""\n'
            '__all__ = ["f"]\ndef f():\n    """Fine."""\n',
            "Could not find cross-reference target 'ratatoskr_client.NoSuchThing'",
        ),
        (
            '"""A module."""\n__all__ = ["f"]\ndef f():\n    pass\n',
            "ratatoskr_client.zz_docs_probe.f is public and has no docstring",
        ),
    ],
    ids=["broken reference", "missing docstring"],
)
@pytest.mark.slow
def test_docs_build_fails_on(source: str, error: str, tmp_path: Path):
    # A copy of the package with one bad module, rendered by a copy of the real
    # config (its strict mode, plugins, extensions and validation) on a site of
    # one page: the bad module's. The whole site's build is the test above;
    # here only the failure is under test, and the other pages would cost most
    # of the build's CPU without being able to change its outcome.
    copy = tmp_path / "src" / "ratatoskr_client"
    shutil.copytree(ROOT / "ratatoskr_client", copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "zz_docs_probe.py").write_text(source)
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs" / "css", docs / "css")
    (docs / "reference.md").write_text("# API reference\n\n::: ratatoskr_client.zz_docs_probe\n")
    config = (ROOT / "mkdocs.yml").read_text()
    config, navs = re.subn(
        r"^nav:\n(?:  - .*\n)+", "nav:\n  - API reference: reference.md\n", config, flags=re.M
    )
    assert navs == 1, "mkdocs.yml's nav moved: update this test"
    config = config.replace("docs_dir: docs", f"docs_dir: {docs}")
    config = config.replace("paths: [.]", f"paths: [{copy.parent}]")
    config = config.replace("tools/api_reference.py", str(ROOT / "tools" / "api_reference.py"))
    (tmp_path / "mkdocs.yml").write_text(config)
    done = docsite.mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0
    assert error in done.stderr
