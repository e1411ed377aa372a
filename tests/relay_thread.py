"""A reference relay on its own event loop in a background thread.

Blocking code (the blocking client, a subprocess the test waits for) must not
run on the loop that serves the relay, or the relay would stop answering. This
relay has its own loop, so the test's thread is free to block.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ratatoskr_client.server import RelayConfig, RelayServer, RelayStats

WAIT = 10.0


class RelayThread:
    """``with RelayThread(config, **overrides) as relay:`` a running relay at
    ``relay.url`` (by default open mode on a free loopback port)."""

    def __init__(self, config: RelayConfig | None = None, **overrides: Any) -> None:
        if config is None:
            overrides.setdefault("host", "127.0.0.1")
            overrides.setdefault("port", 0)
        self.server = RelayServer(config, **overrides)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="test-relay", daemon=True
        )

    def _run(self, coro: Any, timeout: float = WAIT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def __enter__(self) -> RelayThread:
        self._thread.start()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(WAIT)
            self._loop.close()

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> None:
        """Start listening (again, on the same port, with empty state)."""
        self._run(self.server.start())

    def stop(self) -> None:
        """Close every connection and stop listening."""
        self._run(self.server.stop())

    @contextlib.contextmanager
    def frozen(self, limit: float = WAIT) -> Iterator[None]:
        """Block the relay's event loop inside the ``with``: a server that
        hangs. Entered once it hangs (so what the test sends next waits for
        it); it answers again when the block ends, or after ``limit`` seconds
        whatever happens (a test that never gets there fails instead of
        hanging)."""
        hanging, release = threading.Event(), threading.Event()

        def hang() -> None:
            hanging.set()
            release.wait(limit)

        self._loop.call_soon_threadsafe(hang)
        assert hanging.wait(WAIT), "the relay's loop never ran the freeze"
        try:
            yield
        finally:
            release.set()

    def stats(self) -> RelayStats:
        return self._run(self._stats())  # type: ignore[no-any-return]

    async def _stats(self) -> RelayStats:
        return self.server.stats()

    def wait_until(self, predicate: Callable[[RelayStats], bool], timeout: float) -> RelayStats:
        """Poll the relay's table sizes until ``predicate`` holds (or fail)."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                pytest.fail(f"relay never reached the expected state: {stats}")
            time.sleep(0.05)
