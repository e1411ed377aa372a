"""`ratatoskr demo` and `ratatoskr watch`, run as a user runs them (subprocesses).

`ratatoskr relay` has its own file (test_relay_cli.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from typing import Any

import pytest

from ratatoskr_client.demo import DEMO_DOCUMENTS, run_demo

TIMEOUT = 15.0
USERS = [{"token": "alice-secret", "id": "alice", "name": "Alice"}]
DOCS = [
    {"id": "doc-123", "owner": "alice", "acl": [{"principal": "public"}]},
    {"id": "private", "owner": "alice"},
]


async def ratatoskr(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ratatoskr_client",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# --------------------------------------------------------------------------- demo


async def test_demo_shows_presence_changing_and_exits_zero():
    code, out, err = await finish(await ratatoskr("demo", "--duration", "4", "--bots", "6"))
    assert code == 0, err
    lines = out.splitlines()
    assert "relay listening on ws://127.0.0.1:" in lines[0]
    joins = [line for line in lines if " joined (" in line]
    assert len(joins) >= 3  # presence changed, several times
    assert any(doc in line for line in joins for doc in DEMO_DOCUMENTS)
    assert any("moved cursor" in line or "reacted" in line for line in lines)
    assert lines[-1].split(" ", 1)[1].startswith("demo finished:")
    assert "Traceback" not in err


async def test_demo_stops_on_sigint_with_status_zero():
    proc = await ratatoskr("demo")
    assert proc.stdout is not None
    first = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
    assert b"relay listening" in first
    proc.send_signal(signal.SIGINT)
    code, _, err = await finish(proc)
    assert code == 0, err


async def test_demo_live_view_renders(capsys: pytest.CaptureFixture[str]):
    assert await run_demo(bots=3, duration=1.5, seed=7, tty=True) == 0
    shown = capsys.readouterr().out
    assert "Who is here" in shown
    assert "Latest messages" in shown


# --------------------------------------------------------------------------- watch


async def read_json_line(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    assert proc.stdout is not None
    raw = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
    assert raw, "watch exited early"
    return json.loads(raw)


@pytest.mark.ratatoskr_relay(users=USERS, documents=DOCS)
async def test_watch_json_prints_a_line_per_presence_change(ratatoskr_relay, ratatoskr_client):
    proc = await ratatoskr("watch", ratatoskr_relay.url, "doc-123", "--json")
    try:
        first = await read_json_line(proc)
        assert first["document"] == "doc-123"
        (watcher,) = first["peers"]
        assert set(watcher) == {"peer_id", "name", "user_id", "is_anonymous"}
        assert watcher["is_anonymous"] is True
        assert watcher["user_id"] is None

        alice = await ratatoskr_client(token="alice-secret")
        await alice.enter_document("doc-123")
        line = await read_json_line(proc)
        assert [p["name"] for p in line["peers"]] == [watcher["name"], "Alice"]
        assert line["peers"][1] == {
            "peer_id": alice.me.peer_id,
            "name": "Alice",
            "user_id": "alice",
            "is_anonymous": False,
        }
        await alice.leave_document("doc-123")
        assert (await read_json_line(proc))["peers"] == [watcher]
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        code, out, err = await finish(proc)
    assert code == 0, err
    assert out == ""  # our own shutdown is not printed as a presence change


@pytest.mark.ratatoskr_relay(users=USERS, documents=DOCS)
@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["doc-123", "--token", "wrong"], "authentication failed (invalid_token)"),
        (["private"], "permission denied"),
        (["no-such-doc"], "document not found"),
    ],
)
async def test_watch_fails_with_one_line_and_status_one(ratatoskr_relay, args, reason):
    code, out, err = await finish(await ratatoskr("watch", ratatoskr_relay.url, *args, "--json"))
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("ratatoskr watch: ")
    assert reason in err


async def test_watch_unreachable_server_fails_with_status_one(unused_tcp_port: int):
    code, _, err = await finish(
        await ratatoskr("watch", f"http://127.0.0.1:{unused_tcp_port}", "doc", "--json")
    )
    assert code == 1
    assert err.startswith("ratatoskr watch: cannot reach")
    assert err.count("\n") == 1


async def test_watch_plain_output_is_timestamped_lines(ratatoskr_relay, ratatoskr_client):
    proc = await ratatoskr("watch", ratatoskr_relay.url, "d")
    assert proc.stdout is not None
    try:
        first = (await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)).decode()
        assert first.split(" ", 1)[1].startswith("d: ")
        visitor = await ratatoskr_client()
        await visitor.enter_document("d")
        second = (await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)).decode()
        assert visitor.me.name in second
    finally:
        proc.send_signal(signal.SIGTERM)
        code, _, err = await finish(proc)
    assert code == 0, err
