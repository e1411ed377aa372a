"""A chat bot on a document's public sidecar channel.

Sidecar channels (``eph:<channel>-<doc>``) are public: peers who may only read
the document, or anonymous ones, can chat there. The bot answers ``!help``,
``!who`` (who is in the chat) and ``!time``, and ignores everything else.

    ratatoskr relay &
    python examples/sidecar_chat_bot.py --doc doc-123
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from _common import parser, run

from ratatoskr_client import Peer, RatatoskrClient


def answer(text: str, present: tuple[Peer, ...]) -> str | None:
    """The bot's reply to a chat line, or None."""
    command = text.strip().lower()
    if command == "!help":
        return "commands: !help, !who, !time"
    if command == "!who":
        return "here: " + ", ".join(p.name for p in present)
    if command == "!time":
        return time.strftime("it is %H:%M:%S UTC", time.gmtime())
    return None


async def chat_bot(url: str, doc: str, token: str | None, stop: asyncio.Event) -> None:
    async with RatatoskrClient(url, token=token) as client:
        channel = client.sidecar(doc, "chat")

        async def on_message(doc_id: str, sender: Peer, payload: Any) -> None:
            if doc_id != channel or not isinstance(payload, dict):
                return
            reply = answer(str(payload.get("chat", "")), client.presence(channel))
            if reply is not None:
                await client.send_ephemeral(channel, {"chat": reply, "to": sender.peer_id})

        client.on("ephemeral-message", on_message)
        await client.enter_document(channel)
        await stop.wait()


if __name__ == "__main__":
    args = parser(__doc__.splitlines()[0]).parse_args()
    run(lambda stop: chat_bot(args.url, args.doc, args.token, stop), args.duration)
