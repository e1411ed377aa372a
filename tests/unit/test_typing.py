"""The public API type-checks in a user's project under ``mypy --strict``.

A temporary directory stands for a user project that imports the installed
package: the README's own snippets, and every Python block of the pages that
teach the API (:data:`TYPED_PAGES`) that is meant to run, must pass
(a bot written from the docs alone passes ``mypy --strict``), and callbacks with the wrong
arguments, or for an event that does not exist, must be type errors; so must
an option that does not exist or a value of the wrong type for one (in a call,
in a ``ClientOptions`` dict, in a Locust user's ``client_options``).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
from collections.abc import Mapping
from typing import Any

from ratatoskr_client import (
    Backoff, ClientOptions, ClientStats, Peer, RatatoskrClient, RatatoskrError
)
from ratatoskr_client.locust import RatatoskrUser


async def main(client: RatatoskrClient) -> None:
    @client.on("presence-changed")
    def show(doc_id: str, peers: tuple[Peer, ...]) -> None: ...

    @client.once("state-changed")
    async def first_state(doc_id: str, peer: Peer, state: Mapping[str, Any]) -> None: ...

    client.on("ephemeral-message", lambda doc, sender, payload: print(sender.name, payload))
    client.on("reconnecting", lambda attempt, delay: print(attempt + 1, delay * 2))
    client.on("error", lambda error: print(error.args))
    client.on("connected", print)  # a callback accepting anything is fine

    def on_error(error: RatatoskrError) -> None: ...

    client.on("error", on_error)
    client.off("error", on_error)
    client.off("presence-changed", show)
    show("doc", (client.me,))  # the decorator keeps the function's own type
    stats: ClientStats = client.stats()
    print(stats.paced_sends + stats.waiters, client.me.chosen_name)


async def options(url: str) -> None:
    tuned = RatatoskrClient(url, token=None, heartbeat_interval=10, rate_limit=None, name="bot")
    options: ClientOptions = {"backoff": Backoff(max_attempts=3), "ping_interval": None}
    async with RatatoskrClient(url, session=None, **options) as client:
        await client.wait_connected(timeout=1)
    await tuned.close()


class Participant(RatatoskrUser):
    client_options = {"heartbeat_interval": 15.0, "reconnect": False}
"""

BAD = {
    "wrong-arity": 'client.on("presence-changed", lambda doc: None)',
    "wrong-type": ('def cb(doc: str, peers: int) -> None: ...\nclient.on("presence-changed", cb)'),
    "wrong-arity-decorator": ('@client.on("ephemeral-message")\ndef cb(doc: str) -> None: ...\n'),
    "unknown-event": 'client.on("presence_changed", lambda doc, peers: None)',
    "unknown-event-off": 'client.off("message", print)',
    "me-is-not-optional-but-typed": "x: int = client.me",
    "option-of-the-wrong-type": 'RatatoskrClient("http://x", heartbeat_interval="soon")',
    "option-that-does-not-exist": 'RatatoskrClient("http://x", heartbeat=3)',
    "options-dict-of-the-wrong-type": 'o: ClientOptions = {"rate_limit": "many"}',
    "locust-options-of-the-wrong-type": (
        'class User(RatatoskrUser):\n    client_options = {"state_ttl": "long"}'
    ),
}


#: The pages whose Python blocks are a user's code, checked as written.
TYPED_PAGES = (
    "README.md",
    "docs/guide.md",
    "docs/index.md",
    "docs/cluster.md",
    "docs/load-testing.md",
    "docs/server.md",
)


def documented_scripts() -> dict[str, str]:
    """{file name: code} for each Python block of :data:`TYPED_PAGES` meant to run."""
    from tests.docs.snippets import parse

    scripts: dict[str, str] = {}
    for page in TYPED_PAGES:
        for block in parse(ROOT / page).blocks:
            if block.kind == "python" and "not-run" not in block.markers:
                stem = re.sub(r"\W", "_", page.removesuffix(".md"))
                scripts[f"doc_{stem}_{block.line}.py"] = block.code
    return scripts


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## A taste of the API", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block under 'A taste of the API' in README.md"
    return match.group(1)


def run_mypy(project: Path, *files: str) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(project / ".mypy_cache"),
            *files,
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return done.stdout + done.stderr


@pytest.mark.slow
def test_the_readme_and_typed_callbacks_pass_mypy_strict_and_mistakes_do_not(
    tmp_path: Path,
) -> None:
    (tmp_path / "readme_snippet.py").write_text(readme_snippet())
    documented = documented_scripts()
    assert len(documented) >= 14, sorted(documented)  # the guide's dozen, README, index
    for name, code in documented.items():
        (tmp_path / name).write_text(code)
    (tmp_path / "good.py").write_text(GOOD)
    header = (
        "from ratatoskr_client import ClientOptions, RatatoskrClient\n"
        "from ratatoskr_client.locust import RatatoskrUser\n\n\n"
        "def f(client: RatatoskrClient) -> None:\n"
    )
    for name, body in BAD.items():
        path = tmp_path / f"bad_{name.replace('-', '_')}.py"
        path.write_text(header + textwrap.indent(body, "    ") + "\n")
    files = [
        "readme_snippet.py",
        *documented,
        "good.py",
        *(f"bad_{n.replace('-', '_')}.py" for n in BAD),
    ]
    output = run_mypy(tmp_path, *files)
    errors = [line for line in output.splitlines() if ": error:" in line]
    by_file: dict[str, list[str]] = {}
    for line in errors:
        by_file.setdefault(line.split(":", 1)[0], []).append(line)
    assert "readme_snippet.py" not in by_file, output
    typed_wrong = sorted(set(documented) & by_file.keys())
    assert not typed_wrong, "\n".join(line for name in typed_wrong for line in by_file[name])
    assert "good.py" not in by_file, output
    for name in BAD:
        assert f"bad_{name.replace('-', '_')}.py" in by_file, f"{name}: no type error\n{output}"
