"""Machinery for the cluster tests: a real Redis server, relays as processes,
and a load balancer in front of them.

* :class:`RedisServer` — ``redis-server --port N --save "" --appendonly no``
  on a free loopback port; killed and started again on the same port for the
  Redis-loss tests.
* :class:`RelayNode` — ``python -m ratatoskr_client relay --port 0 --redis URL``
  as a separate process; its URL comes from the line it prints. Stopped with
  SIGTERM or killed with SIGKILL; ``/metrics`` and ``/health`` are read over HTTP.
* :class:`LoadBalancer` — a TCP proxy that hands each new connection to the
  next relay that accepts it (round robin, no sticky sessions), and closes the
  client's side when the relay's side closes: what a load balancer in front of
  a cluster does, so clients of a dead relay reconnect to another one.

Everything is started synchronously where it is shared by a module (the
processes do not care which event loop the tests run on).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ..ports import free_port

LISTENING = re.compile(r"^ratatoskr relay listening on ws://127\.0\.0\.1:(\d+)/sync\n$")
#: A cold interpreter on a busy 2-core machine.
STARTUP_TIMEOUT = 30.0
EXIT_TIMEOUT = 10.0
REDIS_SERVER = shutil.which("redis-server")
REQUIRED = os.environ.get("RATATOSKR_REQUIRE_CLUSTER") == "1"


def require_cluster_tools() -> None:
    """Skip (with a message) where no redis-server can be found — fail instead
    under ``RATATOSKR_REQUIRE_CLUSTER=1``, as in CI."""
    missing = []
    if REDIS_SERVER is None:
        missing.append("redis-server on PATH (apt-get install redis-server)")
    try:
        import redis.asyncio  # noqa: F401
    except ImportError:
        missing.append('the redis package (pip install -e ".[cluster]")')
    if missing:
        message = "the cluster tests need " + " and ".join(missing)
        if REQUIRED:
            pytest.fail(message + " (RATATOSKR_REQUIRE_CLUSTER=1)")
        pytest.skip(message)


# --------------------------------------------------------------------------- Redis


class RedisServer:
    """A redis-server process on a loopback port, with no persistence."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="ratatoskr-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir.name,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: Redis is gone at once, with everything it held."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.kill()
        self._dir.cleanup()

    def client(self) -> Any:
        import redis.asyncio as aioredis

        return aioredis.from_url(self.url)

    async def shard_subscribers(self, channel: str) -> int:
        """How many connections subscribe to a sharded channel (PUBSUB SHARDNUMSUB)."""
        async with self.client() as redis:
            reply = await redis.execute_command("PUBSUB", "SHARDNUMSUB", channel)
        return int(dict(zip(reply[::2], reply[1::2], strict=True))[channel.encode()])


# --------------------------------------------------------------------------- relays


def relay_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ratatoskr_client", "relay", *args]


class RelayNode:
    """One relay process of the cluster."""

    def __init__(self, args: Sequence[str], label: str = "") -> None:
        self.args = list(args)
        self.label = label
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/sync"

    def spawn(self) -> None:
        self.proc = subprocess.Popen(
            relay_command("--port", "0", *self.args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )

    def wait_listening(self) -> RelayNode:
        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        match = LISTENING.match(line)
        if match is None:
            self.kill()
            raise RuntimeError(f"relay {self.label} printed {line!r}; stderr: {self.stderr()}")
        self.port = int(match.group(1))
        return self

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def kill(self) -> None:
        """SIGKILL: the process dies without a word to anyone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def terminate(self) -> int:
        """SIGTERM, then the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(EXIT_TIMEOUT)

    def close(self) -> None:
        self.kill()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()

    async def health(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.get(f"{self.url}/health") as resp:
            assert resp.status == 200
            body: dict[str, Any] = await resp.json()
            return body

    async def metrics_page(self) -> str:
        async with aiohttp.ClientSession() as http, http.get(f"{self.url}/metrics") as resp:
            assert resp.status == 200
            return await resp.text()

    async def metrics(self) -> dict[str, float]:
        """Every sample of ``/metrics``: ``name{label="v",...}`` -> value.

        The relay renders the page at most once a second, so it is the page
        rendered during the second before this call, or during this call:
        the first page that differs from the one served when the call began
        (the relay's heartbeat to Redis, counted in the page, changes it
        every NODE_TTL / 5)."""
        from prometheus_client.parser import text_string_to_metric_families

        stale = await self.metrics_page()
        text = stale

        async def rendered_anew() -> bool:
            nonlocal text
            text = await self.metrics_page()
            return text != stale

        await eventually(rendered_anew, 5, lambda: "the /metrics page was never rendered anew")
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return out


def start_relays(count: int, args: Sequence[str], labels: Iterable[str] = ()) -> list[RelayNode]:
    """``count`` relays with the same options, started in parallel."""
    names = list(labels) or [f"relay{i}" for i in range(count)]
    nodes = [RelayNode(args, names[i]) for i in range(count)]
    for node in nodes:
        node.spawn()
    try:
        for node in nodes:
            node.wait_listening()
    except BaseException:
        for node in nodes:
            node.close()
        raise
    return nodes


def write_config(text: str) -> Path:
    fd, name = tempfile.mkstemp(prefix="ratatoskr-cluster-", suffix=".toml")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return Path(name)


# --------------------------------------------------------------------------- load balancer


class LoadBalancer:
    """A round-robin TCP proxy in front of several relays (no sticky sessions)."""

    def __init__(self, ports: Sequence[int]) -> None:
        self.ports = list(ports)
        self._next = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> LoadBalancer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for _ in range(len(self.ports)):
            port = self.ports[self._next % len(self.ports)]
            self._next += 1
            with contextlib.suppress(OSError):
                return await asyncio.open_connection("127.0.0.1", port)
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            upstream = await self._connect()
            if upstream is None:
                return
            up_reader, up_writer = upstream
            self._writers.add(up_writer)
            await asyncio.gather(
                self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
            )
        finally:
            self._tasks.discard(task)
            writer.close()

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except OSError:
            pass
        finally:
            dst.close()


# --------------------------------------------------------------------------- waiting


async def eventually(
    check: Any, timeout: float, describe: Any = lambda: "", interval: float = 0.02
) -> float:
    """Seconds until ``check()`` is true; fails with ``describe()`` after ``timeout``.

    For conditions that live in other processes (a relay's metrics, Redis):
    there is nothing in this process to wait on, so it re-checks every
    ``interval``. Conditions on this process's clients wait on their events.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return loop.time() - start
        if loop.time() - start > timeout:
            raise AssertionError(f"not reached within {timeout} s: {describe()}")
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------- bus spy


class BusSpy:
    """Subscribes to cluster channels like a relay would, and records every
    message (decoded) — to prove what does and does not cross Redis."""

    def __init__(self, redis: RedisServer) -> None:
        self.redis = redis
        #: (channel, node id, message) in arrival order
        self.messages: list[tuple[str, str, Any]] = []
        self.raw: list[tuple[str, bytes]] = []
        self._client: Any = None
        self._pubsub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def start(self, channels: Sequence[str] = (), shard_channels: Sequence[str] = ()) -> None:
        self._client = self.redis.client()
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        if channels:
            await self._pubsub.subscribe(*channels)
        if shard_channels:
            await self._pubsub.ssubscribe(*shard_channels)
        # The subscriptions are active once this ping's answer comes back.
        await self._pubsub.ping("ready")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while True:
            # (None: a subscription confirmation, which is ignored)
            message = await self._pubsub.get_message(timeout=1)
            if message is not None and message["type"] == "pong":
                break
            assert loop.time() < deadline, "no answer from Redis"
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        from ratatoskr_client.server.cluster.wire import decode_message

        while True:
            message = await self._pubsub.get_message(timeout=None)
            if message is None or message["type"] not in ("message", "smessage"):
                continue
            channel = message["channel"].decode()
            self.raw.append((channel, message["data"]))
            node, bodies = decode_message(message["data"])
            self.messages += [(channel, node, body) for body in bodies]
            self._changed.set()

    async def wait_for(self, predicate: Any, timeout: float = 5.0) -> tuple[str, str, Any]:
        """The first recorded message matching ``predicate(channel, node, body)``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for item in self.messages:
                if predicate(*item):
                    return item
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no such bus message within {timeout} s: {self.messages}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pubsub is not None:
            await self._pubsub.aclose()
        if self._client is not None:
            await self._client.aclose()
