"""The raw floor relay for benchmarks/run.py: the least a WebSocket relay can do.

A minimal aiohttp WebSocket server at ``/sync`` that forwards the bytes of every
binary frame, unchanged, to every *other* open connection — no authentication,
no decoding, no rules — written the straightforward way (``await
ws.send_bytes(...)`` per receiver). Whatever our relay and client cost on top of
this, on the same machine in the same run, is the cost of the protocol.

    python benchmarks/raw_relay.py --port 0 [--host 127.0.0.1] [--uvloop]

Once listening it prints one line, flushed, like ``ratatoskr relay`` does:
``raw relay listening on ws://HOST:PORT/sync``. SIGINT/SIGTERM stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from aiohttp import WSMsgType, web

CONNECTIONS = web.AppKey("connections", set)


async def sync(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
    await ws.prepare(request)
    connections: set[web.WebSocketResponse] = request.app[CONNECTIONS]
    connections.add(ws)
    try:
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                for other in list(connections):
                    if other is not ws and not other.closed:
                        with contextlib.suppress(ConnectionError):
                            await other.send_bytes(msg.data)
    finally:
        connections.discard(ws)
    return ws


async def serve(host: str, port: int) -> None:
    app = web.Application()
    app[CONNECTIONS] = set()
    app.router.add_get("/sync", sync)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    print(f"raw relay listening on ws://{bound_host}:{bound_port}/sync", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.run(serve(args.host, args.port))
    else:
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
