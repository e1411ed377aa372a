"""``ratatoskr relay --workers N``: N relay processes on one port, one per core.

The parent process binds the address once with ``SO_REUSEPORT`` (which also
resolves port 0), starts N relay processes with ``--reuse-port`` on that port
(each with its own event loop and node id, joined by their Redis cluster),
waits until each has printed its ``listening`` line, prints one such line
itself and releases its own socket: from then on the kernel spreads incoming
connections over the workers. SIGTERM or SIGINT to the parent is forwarded to
every worker; the parent exits 0 once they have stopped. A worker that dies
on its own is started again after a second (a new node id: the cluster
removes the old one's peers within ``node_ttl``, and its clients reconnect).

Workers are started with ``PR_SET_PDEATHSIG`` on Linux, so they stop when the
parent is killed too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Final

from ..._libc import libc_function

__all__ = ["reserve_port", "reuse_port_supported", "supervise"]

log = logging.getLogger("ratatoskr_client.server")

#: Seconds a worker may take to print its listening line.
STARTUP_TIMEOUT: Final = 60.0
#: Seconds workers get to stop after SIGTERM before they are killed.
STOP_TIMEOUT: Final = 15.0
#: Seconds before a worker that died on its own is started again.
RESTART_DELAY: Final = 1.0
_PR_SET_PDEATHSIG: Final = 1


def reuse_port_supported() -> bool:
    """True where ``SO_REUSEPORT`` spreads connections over listeners (Linux)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound (not listening) to ``host:port`` with ``SO_REUSEPORT``:
    it fixes the port number (port 0 picks one) for the workers to share.

    Raises:
        OSError: the address cannot be bound.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _death_signal() -> Callable[[], None] | None:
    """What a worker runs between fork and exec to ask the kernel for SIGTERM
    when the parent dies, so a killed parent leaves no workers behind; None
    where there is no ``prctl``. The function is found here, in the parent,
    so that the child only calls it (between fork and exec, as little as
    possible may run)."""
    prctl = libc_function("prctl") if sys.platform.startswith("linux") else None
    if prctl is None:
        return None

    def die_with_parent() -> None:
        with contextlib.suppress(OSError):
            prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return die_with_parent


class _Worker:
    def __init__(self, number: int, argv: Sequence[str]) -> None:
        self.number = number
        self.argv = list(argv)
        self.proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    async def start(self) -> str:
        """Start the process; its first stdout line (empty if it died first)."""
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            preexec_fn=_death_signal(),
        )
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), STARTUP_TIMEOUT)
        except TimeoutError:
            line = b""
        self._drain = asyncio.create_task(self._discard(self.proc.stdout))
        return line.decode("utf-8", "replace").strip()

    @staticmethod
    async def _discard(stream: asyncio.StreamReader) -> None:
        while await stream.read(65536):
            pass

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def wait(self) -> int:
        assert self.proc is not None
        code = await self.proc.wait()
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
        return code


async def supervise(
    count: int,
    argv: Callable[[int], Sequence[str]],
    ws_url: str,
    reserved: socket.socket,
    stop: asyncio.Event,
) -> int:
    """Run ``count`` workers (``argv(i)`` starts worker ``i``) until ``stop``
    is set; print the listening line once all are up. Returns the exit status:
    0 after a stop, 1 if a worker could not start."""
    workers = [_Worker(i, argv(i)) for i in range(count)]
    try:
        lines = await asyncio.gather(*(w.start() for w in workers))
        failed = [
            w.number for w, line in zip(workers, lines, strict=True) if "listening" not in line
        ]
        if failed:
            print(f"ratatoskr relay: worker(s) {failed} failed to start", file=sys.stderr)
            return 1
        print(f"ratatoskr relay listening on {ws_url}", flush=True)
        reserved.close()  # the workers hold the port now
        waits = {asyncio.create_task(w.wait()): w for w in workers}
        stopping = asyncio.create_task(stop.wait())
        while not stop.is_set():
            done, _ = await asyncio.wait({*waits, stopping}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                worker = waits.pop(task, None)
                if worker is None or stop.is_set():
                    continue
                log.warning(
                    "relay worker %d exited with status %s; starting it again",
                    worker.number,
                    task.result(),
                )
                await asyncio.sleep(RESTART_DELAY)
                if stop.is_set():
                    break
                await worker.start()
                waits[asyncio.create_task(worker.wait())] = worker
        stopping.cancel()
        return 0
    finally:
        reserved.close()
        for worker in workers:
            worker.signal(signal.SIGTERM)
        for worker in workers:
            if worker.proc is None:
                continue
            try:
                await asyncio.wait_for(worker.wait(), STOP_TIMEOUT)
            except TimeoutError:
                worker.signal(signal.SIGKILL)
                await worker.wait()
