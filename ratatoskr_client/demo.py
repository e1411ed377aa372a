"""``ratatoskr demo`` (placeholder until the demo lands)."""

from __future__ import annotations

import asyncio


async def run_demo(*, bots: int, duration: float | None, stop: asyncio.Event) -> int:
    raise NotImplementedError
