"""Fixtures for the automerge-repo interop tests: the Node project and JS peers.

``interop_node_project`` installs ``tests/interop/node`` (pinned automerge-repo,
automerge and ws, from ``package-lock.json``) with ``npm ci`` once per session. If
npm or its registry is unreachable, every interop test FAILS with npm's output: CI
must never silently skip interop. Only when Node/npm are not installed at all are
the tests skipped (and not even then under ``RATATOSKR_REQUIRE_INTEROP=1``, as in
CI). A successful install is stamped with a hash of ``package.json``,
``package-lock.json`` and the Node version, so later sessions on a developer
machine reuse it (set ``RATATOSKR_INTEROP_REINSTALL=1`` to force npm ci).

``start_js_peer`` starts ``node peer.js`` against the test's relay and returns a
:class:`JsPeer` that speaks the line protocol documented at the top of
``node/peer.js``. Every peer is killed when the test ends.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import itertools
import json
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from ratatoskr_client.server import RelayServer

NODE_DIR = Path(__file__).parent / "node"
#: npm ci must finish well within pytest's per-test timeout (120 s in pyproject.toml).
NPM_TIMEOUT = 100.0
#: Seconds for a JS peer to start, connect and authenticate (Node + wasm load).
START_TIMEOUT = 15.0
#: Default seconds to wait for one expected line or event.
WAIT_TIMEOUT = 10.0

log = logging.getLogger("tests.interop.node")

Event = dict[str, Any]

# --------------------------------------------------------------------------- npm


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"the interop tests need {name!r} on PATH (Node 20+ and npm)"
        # CI sets RATATOSKR_REQUIRE_INTEROP=1 (see .ci/run): there a missing Node is
        # a failure. On a machine with only Python the suite still passes, with
        # these tests reported as skipped and the reason printed.
        if os.environ.get("RATATOSKR_REQUIRE_INTEROP"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


@contextlib.contextmanager
def _install_lock() -> Iterator[None]:
    """Serialise installs between concurrent pytest sessions in one checkout."""
    key = hashlib.sha256(str(NODE_DIR.resolve()).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"ratatoskr-interop-npm-{key}.lock"
    with lock_path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def interop_node_project() -> Path:
    """``tests/interop/node`` with its pinned dependencies installed."""
    node = _tool("node")
    npm = _tool("npm")
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.strip()
    lock = NODE_DIR / "package-lock.json"
    if lock.exists():
        # --ignore-scripts: nothing we use needs an install script; --omit=optional:
        # cbor-x's native accelerator (cbor-extract) is optional and platform-specific.
        command = [npm, "ci", "--ignore-scripts", "--omit=optional", "--no-audit", "--no-fund"]
    else:
        command = [npm, "install", "--ignore-scripts", "--no-audit", "--no-fund"]
    digest = hashlib.sha256()
    for part in (NODE_DIR / "package.json", lock):
        digest.update(part.read_bytes() if part.exists() else b"-")
    digest.update(version.encode())
    digest.update(" ".join(command[1:]).encode())
    stamp = NODE_DIR / "node_modules" / ".ratatoskr-interop-installed"
    with _install_lock():
        reinstall = os.environ.get("RATATOSKR_INTEROP_REINSTALL") == "1"
        if not reinstall and stamp.exists() and stamp.read_text() == digest.hexdigest():
            return NODE_DIR
        try:
            done = subprocess.run(
                command,
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=NPM_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            out, err = (
                x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
                for x in (exc.stdout, exc.stderr)
            )
            pytest.fail(
                f"{' '.join(command)} did not finish within {NPM_TIMEOUT:g} s in {NODE_DIR}\n"
                f"--- stdout ---\n{out}\n--- stderr ---\n{err}",
                pytrace=False,
            )
        if done.returncode != 0:
            pytest.fail(
                f"{' '.join(command)} failed with status {done.returncode} in {NODE_DIR} "
                f"(node {version}); the interop tests need the npm registry.\n"
                f"--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}",
                pytrace=False,
            )
        stamp.write_text(digest.hexdigest())
    return NODE_DIR


# --------------------------------------------------------------------------- ids

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def automerge_document_id() -> str:
    """A fresh automerge-repo document id: base58check of 16 random bytes."""
    raw = secrets.token_bytes(16)
    data = raw + hashlib.sha256(hashlib.sha256(raw).digest()).digest()[:4]
    number = int.from_bytes(data, "big")
    out = ""
    while number:
        number, digit = divmod(number, 58)
        out = _B58[digit] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


# --------------------------------------------------------------------------- JS peer


def _from_json(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "$bytes" in obj:
        return base64.b64decode(obj["$bytes"])
    return obj


class JsPeer:
    """A running ``node peer.js``: send commands, wait for the lines it prints.

    Every stdout line is kept in :attr:`lines` (in order), so a wait never misses a
    line that arrived before it started; pass ``since=peer.mark()`` to look only at
    lines printed after some action.
    """

    def __init__(self, proc: asyncio.subprocess.Process, label: str) -> None:
        self.proc = proc
        self.label = label
        self.lines: list[Event] = []
        self.stderr: deque[str] = deque(maxlen=300)
        self.info: Event = {}
        self._new = asyncio.Event()
        self._eof = False
        self._ids = itertools.count(1)
        self._tasks = [
            asyncio.create_task(self._read_stdout(), name=f"{label}-stdout"),
            asyncio.create_task(self._read_stderr(), name=f"{label}-stderr"),
        ]

    @classmethod
    async def start(
        cls, url: str, *args: str, label: str = "js", timeout: float = START_TIMEOUT
    ) -> JsPeer:
        """Start a peer against the relay at ``url``; returns once it printed ``ready``."""
        proc = await asyncio.create_subprocess_exec(
            _tool("node"),
            "peer.js",
            "--url",
            url,
            *args,
            cwd=NODE_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        peer = cls(proc, label)
        try:
            peer.info = await peer.wait_event("ready", timeout=timeout)
        except BaseException:
            await peer.kill()
            raise
        return peer

    # ------------------------------------------------------------------ identity

    @property
    def peer_id(self) -> str:
        """The JS repo's peerId (== the id the relay assigned to its connection)."""
        return str(self.info["peerId"])

    @property
    def document_id(self) -> str:
        """The document opened with ``--create`` / ``--find``."""
        return str(self.info["documentId"])

    # ------------------------------------------------------------------ io

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                text = line.decode(errors="replace").rstrip("\n")
                try:
                    event = json.loads(text, object_hook=_from_json)
                except ValueError:
                    event = {"event": "noise", "line": text}
                if not isinstance(event, dict):
                    event = {"event": "noise", "line": text}
                log.debug("%s > %s", self.label, text)
                self.lines.append(event)
                self._new.set()
        finally:
            self._eof = True
            self._new.set()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            text = line.decode(errors="replace").rstrip("\n")
            log.debug("%s ! %s", self.label, text)
            self.stderr.append(text)

    def _diagnostics(self) -> str:
        tail = "\n".join(json.dumps(e, default=repr) for e in self.lines[-30:])
        err = "\n".join(self.stderr)
        return f"--- last stdout lines of {self.label} ---\n{tail}\n--- stderr ---\n{err}"

    def mark(self) -> int:
        """Index of the next line: ``wait_for(..., since=peer.mark())`` skips older ones."""
        return len(self.lines)

    async def wait_for(
        self,
        predicate: Callable[[Event], bool],
        *,
        timeout: float = WAIT_TIMEOUT,
        since: int = 0,
        what: str = "a matching line",
    ) -> Event:
        """The first line (from index ``since``) for which ``predicate`` is true."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        index = since
        while True:
            while index < len(self.lines):
                event = self.lines[index]
                index += 1
                if event.get("event") == "fatal":
                    raise AssertionError(f"{self.label} crashed\n{self._diagnostics()}")
                if predicate(event):
                    return event
            if self._eof:
                raise AssertionError(
                    f"{self.label} exited (status {self.proc.returncode}) before "
                    f"{what}\n{self._diagnostics()}"
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.label}: no {what} within {timeout:g} s\n{self._diagnostics()}"
                )
            self._new.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new.wait(), remaining)

    async def wait_event(
        self,
        name: str,
        predicate: Callable[[Event], bool] = lambda e: True,
        *,
        timeout: float = WAIT_TIMEOUT,
        since: int = 0,
    ) -> Event:
        """The first ``{"event": name, ...}`` line matching ``predicate``."""
        return await self.wait_for(
            lambda e: e.get("event") == name and predicate(e),
            timeout=timeout,
            since=since,
            what=f"{name!r} event",
        )

    async def send(self, command: Event) -> None:
        """Write one command line (no reply awaited)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        await self.proc.stdin.drain()

    async def call(self, cmd: str, *, timeout: float = WAIT_TIMEOUT, **fields: Any) -> Event:
        """Send ``{"cmd": cmd, **fields}`` and return its successful reply."""
        request_id = next(self._ids)
        since = self.mark()
        await self.send({"cmd": cmd, "id": request_id, **fields})
        reply = await self.wait_for(
            lambda e: e.get("reply") == cmd and e.get("id") == request_id,
            timeout=timeout,
            since=since,
            what=f"reply to {cmd!r}",
        )
        if not reply.get("ok"):
            raise AssertionError(f"{self.label}: {cmd!r} failed: {reply.get('error')}")
        return reply

    # ------------------------------------------------------------------ presence

    async def presence_start(self, state: Event, *, heartbeat_ms: int = 1000) -> None:
        """Start automerge-repo Presence on the current document with ``state``."""
        await self.call("presence-start", state=state, heartbeatMs=heartbeat_ms)

    async def peer_states(self) -> dict[str, Event]:
        """``Presence.getPeerStates()`` as peer id -> state value."""
        return dict((await self.call("peer-states"))["states"])

    async def wait_peer_states(
        self,
        predicate: Callable[[dict[str, Event]], bool],
        *,
        timeout: float = WAIT_TIMEOUT,
    ) -> dict[str, Event]:
        """Wait until the JS Presence's peer states satisfy ``predicate``.

        Checks the current states first, then every ``presence`` event (each
        carries the states after it).
        """
        since = self.mark()
        states = await self.peer_states()
        if predicate(states):
            return states
        event = await self.wait_event(
            "presence", lambda e: predicate(e["states"]), timeout=timeout, since=since
        )
        return dict(event["states"])

    # ------------------------------------------------------------------ ending

    async def quit(self, timeout: float = WAIT_TIMEOUT) -> int:
        """Ask the peer to shut its repo down and exit; returns its exit status."""
        await self.call("quit", timeout=timeout)
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def kill(self) -> None:
        """Kill the process (if still running) and stop reading it. Idempotent."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 5)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def crashed(self) -> bool:
        return any(e.get("event") == "fatal" for e in self.lines)

    def __repr__(self) -> str:
        return f"<JsPeer {self.label} {self.info.get('peerId')} pid={self.proc.pid}>"


StartJsPeer = Callable[..., Awaitable[JsPeer]]


@pytest_asyncio.fixture
async def start_js_peer(
    interop_node_project: Path, ratatoskr_relay: RelayServer
) -> AsyncIterator[StartJsPeer]:
    """``await start_js_peer("--create", label="alice")`` → a :class:`JsPeer`
    connected (anonymously) to this test's relay. All are killed at the end; a peer
    that crashed fails the test."""
    peers: list[JsPeer] = []

    async def start(*args: str, label: str | None = None) -> JsPeer:
        peer = await JsPeer.start(ratatoskr_relay.url, *args, label=label or f"js{len(peers) + 1}")
        peers.append(peer)
        return peer

    try:
        yield start
    finally:
        for peer in peers:
            await peer.kill()
    crashed = [p for p in peers if p.crashed()]
    if crashed:
        pytest.fail("\n".join(p._diagnostics() for p in crashed), pytrace=False)
