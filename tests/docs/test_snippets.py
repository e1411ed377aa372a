"""Every python block and shell command of README.md, docs/*.md and
examples/*.md runs as printed, against the relay its page declares, or is
marked as not meant to run, with a reason (tests/docs/snippets.py has the
convention; docs/testing.md documents it).

One test per page: a page's blocks run in order in one driver process (one
relay for the page), in a network namespace of their own so that the port
the docs print, 4151, is free whatever else runs on the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ports import free_port

from . import snippets

if os.environ.get(snippets.NESTED):  # a documented pytest command, run by this test
    pytest.skip("the snippet runner does not run inside itself", allow_module_level=True)

PAGES = snippets.pages()
IDS = [p.relative_to(snippets.ROOT).as_posix() for p in PAGES]
#: Seconds for a whole page (the guide's dozen scripts take about 15 s).
PAGE_TIMEOUT = 110.0


@pytest.mark.parametrize("page", PAGES, ids=IDS)
@pytest.mark.slow
def test_every_block_of_the_page_runs_as_printed(page: Path) -> None:
    parsed = snippets.parse(page)
    runnable = [b for b in parsed.blocks if not {"not-run", "run-by", "save-as"} & b.markers.keys()]
    if not runnable:
        pytest.skip(f"{parsed.path} has no block to run")
    driver = [sys.executable, snippets.__file__, str(page)]
    prefix = snippets.namespace_command()
    command = [*prefix, *driver, "--namespace"] if prefix else [*driver, "--port", str(free_port())]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=PAGE_TIMEOUT, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert not report["failures"], "\n\n".join(report["failures"])
    assert report["ran"] + len(report["skipped"]) == len(runnable)
    # Run from a checkout, as the docs say, the commands leave nothing in it
    # (results go under /tmp, or where --output/--csv/--json is told).
    assert not report["left_behind"], f"left in the checkout: {report['left_behind']}"
    if report["skipped"]:
        pytest.skip("; ".join(report["skipped"]))  # what ran passed; the rest could not run


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_blocks_that_do_not_run_here_say_why_or_who_runs_them(page: Path) -> None:
    parsed = snippets.parse(page)  # raises on a not-run without a reason
    for block in parsed.blocks:
        by = block.markers.get("run-by")
        if by is not None:
            test = snippets.ROOT / by
            assert test.is_file(), f"{block.where}: run-by names {by}, which does not exist"
            assert Path(parsed.path).name in test.read_text(encoding="utf-8"), (
                f"{block.where}: {by} never mentions {parsed.path}"
            )
    configs = {b.markers["relay-config"] for b in parsed.blocks if "relay-config" in b.markers}
    if parsed.relay and parsed.relay[0] == "--config":
        configs.add(parsed.relay[1])
    text = page.read_text(encoding="utf-8")
    for config in sorted(configs):
        assert (snippets.ROOT / config).is_file(), f"{parsed.path}: no {config}"
        assert f"--config {config}" in text, (
            f"{parsed.path} runs blocks against {config}: the page must give the "
            f"command (`ratatoskr relay --config {config}`) to its readers too"
        )


def test_the_parser_reads_the_convention(tmp_path: Path) -> None:
    page = tmp_path / "probe.md"
    text = (
        "<!-- relay-config: examples/configs/app.toml -->\n\n"
        "```python\nprint(1)\n```\n"
        "<!-- relay-config: examples/configs/relay.toml -->\n"
        "```python\nprint(2)\n```\n"
        "<!-- not-run: a placeholder host -->\n"
        "```sh\nratatoskr watch https://example.com doc\n```\n"
        "<!-- save-as: bot.py -->\n<!-- timeout: 5 -->\n"
        "```py\nx = 1\n```\n"
        "```\nplain text\n```\n"
        "```sh\nratatoskr relay --port 4151 &   # start it\n"
        "ratatoskr watch http://127.0.0.1:4151 \\\n    doc-1 '#not-a-comment'\n```\n"
    )
    page.write_text(text, encoding="utf-8")
    parsed = snippets.parse(page)
    assert parsed.relay == ["--config", "examples/configs/app.toml"]
    kinds = [(b.kind, b.markers) for b in parsed.blocks]
    assert kinds == [
        ("python", {}),
        ("python", {"relay-config": "examples/configs/relay.toml"}),  # that block's alone
        ("shell", {"not-run": "a placeholder host"}),
        ("python", {"save-as": "bot.py", "timeout": "5"}),
        ("shell", {}),
    ]
    assert snippets.commands(parsed.blocks[4].code) == [
        "ratatoskr relay --port 4151 &",
        "ratatoskr watch http://127.0.0.1:4151 doc-1 '#not-a-comment'",
    ]


def test_a_not_run_marker_without_a_reason_is_refused(tmp_path: Path) -> None:
    page = tmp_path / "probe.md"
    page.write_text("<!-- not-run -->\n```sh\nfalse\n```\n", encoding="utf-8")
    with pytest.raises(ValueError, match="needs its reason"):
        snippets.parse(page)


def test_without_namespaces_the_port_is_replaced_where_it_is_a_port(tmp_path: Path) -> None:
    page = snippets.Page("probe.md", [], [])
    runner = snippets.Runner(page, tmp_path, 23456)
    code = (
        'URL = "http://127.0.0.1:4151"\n'
        "ratatoskr relay --port 4151\n"
        "ws://localhost:4151/sync port=4151\n"
        "sleep(14151); id-4151x\n"
    )
    assert runner.text(code) == (
        'URL = "http://127.0.0.1:23456"\n'
        "ratatoskr relay --port 23456\n"
        "ws://localhost:23456/sync port=23456\n"
        "sleep(14151); id-4151x\n"
    )
    assert snippets.Runner(page, tmp_path, snippets.PORT).text(code) == code  # as printed
