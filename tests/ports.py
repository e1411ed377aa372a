"""Loopback ports for servers that a test starts in another process and must
name in advance (redis-server, a Locust master, a relay's --metrics-listen).

Binding port 0 and closing the socket hands out a port from the kernel's
ephemeral range, the range it also draws from for every outgoing connection:
while the server process starts, another test (or another pytest-xdist worker)
connecting anywhere can be given that very port, and the server then fails to
bind. So these ports come from below the ephemeral range, which the kernel never
hands out by itself, in a block of its own for each xdist worker (no two workers
of a run can pick the same one), from a random start (nor two runs at once), and
each is checked free by binding it.
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

#: Ports below this are never the kernel's choice (Linux: ip_local_port_range).
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: Where the blocks start: above the ports well-known services use.
_FIRST = 10_000
#: Ports per xdist worker.
_BLOCK = 1_000

_handed_out: set[int] = set()
#: Not the ``random`` module's shared state, which tests seed.
_random = random.SystemRandom()


def _ephemeral_start() -> int:
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # the Linux default; elsewhere the range starts higher


def _worker_index() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # "gw3" under xdist
    digits = worker.removeprefix("gw")
    return int(digits) if digits.isdigit() else 0


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(count: int = 1) -> int:
    """The first of ``count`` consecutive loopback ports that nothing uses now,
    none handed out before by this process, outside the ephemeral range."""
    blocks = max(1, (_ephemeral_start() - _FIRST) // _BLOCK)
    low = _FIRST + (_worker_index() % blocks) * _BLOCK
    offset = _random.randrange(_BLOCK)
    for step in range(_BLOCK):
        port = low + (offset + step) % _BLOCK
        wanted = range(port, port + count)
        if wanted[-1] >= low + _BLOCK or not _handed_out.isdisjoint(wanted):
            continue
        if all(_bindable(p) for p in wanted):
            _handed_out.update(wanted)
            return port
    raise RuntimeError(f"no {count} free consecutive loopback ports in {low}-{low + _BLOCK - 1}")
