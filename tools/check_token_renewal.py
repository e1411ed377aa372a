"""Check by hand: a bot with a token callable stays in its document on our
relay while its JWTs expire, renewed in the connection.

Usage::

    python tools/check_token_renewal.py [LIFETIME_SECONDS] [DURATION_SECONDS]

(5 and 60 by default.) A watcher (a static token) and the bot (a callable
minting HS256 JWTs of LIFETIME seconds) enter one document; the bot sends a
message every 100 ms for DURATION seconds. Prints how often the callable was
called, how many messages were sent and received (and whether in order), and
every join or leave the watcher saw after the start (there should be none).
"""

from __future__ import annotations

import asyncio
import sys
import time

import jwt

from ratatoskr_client import RatatoskrClient
from ratatoskr_client.server import RelayConfig, RelayServer, UserSpec
from ratatoskr_client.server.config import JwtTokens

SECRET = "jwt-secret-of-at-least-32-bytes-long!"


async def main(lifetime: int, duration: float) -> int:
    config = RelayConfig(
        open=True,
        users=(UserSpec("watcher-secret", "watcher", "Watcher"),),
        identity=(JwtTokens(secret=SECRET),),
    )
    calls = 0

    def mint() -> str:
        nonlocal calls
        calls += 1
        now = int(time.time())
        return jwt.encode({"sub": "bot", "iat": now, "exp": now + lifetime}, SECRET, "HS256")

    async with RelayServer(config, port=0) as relay:
        seen: list[tuple[str, str]] = []
        got: list[int] = []
        watcher = RatatoskrClient(relay.url, token="watcher-secret")
        bot = RatatoskrClient(relay.url, token=mint)
        async with watcher, bot:
            watcher.on("peer-joined", lambda d, p: seen.append(("join", p.peer_id)))
            watcher.on("peer-left", lambda d, p: seen.append(("leave", p.peer_id)))
            watcher.on("ephemeral-message", lambda d, s, p: got.append(p))
            await watcher.enter_document("doc")
            await bot.enter_document("doc")
            await asyncio.sleep(0.2)
            seen.clear()
            sent = 0
            start = time.monotonic()
            while time.monotonic() - start < duration:
                sent += 1
                await bot.send_ephemeral("doc", sent)
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
    in_order = got == list(range(1, sent + 1))
    print(
        f"calls={calls} sent={sent} received={len(got)} in_order={in_order} "
        f"joins/leaves after the start={seen}"
    )
    return 0 if in_order and not seen else 1


if __name__ == "__main__":
    args = [float(a) for a in sys.argv[1:3]]
    sys.exit(asyncio.run(main(int(args[0]) if args else 5, args[1] if len(args) > 1 else 60.0)))
