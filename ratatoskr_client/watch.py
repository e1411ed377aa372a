"""``ratatoskr watch`` (placeholder until watch lands)."""

from __future__ import annotations

import asyncio


async def run_watch(
    url: str, document: str, *, token: str | None, as_json: bool, stop: asyncio.Event
) -> int:
    raise NotImplementedError
