"""Raw peers that join and leave one document as fast as they can, in a process
of their own (so their CPU is not the test's event loop).

    python tests/reliability/togglers.py WS_URL COUNT DOCUMENT SECONDS [obey]

Protocol with the parent, one line each on stdout/stdin: the script connects
and authenticates COUNT anonymous peers, prints ``ready``, waits for a line on
stdin, then each peer sends join, leave, join... (never reading what the relay
answers before sending the next one) until the relay closes it or SECONDS have
passed, and prints one JSON object: for each peer, the frames it sent, the
``rate_limited`` frames it received (seconds after the start, and whether the
message says it was closed), its close code and when the connection ended.
With ``obey``, each peer waits for the ``retryAfter`` of every ``rate_limited``
it receives before it sends again, as a well-behaved peer does. ``DOCUMENT``
may contain ``{i}``: peer ``i`` then toggles a document of its own.
Only aiohttp and cbor2: this is an outsider's view of the relay.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from typing import Any

import aiohttp
import cbor2

BATCH = 20  # frames written before giving the other togglers a turn


def toggle(peer_id: str, session: str, count: int, document: str) -> bytes:
    status = "join" if count % 2 else "leave"
    payload = {"type": "presence", "status": status, "documentId": document}
    return cbor2.dumps(
        {
            "type": "ephemeral",
            "senderId": peer_id,
            "targetId": "",
            "documentId": document,
            "count": count,
            "sessionId": session,
            "data": cbor2.dumps(payload),
        }
    )


class Toggler:
    def __init__(
        self, http: aiohttp.ClientSession, url: str, document: str, *, obey: bool = False
    ) -> None:
        self.http = http
        self.url = url
        self.document = document
        self.obey = obey
        #: loop time before which an obeying peer does not send
        self.resume_at = 0.0
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.peer_id = ""
        self.sent = 0
        self.limited: list[tuple[float, bool]] = []
        self.close_code: int | None = None
        self.ended_at: float | None = None

    async def connect(self) -> None:
        self.ws = await self.http.ws_connect(self.url, max_msg_size=0, autoping=True)
        await self.ws.send_bytes(cbor2.dumps({"type": "auth", "anonymous": True}))
        self.peer_id = cbor2.loads((await self.ws.receive()).data)["clientPeerId"]

    async def run(self, started: float, seconds: float) -> None:
        ws = self.ws
        assert ws is not None
        loop = asyncio.get_running_loop()
        reader = asyncio.create_task(self.read(started))
        session = f"toggler-{uuid.uuid4().hex}"
        try:
            while not ws.closed and loop.time() - started < seconds:
                if loop.time() < self.resume_at:
                    await asyncio.sleep(self.resume_at - loop.time())
                    continue
                for _ in range(BATCH if not self.obey else 1):
                    self.sent += 1
                    await ws.send_bytes(toggle(self.peer_id, session, self.sent, self.document))
                await asyncio.sleep(0)
        except ConnectionError:
            pass  # the relay closed it while we wrote
        await ws.close()
        await reader

    async def read(self, started: float) -> None:
        ws = self.ws
        assert ws is not None
        loop = asyncio.get_running_loop()
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                frame = cbor2.loads(msg.data)
                if frame.get("error") == "rate_limited":
                    self.limited.append((loop.time() - started, "closed" in frame["message"]))
                    if self.obey:
                        self.resume_at = loop.time() + frame["retryAfter"]
        # No close frame (the connection was reset): 1006, "abnormal closure".
        self.close_code = ws.close_code if ws.close_code is not None else 1006
        self.ended_at = loop.time() - started

    def report(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "limited": self.limited,
            "close_code": self.close_code,
            "ended_at": self.ended_at,
        }


async def main(url: str, count: int, document: str, seconds: float, obey: bool) -> None:
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=0)  # (the default allows 100 connections)
    async with aiohttp.ClientSession(connector=connector) as http:
        togglers = [Toggler(http, url, document.format(i=i), obey=obey) for i in range(count)]
        await asyncio.gather(*(t.connect() for t in togglers))
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        started = loop.time()
        await asyncio.gather(*(t.run(started, seconds) for t in togglers))
    print(json.dumps([t.report() for t in togglers]), flush=True)


if __name__ == "__main__":
    ws_url, n, doc, duration = sys.argv[1:5]
    asyncio.run(main(ws_url, int(n), doc, float(duration), sys.argv[5:] == ["obey"]))
