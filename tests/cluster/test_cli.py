"""``ratatoskr relay --redis`` and ``--workers`` as real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from ..integration.rawpeer import RawPeers
from .support import (
    EXIT_TIMEOUT,
    LISTENING,
    RedisServer,
    RelayNode,
    eventually,
    free_port,
    relay_command,
)


def run_relay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        relay_command("--port", "0", *args),
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


def test_workers_without_redis_is_refused() -> None:
    done = run_relay("--workers", "2")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert "--workers needs --redis" in done.stderr


def test_a_bad_redis_url_is_refused() -> None:
    done = run_relay("--redis", "http://localhost:6379")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "redis_url must start with redis://" in done.stderr


def test_a_redis_url_whose_database_is_not_a_number_is_refused() -> None:
    done = run_relay("--redis", "redis://127.0.0.1:6379/abc")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "the database (/DB or ?db=) is not a number" in done.stderr
    assert "int()" not in done.stderr


def test_a_redis_url_without_a_scheme_says_what_a_redis_url_looks_like() -> None:
    done = run_relay("--redis", "notaurl")
    assert done.returncode == 2
    assert done.stderr == (
        "ratatoskr relay: invalid configuration: redis_url must start with redis://, "
        "rediss:// or unix:// (like redis://HOST:PORT/DB), got 'notaurl'\n"
    )


def test_redis_without_the_cluster_extra_says_what_to_install(tmp_path: Path) -> None:
    # A `redis` package that cannot be imported, first on the path: what a
    # machine without the extra looks like to the relay.
    shim = tmp_path / "redis"
    shim.mkdir()
    (shim / "__init__.py").write_text("raise ImportError(\"No module named 'redis'\")\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    done = run_relay("--redis", "redis://127.0.0.1:6379/0", env=env)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert '.venv/bin/pip install -e ".[cluster]"' in done.stderr


@pytest.mark.slow
async def test_a_relay_starts_without_redis_and_joins_when_it_appears() -> None:
    redis = RedisServer()  # not started yet
    node = RelayNode(["--redis", redis.url, "--node-ttl", "2"], "lonely")
    node.spawn()
    try:
        node.wait_listening()
        assert (await node.health())["redis"] == "down"
        async with RawPeers(node.ws_url) as peers:  # serves its own peers meanwhile
            a, b = await peers(), await peers()
            await a.join("doc")
            assert (await b.join("doc"))["peers"] == [a.peer_id, b.peer_id]
            redis.start()
            took = await eventually(
                lambda: _health(node, "up"), 10, lambda: "the relay never joined"
            )
            assert took < 5
            # Its state is now in Redis: a second relay sees its peers.
            other = RelayNode(["--redis", redis.url, "--node-ttl", "2"], "other")
            other.spawn()
            try:
                other.wait_listening()
                async with RawPeers(other.ws_url) as more:
                    c = await more()
                    state = await c.join("doc")
                    introduced = {f["peerId"] for f in c.frames if f["type"] == "peer_identity"}
                    assert introduced == {a.peer_id, b.peer_id}
                    assert sorted(state["peers"]) == sorted([a.peer_id, b.peer_id, c.peer_id])
            finally:
                other.close()
    finally:
        node.close()
        redis.close()


async def _health(node: RelayNode, state: str) -> bool:
    return (await node.health()).get("redis") == state


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "children").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended since the listing (it had no children of its own)
        found |= {int(p) for p in text.split()}
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
async def test_workers_share_one_port_restart_a_dead_one_and_stop_on_sigterm() -> None:
    redis = RedisServer().start()
    proc = await asyncio.create_subprocess_exec(
        *relay_command("--port", "0", "--workers", "2", "--redis", redis.url, "--node-ttl", "2"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        # Read the workers' logs as they come, so a full pipe never blocks them.
        stderr_task = asyncio.create_task(proc.stderr.read())
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        match = LISTENING.match(line)
        assert match, line
        port = int(match.group(1))
        ws_url = f"ws://127.0.0.1:{port}/sync"
        workers = _children(proc.pid)
        assert len(workers) == 2

        # Connections are spread over both workers (each has its own node id,
        # the server peer id in auth_ok); peers on different workers see each other.
        async with RawPeers(ws_url) as peers:
            by_node: dict[str, list[object]] = {}
            for _ in range(40):
                peer = await peers.connect()
                ok = await peer.auth()
                by_node.setdefault(ok["peerId"], []).append(peer)
                if len(by_node) == 2:
                    break
            assert len(by_node) == 2, "every connection landed on the same worker"
            first, second = (group[-1] for group in by_node.values())
            await first.join("doc")  # type: ignore[attr-defined]
            state = await second.join("doc")  # type: ignore[attr-defined]
            assert state["peers"][0] == first.peer_id  # type: ignore[attr-defined]

        # A worker that dies is started again.
        dead = next(iter(workers))
        os.kill(dead, signal.SIGKILL)
        await eventually(
            lambda: len(_children(proc.pid) - {dead}) == 2, 20, lambda: "no new worker"
        )
        async with aiohttp.ClientSession() as http:

            async def two_nodes() -> bool:
                async with http.get(f"http://127.0.0.1:{port}/health") as resp:
                    return (await resp.json()).get("nodes") == 2

            await eventually(two_nodes, 20, lambda: "the new worker did not join")

        running = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), EXIT_TIMEOUT + 15)
        assert code == 0
        assert not any(_alive(pid) for pid in running)
        stderr = (await stderr_task).decode()
        assert "Traceback" not in stderr, stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        redis.close()


def test_workers_refuse_metrics_listen_without_a_fixed_port() -> None:
    done = run_relay(
        "--workers", "2", "--redis", "redis://127.0.0.1:1/0", "--metrics-listen", "127.0.0.1:0"
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert "--metrics-listen with --workers needs a fixed port" in done.stderr


async def test_each_worker_serves_its_own_metrics_behind_the_token(tmp_path: Path) -> None:
    """``--workers 2 --metrics-listen HOST:P``: worker i answers on P + i, and
    ``--metrics-token-file`` reaches every worker."""
    redis = RedisServer().start()
    token = "workers-metrics-token"
    token_file = tmp_path / "token"
    token_file.write_text(token)
    base = free_port(count=2)  # worker i listens on base + i
    proc = await asyncio.create_subprocess_exec(
        *relay_command(
            "--port",
            "0",
            "--workers",
            "2",
            "--redis",
            redis.url,
            "--metrics-listen",
            f"127.0.0.1:{base}",
            "--metrics-token-file",
            str(token_file),
        ),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        stderr_task = asyncio.create_task(proc.stderr.read())
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        match = LISTENING.match(line)
        assert match, line
        port = int(match.group(1))
        nodes = set()
        async with aiohttp.ClientSession() as http:
            for metrics_port in (base, base + 1):
                url = f"http://127.0.0.1:{metrics_port}"
                async with http.get(f"{url}/metrics") as resp:
                    assert resp.status == 401
                headers = {"Authorization": f"Bearer {token}"}
                async with http.get(f"{url}/metrics", headers=headers) as resp:
                    assert resp.status == 200
                    assert "ratatoskr_redis_up" in await resp.text()
                async with http.get(f"{url}/health") as resp:
                    nodes.add((await resp.json())["node"])
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert resp.status == 404  # not on the shared port
        assert len(nodes) == 2  # one worker each
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), EXIT_TIMEOUT + 15) == 0
        stderr = (await stderr_task).decode()
        assert "Traceback" not in stderr, stderr
        assert token not in stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        redis.close()
