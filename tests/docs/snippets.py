"""Every python block and shell command in README.md, docs/*.md and
examples/README.md, run as printed against the setup its page declares.

This module is both the library the tests use (:func:`pages`, :func:`blocks`)
and the driver they start (``python snippets.py PAGE``), which runs one page's
blocks in order and prints a JSON report. The convention it reads is
documented in docs/testing.md ("Documented commands are tested"); in short:

* A fence whose info string is ``python``/``py`` is a Python block; ``sh``,
  ``bash``, ``shell`` or ``console`` a shell block. Other fences (output,
  usage texts, TOML, JSON) are text and are not run.
* HTML comments on the lines right before a fence are that block's markers:
  ``<!-- not-run: REASON -->`` (shown, never run; the reason is required),
  ``<!-- run-by: tests/PATH.py -->`` (a dedicated test runs it; the file must
  exist and mention the page), ``<!-- save-as: NAME -->`` (written to NAME in
  the scratch checkout for a later block to use, not run itself),
  ``<!-- stop-after: TEXT -->`` (a command or script that runs until Ctrl-C:
  once it printed TEXT it gets SIGINT, and must then exit 0; the page's relay
  steps aside meanwhile, the block may want its port), ``<!-- timeout: SECONDS -->``,
  ``<!-- requires: redis-server -->`` (tools the block needs besides the
  virtualenv: without them it is skipped, saying so).
  ``<!-- run -->`` (the marker older tests look for) changes nothing.
* A page declares its relay once, anywhere: by default every block runs with
  ``ratatoskr relay`` (open mode) listening on 127.0.0.1:4151, the port the
  docs use; ``<!-- relay-config: examples/configs/NAME.toml -->`` starts it
  with that config (the page must give the command too), ``<!-- relay: none -->``
  starts none. ``relay-config`` among a block's markers (right above its
  fence) is that block's alone: the relay is restarted with it for the block.

How a page runs: in a fresh network namespace (``unshare --net``) where
127.0.0.1:4151 belongs to this page alone, so blocks run unchanged, in a
*scratch checkout*: a temporary directory holding a link to each top-level
entry of the repository and ``.venv`` linked to the virtualenv running the
tests, with that virtualenv's ``bin`` first on PATH (an activated venv). So
``.venv/bin/ratatoskr``, ``ratatoskr`` and ``examples/...`` all work as
printed, and whatever a command writes lands in the scratch directory, not in
the checkout. Where namespaces are not allowed, port 4151 is rewritten to a
free port in the blocks and the relay's command line.

Shell blocks run one command at a time (``\\`` continuations joined, comment
lines dropped), each with ``bash -c``. ``ratatoskr relay`` (any spelling) in
the foreground is started, must print its "listening on" line, and is then
stopped with SIGINT (exit 0 expected); with a trailing ``&`` it keeps running
until the end of its block, as in a terminal. While a block starts a relay of
its own, the page's relay is stopped (they would share the port).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PORT = 4151
#: Seconds a block may take unless it says otherwise (``<!-- timeout: N -->``).
BLOCK_TIMEOUT = 30.0
#: Seconds for a relay (the page's, or a block's) to print its ready line.
START_TIMEOUT = 20.0

PYTHON = ("python", "py")
SHELL = ("sh", "bash", "shell", "console")
MARKERS = ("not-run", "run-by", "save-as", "stop-after", "timeout", "requires", "run")
RELAY_COMMAND = re.compile(r"(^|[\s/])(ratatoskr|-m ratatoskr_client) relay\b")
READY = "listening on"
#: Set in the environment of every block (see :func:`environment`).
NESTED = "RATATOSKR_IN_SNIPPET"


def pages() -> list[Path]:
    """The pages whose blocks are run: README.md, docs/*.md, examples/*.md."""
    return [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        *sorted((ROOT / "examples").glob("*.md")),
    ]


@dataclass
class Block:
    page: str  # relative to the repository
    line: int  # of the opening fence, 1-based
    kind: str  # "python" or "shell"
    code: str
    markers: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


@dataclass
class Page:
    path: str
    blocks: list[Block]
    relay: list[str] | None  # the relay's extra arguments; None: no relay


_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>```+|~~~+)(?P<info>[^`\n]*)$")
_COMMENT = re.compile(r"^\s*<!--\s*(?P<key>[a-z-]+)\s*(?::\s*(?P<value>.*?))?\s*-->\s*$")


def parse(path: Path) -> Page:
    """The runnable blocks of one page, with their markers, and its relay.

    Raises:
        ValueError: a marker is malformed (unknown key, not-run without a
            reason), in words that name the line.
    """
    rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    relay: list[str] | None = []
    i = 0
    while i < len(lines):
        comment = _COMMENT.match(lines[i])
        if comment and not _above_a_fence(lines, i):  # (above a fence: that block's)
            if comment["key"] == "relay-config":
                relay = ["--config", (comment["value"] or "").strip()]
            elif comment["key"] == "relay" and comment["value"] == "none":
                relay = None
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence["fence"]):
            end += 1
        info = fence["info"].strip().split()
        language = info[0].lower() if info else ""
        kind = "python" if language in PYTHON else "shell" if language in SHELL else None
        if kind is not None:
            markers: dict[str, str] = {}
            above = i - 1
            while above >= 0 and (found := _COMMENT.match(lines[above])):
                key, value = found["key"], (found["value"] or "").strip()
                if key in MARKERS or key == "relay-config":
                    markers[key] = value
                # (anything else is another test's own marker: <!-- user-test -->)
                above -= 1
            if "not-run" in markers and not markers["not-run"]:
                raise ValueError(f"{rel}:{i + 1}: <!-- not-run: REASON --> needs its reason")
            indent = len(fence["indent"])
            code = "\n".join(line[indent:] for line in lines[i + 1 : end]) + "\n"
            blocks.append(Block(rel, i + 1, kind, code, markers))
        i = end + 1
    return Page(rel, blocks, relay)


def _above_a_fence(lines: list[str], at: int) -> bool:
    """Is line ``at`` one of the comments right above a fence (a block's marker)?"""
    after = at + 1
    while after < len(lines) and _COMMENT.match(lines[after]):
        after += 1
    return after < len(lines) and _FENCE.match(lines[after]) is not None


def commands(code: str) -> list[str]:
    """A shell block's commands: continuations joined, comments and prompts dropped."""
    found: list[str] = []
    pending = ""
    for raw in code.splitlines():
        line = raw.rstrip()
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not pending and line.startswith("$ "):
            line = line[2:]
        if pending:
            line = line.lstrip()
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        found.append(_strip_comment(pending + line).strip())
        pending = ""
    if pending:
        found.append(_strip_comment(pending).strip())
    return [c for c in found if c]


def _strip_comment(command: str) -> str:
    """``cmd   # note`` → ``cmd``: a ``#`` that starts a word outside quotes."""
    quote = ""
    for at, char in enumerate(command):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (at == 0 or command[at - 1].isspace()):
            return command[:at]
    return command


# --------------------------------------------------------------------------- the driver


def scratch_checkout(into: Path) -> Path:
    """A directory that looks like the checkout with its ``.venv``, whose writes stay in it."""
    for entry in ROOT.iterdir():
        if entry.name in (".git", ".venv") or entry.name.startswith(".venv"):
            continue
        (into / entry.name).symlink_to(entry)
    (into / ".venv").symlink_to(Path(sys.prefix))
    return into


def environment(scratch: Path) -> dict[str, str]:
    """An activated virtualenv (its bin first on PATH), unbuffered output."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.prefix) / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = sys.prefix
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONPATH", None)  # the checkout is installed (-e), as for a user
    for name in list(env):
        if name.startswith(("PYTEST_", "COV_")):
            env.pop(name)
    env["HOME"] = str(scratch)  # caches and config files land in the scratch dir
    # A documented `pytest` command that is not marked not-run would run this
    # runner again, inside itself: the marker makes the inner one skip.
    env[NESTED] = "1"
    return env


class Background:
    """A command that runs until stopped (a relay, ``locust --master``...).

    Its stdout and stderr are read on threads into one transcript, so a
    chatty command never blocks on a full pipe and its ready line is seen
    whichever stream it goes to.
    """

    def __init__(self, command: str, cwd: Path, env: dict[str, str]) -> None:
        self.command = command
        self.transcript: list[str] = []
        self._seen = threading.Condition()
        self.proc = subprocess.Popen(
            ["bash", "-c", f"exec {command}" if "&&" not in command else command],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # SIGINT to the group: the shell's children too
        )
        for stream in (self.proc.stdout, self.proc.stderr):
            threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            with self._seen:
                self.transcript.append(line)
                self._seen.notify_all()

    def wait_for(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._seen:
            while not any(text in line for line in self.transcript):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return any(text in line for line in self.transcript)
                self._seen.wait(min(left, 0.2))
        return True

    def interrupt(self, timeout: float = 10.0) -> int:
        """Ctrl-C, then the exit status (killed after ``timeout``: status -9)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            return -9

    def output(self) -> str:
        with self._seen:
            return "".join(self.transcript)


class Runner:
    """Runs one page's blocks, in order, in a scratch checkout."""

    def __init__(self, page: Page, scratch: Path, port: int) -> None:
        self.page = page
        self.scratch = scratch
        self.port = port
        self.env = environment(scratch)
        self.relay: Background | None = None
        self.relay_args: list[str] | None = None  # what the running relay was started with
        self.failures: list[str] = []
        self.skipped: list[str] = []  # blocks whose `requires:` tools are missing
        self.ran = 0
        #: how long each block took (the report shows them: keep the docs quick to run)
        self.seconds: dict[str, float] = {}

    def text(self, code: str) -> str:
        """The block as printed; only on a machine without namespaces, another port."""
        if self.port == PORT:
            return code
        return re.sub(rf"(?<=[:= ]){PORT}\b", str(self.port), code)

    # -- the page's relay

    def start_relay(self, block: Block) -> str | None:
        """The relay ``block`` runs against: its own ``relay-config``, else the page's."""
        wanted = self.page.relay
        if "relay-config" in block.markers:
            wanted = ["--config", block.markers["relay-config"]]
        if self.relay is not None and self.relay_args == wanted:
            return None
        self.stop_relay()
        if wanted is None:
            return None
        args = " ".join(shlex.quote(a) for a in wanted)
        relay = Background(f"ratatoskr relay --port {self.port} {args}", self.scratch, self.env)
        if not relay.wait_for(READY, START_TIMEOUT):
            relay.interrupt()
            return f"the relay ({args or 'open mode'}) did not start: {relay.output()[-2000:]}"
        self.relay, self.relay_args = relay, wanted
        return None

    def stop_relay(self) -> None:
        if self.relay is not None:
            self.relay.interrupt()
            self.relay = self.relay_args = None

    # -- blocks

    def run(self) -> None:
        for block in self.page.blocks:
            markers = block.markers
            if "not-run" in markers or "run-by" in markers:
                continue
            if "save-as" in markers:
                target = self.scratch / markers["save-as"]
                target.write_text(self.text(block.code), encoding="utf-8")
                continue
            missing = [
                tool
                for tool in markers.get("requires", "").replace(",", " ").split()
                if shutil.which(tool, path=self.env["PATH"]) is None
            ]
            if missing:
                self.skipped.append(f"{block.where} needs {', '.join(missing)}")
                continue
            timeout = float(markers.get("timeout", BLOCK_TIMEOUT))
            # A block that starts a server (a relay, or anything run until
            # Ctrl-C) may want the relay's port: the page's relay steps aside.
            own_relay = "stop-after" in markers or (
                block.kind == "shell" and any(RELAY_COMMAND.search(c) for c in commands(block.code))
            )
            if own_relay:
                self.stop_relay()
            else:
                problem = self.start_relay(block)
                if problem:
                    self.failures.append(f"{block.where}: {problem}")
                    return
            self.ran += 1
            started = time.monotonic()
            try:
                if block.kind == "python":
                    self.python(block, timeout)
                else:
                    self.shell(block, timeout)
            except Exception as exc:  # a driver bug must still name the block
                self.failures.append(f"{block.where}: the driver failed: {exc!r}")
            self.seconds[block.where] = round(time.monotonic() - started, 2)
        self.stop_relay()

    def fail(self, block: Block, what: str, output: str) -> None:
        self.failures.append(f"{block.where}: {what}\n{output[-3000:]}")

    def python(self, block: Block, timeout: float) -> None:
        script = self.scratch / f"_snippet_{block.line}.py"
        script.write_text(self.text(block.code), encoding="utf-8")
        if "stop-after" in block.markers:  # a server: Ctrl-C once it is up
            self.command(block, f"python {script.name}", timeout, [])
            return
        self.run_to_end(block, ["python", script.name], "", timeout)

    def shell(self, block: Block, timeout: float) -> None:
        background: list[Background] = []
        try:
            for command in commands(self.text(block.code)):
                if not self.command(block, command, timeout, background):
                    return
        finally:
            for proc in reversed(background):
                proc.interrupt()

    def command(
        self, block: Block, command: str, timeout: float, background: list[Background]
    ) -> bool:
        detached = command.endswith("&") and not command.endswith("&&")
        command = command.rstrip("&").strip() if detached else command
        is_relay = RELAY_COMMAND.search(command) is not None
        stop_after = block.markers.get("stop-after")
        if detached or is_relay or stop_after:
            proc = Background(command, self.scratch, self.env)
            ready = READY if is_relay else stop_after
            if ready is not None and not proc.wait_for(ready, START_TIMEOUT):
                proc.interrupt()
                self.fail(block, f"`{command}` never printed {ready!r}", proc.output())
                return False
            if detached:
                background.append(proc)
                return True
            code = proc.interrupt()
            if code != 0:
                self.fail(block, f"`{command}` exited {code} on Ctrl-C", proc.output())
                return False
            return True
        return self.run_to_end(block, ["bash", "-c", command], f"`{command}` ", timeout)

    def run_to_end(self, block: Block, argv: list[str], what: str, timeout: float) -> bool:
        """Run ``argv`` in the scratch checkout to the end; a failure (``what``
        names the command in it) is recorded. True if it exited 0 in time."""
        try:
            done = subprocess.run(
                argv,
                cwd=self.scratch,
                env=self.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            self.fail(block, f"{what}did not finish within {timeout} s", str(exc.stderr or ""))
            return False
        if done.returncode != 0:
            self.fail(block, f"{what}exited {done.returncode}", done.stdout + done.stderr)
            return False
        return True


def bring_up_loopback() -> None:
    """``ip link set lo up``, without iproute2: a new namespace's lo is down."""
    import fcntl

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1

    def ifreq(flags: int) -> bytes:  # 16-byte name, the flags, padded to 40 bytes
        return b"lo".ljust(16, b"\0") + flags.to_bytes(2, sys.byteorder) + bytes(22)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = int.from_bytes(fcntl.ioctl(sock, siocgifflags, ifreq(0))[16:18], sys.byteorder)
        fcntl.ioctl(sock, siocsifflags, ifreq(flags | iff_up))


def drive(page_path: Path, port: int) -> dict[str, Any]:
    page = parse(page_path)
    with tempfile.TemporaryDirectory(prefix="ratatoskr-snippets-") as tmp:
        runner = Runner(page, scratch_checkout(Path(tmp)), port)
        try:
            runner.run()
        finally:
            runner.stop_relay()
        return {
            "failures": runner.failures,
            "ran": runner.ran,
            "skipped": runner.skipped,
            "seconds": runner.seconds,
            "left_behind": left_behind(Path(tmp), page),
        }


def left_behind(scratch: Path, page: Page) -> list[str]:
    """Files the page's commands wrote into the current directory, which in a
    reader's terminal is their checkout (``out.json``, ``results_stats.csv``):
    not the scratch checkout's links, the scripts it wrote, the files a block
    was saved as, nor dot-files (the scratch directory is also HOME)."""
    saved = {b.markers["save-as"] for b in page.blocks if "save-as" in b.markers}
    return sorted(
        entry.name
        for entry in scratch.iterdir()
        if not entry.is_symlink()
        and not entry.name.startswith((".", "_snippet_"))
        and entry.name not in saved
        and entry.name != "__pycache__"
    )


def namespace_command() -> list[str] | None:
    """The ``unshare`` prefix that gives a private network namespace here, or None."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    options = ["--net"] if os.geteuid() == 0 else ["--net", "--map-root-user"]
    probe = subprocess.run([unshare, *options, "true"], capture_output=True, check=False)
    return [unshare, *options] if probe.returncode == 0 else None


if __name__ == "__main__":
    # python snippets.py PAGE [--namespace] [--port N]
    target = Path(sys.argv[1]).resolve()
    if "--namespace" in sys.argv:
        bring_up_loopback()
    chosen = int(sys.argv[sys.argv.index("--port") + 1]) if "--port" in sys.argv else PORT
    print(json.dumps(drive(target, chosen)))
