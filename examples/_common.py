"""Command-line plumbing shared by the examples (not part of the SDK)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--url", default="http://127.0.0.1:4151", help="relay URL (ratatoskr relay)")
    p.add_argument("--doc", default="doc-123", help="document to join")
    p.add_argument("--token", default=None, help="user token (default: anonymous)")
    p.add_argument("--duration", type=float, default=None, help="stop after SECONDS")
    return p


def run(main: Callable[[asyncio.Event], Awaitable[None]], duration: float | None) -> None:
    """Run ``main(stop)`` until Ctrl-C, SIGTERM or ``duration`` seconds."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        if duration is not None:
            loop.call_later(duration, stop.set)
        await main(stop)

    asyncio.run(runner())
