"""docs/guide.md teaches every part of the API with an example.

The examples run, as printed, against ``ratatoskr relay`` on the port they
name, in tests/docs/test_snippets.py (with every other page's blocks), and
type-check under ``mypy --strict`` in tests/unit/test_typing.py.
"""

from __future__ import annotations

import re
from pathlib import Path

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide.md"


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
