"""Every example in docs/guide.md marked ``<!-- run -->`` runs, as written, against
a real relay: the docs cannot drift from the code.

Examples that use the default ``URL`` get the test relay's URL instead of
``http://127.0.0.1:4151``; the others start their own relay.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide.md"
DEFAULT_URL = 'URL = "http://127.0.0.1:4151"'


def examples() -> list[tuple[str, str]]:
    text = GUIDE.read_text(encoding="utf-8")
    found = []
    for match in re.finditer(r"^## (.+?)$|<!-- run -->\s*```python\n(.*?)```", text, re.S | re.M):
        if match.group(1):
            section = match.group(1)
        else:
            found.append((section, match.group(2)))
    return found


EXAMPLES = examples()


def test_the_guide_has_an_example_per_section():
    sections = {s for s, _ in EXAMPLES}
    assert sections >= {
        "Connecting",
        "Identities",
        "Presence",
        "Ephemeral messages",
        "Sidecar channels",
        "Per-peer state",
        "Events",
        "Reconnects",
        "Errors",
        "Pacing",
    }


@pytest.mark.parametrize(("section", "code"), EXAMPLES, ids=[s for s, _ in EXAMPLES])
async def test_guide_example_runs(section: str, code: str, ratatoskr_relay) -> None:
    script = code.replace(DEFAULT_URL, f'URL = "{ratatoskr_relay.url}"')
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, f"{section} example failed:\n{err.decode()}"
    assert out.strip(), f"{section} example printed nothing"
