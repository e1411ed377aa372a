"""What every benchmark needs: the processes it measures, readings from /proc,
percentiles, logging, and phases that fail without ending the run.

Nothing here measures anything by itself; the scenarios do (``benchmarks/scenarios``).
This module imports nothing else from ``benchmarks``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import platform
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import aiohttp

from ratatoskr_client import RatatoskrClient

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
#: the repository root: the working directory of the child processes run with ``-m``
ROOT = HERE.parent
RAW_RELAY = HERE / "raw_relay.py"
LISTENING = re.compile(r"listening on ws://(?P<host>\[[^\]]+\]|[^\s:/]+):(?P<port>\d+)/sync")
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "268435456"}
#: our relay's rate limit for the throughput benchmarks (per minute): out of the way
BENCH_RATE_LIMIT = 100_000_000
#: how long a relay or Redis may take to start listening (seconds)
START_TIMEOUT = 30.0

now_ns = time.perf_counter_ns


class BenchmarkError(Exception):
    """Something a benchmark needs did not happen (a process did not start, a
    client saw a ghost peer): the phase fails with this message."""


def log(msg: str) -> None:
    """One timestamped progress line on stderr (stdout carries the report)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- /proc


def rss_kib(pid: int | str = "self") -> int:
    """``VmRSS`` of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchmarkError(f"no VmRSS for process {pid}")


def workers_of(pid: int) -> list[int]:
    """The child processes of ``pid`` (a relay's ``--workers``)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def process_tree_rss_kib(pid: int) -> int:
    """RSS of a relay: the process itself, or the sum of its workers."""
    children = workers_of(pid)
    return sum(rss_kib(p) for p in children) if children else rss_kib(pid)


def cpu_ticks(pids: Sequence[int]) -> int:
    """User + system CPU of the processes, in clock ticks (gone ones count 0)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process, in seconds."""
    return cpu_ticks([pid]) / os.sysconf("SC_CLK_TCK")


async def wait_idle(pids: Sequence[int], quiet: float = 0.5, timeout: float = 300) -> None:
    """Until the processes stop using CPU (their fan-out is done)."""
    deadline = time.monotonic() + timeout
    last = cpu_ticks(pids)
    while time.monotonic() < deadline:
        await asyncio.sleep(quiet)
        now = cpu_ticks(pids)
        if now - last <= 2:  # ticks are 10 ms: idle but for heartbeats
            return
        last = now
    raise BenchmarkError(f"the relays were still busy after {timeout:g} s")


async def settle_rss(read: Callable[[], int], seconds: float = 1.0) -> int:
    """A reading taken after ``seconds`` of quiet."""
    await asyncio.sleep(seconds)
    return read()


# --------------------------------------------------------------------------- statistics


def pct(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation between order statistics."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


# --------------------------------------------------------------------------- processes


class Relay:
    """One relay process: ours (``python -m ratatoskr_client relay``) or the raw
    floor (``benchmarks/raw_relay.py``). Started, killed, restarted on its port.

    Our relay runs with ``--rate-limit rate_limit`` (``None``: the relay's
    default) and the options in ``extra`` (``--redis``, ``--workers``, ...).
    """

    #: how every relay found dead when it was stopped had died (newest last):
    #: a failed phase reports the deaths during it
    deaths: ClassVar[list[str]] = []

    def __init__(
        self,
        kind: str,
        *,
        use_uvloop: bool,
        extra: Sequence[str] = (),
        rate_limit: int | None = BENCH_RATE_LIMIT,
        cpus: frozenset[int] | None = None,
    ) -> None:
        self.kind = kind
        #: the CPUs the process may run on (None: wherever the scheduler puts it)
        self.cpus = cpus
        self.use_uvloop = use_uvloop
        self.extra = list(extra)
        self.rate_limit = rate_limit
        self.port = 0
        self.host = "127.0.0.1"
        self.proc: subprocess.Popen[str] | None = None
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in close())

    def command(self) -> list[str]:
        if self.kind == "raw":
            cmd = [sys.executable, str(RAW_RELAY), "--port", str(self.port)]
        else:
            cmd = [sys.executable, "-m", "ratatoskr_client", "relay", "--port", str(self.port)]
            if self.rate_limit is not None:
                cmd += ["--rate-limit", str(self.rate_limit)]
            cmd += self.extra
        if self.use_uvloop:
            cmd.append("--uvloop")
        return cmd

    def _spawn(self) -> subprocess.Popen[str]:
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, stderr=self._stderr, text=True
        )
        if self.cpus is not None:
            # Before the relay serves anything: it is still importing.
            os.sched_setaffinity(self.proc.pid, self.cpus)
        return self.proc

    def pin(self, cpus: frozenset[int] | None, allowed: set[int] | None = None) -> None:
        """Run on ``cpus`` from now on (None: on ``allowed``, the CPUs this
        process may use), restarts included."""
        self.cpus = cpus
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(self.proc.pid, cpus or allowed or os.sched_getaffinity(0))

    async def start(self, timeout: float = START_TIMEOUT) -> float:
        """Start the process (on the same port as before, if it ran already);
        return the seconds until it printed its listening line.

        Raises:
            BenchmarkError: it exited, or printed nothing, within ``timeout``.
        """
        t0 = time.perf_counter()
        # Popen only forks and execs; the wait for the relay is the awaited readline,
        # so the event loop (clients reconnecting, say) runs meanwhile.
        proc = self._spawn()
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout)
        except TimeoutError:
            self._kill_silent_start(proc)
            raise BenchmarkError(
                f"{self.kind} relay did not start within {timeout:g} s: {self.stderr_tail()}"
            ) from None
        return self._listening(line, t0)

    def start_blocking(self, timeout: float = START_TIMEOUT) -> float:
        """:meth:`start` for code without an event loop."""
        t0 = time.perf_counter()
        proc = self._spawn()
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout)
        if not ready:
            self._kill_silent_start(proc)
            raise BenchmarkError(
                f"{self.kind} relay did not start within {timeout:g} s: {self.stderr_tail()}"
            )
        # The relay prints its listening line in one flushed write.
        return self._listening(proc.stdout.readline(), t0)

    def _kill_silent_start(self, proc: subprocess.Popen[str]) -> None:
        # Killed, not closed: a reader thread may still be in readline(), and
        # returns at the end of file that the kill makes. close() closes the pipe.
        proc.kill()
        proc.wait()

    def _listening(self, line: str, t0: float) -> float:
        match = LISTENING.search(line)
        if match is None:
            self.kill()
            raise BenchmarkError(
                f"{self.kind} relay printed {line!r} instead of its listening line: "
                f"{self.stderr_tail()}"
            )
        self.host = match["host"]
        self.port = int(match["port"])
        return time.perf_counter() - t0

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/sync"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchmarkError(f"the {self.kind} relay is not running")
        return self.proc.pid

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def exit_status(self) -> int | None:
        """The exit status if it was started and has exited by itself, else None."""
        return None if self.proc is None else self.proc.poll()

    def _note_death(self) -> None:
        notice = self.death_notice()
        if notice is not None:
            Relay.deaths.append(notice)

    def death_notice(self) -> str | None:
        """One line saying that it died, and how, if it did."""
        status = self.exit_status()
        if status is None:
            return None
        name = "our relay" if self.kind == "ours" else f"the {self.kind} relay"
        if status < 0:
            try:
                how = signal.Signals(-status).name
            except ValueError:
                how = f"signal {-status}"
            return f"{name} was killed by {how}"
        lines = self.stderr_tail().strip().splitlines()
        last = f"; its stderr ends: {lines[-1].strip()}" if lines else ""
        return f"{name} exited with status {status}{last}"

    async def revive(self) -> None:
        """If it died, start it again on its port. The death is not noted in
        :attr:`deaths`: the phase that met it has reported it already."""
        if self.exit_status() is None:
            return
        log(f"{self.death_notice()}; restarting it")
        proc, self.proc = self.proc, None
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        await self.start()

    def kill(self) -> None:
        """SIGKILL, like a crash."""
        self._note_death()
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        self._note_death()
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-2000:]

    def close(self) -> None:
        self.stop()
        self._stderr.close()


class Redis:
    """A redis-server on a free loopback port, no persistence."""

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchmarkError("--cluster needs redis-server (apt-get install redis-server)")
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        self.proc = subprocess.Popen(  # noqa: ASYNC220 (fork/exec only)
            [*command, "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        for _ in range(200):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.02)
        raise BenchmarkError(f"redis-server did not start on port {self.port}")

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchmarkError("redis-server is not running")
        return self.proc.pid

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


# --------------------------------------------------------------------------- clients


#: the victim pair's document (see :class:`Victims`)
VICTIM_DOC = "victim-room"
#: messages per second each victim sends (below the client's default pacing)
VICTIM_RATE = 10.0


class Victims:
    """Two SDK clients in their own document, each sending to the other."""

    def __init__(self, http_url: str) -> None:
        self.url = http_url
        self.clients: list[RatatoskrClient] = []
        self.latencies: list[float] = []
        #: (send time, latency) of every message received
        self.samples: list[tuple[float, float]] = []
        self.started = 0.0
        self.sent = 0
        self.received = 0
        self.changed = asyncio.Event()
        self.errors: list[Any] = []

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(2):
            client = RatatoskrClient(self.url, connect_timeout=30)

            def on_message(doc: str, sender: Any, payload: Any) -> None:
                if doc == VICTIM_DOC and isinstance(payload, dict) and "t" in payload:
                    self.latencies.append(loop.time() - payload["t"])
                    self.samples.append((payload["t"], loop.time() - payload["t"]))
                    self.received += 1
                    self.changed.set()

            client.on("ephemeral-message", on_message)
            client.on("error", self.errors.append)
            await client.connect()
            await client.enter_document(VICTIM_DOC, timeout=60)
            self.clients.append(client)
        for client in self.clients:
            await client.wait_for_presence(VICTIM_DOC, lambda p: len(p) == 2, timeout=60)

    async def talk(self, duration: float) -> None:
        loop = asyncio.get_running_loop()
        self.started = loop.time()

        async def one(client: RatatoskrClient) -> None:
            end = loop.time() + duration
            while loop.time() < end:
                await client.send_ephemeral(VICTIM_DOC, {"t": loop.time()})
                self.sent += 1
                await asyncio.sleep(1 / VICTIM_RATE)

        await asyncio.gather(*(one(c) for c in self.clients))

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until every message sent has arrived (or ``timeout``)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.received < self.sent and loop.time() < end:
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), end - loop.time())

    def report(self) -> dict[str, Any]:
        lat = self.latencies
        return {
            "victim_sent": self.sent,
            "victim_received": self.received,
            "victim_p50_ms": round(pct(lat, 50) * 1000, 1),
            "victim_p99_ms": round(pct(lat, 99) * 1000, 1),
            "victim_max_ms": round(max(lat, default=float("nan")) * 1000, 1),
            "victim_late_100ms": sum(1 for x in lat if x > 0.1),
            # the worst latency in each second of the run (ms)
            "victim_max_ms_by_second": [
                round(
                    max((x for t, x in self.samples if s <= t - self.started < s + 1), default=0)
                    * 1000
                )
                for s in range(
                    int(max((t for t, _ in self.samples), default=self.started) - self.started) + 1
                )
            ],
        }

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


def new_session() -> aiohttp.ClientSession:
    # limit=0: an open WebSocket holds its connector slot, and the default
    # connector allows only 100 of them.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


def sdk_client(url: str, session: aiohttp.ClientSession, **options: Any) -> RatatoskrClient:
    return RatatoskrClient(url, session=session, **options)


async def gather_limited(coros: Sequence[Awaitable[T]], limit: int) -> list[T]:
    """All of ``coros``, at most ``limit`` at a time. If one raises, the others
    are cancelled (not left running into the next phase) and it is re-raised."""
    sem = asyncio.Semaphore(limit)

    async def one(coro: Awaitable[T]) -> T:
        async with sem:
            return await coro

    tasks = [asyncio.ensure_future(one(c)) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def close_all(clients: Sequence[RatatoskrClient]) -> None:
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


# --------------------------------------------------------------------------- the run


def running_uvloop() -> bool:
    return type(asyncio.get_running_loop()).__module__.startswith("uvloop")


def machine() -> dict[str, str]:
    """What the figures were measured on (call inside the event loop)."""
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "cbor2": importlib.metadata.version("cbor2"),
        "loop": "uvloop" if running_uvloop() else "asyncio",
    }


@dataclass(frozen=True)
class Placement:
    """Where the benchmark process and the relays it measures run.

    On a machine that has spare cores, a 1:1 message costs a cross-CPU wake-up
    (tens of µs in a VM) when the relay runs on another CPU than the clients
    and nothing when it shares theirs, and the scheduler decides that afresh
    for each relay process. Left to it, the floor relay and ours can land
    differently in one run, and the ratio measures the placement, not the
    relay (on this project's 2-core VM: relay alone 1.2-1.4x with both relays
    on the other CPU, 1.9x with both on the clients' CPU, 3-4.5x with only the
    floor on the clients' CPU). Pinned, both relays get the same placement: the
    clients on one CPU, the relays on another, as when clients and relay are
    different machines. Only for phases whose figure is a wake-up (1:1 and
    presence latency): throughput (fan-out) is left to the scheduler.
    """

    clients: frozenset[int] | None
    relays: frozenset[int] | None

    @classmethod
    def choose(cls, pin: bool) -> Placement:
        """The clients on the first allowed CPU, the relays on the second; no
        pinning when ``pin`` is false or fewer than two CPUs are allowed."""
        allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if not pin or len(allowed) < 2:
            return cls(None, None)
        return cls(frozenset({allowed[0]}), frozenset({allowed[1]}))

    def describe(self) -> str:
        if self.clients is None or self.relays is None:
            return "unpinned (the scheduler places each process)"
        return f"clients on CPU {min(self.clients)}, relays on CPU {min(self.relays)}"

    @contextlib.contextmanager
    def pinned(self, relays: Sequence[Relay]) -> Iterator[None]:
        """This process on the clients' CPU and ``relays`` on theirs for the
        duration (a relay restarted meanwhile too); all restored after."""
        if self.clients is None or self.relays is None:
            yield
            return
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, self.clients)
        for relay in relays:
            relay.pin(self.relays)
        try:
            yield
        finally:
            os.sched_setaffinity(0, before)
            for relay in relays:
                relay.pin(None, allowed=before)


def run_loop(coro: Coroutine[Any, Any, T], *, use_uvloop: bool) -> T:
    """Run ``coro`` to completion on a new asyncio or uvloop event loop."""
    if use_uvloop:
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


@dataclass(frozen=True)
class Failure:
    """A phase that did not complete: its figures are missing from the results."""

    phase: str
    error: str

    def as_json(self) -> dict[str, str]:
        return {"phase": self.phase, "error": self.error}


def describe(exc: BaseException) -> str:
    """``Type: message (at file:line)`` for an exception, on one line: where in
    the benchmark it was raised, not a traceback."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if Path(f.filename).resolve().is_relative_to(HERE)]
    # The innermost line of a scenario says most; this module's frames (the
    # phase runner, gather_limited, Relay.start) only if there is none.
    scenario = [f for f in ours if Path(f.filename).resolve() != Path(__file__).resolve()]
    helpers = [f for f in ours if f.name != Phases.run.__name__]
    chosen = scenario or helpers
    if chosen:
        where = chosen[-1]
        text += f" (at {Path(where.filename).resolve().relative_to(ROOT)}:{where.lineno})"
    return " ".join(text.split())


class Phases:
    """Runs a benchmark's phases one after another. A phase that raises, or
    outlives its time budget, is logged and recorded as a :class:`Failure`, and
    the run goes on with the next phase."""

    def __init__(self) -> None:
        self.failures: list[Failure] = []
        #: seconds each completed phase took
        self.durations: dict[str, float] = {}

    async def run(
        self,
        name: str,
        body: Callable[[], Awaitable[object]],
        *,
        budget: float,
        relays: Sequence[Relay] = (),
    ) -> bool:
        """Run ``body()``; True if it completed. If a relay died meanwhile (one
        of ``relays``, which outlive the phase, or one the phase started and
        stopped), the failure says so."""
        t0 = time.perf_counter()
        deaths = len(Relay.deaths)
        timeout = asyncio.timeout(budget)
        try:
            async with timeout:
                await body()
        except Exception as exc:
            expired = timeout.expired()
            error = f"did not finish within {budget:g} s" if expired else describe(exc)
            notices = Relay.deaths[deaths:] + [r.death_notice() for r in relays]
            unique = [n for n in dict.fromkeys(notices) if n]
            self.fail(name, "; ".join([error, *unique]), time.perf_counter() - t0)
            return False
        self.durations[name] = time.perf_counter() - t0
        log(f"{name}: done in {self.durations[name]:.1f} s")
        return True

    def fail(self, name: str, error: str, after: float | None = None) -> None:
        self.failures.append(Failure(name, error))
        took = f" after {after:.1f} s" if after is not None else ""
        log(f"{name}: FAILED{took}: {error}")

    def skip(self, names: Sequence[str], reason: str) -> None:
        """Record phases that could not run."""
        for name in names:
            self.fail(name, f"not run: {reason}")
