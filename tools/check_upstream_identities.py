r"""Check by hand that the relay, deployed beside a real upstream Ratatoskr
server, accepts the same tokens and grants exactly what upstream grants.

Usage (upstream running on PORT with JWT_SECRET, its database in DATA_DIR)::

    python tools/check_upstream_identities.py \
        http://127.0.0.1:PORT DATA_DIR/ratatoskr.db SECRET_FILE

Users ``alice``, ``bob`` and ``carol`` must exist upstream (``bun src/index.ts
user create alice alice@example.com Alice`` ...). The script, as alice, creates
documents through upstream's REST API (private, public, shared with bob, a
team shared with carol and a project that references the team, two
documents that reference each other, an app document), gives bob an API
token, then asks both servers, for every document and every user (and
anonymously), whether a subscription is let in: upstream's WebSocket with a
``request`` frame, the relay (configured with upstream's secret, its userinfo
endpoint and its database, read-only) with a presence join. It prints one
line per case and exits 1 on any difference.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from typing import Any

import aiohttp
import cbor2

from ratatoskr_client.protocol.constants import EMPTY_DOC_SYNC
from ratatoskr_client.protocol.tokens import mint_session_token
from ratatoskr_client.server import RelayConfig, RelayServer
from ratatoskr_client.server.config import (
    UpstreamApiTokens,
    UpstreamDatabase,
    UpstreamSessionTokens,
)

_ANONYMOUS = iter(range(2, 250))


async def ask(url: str, token: str | None, doc: str, *, relay: bool) -> str:
    """``allowed``, ``permission_denied``, ``document_not_found`` or
    ``auth: <code>`` for a subscription to ``doc``."""
    ws_url = url.replace("http", "ws", 1) + "/sync"
    # Anonymous connections come from a loopback address each: upstream
    # allows a few per address and minute.
    local = None
    if token is None:
        local = (f"127.0.0.{next(_ANONYMOUS)}", 0)
    connector = aiohttp.TCPConnector(local_addr=local)
    async with aiohttp.ClientSession(connector=connector) as http, http.ws_connect(ws_url) as ws:
        auth: dict[str, Any] = {"type": "auth"}
        if token is None:
            auth["anonymous"] = True
        else:
            auth["token"] = token
        await ws.send_bytes(cbor2.dumps(auth))
        ok = cbor2.loads((await ws.receive(timeout=5)).data)
        if ok["type"] != "auth_ok":
            return f"auth: {ok.get('error')}"
        me, server = ok["clientPeerId"], ok["peerId"]
        if relay:
            join = {"type": "presence", "status": "join", "documentId": doc}
            frame: dict[str, Any] = {
                "type": "ephemeral",
                "senderId": me,
                "targetId": server,
                "documentId": doc,
                "count": 1,
                "sessionId": "check",
                "data": cbor2.dumps(join),
            }
        else:
            frame = {
                "type": "request",
                "senderId": me,
                "targetId": server,
                "documentId": doc,
                "data": EMPTY_DOC_SYNC,
            }
        await ws.send_bytes(cbor2.dumps(frame))
        while True:
            try:
                msg = await ws.receive(timeout=1.5)
            except TimeoutError:
                return "allowed"  # (upstream: no error within the wait)
            if msg.type != aiohttp.WSMsgType.BINARY:
                return f"closed {msg.type}"
            answer = cbor2.loads(msg.data)
            if answer["type"] == "error":
                return str(answer["error"])
            if answer["type"] in ("sync", "doc_presence_state", "doc-unavailable"):
                return "allowed"


async def main(upstream: str, database: str, secret_file: str) -> int:
    secret = open(secret_file).read().strip()  # noqa: SIM115, ASYNC230
    now = time.time()
    tokens = {
        u: mint_session_token(u, secret, lifetime=600, now=now) for u in ("alice", "bob", "carol")
    }
    api = f"{upstream}/api/v1"
    alice = {"Authorization": f"Bearer {tokens['alice']}"}
    docs: dict[str, str] = {}
    async with aiohttp.ClientSession() as http:

        async def create(name: str, acl: list[dict[str, str]]) -> str:
            async with http.post(f"{api}/documents", json={"acl": acl}, headers=alice) as r:
                body = await r.json()
                assert r.status in (200, 201), body
                docs[name] = body["id"]
                return str(body["id"])

        await create("private", [])
        await create("public", [{"principal": "public", "permission": "read"}])
        await create("shared-with-bob", [{"principal": "bob", "permission": "write"}])
        team = await create("team", [{"principal": "carol", "permission": "read"}])
        await create("project-refs-team", [{"principal": team, "permission": "read"}])
        a = await create("cycle-a", [])
        b = await create("cycle-b", [{"principal": a, "permission": "read"}])
        async with http.put(
            f"{api}/documents/{a}/acl",
            json={"acl": [{"principal": b, "permission": "read"}]},
            headers=alice,
        ) as r:
            assert r.status == 200, await r.text()
        async with http.get(f"{api}/documents/app/check-app", headers=alice) as r:
            body = await r.json()
            assert r.status == 200, body
            docs["app"] = body.get("automergeId") or body.get("documentId") or body["id"]
        docs["eph"] = "eph:check-room"
        docs["unknown"] = "4NMNnkMhL8jXrdJ9jamS58PAVdXu"
        bob = {"Authorization": f"Bearer {tokens['bob']}"}
        async with http.post(f"{api}/auth/api-tokens", json={"name": "check"}, headers=bob) as r:
            body = await r.json()
            assert r.status in (200, 201), body
            bob_api = body["token"]
    who: dict[str, str | None] = {**tokens, "bob (API token)": bob_api, "anonymous": None}
    with tempfile.TemporaryDirectory() as tmp:
        config = RelayConfig(
            identity=(
                UpstreamSessionTokens(secret),
                UpstreamApiTokens(f"{api}/auth/userinfo"),
            ),
            permissions=UpstreamDatabase(database),
            source=tmp,
        )
        differences = 0
        async with RelayServer(config, port=0) as relay:
            for name, doc in docs.items():
                for user, token in who.items():
                    if name == "eph":
                        theirs = "allowed"  # (upstream relays eph: ids without a check)
                    else:
                        theirs = await ask(upstream, token, doc, relay=False)
                    ours = await ask(relay.url, token, doc, relay=True)
                    mark = "ok  " if ours == theirs else "DIFF"
                    differences += ours != theirs
                    print(f"{mark} {name:18} {user:16} upstream={theirs:20} relay={ours}")
    print(f"{differences} difference(s)")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:4])))
