"""Who may read ``/metrics``, where, and what a scrape costs.

* ``metrics_token``: 401 without ``Authorization: Bearer <token>`` (or with a
  wrong one), 200 with it; ``/health`` stays open.
* ``metrics_listen``: ``/metrics`` and ``/health`` on a second address; the
  main one no longer serves ``/metrics``.
* The page is rendered at most once per ``MAX_AGE`` (1 s) whatever the
  scrape rate.
* The CLI: ``--metrics-token-file``, ``RATATOSKR_METRICS_TOKEN`` and
  ``--metrics-listen``; a token is never printed nor logged.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import aiohttp
import pytest

from ratatoskr_client.errors import ConfigError
from ratatoskr_client.server import RelayConfig, RelayServer, load_config, metrics

from ..ports import free_port
from .test_relay_cli import STARTUP_TIMEOUT, kill, relay_command, relay_process

pytest.importorskip("prometheus_client", reason="the metrics tests need prometheus-client")

TOKEN = "s3cret-metrics-token_0123456789"


async def get(url: str, token: str | None = None) -> tuple[int, str, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


async def test_a_metrics_token_is_required_when_configured() -> None:
    async with RelayServer(port=0, metrics_token=TOKEN) as relay:
        status, body, headers = await get(relay.metrics_url)
        assert status == 401
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert TOKEN not in body
        for wrong in ("", "nope", TOKEN[:-1], TOKEN + "x"):
            assert (await get(relay.metrics_url, wrong))[0] == 401
        async with (
            aiohttp.ClientSession() as http,
            http.get(relay.metrics_url, headers={"Authorization": f"Basic {TOKEN}"}) as resp,
        ):
            assert resp.status == 401  # another scheme
        status, body, _ = await get(relay.metrics_url, TOKEN)
        assert status == 200
        assert "ratatoskr_connections" in body
        # Load balancers ask /health without credentials.
        status, body, _ = await get(f"{relay.url}/health")
        assert (status, body) == (200, '{"status": "ok"}')
    assert TOKEN not in repr(relay.config)


async def test_metrics_listen_serves_metrics_on_its_own_address_only() -> None:
    async with RelayServer(port=0, metrics_listen="127.0.0.1:0") as relay:
        assert relay.metrics_url.startswith("http://127.0.0.1:")
        assert f":{relay.port}/" not in relay.metrics_url
        status, body, _ = await get(relay.metrics_url)
        assert status == 200 and "ratatoskr_peers" in body
        assert (await get(f"{relay.url}/metrics"))[0] == 404
        health = relay.metrics_url.replace("/metrics", "/health")
        assert (await get(health))[0] == 200
        assert (await get(f"{relay.url}/health"))[0] == 200
        metrics_url = relay.metrics_url
        # A restarted relay listens for metrics on the same port again.
        await relay.stop()
        await relay.start()
        assert relay.metrics_url == metrics_url
        assert (await get(metrics_url))[0] == 200
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(metrics_url)


async def test_metrics_listen_and_a_token_combine() -> None:
    async with RelayServer(port=0, metrics_listen="127.0.0.1:0", metrics_token=TOKEN) as relay:
        assert (await get(relay.metrics_url))[0] == 401
        assert (await get(relay.metrics_url, TOKEN))[0] == 200


async def test_the_page_is_rendered_at_most_once_per_max_age(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import prometheus_client

    renders = 0
    render = prometheus_client.generate_latest

    def counting(registry: object) -> bytes:
        nonlocal renders
        renders += 1
        return render(registry)  # type: ignore[arg-type]

    monkeypatch.setattr(prometheus_client, "generate_latest", counting)
    async with RelayServer(port=0) as relay:
        loop = asyncio.get_running_loop()
        started = loop.time()
        bodies = set()
        async with aiohttp.ClientSession() as http:
            for _ in range(50):
                async with http.get(relay.metrics_url) as resp:
                    assert resp.status == 200
                    bodies.add(await resp.read())
        took = loop.time() - started
    print(f"50 scrapes in {took * 1000:.0f} ms: {renders} renders")
    # One render per started second of scraping; every answer one of them.
    assert 1 <= renders <= int(took / metrics.MAX_AGE) + 1
    assert len(bodies) == renders


def test_metrics_settings_are_validated(tmp_path: Path) -> None:
    for bad in ("", "has space", "tab\there", "é"):
        with pytest.raises(ConfigError, match="metrics_token") as info:
            RelayConfig(metrics_token=bad)
        assert bad not in str(info.value) or bad == ""  # a secret is never echoed
    for bad in ("9464", "host:", ":9464", "host:port", "host:70000"):
        with pytest.raises(ConfigError, match="metrics_listen"):
            RelayConfig(metrics_listen=bad)
    assert RelayConfig(metrics_listen="[::1]:9464").metrics_address == ("::1", 9464)
    assert RelayConfig(metrics_listen="0.0.0.0:0").metrics_address == ("0.0.0.0", 0)
    path = tmp_path / "relay.toml"
    path.write_text(f'metrics_token = "{TOKEN}"\nmetrics_listen = "127.0.0.1:9464"\n')
    config = load_config(path)
    assert (config.metrics_token, config.metrics_address) == (TOKEN, ("127.0.0.1", 9464))
    path.write_text("metrics_listen = 9464\n")
    with pytest.raises(ConfigError, match="wrong type"):
        load_config(path)


# --------------------------------------------------------------------------- the CLI


async def test_cli_metrics_token_file_and_listen(tmp_path: Path) -> None:
    token_file = tmp_path / "metrics-token"
    token_file.write_text(TOKEN + "\n")  # the trailing newline is not part of it
    port = free_port()
    async with relay_process(
        "--metrics-token-file",
        str(token_file),
        "--metrics-listen",
        f"127.0.0.1:{port}",
        "--log-level",
        "DEBUG",
    ) as relay:
        url = f"http://127.0.0.1:{port}/metrics"
        assert (await get(url))[0] == 401
        assert (await get(url, TOKEN))[0] == 200
        assert (await get(f"http://127.0.0.1:{relay.port}/metrics", TOKEN))[0] == 404
        code, stdout, stderr = await relay.stop()
    assert code == 0
    assert stdout == b""  # still exactly one line (read by relay_process)
    assert TOKEN.encode() not in stderr
    assert f"metrics on http://127.0.0.1:{port}/metrics".encode() in stderr


async def test_cli_reads_the_metrics_token_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RATATOSKR_METRICS_TOKEN", TOKEN)
    async with relay_process() as relay:
        url = f"http://127.0.0.1:{relay.port}/metrics"
        assert (await get(url))[0] == 401
        assert (await get(url, TOKEN))[0] == 200


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metrics-token-file", "/nonexistent/token"], "cannot read --metrics-token-file"),
        (["--metrics-listen", "nowhere"], "metrics_listen"),
    ],
)
async def test_cli_refuses_bad_metrics_options(args: list[str], message: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *relay_command("--port", "0", *args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), STARTUP_TIMEOUT)
    finally:
        await kill(proc)
    assert proc.returncode == 2, stderr.decode()
    assert stdout == b""
    assert message in stderr.decode()
    assert len(stderr.decode().strip().splitlines()) == 1


async def test_cli_says_which_address_it_cannot_listen_on() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            *relay_command("--port", "0", "--metrics-listen", f"127.0.0.1:{port}"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "RATATOSKR_METRICS_TOKEN": ""},
        )
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), STARTUP_TIMEOUT)
        finally:
            await kill(proc)
    assert proc.returncode == 1
    assert stdout == b""
    assert f"cannot listen on 127.0.0.1:{port}" in stderr.decode()
