"""docs/server.md against the code: its scripts run, its field lists are complete."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import sys
from pathlib import Path

import pytest

from ratatoskr_client.server import RelayConfig, RelayStats

DOC = Path(__file__).resolve().parents[2] / "docs" / "server.md"
TEXT = DOC.read_text(encoding="utf-8")
SCRIPTS = re.findall(r"<!-- run -->\s*```python\n(.*?)```", TEXT, re.S)


def public_fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}


def names_in(paragraph_start: str, paragraph_end: str) -> set[str]:
    """The `backticked` names in the text between two markers of server.md."""
    start = TEXT.index(paragraph_start)
    end = TEXT.index(paragraph_end, start)
    return set(re.findall(r"`(\w+)`", TEXT[start:end]))


def test_server_md_has_a_runnable_relay_server_script():
    assert any("RelayServer(" in script for script in SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
async def test_server_md_script_runs_as_written(script: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert re.search(rb"^http://127\.0\.0\.1:\d+\n", out), out
    assert b"RelayStats(" in out


def test_every_relay_config_field_is_listed():
    listed = names_in("Fields:", "Unlike the CLI")
    assert public_fields(RelayConfig) <= listed, public_fields(RelayConfig) - listed


def test_every_relay_stats_field_is_described():
    described = names_in("`relay.stats()` returns", "- `relay.core`")
    assert public_fields(RelayStats) <= described, public_fields(RelayStats) - described


async def test_an_in_process_relay_in_open_mode_stays_quiet(caplog: pytest.LogCaptureFixture):
    # server.md: the CLI warns about open mode; RelayServer, where open mode is
    # the application's own choice, logs it at INFO only (no stderr noise).
    from ratatoskr_client.server import RelayServer

    async with RelayServer(port=0) as relay:
        assert relay.config.open
    opened = [r for r in caplog.records if r.getMessage().startswith("open mode:")]
    assert [r.levelname for r in opened] == ["INFO"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_example_configuration_is_the_file_in_examples():
    # The page's commands start the relay with examples/configs/relay.toml: the
    # file the reader sees printed is the file the command reads.
    printed = re.search(r"```toml\n(# Settings.*?)```", TEXT, re.S)
    assert printed, "server.md lost its example configuration"
    shipped = DOC.parents[1] / "examples" / "configs" / "relay.toml"
    assert shipped.read_text(encoding="utf-8") == printed.group(1)
