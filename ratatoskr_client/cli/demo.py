"""``ratatoskr demo``: bots using presence and ephemeral messages on an embedded relay.

Everything runs in this process on a free loopback port: a relay configured
with a few users and documents (one of them private), N bot clients (a mix of
named users and anonymous peers) that wander between documents, move cursors,
react and chat on each document's sidecar channel, and one observer client
whose events drive the view. The observer is an ordinary
:class:`~ratatoskr_client.RatatoskrClient`: the view shows exactly what an
application sees.

On a terminal the view is a live table; otherwise each event is one log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from ..asyncio.client import RatatoskrClient
from ..backoff import Backoff
from ..core.membership import Peer
from ..errors import (
    ConnectionClosed,
    DisconnectedByAdmin,
    PayloadError,
    RatatoskrError,
    ServerError,
)
from ..protocol.constants import EPHEMERAL_PREFIX
from ..server import AclEntry, DocumentSpec, RelayConfig, RelayServer, UserSpec
from ..status import ConnectionState
from .console import print_line

__all__ = ["DEMO_DOCUMENTS", "demo_config", "run_demo"]

log = logging.getLogger("ratatoskr_client.cli.demo")

#: Names for the bots that log in with a token; the others are anonymous.
_NAMED: Final = ("Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi")
#: Public documents everyone may enter, and one only named users may read.
DEMO_DOCUMENTS: Final = ("design-doc", "roadmap", "standup-notes")
PRIVATE_DOCUMENT: Final = "launch-plan"
_REACTIONS: Final = ("🎉", "👍", "❤️", "🚀", "👀", "😂")
_CHAT: Final = (
    "hi all",
    "looks good to me",
    "can someone review section 2?",
    "brb, coffee",
    "shipping it",
    "who moved my cursor?",
    "+1",
)
_VIEWER_TOKEN: Final = "demo-viewer"


def demo_config(named_bots: int, admin_token: str | None = None) -> RelayConfig:
    """The embedded relay's config: one user per named bot, plus the viewer
    (and with ``admin_token``, the dashboard at ``/admin/``)."""
    users = [UserSpec(f"demo-{i}", f"user-{i}", _bot_name(i)) for i in range(named_bots)]
    users.append(UserSpec(_VIEWER_TOKEN, "viewer", "Viewer"))
    everyone = (AclEntry("public", "read"),)
    named = tuple(AclEntry(u.id, "read") for u in users)
    docs = [DocumentSpec(doc, "viewer", everyone) for doc in DEMO_DOCUMENTS]
    docs.append(DocumentSpec(PRIVATE_DOCUMENT, "viewer", named))
    return RelayConfig(
        host="127.0.0.1",
        port=0,
        users=tuple(users),
        documents=tuple(docs),
        admin_token=admin_token,
    )


def _bot_name(i: int) -> str:
    return _NAMED[i] if i < len(_NAMED) else f"Bot {i + 1}"


# --------------------------------------------------------------------------- state


@dataclass
class _Board:
    """What the observer has seen, for either kind of output."""

    presence: dict[str, tuple[Peer, ...]] = field(default_factory=dict)
    messages: deque[str] = field(default_factory=lambda: deque(maxlen=12))
    events: int = 0
    closed: bool = False
    started: float = field(default_factory=time.monotonic)


def _describe(payload: Any) -> str:
    if isinstance(payload, dict):
        if "cursor" in payload:
            return f"moved cursor to {payload['cursor']}"
        if "reaction" in payload:
            return f"reacted {payload['reaction']}"
        if "chat" in payload:
            return f"says: {payload['chat']}"
    return repr(payload)


# --------------------------------------------------------------------------- bots


async def _bot(
    index: int,
    url: str,
    token: str | None,
    rng: random.Random,
    note: Callable[[str], None],
    glide: bool = False,
) -> None:
    client = RatatoskrClient(url, token=token, backoff=Backoff(0.1, 2.0, 1.0))
    evicted: list[DisconnectedByAdmin] = []
    glider = asyncio.create_task(_glide(client, rng)) if glide else None

    def on_disconnected(reason: RatatoskrError) -> None:
        if isinstance(reason, DisconnectedByAdmin):
            evicted.append(reason)

    client.on("disconnected", on_disconnected)
    try:
        await client.connect()
        name = client.me.display_name
        # Only named bots may read the private document; anonymous ones know it
        # and stay out (its row shows who may), so the demo opens with presence,
        # not with a refusal.
        docs = [*DEMO_DOCUMENTS, PRIVATE_DOCUMENT] if token else [*DEMO_DOCUMENTS]
        if glide:  # on the dashboard at once, its cursor moving within a second
            with contextlib.suppress(RatatoskrError):
                await client.enter_document(rng.choice(DEMO_DOCUMENTS))
        while True:
            await asyncio.sleep(rng.uniform(0.2, 1.2))
            if client.connection_state is ConnectionState.CLOSED:
                why = evicted[0].reason if evicted else "closed"
                note(f"{name} was disconnected by the operator: {why}")
                return
            entered = [d for d in client.entered_documents if not d.startswith(EPHEMERAL_PREFIX)]
            roll = rng.random()
            try:
                if roll < 0.3 or not entered:
                    doc = rng.choice(docs)
                    await client.enter_document(doc)
                    await client.enter_document(client.sidecar(doc, "chat"))
                elif roll < 0.4 and len(entered) > 1:
                    doc = rng.choice(entered)
                    await client.leave_document(doc)
                    await client.leave_document(client.sidecar(doc, "chat"))
                elif roll < 0.75:
                    doc = rng.choice(entered)
                    cursor = [rng.randint(0, 80), rng.randint(0, 40)]
                    # Shared state (what the dashboard draws) and a message
                    # (what the terminal view prints).
                    await client.set_state(doc, "cursor", cursor)
                    await client.send_ephemeral(doc, {"cursor": cursor})
                elif roll < 0.87:
                    doc = rng.choice(entered)
                    await client.send_ephemeral(doc, {"reaction": rng.choice(_REACTIONS)})
                else:
                    doc = rng.choice(entered)
                    text = rng.choice(_CHAT)
                    await client.send_ephemeral(client.sidecar(doc, "chat"), {"chat": text})
            except ServerError as exc:
                note(f"{name} was refused: {exc.code} ({exc.document_id})")
            except (ConnectionClosed, PayloadError) as exc:
                log.debug("bot %d: %s", index, exc)
    finally:
        if glider is not None:
            glider.cancel()
        await client.close()


#: Seconds between two steps of a gliding cursor, and the longest step.
_GLIDE_EVERY: Final = 0.25
_GLIDE_STEP: Final = 8.0


async def _glide(client: RatatoskrClient, rng: random.Random) -> None:
    """Move the bot's cursor smoothly towards random points of the 80 x 40
    board, in the document it entered last (for the dashboard: four state
    updates a second, well within the relay's rate limit)."""
    x, y = rng.uniform(0, 80), rng.uniform(0, 40)
    tx, ty = rng.uniform(0, 80), rng.uniform(0, 40)
    while True:
        await asyncio.sleep(_GLIDE_EVERY)
        entered = [d for d in client.entered_documents if not d.startswith(EPHEMERAL_PREFIX)]
        if not entered or not client.is_connected:
            continue
        dx, dy = tx - x, ty - y
        distance = (dx * dx + dy * dy) ** 0.5
        if distance <= _GLIDE_STEP:
            x, y = tx, ty
            tx, ty = rng.uniform(0, 80), rng.uniform(0, 40)
        else:
            x, y = x + dx / distance * _GLIDE_STEP, y + dy / distance * _GLIDE_STEP
        with contextlib.suppress(RatatoskrError, ValueError):
            await client.set_state(entered[-1], "cursor", [round(x, 1), round(y, 1)])


# --------------------------------------------------------------------------- output


class _PlainOutput:
    """One timestamped line per event (stdout is not a terminal)."""

    def __init__(self, board: _Board) -> None:
        self._board = board

    def line(self, text: str) -> None:
        print_line(f"{time.strftime('%H:%M:%S')} {text}")

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        self._board.closed = True
        total = sum(1 for ps in self._board.presence.values() for p in ps if p.user_id != "viewer")
        self.line(f"demo finished: {self._board.events} events, {total} presences at the end")


class _LiveOutput:
    """A rich live view: presence per document and the latest messages."""

    def __init__(self, board: _Board, bots: int) -> None:
        from rich.console import Console
        from rich.live import Live

        self._board = board
        self._bots = bots
        self._live = Live(console=Console(), refresh_per_second=6, transient=False)
        self._live.start()

    def line(self, text: str) -> None:
        self._board.messages.append(f"{time.strftime('%H:%M:%S')} {text}")

    def refresh(self) -> None:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table

        board = self._board
        table = Table(title="Who is here", title_justify="left", expand=True)
        table.add_column("document", style="bold")
        table.add_column("present")
        for doc in (*DEMO_DOCUMENTS, PRIVATE_DOCUMENT):
            peers = board.presence.get(doc, ())
            names = ", ".join(p.display_name for p in peers if p.user_id != "viewer")
            table.add_row(doc, names or "[dim]nobody[/dim]")
        messages = "\n".join(board.messages) or "[dim]waiting...[/dim]"
        elapsed = time.monotonic() - board.started
        footer = (
            f"[dim]{self._bots} bots · {board.events} events · {elapsed:.0f}s · "
            "Ctrl-C to stop[/dim]"
        )
        self._live.update(
            Group(table, Panel(messages, title="Latest messages", title_align="left"), footer)
        )

    def close(self) -> None:
        self._board.closed = True
        self.refresh()
        self._live.stop()


# --------------------------------------------------------------------------- main


async def run_demo(
    *,
    bots: int = 6,
    duration: float | None = None,
    stop: asyncio.Event | None = None,
    seed: int | None = None,
    tty: bool | None = None,
    web: bool = False,
) -> int:
    """Run the demo until ``duration`` elapses or ``stop`` is set. Returns 0.

    ``web``: serve the relay's dashboard with a token made for this run, and
    print its address (``http://127.0.0.1:PORT/admin/#token=...``: the token
    is in the fragment, which a browser never sends to a server; the page
    moves it to the tab's session storage) instead of the terminal view."""
    stop = stop or asyncio.Event()
    rng = random.Random(seed)
    named = (bots + 1) // 2  # half the bots, rounded up, log in with a token
    board = _Board()
    live = (sys.stdout.isatty() if tty is None else tty) and not web
    output: _PlainOutput | _LiveOutput = _LiveOutput(board, bots) if live else _PlainOutput(board)
    admin_token = secrets.token_urlsafe(18) if web else None

    def note(text: str) -> None:
        if not board.closed:
            board.events += 1
            output.line(text)

    async with RelayServer(demo_config(named, admin_token)) as relay:
        if web:
            print_line(f"dashboard: {relay.url}/admin/#token={admin_token}")
        if not live:
            output.line(f"relay listening on {relay.ws_url}; starting {bots} bots")
        # The terminal's view comes from an observer client; the dashboard
        # shows the relay's own view (an observer would be one more peer there).
        viewer = None if web else await _viewer(relay.url, board, note)

        tasks = [
            asyncio.create_task(
                _bot(i, relay.url, f"demo-{i // 2}" if i % 2 == 0 else None, rng, note, web),
                name=f"demo-bot-{i}",
            )
            for i in range(bots)
        ]
        refresher = asyncio.create_task(_refresh_loop(output))
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), duration)
        finally:
            # Freeze the view first: the bots leaving on shutdown is not news.
            refresher.cancel()
            output.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(refresher, *tasks, return_exceptions=True)
            if viewer is not None:
                await viewer.close()
    return 0


async def _viewer(url: str, board: _Board, note: Callable[[str], None]) -> RatatoskrClient:
    """The observer client whose events drive the terminal view."""
    viewer = RatatoskrClient(url, token=_VIEWER_TOKEN)
    await viewer.connect()

    def on_presence(doc: str, peers: tuple[Peer, ...]) -> None:
        if doc.startswith(EPHEMERAL_PREFIX):
            return
        before = board.presence.get(doc, ())
        board.presence[doc] = peers
        here = sum(1 for p in peers if p.user_id != "viewer")
        for peer in set(peers) - set(before):
            if peer.user_id != "viewer":
                note(f"{doc}: {peer.display_name} joined ({here} here)")
        for peer in set(before) - set(peers):
            if peer.user_id != "viewer":
                note(f"{doc}: {peer.display_name} left ({here} here)")

    def on_message(doc: str, sender: Peer, payload: Any) -> None:
        where = doc if not doc.startswith(EPHEMERAL_PREFIX) else f"#{doc[len(EPHEMERAL_PREFIX) :]}"
        note(f"{where}: {sender.display_name} {_describe(payload)}")

    def on_error(error: RatatoskrError) -> None:
        log.debug("viewer error: %s", error)

    viewer.on("presence-changed", on_presence)
    viewer.on("ephemeral-message", on_message)
    viewer.on("error", on_error)
    for doc in (*DEMO_DOCUMENTS, PRIVATE_DOCUMENT):
        await viewer.enter_document(doc)
        await viewer.enter_document(viewer.sidecar(doc, "chat"))

    return viewer


async def _refresh_loop(output: _PlainOutput | _LiveOutput) -> None:
    while True:
        output.refresh()
        await asyncio.sleep(0.2)
