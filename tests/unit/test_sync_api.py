"""The blocking client mirrors the asyncio client's public API, and is typed.

No I/O here: these compare signatures, and run mypy over user code.
"""

from __future__ import annotations

import inspect
import re
import types
from pathlib import Path
from typing import get_args, get_overloads, get_type_hints

import pytest

import ratatoskr_client
import ratatoskr_client.sync
from ratatoskr_client import EventName
from ratatoskr_client import RatatoskrClient as AsyncClient
from ratatoskr_client.sync import RatatoskrClient

#: What only makes sense for asyncio: the session belongs to one event loop.
ASYNC_ONLY = {"__aenter__", "__aexit__"}
USAGE = Path(__file__).resolve().parents[1] / "typecheck" / "blocking_client_usage.py"


def public(cls: type) -> dict[str, object]:
    # Along the MRO (the asyncio client gets its properties and on/once/off from
    # mixins); slots are instance attributes, not part of the class's surface.
    members: dict[str, object] = {}
    for klass in reversed(cls.__mro__[:-1]):
        members.update(vars(klass))
    return {
        name: value
        for name, value in members.items()
        if (not name.startswith("_") or name in {"__init__", "__aenter__", "__aexit__"})
        and not isinstance(value, types.MemberDescriptorType)
    }


def test_every_public_name_of_the_asyncio_client_is_there():
    mirrored = set(public(AsyncClient)) - ASYNC_ONLY
    assert mirrored <= set(public(RatatoskrClient)) | {"url"}
    assert {"__enter__", "__exit__", "close", "connect"} <= set(vars(RatatoskrClient))


@pytest.mark.parametrize("name", sorted(set(public(AsyncClient)) - ASYNC_ONLY))
def test_same_arguments_and_no_coroutines(name):
    async_member = inspect.getattr_static(AsyncClient, name)
    member = inspect.getattr_static(RatatoskrClient, name)
    if isinstance(async_member, property):
        assert isinstance(member, property), name
        return
    function = getattr(RatatoskrClient, name)
    assert not inspect.iscoroutinefunction(function), name
    expected = dict(inspect.signature(getattr(AsyncClient, name)).parameters)
    actual = dict(inspect.signature(function).parameters)
    if name == "__init__":
        del expected["session"]  # an aiohttp session belongs to one event loop
    if name == "watch_presence":
        assert actual.pop("timeout").default is None  # blocking iteration gets a timeout
    assert [(p.name, p.kind, p.default) for p in actual.values()] == [
        (p.name, p.kind, p.default) for p in expected.values()
    ], name


@pytest.mark.parametrize("method", ["on", "once"])
def test_on_has_a_typed_overload_for_every_event(method):
    events: list[str] = []
    for overload in get_overloads(getattr(RatatoskrClient, method)):
        hints = get_type_hints(overload)
        events += get_args(hints["event"])
    # Each event twice: with a callback, and as a decorator.
    assert sorted(events) == sorted(get_args(EventName) * 2)


def test_the_sync_module_exports():
    assert ratatoskr_client.sync.__all__ == ["PresenceWatch", "RatatoskrClient"]
    assert "sync" not in ratatoskr_client.__all__  # a submodule, imported on demand


def test_user_code_calling_it_passes_mypy_strict():
    api = pytest.importorskip("mypy.api")
    out, err, status = api.run(["--strict", "--warn-unused-ignores", str(USAGE)])
    assert status == 0, out + err


def raised(doc: str | None) -> set[str]:
    """The exception names a docstring's ``Raises:`` section lists."""
    section = (doc or "").split("Raises:", 1)
    if len(section) == 1:
        return set()
    names: set[str] = set()
    for line in section[1].splitlines()[1:]:
        match = re.match(r"\s{4,}([A-Z][A-Za-z, ]+):", line)
        if match:
            names |= {n.strip() for n in match[1].split(",")}
        elif line.strip() and not line.startswith(" "):
            break
    return names


@pytest.mark.parametrize("name", sorted(set(public(AsyncClient)) - ASYNC_ONLY))
def test_the_blocking_client_documents_only_exceptions_the_asyncio_one_raises(name):
    # Same names, same exceptions: a blocking docstring may say less, never else.
    blocking = raised(inspect.getattr_static(RatatoskrClient, name).__doc__)
    asynchronous = raised(inspect.getattr_static(AsyncClient, name).__doc__)
    assert blocking <= asynchronous, name


def test_both_clients_document_the_same_construction_errors():
    assert raised(RatatoskrClient.__doc__) == raised(AsyncClient.__doc__) == {
        "TypeError", "ValueError"
    }  # fmt: skip
