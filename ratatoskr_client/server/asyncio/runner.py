"""RelayServer: the relay listening on a real socket, with its connection guards.

::

    async with RelayServer(RelayConfig(port=0, open=True)) as relay:
        print(relay.url)          # http://127.0.0.1:<free port>
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

from ..cluster import Cluster
from ..config import RelayConfig
from ..core.relay import RelayCore, RelayStats
from .app import CLUSTER_KEY, GUARD_KEY, create_app, create_metrics_app
from .guard import AcceptErrorFilter, HandshakeGuard

__all__ = ["OPEN_MODE", "RelayServer"]

log = logging.getLogger("ratatoskr_client.server")


#: Connections the kernel may hold waiting for ``accept`` (it caps this at
#: ``net.core.somaxconn``, 4096 on current Linux). aiohttp's default of 128
#: overflows when thousands of clients reconnect at once after a restart: the
#: kernel then drops their SYNs and each retries only after 1, 3, 7 s, which
#: made a 4,000-client reconnect storm wait on the clock, not on the CPU.
LISTEN_BACKLOG = 4096


class _GuardedSite(web.TCPSite):
    """A TCP site whose every accepted connection starts a handshake deadline."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        guard: HandshakeGuard,
        *,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(
            runner,
            host,
            port,
            backlog=LISTEN_BACKLOG,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
        self._guard = guard

    async def start(self) -> None:
        # TCPSite.start, with the protocol factory wrapped so the deadline starts
        # at accept time, before the client has sent anything.
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        guard = self._guard

        def protocol() -> asyncio.BaseProtocol:
            handler = server()
            guard.accepted(handler)
            return handler

        self._server = await asyncio.get_running_loop().create_server(
            protocol,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )


#: What open mode means, logged when a relay starts in it.
OPEN_MODE: Final = (
    "open mode: every document not listed in the configuration exists and "
    "is readable by every peer, anonymous ones included"
)


class RelayServer:
    """A relay listening on a real socket; an async context manager.

    ``RelayServer(config)`` or ``RelayServer(port=0, open=True, presence_ttl=1)``
    (keyword arguments build or override the :class:`RelayConfig`). With port 0
    the OS picks a free port; :attr:`port` and :attr:`url` tell which. A stopped
    server can be started again; it then listens on the same port (its state
    starts empty, like a restarted process).

    ``clock`` is the relay's time (default ``time.monotonic``): its rules
    and its timers run on it. A test passes a
    :class:`~ratatoskr_client.server.core.clock.ManualClock` and moves it by
    hand (``relay.clock.advance(95)``): presence expiry, the liveness rule,
    auth deadlines and held presence changes then happen at once, in fake
    time (see ``docs/testing.md``).

    Besides the relay's rules it guards the listening socket: connections that
    do not complete their HTTP request within ``handshake_timeout`` are closed,
    and accept failures at the open-file limit are logged once per 10 s instead
    of once per attempt (see :mod:`ratatoskr_client.server.asyncio.guard`).
    """

    def __init__(
        self,
        config: RelayConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        **overrides: Any,
    ) -> None:
        base = config or RelayConfig(open=True)
        self.config = base.with_(**overrides) if overrides else base
        #: the relay's time (see the class docstring)
        self.clock = clock
        self._runner: web.AppRunner | None = None
        self._core: RelayCore | None = None
        self._guard: HandshakeGuard | None = None
        self._cluster: Cluster | None = None
        self._port: int | None = None
        self._metrics_runner: web.AppRunner | None = None
        self._metrics_port: int | None = None
        self._accept_filter: AcceptErrorFilter | None = None

    async def start(self) -> RelayServer:
        """Start listening (and, with ``redis_url``, joining the cluster). Returns self.

        Raises:
            OSError: the address cannot be listened on (for ``metrics_listen``,
                ``filename`` is that address).
            ConfigError: ``redis_url`` is set but the ``redis`` package is missing.
        """
        if self._runner is not None:
            raise RuntimeError("relay already running")
        self._core = RelayCore(self.config, clock=self.clock)
        app = create_app(self.config, core=self._core)
        self._guard = app[GUARD_KEY]
        self._cluster = app.get(CLUSTER_KEY)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        if self._cluster is not None:
            # Listen once joined, so the first clients already see the whole
            # cluster; without Redis, serve local peers after JOIN_TIMEOUT.
            await self._cluster.wait_up()
        port = self._port if self._port is not None else self.config.port
        site = _GuardedSite(
            runner, self.config.host, port, self._guard, reuse_port=self.config.reuse_port
        )
        try:
            await site.start()
            self._metrics_runner = await self._start_metrics(app)
        except BaseException:
            await runner.cleanup()
            raise
        self._port = int(runner.addresses[0][1])
        self._runner = runner
        self._accept_filter = AcceptErrorFilter.install(asyncio.get_running_loop())
        log.info("relay listening on %s", self.ws_url)
        if self.config.open:
            # INFO, not WARNING: in-process the application chose open mode in its
            # own code (tests, the pytest plugin, a script), and a WARNING would
            # reach stderr through logging's last-resort handler on every start.
            # `ratatoskr relay` warns, for an operator who may not know.
            log.info(OPEN_MODE)
        if not self.config.server_presence:
            log.warning("server_presence is off: behaving like the upstream server (no presence)")
        return self

    async def _start_metrics(self, app: web.Application) -> web.AppRunner | None:
        """With ``metrics_listen``: serve /metrics and /health there."""
        address = self.config.metrics_address
        if address is None:
            return None
        assert self._guard is not None
        host, port = address
        if self._metrics_port is not None:  # restarted: the same port again
            port = self._metrics_port
        runner = web.AppRunner(create_metrics_app(app), handle_signals=False, access_log=None)
        await runner.setup()
        # (no SO_REUSEPORT: each worker of --workers has a metrics port of its own)
        site = _GuardedSite(runner, host, port, self._guard)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            # The address goes in ``filename``: the caller can tell which one failed.
            raise OSError(exc.errno, exc.strerror or str(exc), f"{host}:{port}") from exc
        except BaseException:
            await runner.cleanup()
            raise
        self._metrics_port = int(runner.addresses[0][1])
        log.info("metrics on %s", self.metrics_url)
        return runner

    async def stop(self) -> None:
        """Close every socket (1001 going away) and stop listening. Idempotent."""
        metrics, self._metrics_runner = self._metrics_runner, None
        if metrics is not None:
            await metrics.cleanup()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        accept_filter, self._accept_filter = self._accept_filter, None
        if accept_filter is not None:
            accept_filter.uninstall(asyncio.get_running_loop())

    async def __aenter__(self) -> RelayServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._runner is not None

    @property
    def port(self) -> int:
        """The port listened on (known once started)."""
        if self._port is None:
            raise RuntimeError("relay not started")
        return self._port

    @property
    def host(self) -> str:
        """The interface listened on."""
        return self.config.host

    @property
    def url(self) -> str:
        """``http://host:port``: what :class:`~ratatoskr_client.RatatoskrClient` takes."""
        return f"http://{self._netloc()}"

    @property
    def ws_url(self) -> str:
        """``ws://host:port/sync``: the WebSocket endpoint."""
        return f"ws://{self._netloc()}/sync"

    @property
    def metrics_url(self) -> str:
        """``http://host:port/metrics`` (on ``metrics_listen`` when it is set)."""
        address = self.config.metrics_address
        if address is None:
            return f"{self.url}/metrics"
        if self._metrics_port is None:
            raise RuntimeError("relay not started")
        return f"http://{_netloc(address[0], self._metrics_port)}/metrics"

    def _netloc(self) -> str:
        return _netloc(self.config.host, self.port)

    @property
    def core(self) -> RelayCore:
        """The running relay's state (for inspection in tests)."""
        if self._core is None:
            raise RuntimeError("relay not started")
        return self._core

    @property
    def guard(self) -> HandshakeGuard:
        """The handshake deadlines (for inspection in tests)."""
        if self._guard is None:
            raise RuntimeError("relay not started")
        return self._guard

    @property
    def cluster(self) -> Cluster | None:
        """The relay's cluster membership (None without ``redis_url``)."""
        return self._cluster

    def stats(self) -> RelayStats:
        """Sizes of the relay's tables."""
        return self.core.stats()


def _netloc(host: str, port: int) -> str:
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"
