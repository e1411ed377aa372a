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

from ratatoskr_client import __version__
from ratatoskr_client.cli.demo import DEMO_DOCUMENTS, run_demo
from ratatoskr_client.cli.main import main

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


@pytest.mark.slow
async def test_demo_shows_presence_changing_and_exits_zero():
    code, out, err = await finish(await ratatoskr("demo", "--duration", "4", "--bots", "6"))
    assert code == 0, err
    lines = out.splitlines()
    assert "relay listening on ws://127.0.0.1:" in lines[0]
    assert " was refused: " not in out  # the demo opens with presence, not a refusal
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
        assert set(watcher) == {"peer_id", "name", "display_name", "user_id", "is_anonymous"}
        assert watcher["display_name"] == watcher["name"]  # it chose no name
        assert watcher["is_anonymous"] is True
        assert watcher["user_id"] is None

        alice = await ratatoskr_client(token="alice-secret")
        await alice.enter_document("doc-123")
        line = await read_json_line(proc)
        assert [p["name"] for p in line["peers"]] == [watcher["name"], "Alice"]
        assert line["peers"][1] == {
            "peer_id": alice.me.peer_id,
            "name": "Alice",
            "display_name": "Alice",
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


# --------------------------------------------------------------------------- usage

USAGE_ERRORS = [
    # (argv, what stderr must say)
    (["watch", "localhost:4151", "doc"], "did you mean 'http://localhost:4151'?"),
    (["watch", "ftp://example.org", "doc"], "invalid URL: expected an http(s):// or ws(s)://"),
    (["watch", "http://", "doc"], "invalid URL"),
    (["watch", "http://127.0.0.1:99999", "doc"], "is not a number from 0 to 65535"),
    (["watch", "http://127.0.0.1:4151", ""], "argument DOC_ID: must not be empty"),
    (["watch", "http://127.0.0.1:4151", "doc", "--token", ""], "--token: must not be empty"),
    (["watch", "http://127.0.0.1:4151"], "required: DOC_ID"),
    (["relay", "--port", "70000"], "must be 0-65535"),
    (["demo", "--bots", "0"], "must be >= 1"),
    (["--log-level", "LOUD", "relay"], "invalid choice: 'LOUD'"),
    (["relay", "--log-level", "LOUD"], "invalid choice: 'LOUD'"),
    (["teleport"], "invalid choice: 'teleport'"),
    # A misspelt option: the command's own usage, and the option meant.
    (["relay", "--prot", "4161"], "ratatoskr relay: error: unrecognized arguments: --prot 4161"),
    (["relay", "--prot", "4161"], "(did you mean --port?)"),
    (["watch", "http://h", "d", "--tokn=x"], "(did you mean --token?)"),
    (["demo", "--duraton", "1"], "ratatoskr demo: error: unrecognized arguments"),
    ([], "the following arguments are required: COMMAND"),
]


@pytest.mark.parametrize(("argv", "says"), USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_usage_errors_return_2_from_main(argv, says, capsys: pytest.CaptureFixture[str]):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert says in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("argv", "says"), USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
async def test_usage_errors_exit_2_from_the_command(argv, says):
    code, out, err = await finish(await ratatoskr(*argv))
    assert code == 2, err
    assert out == ""
    assert says in err
    assert "Traceback" not in err
    # Errors that argparse does not see are still one line, like every other failure.
    if err.startswith("ratatoskr watch: invalid URL"):
        assert err.count("\n") == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-level", "INFO", "demo", "--bots", "1", "--duration", "0.2"],
        ["demo", "--log-level", "INFO", "--bots", "1", "--duration", "0.2"],
        ["demo", "--bots", "1", "--duration", "0.2", "--log-level", "INFO"],
    ],
)
def test_global_options_work_before_and_after_the_command(argv, capsys):
    assert main(argv) == 0, capsys.readouterr().err


def test_a_misspelt_option_shows_the_commands_usage_not_the_top_level_one(capsys):
    assert main(["relay", "--prot", "4161"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ratatoskr relay ")
    assert "--port PORT" in err
    assert err.splitlines()[-1] == (
        "ratatoskr relay: error: unrecognized arguments: --prot 4161 (did you mean --port?)"
    )


def test_an_option_far_from_every_known_one_gets_no_guess(capsys):
    assert main(["relay", "--zzzzzz"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "ratatoskr relay: error: unrecognized arguments: --zzzzzz"
    )


@pytest.mark.parametrize(("level", "flag_at"), [("debug", "before"), ("Info", "after")])
def test_log_level_is_case_insensitive(level, flag_at, capsys):
    flag = ["--log-level", level]
    argv = ["demo", "--bots", "1", "--duration", "0.2"]
    assert main(flag + argv if flag_at == "before" else argv + flag) == 0
    assert "invalid choice" not in capsys.readouterr().err


@pytest.mark.parametrize("flag_at", ["before", "after"])
async def test_log_level_takes_effect_before_and_after_the_command(flag_at):
    flag = ["--log-level", "INFO"]
    argv = ["demo", "--bots", "1", "--duration", "0.2"]
    code, _, err = await finish(
        await ratatoskr(*(flag + argv if flag_at == "before" else argv + flag))
    )
    assert code == 0, err
    assert " INFO ratatoskr_client.server: " in err  # the relay says where it listens


async def test_log_level_defaults_to_warning_and_the_last_one_wins():
    argv = ["demo", "--bots", "1", "--duration", "0.2"]
    code, _, err = await finish(await ratatoskr(*argv))
    assert code == 0, err
    assert " INFO " not in err
    code, _, err = await finish(
        await ratatoskr("--log-level", "INFO", *argv, "--log-level", "ERROR")
    )
    assert code == 0, err
    assert " INFO " not in err


@pytest.mark.parametrize("argv", [["--version"], ["watch", "--version"]])
def test_version_before_and_after_the_command(argv, capsys):
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == f"ratatoskr {__version__}"


# --------------------------------------------------------------------------- token


def test_token_mints_an_upstream_session_token_the_relay_accepts(tmp_path, capsys):
    from ratatoskr_client.cli.main import main
    from ratatoskr_client.protocol.tokens import read_lifetime
    from ratatoskr_client.server.core.identities import Identity, verify_upstream_session

    secret = tmp_path / "secret"
    secret.write_text("upstream-test-secret-0123456789abcdef\n")
    assert main(["token", "alice", "--secret-file", str(secret), "--lifetime", "60"]) == 0
    token = capsys.readouterr().out.strip()
    lifetime = read_lifetime(token)
    assert lifetime is not None and lifetime.expires_at - (lifetime.issued_at or 0) == 60
    verdict = verify_upstream_session(
        token, "upstream-test-secret-0123456789abcdef", lifetime.expires_at - 30, 0
    )
    assert isinstance(verdict, Identity) and verdict.user_id == "alice"


def test_token_mints_a_jwt_with_its_claims(tmp_path, capsys, monkeypatch):
    import jwt

    from ratatoskr_client.cli.main import main

    monkeypatch.setenv("MY_JWT_SECRET", "jwt-secret-of-at-least-32-bytes-long!")
    args = ["token", "bob", "--secret-env", "MY_JWT_SECRET", "--jwt", "--name", "Bob"]
    assert main([*args, "--audience", "relay"]) == 0
    token = capsys.readouterr().out.strip()
    claims = jwt.decode(
        token, "jwt-secret-of-at-least-32-bytes-long!", algorithms=["HS256"], audience="relay"
    )
    assert (claims["sub"], claims["name"], claims["exp"] - claims["iat"]) == ("bob", "Bob", 3600)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--secret-file", "/nonexistent/secret"], "cannot read"),
        (["--secret-env", "NOT_SET_ANYWHERE_42"], "NOT_SET_ANYWHERE_42"),
        (["--secret-file", "SECRET", "--name", "x"], "need --jwt"),
        (["--secret-file", "SECRET", "--lifetime", "0"], "--lifetime"),
        ([], "required"),
    ],
)
def test_token_refuses_bad_input_with_one_line_and_status_two(tmp_path, capsys, args, message):
    from ratatoskr_client.cli.main import main

    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    args = [str(secret) if a == "SECRET" else a for a in args]
    assert main(["token", "alice", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]
