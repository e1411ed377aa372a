"""``ratatoskr webhook-echo``: a webhook receiver that prints verified events.

It listens for the relay's webhook POSTs, checks each one's signature and
timestamp (:func:`~ratatoskr_client.server.core.webhooks.verify`), answers
2xx, and prints one JSON line per event; a request that fails the check is
answered 401 and reported on stderr. For seeing the events locally, and as
a reference for writing a receiver.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from aiohttp import web

from ..server.core.webhooks import DELIVERY_HEADER, verify
from .console import print_line

__all__ = ["run_webhook_echo"]


async def run_webhook_echo(host: str, port: int, secret: str, stop: asyncio.Event) -> int:
    """Serve ``POST /`` (any path) on ``host:port`` until ``stop``; returns
    0, or 1 when the address cannot be listened on."""
    seen: set[str] = set()

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(secret, request.headers, body, time.time()):
            print(
                f"webhook-echo: refused a request from {request.remote}: bad signature or "
                "timestamp",
                file=sys.stderr,
                flush=True,
            )
            return web.json_response({"error": "bad_signature"}, status=401)
        delivery = request.headers.get(DELIVERY_HEADER, "")
        if delivery in seen:  # a retry of a batch we already have: acknowledge, skip
            return web.json_response({"ok": True, "duplicate": True})
        seen.add(delivery)
        try:
            events = json.loads(body)["events"]
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "invalid_body"}, status=400)
        for event in events:
            print_line(json.dumps(event, ensure_ascii=False))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/{tail:.*}", receive)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            print(
                f"ratatoskr webhook-echo: cannot listen on {host}:{port}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return 1
        bound = runner.addresses[0][1]
        print(
            f"ratatoskr webhook-echo listening on http://{host}:{bound}/ "
            "(printing verified events)",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0
