"""Fixtures for the automerge-repo interop tests: the Node project and JS peers.

``interop_node_project`` installs ``tests/interop/node`` (pinned automerge-repo,
automerge and ws, from ``package-lock.json``) with ``npm ci`` once per session. A
successful install is stamped with a hash of ``package.json``,
``package-lock.json`` and the Node version, so later sessions on a developer
machine reuse it (set ``RATATOSKR_INTEROP_REINSTALL=1`` to force npm ci).

What happens when that is not possible (docs/testing.md, "Our own test suite"):

- ``RATATOSKR_INTEROP=0``: every interop test is skipped, with the reason, and
  the session ends with one line saying so. Nothing runs npm.
- Node/npm not installed: skipped, with a message saying so.
- npm cannot reach its registry (and the packages are not in npm's cache):
  the interop tests FAIL within seconds, naming the registry, npm's error and
  ``RATATOSKR_INTEROP=0``. Without this check npm retries for over a minute.
- ``RATATOSKR_REQUIRE_INTEROP=1`` (CI, see ``.ci/run``): interop may never be
  skipped or cut short: a missing Node fails, ``RATATOSKR_INTEROP=0`` is a usage
  error, and npm keeps its own retries.

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
import re
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

INTEROP_DIR = Path(__file__).resolve().parent
NODE_DIR = INTEROP_DIR / "node"
#: npm ci must finish well within pytest's per-test timeout (120 s in pyproject.toml).
NPM_TIMEOUT = 100.0
#: Milliseconds npm waits for its registry to answer a ping, without retrying.
REGISTRY_PROBE_TIMEOUT_MS = 5000
#: Environment variables, documented in docs/testing.md.
OPT_OUT = "RATATOSKR_INTEROP"
REQUIRED = "RATATOSKR_REQUIRE_INTEROP"
#: Seconds for a JS peer to start, connect and authenticate (Node + wasm load).
START_TIMEOUT = 15.0
#: Default seconds to wait for one expected line or event.
WAIT_TIMEOUT = 10.0

log = logging.getLogger("tests.interop.node")

Event = dict[str, Any]

# --------------------------------------------------------------------------- opting out

_OFF = {"0", "false", "no", "off"}
_ON = {"", "1", "true", "yes", "on"}


def _interop_wanted() -> bool:
    """False when the user opted out with ``RATATOSKR_INTEROP=0``."""
    value = os.environ.get(OPT_OUT, "").strip().lower()
    if value not in _OFF | _ON:
        raise pytest.UsageError(f"{OPT_OUT}={value!r}: expected 0 (skip interop tests) or 1")
    if value in _OFF and os.environ.get(REQUIRED):
        raise pytest.UsageError(f"{OPT_OUT}=0 cannot skip the interop tests: {REQUIRED} is set")
    return value not in _OFF


#: How many interop tests RATATOSKR_INTEROP=0 skipped in this session.
_SKIPPED = pytest.StashKey[int]()


def _is_interop_test(item: pytest.Item) -> bool:
    return INTEROP_DIR in Path(item.path).resolve().parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _interop_wanted():
        config.stash[_SKIPPED] = sum(1 for item in items if _is_interop_test(item))


@pytest.fixture(scope="session", autouse=True)
def _interop_opt_out() -> None:
    """Skip every test of this directory under RATATOSKR_INTEROP=0.

    A session fixture, so it runs before ``interop_node_project`` (npm), and a
    skip raised here, not a marker, so ``pytest -rs`` folds every skip into one
    line (they share this location).
    """
    if not _interop_wanted():
        pytest.skip(f"{OPT_OUT}=0: automerge-repo interop tests not run")


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    count = config.stash.get(_SKIPPED, 0)
    if count:
        where = (
            INTEROP_DIR.relative_to(config.rootpath)
            if INTEROP_DIR.is_relative_to(config.rootpath)
            else INTEROP_DIR
        )
        terminalreporter.write_line(
            f"{OPT_OUT}=0: skipped the {count} automerge-repo interop tests in {where}/"
        )


# --------------------------------------------------------------------------- npm


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"the interop tests need {name!r} on PATH (Node 20+ and npm)"
        # CI sets RATATOSKR_REQUIRE_INTEROP=1 (see .ci/run): there a missing Node is
        # a failure. On a machine with only Python the suite still passes, with
        # these tests reported as skipped and the reason printed.
        if os.environ.get(REQUIRED):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def _npm_error(output: str) -> str:
    """The line of npm's output that says what went wrong (npm prints many)."""
    lines = [line.removeprefix("npm error ").strip() for line in output.splitlines()]
    for prefix in ("FetchError:", "request to", "code "):
        for line in lines:
            if line.startswith(prefix):
                return line
    return next((line for line in reversed(lines) if line), "no output")


def _registry_problem(npm: str) -> str | None:
    """Why npm cannot reach its registry, or None if it can (or if that is unclear).

    ``npm ping`` reads the same configuration as ``npm ci`` (registry, proxy,
    certificates; ``.npmrc`` files and ``npm_config_*`` variables), so it asks the
    registry the install would use; it waits at most
    :data:`REGISTRY_PROBE_TIMEOUT_MS` and does not retry.
    """
    command = [
        npm,
        "ping",
        f"--fetch-timeout={REGISTRY_PROBE_TIMEOUT_MS}",
        "--fetch-retries=0",
    ]
    limit = REGISTRY_PROBE_TIMEOUT_MS / 1000 + 10  # plus npm's own start-up
    try:
        done = subprocess.run(
            command, cwd=NODE_DIR, capture_output=True, text=True, timeout=limit, check=False
        )
    except subprocess.TimeoutExpired:
        return f"npm ping got no answer within {limit:g} s"
    if done.returncode == 0:
        return None
    output = done.stdout + done.stderr
    if re.search(r"npm error code E\d{3}\b", output):
        return None  # an HTTP error status: the registry answered, only not to ping
    registry = re.search(r"PING (\S+)", output)
    where = registry.group(1) if registry else "its registry"
    return f"{where}: {_npm_error(output)}"


def _install_offline(command: list[str]) -> bool:
    """Try the install from npm's cache alone (fast: no network, no retries)."""
    done = subprocess.run(
        [*command, "--offline"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=NPM_TIMEOUT,
        check=False,
    )
    return done.returncode == 0


@contextlib.contextmanager
def _install_lock() -> Iterator[None]:
    """Serialise installs between concurrent pytest sessions in one checkout.
    (Its own flock, not tests/filelock.py: tests/integration/test_interop_opt_out.py
    runs a copy of this conftest on its own, outside the tests package.)"""
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
        # Outside CI a registry that cannot be reached fails fast, and says how to
        # opt out, instead of after a minute of npm's retries.
        problem = None if os.environ.get(REQUIRED) else _registry_problem(npm)
        if problem is not None:
            if _install_offline(command):
                stamp.write_text(digest.hexdigest())
                return NODE_DIR
            pytest.fail(
                f"npm cannot reach its registry ({problem}), and the interop tests need "
                f"it once, to install {NODE_DIR} (npm's cache does not have every "
                f"package). Set {OPT_OUT}=0 to skip the interop tests, or configure npm's "
                "registry or proxy (npm config get registry).",
                pytrace=False,
            )
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
