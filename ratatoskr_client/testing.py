"""pytest plugin: test your bots and apps against a real relay, in-process.

Installed with the package (entry point ``pytest11``), it provides:

``ratatoskr_relay``
    A running :class:`~ratatoskr_client.server.RelayServer` on a free loopback
    port; ``ratatoskr_relay.url`` is what clients connect to. Open mode by
    default (every document readable by every peer).
``ratatoskr_client``
    A factory: ``client = await ratatoskr_client(token=None, **options)`` returns
    a connected :class:`~ratatoskr_client.RatatoskrClient`; every client it made
    is closed when the test ends.
``ratatoskr_relay_config``
    The :class:`~ratatoskr_client.server.RelayConfig` the relay fixture uses.
    Override it in a ``conftest.py``, or configure one test with the marker::

        @pytest.mark.ratatoskr_relay(
            users=[{"token": "alice-secret", "id": "alice", "name": "Alice"}],
            documents=[{"id": "doc-1", "owner": "alice", "acl": [{"principal": "public"}]}],
            presence_ttl=1.0,
        )
``ratatoskr_relay_clock``
    The relay's clock: real time, or with ``manual_clock=True`` in the marker
    a :class:`ManualClock` that the test moves by hand
    (``ratatoskr_relay_clock.advance(95)``): presence expiry, the liveness
    rule, auth deadlines and held presence changes happen at once, in fake time.

The fixtures are asyncio fixtures (pytest-asyncio). An ``async def`` test that
uses them (directly or through another fixture) is marked
``@pytest.mark.asyncio`` by this plugin, so it runs in pytest-asyncio's default
*strict* mode without the marker. See ``docs/testing.md``.
"""

from __future__ import annotations

import importlib.util
import inspect
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Mapping, Sequence
from typing import Any

import pytest

from ._version import install_hint
from .asyncio.client import RatatoskrClient
from .backoff import Backoff
from .server import AclEntry, DocumentSpec, ManualClock, RelayConfig, RelayServer, UserSpec

# pytest-asyncio is a test extra, not a runtime dependency; this module is loaded
# by every pytest run in an environment that has the package installed.
_HAVE_PYTEST_ASYNCIO = importlib.util.find_spec("pytest_asyncio") is not None

__all__ = ["ClientFactory", "ManualClock", "relay_config"]

#: Reconnect quickly in tests: a restarted relay is found within half a second.
TEST_BACKOFF = Backoff(base_delay=0.05, multiplier=2.0, max_delay=0.5)


def _user(spec: UserSpec | Mapping[str, Any]) -> UserSpec:
    if isinstance(spec, UserSpec):
        return spec
    return UserSpec(token=spec["token"], id=spec["id"], name=spec.get("name", spec["id"]))


def _acl(entry: AclEntry | Mapping[str, Any]) -> AclEntry:
    if isinstance(entry, AclEntry):
        return entry
    return AclEntry(entry["principal"], entry.get("permission", "read"))


def _document(spec: DocumentSpec | Mapping[str, Any]) -> DocumentSpec:
    if isinstance(spec, DocumentSpec):
        return spec
    return DocumentSpec(
        id=spec["id"],
        owner=spec.get("owner"),
        acl=tuple(_acl(e) for e in spec.get("acl", ())),
    )


def relay_config(
    *,
    users: Iterable[UserSpec | Mapping[str, Any]] = (),
    documents: Iterable[DocumentSpec | Mapping[str, Any]] | None = None,
    **options: Any,
) -> RelayConfig:
    """A loopback, free-port :class:`RelayConfig` for tests.

    ``users`` and ``documents`` may be given as plain dicts (the TOML file's
    shape). Without ``documents`` the relay runs in open mode; with them, only
    those documents exist unless ``open=True`` is passed too.
    """
    docs = tuple(_document(d) for d in documents) if documents is not None else ()
    options.setdefault("open", documents is None)
    options.setdefault("host", "127.0.0.1")
    options.setdefault("port", 0)
    return RelayConfig(users=tuple(_user(u) for u in users), documents=docs, **options)


class ClientFactory:
    """Makes connected clients for one relay and closes them all at the end."""

    def __init__(self, url: str, **defaults: Any) -> None:
        self.url = url
        self.defaults: dict[str, Any] = {"backoff": TEST_BACKOFF, **defaults}
        self.clients: list[RatatoskrClient] = []

    async def __call__(
        self, token: str | None = None, *, connect: bool = True, **options: Any
    ) -> RatatoskrClient:
        """A new client (connected unless ``connect=False``); ``options`` are
        :class:`RatatoskrClient` keyword arguments."""
        client = RatatoskrClient(self.url, token=token, **{**self.defaults, **options})
        self.clients.append(client)
        if connect:
            await client.connect()
        return client

    async def close_all(self) -> None:
        """Close every client this factory made (in reverse order)."""
        while self.clients:
            await self.clients.pop().close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "ratatoskr_relay(**options): configure the ratatoskr_relay fixture "
        "(users=, documents=, any RelayConfig field, and manual_clock=True)",
    )


#: The plugin's fixtures that need an event loop.
_ASYNC_FIXTURES = frozenset({"ratatoskr_relay", "ratatoskr_client"})
#: Markers of other async test runners: a test carrying one is left alone.
_OTHER_RUNNERS = ("anyio", "trio")


def _is_coroutine_test(item: pytest.Function) -> bool:
    # Hypothesis wraps an async test in a sync function; pytest-asyncio unwraps it.
    inner = getattr(getattr(item.obj, "hypothesis", None), "inner_test", item.obj)
    return inspect.iscoroutinefunction(inner)


def _mark_asyncio(collected: object) -> None:
    """Mark ``async def`` tests that use the plugin's async fixtures with ``asyncio``."""
    items = collected if isinstance(collected, Sequence) else (collected,)
    for item in items:
        if (
            isinstance(item, pytest.Function)
            and not _ASYNC_FIXTURES.isdisjoint(item.fixturenames)
            and item.get_closest_marker("asyncio") is None
            and not any(item.get_closest_marker(name) for name in _OTHER_RUNNERS)
            and _is_coroutine_test(item)
        ):
            item.add_marker(pytest.mark.asyncio)


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_pycollect_makeitem(
    collector: pytest.Module | pytest.Class, name: str, obj: object
) -> Generator[None, object, object]:
    """Add the ``asyncio`` marker a strict-mode test would need, as tests are made.

    pytest-asyncio decides whether it runs a test when the test item is made
    (its own wrapper of this hook reads the marker); ``trylast`` makes this the
    innermost wrapper, so the marker is there by then. ``item.fixturenames``
    holds every fixture the test needs, including those its fixtures request.
    """
    collected = yield
    _mark_asyncio(collected)
    return collected


#: Marker options that are not :class:`RelayConfig` fields.
_MARKER_OPTIONS = frozenset({"manual_clock"})


@pytest.fixture
def ratatoskr_relay_config(request: pytest.FixtureRequest) -> RelayConfig:
    """The relay's configuration: open mode unless the ``ratatoskr_relay`` marker
    (or an override of this fixture) says otherwise."""
    marker = request.node.get_closest_marker("ratatoskr_relay")
    options = marker.kwargs if marker else {}
    return relay_config(**{k: v for k, v in options.items() if k not in _MARKER_OPTIONS})


@pytest.fixture
def ratatoskr_relay_clock(request: pytest.FixtureRequest) -> Callable[[], float]:
    """The relay's clock: ``time.monotonic``, or a fresh
    :class:`ManualClock` (at 0.0) when the ``ratatoskr_relay`` marker says
    ``manual_clock=True``. Override it to give the relay a clock of your own."""
    marker = request.node.get_closest_marker("ratatoskr_relay")
    if marker is not None and marker.kwargs.get("manual_clock"):
        return ManualClock()
    return time.monotonic


if _HAVE_PYTEST_ASYNCIO:
    import pytest_asyncio

    @pytest_asyncio.fixture
    async def ratatoskr_relay(
        ratatoskr_relay_config: RelayConfig, ratatoskr_relay_clock: Callable[[], float]
    ) -> AsyncIterator[RelayServer]:
        """A relay running on a free loopback port for the duration of the test."""
        async with RelayServer(ratatoskr_relay_config, clock=ratatoskr_relay_clock) as relay:
            yield relay

    @pytest_asyncio.fixture
    async def ratatoskr_client(ratatoskr_relay: RelayServer) -> AsyncIterator[ClientFactory]:
        """``await ratatoskr_client(token=None, **options)`` → a connected client;
        all of them are closed after the test."""
        factory = ClientFactory(ratatoskr_relay.url)
        try:
            yield factory
        finally:
            await factory.close_all()

else:  # pragma: no cover

    @pytest.fixture
    def ratatoskr_relay() -> None:
        raise pytest.UsageError(
            f"the ratatoskr_relay fixture needs pytest-asyncio: {install_hint('testing')}"
        )

    @pytest.fixture
    def ratatoskr_client() -> None:
        raise pytest.UsageError(
            f"the ratatoskr_client fixture needs pytest-asyncio: {install_hint('testing')}"
        )
