"""Moves a cursor around a circle and shares it with everyone in the document.

The cursor is per-peer *state* (``set_state``), so it is coalesced: however
fast the loop runs, at most one update per ``state_interval`` (50 ms) goes on
the wire, and peers always end up with the latest position. Browser apps using
automerge-repo's ``Presence`` see it too.

    ratatoskr relay &
    python examples/cursor_broadcaster.py --doc doc-123
"""

from __future__ import annotations

import asyncio
import contextlib
import math

from _common import parser, run

from ratatoskr_client import RatatoskrClient


async def broadcaster(
    url: str, doc: str, token: str | None, stop: asyncio.Event, *, fps: float = 60.0
) -> None:
    async with RatatoskrClient(url, token=token) as client:
        await client.enter_document(doc)
        await client.set_state(doc, "name", client.me.name)
        step = 0
        while not stop.is_set():
            angle = step / fps * math.pi
            cursor = [round(40 + 30 * math.cos(angle)), round(20 + 15 * math.sin(angle))]
            await client.set_state(doc, "cursor", cursor)
            step += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1 / fps)


if __name__ == "__main__":
    args = parser(__doc__.splitlines()[0]).parse_args()
    run(lambda stop: broadcaster(args.url, args.doc, args.token, stop), args.duration)
