"""The CLI's operator commands and options as real processes:
``ratatoskr webhook-echo`` and the relay's admin and webhook options."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from ratatoskr_client.cli.main import main
from ratatoskr_client.server.core.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

from ..ports import free_port


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["webhook-echo"], "needs the secret"),
        (["webhook-echo", "--secret-file", "/nonexistent/secret"], "cannot read --secret-file"),
        (["webhook-echo", "--port", "70000"], "0-65535"),
        (["relay", "--admin-token-file", "/nonexistent/token"], "cannot read --admin-token-file"),
        (["relay", "--admin-token", "a", "--admin-token-file", "f"], "not allowed with"),
        (["relay", "--admin-token", "has space"], "admin_token must be"),
        (["relay", "--webhook-url", "http://127.0.0.1:9/"], "webhook_url needs webhook_secret"),
        (
            ["relay", "--webhook-url", "http://127.0.0.1:9/", "--webhook-secret-file", "/nope"],
            "cannot read --webhook-secret-file",
        ),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("RATATOSKR_"):
            monkeypatch.delenv(name)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert says in err
    if args[0] == "webhook-echo" and "--port" not in args:
        assert len(err.strip().splitlines()) == 1


async def test_webhook_echo_prints_verified_events_and_refuses_others(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("echo-secret\n")
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ratatoskr_client",
        "webhook-echo",
        "--port",
        str(port),
        "--secret-file",
        str(secret_file),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        line = await asyncio.wait_for(proc.stderr.readline(), 20)
        assert b"listening on http://127.0.0.1:" in line
        event = {"type": "user.joined", "documentId": "doc", "user": "alice", "at": 1.0}
        body = json.dumps({"deliveryId": "d1", "node": "n", "events": [event]}).encode()
        stamp = int(time.time())
        headers = {
            TIMESTAMP_HEADER: str(stamp),
            SIGNATURE_HEADER: sign("echo-secret", stamp, body),
            "X-Ratatoskr-Delivery": "d1",
        }
        url = f"http://127.0.0.1:{port}/"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=body, headers=headers) as answer:
                assert answer.status == 200
            printed = await asyncio.wait_for(proc.stdout.readline(), 10)
            assert json.loads(printed) == event
            forged = {**headers, SIGNATURE_HEADER: sign("wrong", stamp, body)}
            async with http.post(url, data=body, headers=forged) as answer:
                assert answer.status == 401
            assert b"refused" in await asyncio.wait_for(proc.stderr.readline(), 10)
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
