"""``ratatoskr watch URL DOC_ID``: follow one document's presence on any server.

With ``--json`` every presence change is one JSON object on its own line::

    {"document": "doc-123", "peers": [{"peer_id": "...", "name": "Alice",
     "user_id": "alice", "is_anonymous": false}, ...]}

The first line is the presence right after entering (the watcher itself is a
present peer, like any other). While the connection is down the watcher prints
an empty ``peers`` list, then the restored presence after it reconnects.
Without ``--json`` a terminal gets a live table, a pipe gets timestamped lines.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from ..asyncio.client import RatatoskrClient
from ..core.membership import Peer
from ..core.settings import socket_url
from ..errors import (
    AuthError,
    ConnectError,
    ConnectionClosed,
    DocumentNotFound,
    OperationTimeout,
    PermissionDenied,
    PresenceUnsupported,
    RatatoskrError,
)
from .console import print_line

__all__ = ["peer_json", "presence_json", "run_watch"]


def peer_json(peer: Peer) -> dict[str, Any]:
    """A peer as the JSON object ``watch --json`` prints."""
    return {
        "peer_id": peer.peer_id,
        "name": peer.name,
        "display_name": peer.display_name,
        "user_id": peer.user_id,
        "is_anonymous": peer.is_anonymous,
    }


def presence_json(document_id: str, peers: tuple[Peer, ...]) -> str:
    """One ``watch --json`` line (without the newline)."""
    return json.dumps({"document": document_id, "peers": [peer_json(p) for p in peers]})


def _fail(message: str, status: int = 1) -> int:
    print(f"ratatoskr watch: {message}", file=sys.stderr, flush=True)
    return status


def _url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a server URL, or None. Checked before connecting,
    so a typo is a usage error (exit 2), not an unreachable server (exit 1)."""
    try:
        socket_url(url)  # the client's own rule: http(s):// or ws(s):// and a host
    except ValueError as exc:  # (its message carries the "did you mean" hint)
        return f"invalid URL: {exc}"
    try:
        urlsplit(url).port  # noqa: B018 (the property parses and range-checks the port)
    except ValueError:
        return f"invalid URL: the port in {url!r} is not a number from 0 to 65535"
    return None


async def run_watch(
    url: str,
    document: str,
    *,
    token: str | None,
    as_json: bool,
    stop: asyncio.Event,
    client: RatatoskrClient | None = None,
) -> int:
    """Watch ``document`` until ``stop`` is set. Returns the exit status: 0 after
    ``stop``; 1 on auth failure, permission denied, unknown document or an
    unreachable server; 2 for a URL that is not an ``http(s)://`` or
    ``ws(s)://`` URL (each failure with a one-line reason on stderr)."""
    if client is None:
        problem = _url_problem(url)
        if problem is not None:
            return _fail(problem, status=2)
        client = RatatoskrClient(url, token=token)
    try:
        await client.connect()
    except AuthError as exc:
        return _fail(f"authentication failed ({exc.code}): {exc.message or 'refused'}")
    except (ConnectError, OperationTimeout, ConnectionClosed) as exc:
        return _fail(f"cannot reach {url}: {exc}")
    except RatatoskrError as exc:
        return _fail(f"cannot connect to {url}: {exc}")
    try:
        return await _watch(client, document, as_json=as_json, stop=stop)
    finally:
        await client.close()


async def _watch(
    client: RatatoskrClient, document: str, *, as_json: bool, stop: asyncio.Event
) -> int:
    tty = sys.stdout.isatty() and not as_json
    view = _LiveView(document) if tty else None
    closed = asyncio.Event()

    def show(peers: tuple[Peer, ...]) -> None:
        if as_json:
            print_line(presence_json(document, peers))
        elif view is not None:
            view.update(peers, client)
        else:
            names = ", ".join(p.display_name for p in peers) or "(nobody)"
            print_line(f"{time.strftime('%H:%M:%S')} {document}: {names}")

    def on_presence(doc_id: str, peers: tuple[Peer, ...]) -> None:
        if doc_id == document:
            show(peers)

    try:
        peers = await client.enter_document(document)
    except PermissionDenied:
        return _fail(f"permission denied: this user may not read {document!r}")
    except DocumentNotFound:
        return _fail(f"document not found: {document!r}")
    except PresenceUnsupported as exc:
        return _fail(str(exc))
    except OperationTimeout as exc:
        return _fail(str(exc))

    def on_error(error: RatatoskrError) -> None:
        # The only error that stops a watcher's reconnect loop: the server
        # refused our credentials when we came back (watch retries forever).
        if isinstance(error, AuthError):
            closed.set()

    client.on("presence-changed", on_presence)
    client.on("error", on_error)
    if view is not None:
        view.start()
    try:
        show(peers)
        stopper = asyncio.ensure_future(stop.wait())
        ender = asyncio.ensure_future(closed.wait())
        await asyncio.wait({stopper, ender}, return_when=asyncio.FIRST_COMPLETED)
        for task in (stopper, ender):
            task.cancel()
        if closed.is_set() and not stop.is_set():
            return _fail("the server refused our credentials when reconnecting; giving up")
        return 0
    finally:
        # Our own shutdown is not a presence change worth printing.
        client.off("presence-changed", on_presence)
        if view is not None:
            view.stop()


class _LiveView:
    """A rich live table of one document's presence (terminal only)."""

    def __init__(self, document: str) -> None:
        from rich.console import Console
        from rich.live import Live

        self._document = document
        self._console = Console()
        self._live = Live(console=self._console, refresh_per_second=8, transient=False)
        self._peers: tuple[Peer, ...] = ()
        self._status = "connecting"

    def start(self) -> None:
        self._live.start()

    def stop(self) -> None:
        self._live.stop()

    def update(self, peers: tuple[Peer, ...], client: RatatoskrClient) -> None:
        from rich.table import Table

        self._peers = peers
        me = client.me.peer_id if client.is_connected else None
        table = Table(
            title=f"{self._document} — {len(peers)} present ({client.connection_state.value})",
            title_justify="left",
        )
        table.add_column("name")
        table.add_column("user")
        table.add_column("peer id", style="dim")
        for peer in peers:
            name = f"{peer.display_name} (you)" if peer.peer_id == me else peer.display_name
            table.add_row(name, peer.user_id or "anonymous", peer.peer_id)
        self._live.update(table, refresh=True)
