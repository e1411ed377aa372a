"""Prints who is in a document every time that changes.

``watch_presence`` yields the current presence, then every new value; it keeps
going across reconnects (an empty tuple while the connection is down).

    ratatoskr relay &
    python examples/presence_watcher.py --doc doc-123
"""

from __future__ import annotations

import asyncio
import contextlib

from _common import parser, run

from ratatoskr_client import RatatoskrClient


async def watcher(url: str, doc: str, token: str | None, stop: asyncio.Event) -> None:
    async with RatatoskrClient(url, token=token) as client:
        await client.enter_document(doc)

        async def follow() -> None:
            async for peers in client.watch_presence(doc):
                names = ", ".join(p.name for p in peers) or "(nobody)"
                print(f"{doc}: {len(peers)} present: {names}", flush=True)

        task = asyncio.create_task(follow())
        await stop.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


if __name__ == "__main__":
    args = parser(__doc__.splitlines()[0]).parse_args()
    run(lambda stop: watcher(args.url, args.doc, args.token, stop), args.duration)
