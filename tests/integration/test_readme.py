"""The README's "A taste of the API" script, run exactly as printed against
``ratatoskr relay`` on the port it names (4151).

The script's URL is not rewritten: a real ``python -m ratatoskr_client relay``
listens on 127.0.0.1:4151. To have that port to ourselves whatever else runs on
the machine (a developer's own relay, another test run), the relay and the script
run in a fresh network namespace (``unshare --net``, root or user namespaces)
where only this test's loopback exists. Where namespaces are not allowed the
test uses the machine's port 4151 if it is free, and is skipped, saying why,
if it is not.

When run as a script (``python test_readme.py SCRIPT [--bring-up-loopback]``)
this file is the driver: start the relay, run SCRIPT, report both as JSON.

The README's other blocks (the quick start, the blocking client, activating
the venv) run with every page's in tests/docs/test_snippets.py, whose runner
(tests/docs/snippets.py) this test shares the namespace helpers with; this
one checks what the taste script prints.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
if str(ROOT) not in sys.path:  # run as a script: the driver needs tests.docs
    sys.path.insert(0, str(ROOT))

from tests.docs.snippets import bring_up_loopback, namespace_command  # noqa: E402

PORT = 4151
#: Seconds for the relay to start and for the script to finish (it takes ~0.5 s).
START_TIMEOUT = 20.0
RUN_TIMEOUT = 30.0


def readme_script() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^## A taste of the API$.*?```python\n(.*?)```", text, re.S | re.M)
    assert match, "README.md lost its 'A taste of the API' script"
    return match.group(1)


# --------------------------------------------------------------------------- driver


def drive(script: Path) -> dict[str, Any]:
    relay = subprocess.Popen(
        [sys.executable, "-m", "ratatoskr_client", "relay"],  # the README's command
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert relay.stdout is not None
        line = relay.stdout.readline()  # the relay prints one line once it listens
        if "listening on" not in line:
            relay.kill()
            return {"error": f"relay did not start: {line!r} {relay.communicate()[1]}"}
        done = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        return {
            "relay": line,
            "code": done.returncode,
            "stdout": done.stdout,
            "stderr": done.stderr,
        }
    finally:
        relay.terminate()
        relay.wait(10)


if __name__ == "__main__":
    if "--bring-up-loopback" in sys.argv:
        bring_up_loopback()
    print(json.dumps(drive(Path(sys.argv[1]))))
    sys.exit(0)


# --------------------------------------------------------------------------- test

import pytest  # noqa: E402 (the driver above runs without pytest)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_readme_script_runs_to_the_end_against_ratatoskr_relay(tmp_path: Path) -> None:
    script = tmp_path / "taste.py"
    script.write_text(readme_script(), encoding="utf-8")
    assert f'"http://localhost:{PORT}"' in script.read_text()
    driver = [sys.executable, __file__, str(script)]
    prefix = namespace_command()
    if prefix is not None:
        command = [*prefix, *driver, "--bring-up-loopback"]
    elif port_is_free(PORT):
        command = driver
    else:
        pytest.skip(f"port {PORT} is in use and this machine allows no network namespace")
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=START_TIMEOUT + RUN_TIMEOUT, check=False
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert "error" not in result, result["error"]
    assert result["relay"] == f"ratatoskr relay listening on ws://127.0.0.1:{PORT}/sync\n"
    assert result["code"] == 0, result["stderr"]
    assert "Traceback" not in result["stderr"]
    out = result["stdout"]
    me = re.match(r"I am (.+)\n", out)
    assert me, out
    assert f"already here: [{me.group(1)!r}]" in out
    assert re.search(r"^doc-123 -> \[.+, .+\]$", out, re.M), out  # the second participant
    assert "sent {'reaction': '🎉'} on doc-123\n" in out
    assert "sent {'text': 'hello'} on eph:chat-doc-123\n" in out
    assert "'cursor': [3, 4]" in out
