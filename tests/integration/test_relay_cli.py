"""``python -m ratatoskr_client relay`` as a real process, driven by raw WebSocket clients."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import cbor2
import pytest

from .rawpeer import RawPeers

LISTENING = re.compile(r"^ratatoskr relay listening on ws://127\.0\.0\.1:(\d+)/sync\n$")
STARTUP_TIMEOUT = 20.0  # generous: a cold interpreter on a busy 2-core machine
EXIT_TIMEOUT = 5.0

CONFIG = """
[[users]]
token = "alice-secret"
id = "alice"
name = "Alice"

[[documents]]
id = "doc-1"
owner = "alice"
acl = [{ principal = "public", permission = "read" }]

[[documents]]
id = "private"
owner = "alice"

[[documents]]
id = "doc-2"
acl = [{ principal = "public" }]
"""


@dataclass
class RelayProcess:
    proc: asyncio.subprocess.Process
    line: str
    ws_url: str

    @property
    def port(self) -> int:
        return int(self.ws_url.rsplit(":", 1)[1].split("/")[0])

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> tuple[int, bytes, bytes]:
        """Send ``sig``; the exit code and the rest of stdout and stderr."""
        self.proc.send_signal(sig)
        stdout, stderr = await asyncio.wait_for(self.proc.communicate(), EXIT_TIMEOUT)
        assert self.proc.returncode is not None
        return self.proc.returncode, stdout, stderr


def relay_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ratatoskr_client", "relay", *args]


async def kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def _limit_open_files(limit: int) -> Callable[[], None]:
    def apply() -> None:  # in the child, before exec
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


@contextlib.asynccontextmanager
async def relay_process(
    *args: str, rlimit_nofile: int | None = None
) -> AsyncIterator[RelayProcess]:
    """A relay process on a free port; ``rlimit_nofile`` caps its open files."""
    proc = await asyncio.create_subprocess_exec(
        *relay_command("--port", "0", *args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=None if rlimit_nofile is None else _limit_open_files(rlimit_nofile),
    )
    try:
        assert proc.stdout is not None
        try:
            raw = await asyncio.wait_for(proc.stdout.readline(), STARTUP_TIMEOUT)
        except TimeoutError:
            pytest.fail(f"the relay printed nothing within {STARTUP_TIMEOUT} s")
        line = raw.decode()
        match = LISTENING.match(line)
        if match is None:
            await kill(proc)
            assert proc.stderr is not None
            err = await proc.stderr.read()
            pytest.fail(f"unexpected first line {line!r}; stderr: {err.decode()!r}")
        port = int(match.group(1))
        assert 0 < port < 65536
        yield RelayProcess(proc, line, f"ws://127.0.0.1:{port}/sync")
    finally:
        await kill(proc)


async def test_relay_command_serves_two_raw_clients_and_stops_on_sigterm() -> None:
    async with relay_process() as relay, RawPeers(relay.ws_url) as peers:
        a = await peers()
        b = await peers()
        assert a.user is not None
        assert a.user["isAnonymous"] is True
        assert (await a.join("doc-1"))["peers"] == [a.peer_id]
        assert (await b.join("doc-1"))["peers"] == [a.peer_id, b.peer_id]
        await a.recv_type("peer_joined_doc", peerId=b.peer_id)
        # Identities go with the document (the default identity scope), each
        # just before the presence frame that names the peer.
        types = [(f["type"], f.get("peerId")) for f in b.frames[1:]]
        assert types[:2] == [("peer_identity", a.peer_id), ("doc_presence_state", None)]
        types = [(f["type"], f.get("peerId")) for f in a.frames[1:]]
        assert types[1:3] == [("peer_identity", b.peer_id), ("peer_joined_doc", b.peer_id)]

        await a.ephemeral("doc-1", {"cursor": [1, 2]})
        got = await b.recv_type("ephemeral", documentId="doc-1")
        assert got["senderId"] == a.peer_id
        assert got["targetId"] == b.peer_id
        assert cbor2.loads(got["data"]) == {"cursor": [1, 2]}
        await b.ephemeral("doc-1", "reply")
        assert cbor2.loads((await a.recv_type("ephemeral"))["data"]) == "reply"

        await b.leave("doc-1")
        await a.recv_type("peer_left_doc", documentId="doc-1", peerId=b.peer_id)

        code, stdout, stderr = await relay.stop(signal.SIGTERM)
        assert code == 0, stderr.decode()
        assert stdout == b"", "exactly one line on stdout"
        assert b"open mode" in stderr  # no --config: the relay warns
        assert b"Traceback" not in stderr
        # Every socket was closed by the relay (1001: going away).
        assert await a.wait_closed() == 1001
        assert await b.wait_closed() == 1001


async def test_relay_command_stops_on_sigint() -> None:
    async with relay_process() as relay, RawPeers(relay.ws_url) as peers:
        peer = await peers()
        code, stdout, stderr = await relay.stop(signal.SIGINT)
        assert code == 0, stderr.decode()
        assert stdout == b""
        assert b"Traceback" not in stderr
        assert await peer.wait_closed() == 1001


async def test_relay_command_with_config_and_flags(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(CONFIG, encoding="utf-8")
    async with (
        relay_process(
            "--config", str(config), "--presence-ttl", "0.5", "--rate-limit", "2"
        ) as relay,
        RawPeers(relay.ws_url) as peers,
    ):
        alice = await peers("alice-secret")
        assert alice.user == {"id": "alice", "name": "Alice", "isAnonymous": False}
        anon = await peers()
        # The ACL from the file is in force.
        await anon.presence("private", "join")
        denied = await anon.recv_type("error")
        assert (denied["error"], denied["documentId"]) == ("permission_denied", "private")
        await anon.presence("not-in-file", "join")
        assert (await anon.recv_type("error"))["error"] == "document_not_found"

        # --rate-limit 2: the third message within the minute is refused.
        await anon.join("doc-1")
        for i in range(2):
            await alice.ephemeral("doc-1", i)
        await alice.ephemeral("doc-1", "third")
        limited = await alice.recv_type("error")
        assert limited["error"] == "rate_limited"
        assert 0 < limited["retryAfter"] <= 30.0
        got = [await anon.recv_type("ephemeral") for _ in range(2)]
        assert [cbor2.loads(f["data"]) for f in got] == [0, 1]

        # --presence-ttl 0.5: a silent peer is gone after half a second.
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        await anon.join("doc-2")
        await anon.recv_type("peer_left_doc", documentId="doc-2", peerId=anon.peer_id)
        assert 0.5 <= loop.time() - sent_at < 5  # the default TTL would be 90 s

        code, stdout, stderr = await relay.stop()
        assert code == 0, stderr.decode()
        assert stdout == b""
        assert b"open mode" not in stderr


@pytest.mark.parametrize(
    ("text", "entry", "problem"),
    [
        (
            CONFIG + '\n[[documents]]\nid = "doc-9"\nowner = "carol"\n',
            "documents[3] (id 'doc-9')",
            "owner 'carol' is not a user",
        ),
        ('[[users]]\ntoken = "t"\nid = "public"\n', "users[0] (id 'public')", "reserved"),
        ("presence_ttl = 0\n", "presence_ttl", "must be a positive number"),
        ("this is not toml\n", "", "not valid TOML"),
        (b"\xff\xfe x", "", "not UTF-8 text (TOML files must be UTF-8): byte 0xff at line 1"),
    ],
)
async def test_bad_config_exits_2_naming_file_entry_and_problem(
    tmp_path: Path, text: str | bytes, entry: str, problem: str
) -> None:
    config = tmp_path / "bad-relay.toml"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    proc = await asyncio.create_subprocess_exec(
        *relay_command("--port", "0", "--config", str(config)),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), STARTUP_TIMEOUT)
    finally:
        await kill(proc)
    message = stderr.decode()
    assert proc.returncode == 2, message
    assert stdout == b""
    assert str(config) in message
    assert entry in message
    assert problem in message
    assert "Traceback" not in message
    assert message.count("\n") == 1, "one line on stderr"


@pytest.mark.parametrize(
    "args",
    [
        ["--config", "/nonexistent/relay.toml"],
        ["--presence-ttl", "0"],
        ["--rate-limit", "-5"],
        ["--port", "70000"],
    ],
)
async def test_bad_arguments_exit_2(args: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        *relay_command("--port", "0", *args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), STARTUP_TIMEOUT)
    finally:
        await kill(proc)
    assert proc.returncode == 2, stderr.decode()
    assert stdout == b""
    assert stderr


async def test_relay_command_runs_on_uvloop() -> None:
    pytest.importorskip("uvloop")
    async with relay_process("--uvloop") as relay, RawPeers(relay.ws_url) as peers:
        a = await peers()
        b = await peers()
        assert (await a.join("doc-1"))["peers"] == [a.peer_id]
        assert (await b.join("doc-1"))["peers"] == [a.peer_id, b.peer_id]
        await a.ephemeral("doc-1", {"cursor": [1, 2]})
        got = await b.recv_type("ephemeral", documentId="doc-1")
        assert cbor2.loads(got["data"]) == {"cursor": [1, 2]}
        code, stdout, stderr = await relay.stop(signal.SIGTERM)
        assert code == 0, stderr.decode()
        assert stdout == b""
        assert b"Traceback" not in stderr
        assert await a.wait_closed() == 1001


async def test_uvloop_flag_without_uvloop_exits_2() -> None:
    # Hide uvloop from the import system, as on an install without the 'speed' extra.
    code = (
        "import sys; sys.modules['uvloop'] = None; "
        "from ratatoskr_client.cli.main import main; "
        "sys.exit(main(['relay', '--uvloop', '--port', '0']))"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), STARTUP_TIMEOUT)
    finally:
        await kill(proc)
    assert proc.returncode == 2, stderr.decode()
    assert stdout == b""
    assert b'.venv/bin/pip install -e ".[speed]"' in stderr


async def test_identity_scope_and_connection_limit_flags() -> None:
    args = ("--identity-scope", "global", "--anonymous-connection-limit", "5")
    async with relay_process(*args) as relay, RawPeers(relay.ws_url) as peers:
        a = await peers()
        b = await peers()
        # Global scope: no "scoped-identity", and every identity to everyone.
        assert "scoped-identity" not in a.frames[0]["features"]
        await a.recv_type("peer_identity", peerId=b.peer_id)
        # (Loopback is exempt from the connection limit: these are not refused.)
        for _ in range(6):
            await peers()
        code, _, stderr = await relay.stop(signal.SIGTERM)
        assert code == 0, stderr.decode()


async def test_bad_identity_scope_flag_exits_2() -> None:
    proc = await asyncio.create_subprocess_exec(
        *relay_command("--port", "0", "--identity-scope", "everyone"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), STARTUP_TIMEOUT)
    assert proc.returncode == 2
    assert b"--identity-scope" in err
