"""Check by hand: a bot with a token callable keeps working on a real
upstream Ratatoskr server across forced reconnects after its session tokens
expired.

Usage (upstream running on PORT with its JWT_SECRET in SECRET_FILE; users
``alice`` and ``bob`` exist; DOC_ID a public document)::

    python tools/check_upstream_bot.py PORT SECRET_FILE DOC_ID

The bot (bob) connects through a local TCP proxy, with a callable minting
5-second upstream session tokens, and sends a message every 0.4 s; three
times, after 8 s (its token long expired), the proxy cuts every connection.
A watcher (alice) connected directly counts the messages. Prints the calls,
the bot's events and the counts; the bot must end each round connected.
"""

from __future__ import annotations

import asyncio
import sys
import time

from ratatoskr_client import RatatoskrClient
from ratatoskr_client.protocol.tokens import mint_session_token


async def main(upstream_port: int, secret: str, doc: str) -> int:
    links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        links.add((writer, up_writer))
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    proxy = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = proxy.sockets[0].getsockname()[1]
    calls = 0

    def mint() -> str:
        nonlocal calls
        calls += 1
        return mint_session_token("bob", secret, lifetime=5, now=time.time())

    got: list[int] = []
    events: list[str] = []
    alice_token = mint_session_token("alice", secret, lifetime=600, now=time.time())
    watcher = RatatoskrClient(f"http://127.0.0.1:{upstream_port}", token=alice_token)
    watcher.on("ephemeral-message", lambda d, s, p: got.append(p))
    bot = RatatoskrClient(f"http://127.0.0.1:{port}", token=mint)
    for name in ("connected", "disconnected", "token-refresh-failed"):
        bot.on(name, lambda *a, name=name: events.append(name))  # type: ignore[misc]
    sent = 0
    async with watcher, bot:
        await watcher.enter_document(doc)
        await bot.enter_document(doc)
        for _ in range(3):
            for _ in range(20):
                sent += 1
                await bot.send_ephemeral(doc, sent)
                await asyncio.sleep(0.4)
            for client_side, upstream_side in list(links):
                client_side.transport.abort()
                upstream_side.transport.abort()
            links.clear()
            await bot.wait_connected(timeout=10)
            await bot.enter_document(doc)
        await asyncio.sleep(1)
    proxy.close()
    print(f"token callable calls: {calls}; bot events: {events}")
    print(f"sent {sent}, received by the watcher {len(got)}")
    return 0 if events.count("connected") == 4 and "token-refresh-failed" not in events else 1


if __name__ == "__main__":
    secret = open(sys.argv[2]).read().strip()  # noqa: SIM115
    sys.exit(asyncio.run(main(int(sys.argv[1]), secret, sys.argv[3])))
