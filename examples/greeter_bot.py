"""A presence bot that greets everyone who joins a document.

It enters the document and its chat sidecar (``eph:chat-<doc>``), and when a
peer joins the document it says hello on the sidecar, by name.

    ratatoskr relay &
    python examples/greeter_bot.py --doc doc-123
"""

from __future__ import annotations

import asyncio
import logging

from _common import parser, run

from ratatoskr_client import Peer, RatatoskrClient

log = logging.getLogger("greeter")


async def greeter(url: str, doc: str, token: str | None, stop: asyncio.Event) -> None:
    async with RatatoskrClient(url, token=token) as client:
        chat = client.sidecar(doc, "chat")

        async def greet(doc_id: str, peer: Peer) -> None:
            if doc_id == doc:
                log.info("%s joined %s", peer.name, doc)
                await client.send_ephemeral(chat, {"chat": f"Welcome, {peer.name}!"})

        client.on("peer-joined", greet)
        await client.enter_document(doc)
        await client.enter_document(chat)
        log.info("greeting newcomers in %s as %s", doc, client.me.name)
        await stop.wait()


if __name__ == "__main__":
    args = parser(__doc__.splitlines()[0]).parse_args()
    run(lambda stop: greeter(args.url, args.doc, args.token, stop), args.duration)
