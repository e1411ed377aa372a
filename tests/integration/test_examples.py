"""Every script in examples/ runs against a real relay, so none of them can rot.

Three run in-process (their coroutine, with our relay fixture); the presence
watcher runs as a subprocess exactly as its docstring tells a user to.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from ratatoskr_client import Peer, RatatoskrClient

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TIMEOUT = 10.0


def example(name: str) -> Any:
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


@contextlib.asynccontextmanager
async def running(main: Callable[[asyncio.Event], Awaitable[None]]) -> AsyncIterator[None]:
    """Run an example's main coroutine in the background; stop it cleanly after."""
    stop = asyncio.Event()
    task = asyncio.create_task(main(stop))
    try:
        yield
        assert not task.done() or task.exception() is None
    finally:
        stop.set()
        await asyncio.wait_for(task, TIMEOUT)


async def next_message(
    client: RatatoskrClient, predicate: Callable[[str, Peer, Any], bool]
) -> tuple[str, Peer, Any]:
    got: asyncio.Future[tuple[str, Peer, Any]] = asyncio.get_running_loop().create_future()

    def on_message(doc: str, sender: Peer, payload: Any) -> None:
        if not got.done() and predicate(doc, sender, payload):
            got.set_result((doc, sender, payload))

    client.on("ephemeral-message", on_message)
    try:
        return await asyncio.wait_for(got, TIMEOUT)
    finally:
        client.off("ephemeral-message", on_message)


async def test_greeter_bot_welcomes_newcomers_by_name(ratatoskr_relay, ratatoskr_client):
    greeter = example("greeter_bot").greeter
    async with running(lambda stop: greeter(ratatoskr_relay.url, "doc-123", None, stop)):
        watcher = await ratatoskr_client()
        await watcher.enter_document("doc-123")
        await watcher.wait_for_presence("doc-123", lambda p: len(p) == 2, timeout=TIMEOUT)
        newcomer = await ratatoskr_client()
        chat = newcomer.sidecar("doc-123", "chat")
        await newcomer.enter_document(chat)
        greeting = asyncio.create_task(
            next_message(newcomer, lambda d, s, p: d == chat and "Welcome" in p.get("chat", ""))
        )
        await newcomer.enter_document("doc-123")
        _, sender, payload = await greeting
        assert payload == {"chat": f"Welcome, {newcomer.me.name}!"}
        assert sender.peer_id != newcomer.me.peer_id


async def test_cursor_broadcaster_shares_a_moving_cursor(ratatoskr_relay, ratatoskr_client):
    broadcaster = example("cursor_broadcaster").broadcaster
    observer = await ratatoskr_client()
    await observer.enter_document("doc-123")
    seen: list[Any] = []
    enough = asyncio.Event()

    def on_state(doc: str, peer: Peer, state: Any) -> None:
        if "cursor" in state and (not seen or seen[-1] != state["cursor"]):
            seen.append(state["cursor"])
            if len(seen) >= 5:
                enough.set()

    observer.on("state-changed", on_state)
    async with running(lambda stop: broadcaster(ratatoskr_relay.url, "doc-123", None, stop)):
        await asyncio.wait_for(enough.wait(), TIMEOUT)
    assert all(isinstance(c, list) and len(c) == 2 for c in seen)
    assert len({tuple(c) for c in seen}) >= 5  # it moves


async def test_sidecar_chat_bot_answers_commands(ratatoskr_relay, ratatoskr_client):
    chat_bot = example("sidecar_chat_bot").chat_bot
    async with running(lambda stop: chat_bot(ratatoskr_relay.url, "doc-123", None, stop)):
        user = await ratatoskr_client()
        channel = user.sidecar("doc-123", "chat")
        await user.enter_document(channel)
        await user.wait_for_presence(channel, lambda p: len(p) == 2, timeout=TIMEOUT)
        for command, expected in (("!help", "commands:"), ("!who", user.me.name)):
            reply = asyncio.create_task(next_message(user, lambda d, s, p: "to" in p))
            await user.send_ephemeral(channel, {"chat": command})
            _, _, payload = await reply
            assert expected in payload["chat"]
            assert payload["to"] == user.me.peer_id


def test_chat_bot_answers_only_commands():
    answer = example("sidecar_chat_bot").answer
    assert answer("hello there", ()) is None
    assert answer(" !TIME ", ()).startswith("it is ")


async def test_presence_watcher_script_prints_changes(ratatoskr_relay, ratatoskr_client):
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / "presence_watcher.py"),
        "--url",
        ratatoskr_relay.url,
        "--doc",
        "doc-9",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:

        async def line_with(text: str) -> str:
            while True:
                raw = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
                assert raw, "the watcher exited early"
                if text in raw.decode():
                    return raw.decode()

        await line_with("doc-9: 1 present")
        visitor = await ratatoskr_client()
        await visitor.enter_document("doc-9")
        assert visitor.me.name in await line_with("doc-9: 2 present")
        await visitor.leave_document("doc-9")
        await line_with("doc-9: 1 present")
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) in (0, -15)


@pytest.mark.parametrize(
    "script", ["greeter_bot.py", "cursor_broadcaster.py", "sidecar_chat_bot.py"]
)
async def test_every_example_has_a_working_command_line(script):
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / script),
        "--help",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 0
    assert b"--url" in out
    assert b"--doc" in out
