"""The blocking RatatoskrClient: the asyncio client, driven from any thread.

Every blocking client is an asyncio :class:`ratatoskr_client.RatatoskrClient`
living on the process's one background event loop (see
:mod:`ratatoskr_client.sync._portal`). A method call hands the work to that
loop and blocks the calling thread — or, in a gevent-patched process such as a
Locust worker, only the calling greenlet — until it is done.

Who runs where:

- Blocking methods run on the loop thread while the caller waits. Ctrl-C (or
  a killed greenlet) interrupts the wait at once and cancels the work; an
  interrupted ``enter_document`` leaves the document again. Work the loop
  thread finished in the instant before the interruption reached it stays
  done (the interrupted caller cannot see its result).
- Properties, :meth:`RatatoskrClient.presence` and :meth:`RatatoskrClient.state`
  are read on the loop thread too, so a reader never sees the client half-way
  through an update; what they return is an immutable snapshot.
- Callbacks (``on``/``once``), ``wait_for_presence`` predicates and coroutine
  callbacks run **on the loop thread**. They must be quick and must not call
  the blocking methods (that raises ``RuntimeError``: it would wait for
  itself). Hand results to your own thread through a ``queue.Queue``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType, TracebackType
from typing import Any, Unpack

from ..asyncio.client import RatatoskrClient as AsyncClient
from ..asyncio.client import sidecar_id
from ..core.membership import Peer
from ..core.settings import ClientOptions
from ..core.users import User
from ..errors import ConnectionClosed
from ..events import EventSource
from ..status import ClientStats, ConnectionState
from . import _native
from ._portal import LoopThread, portal
from ._watch import PresenceWatch

__all__ = ["RatatoskrClient"]


class RatatoskrClient(EventSource):
    """A blocking connection to a Ratatoskr server, usable from any thread.

    The same names, arguments, return values, exceptions and events as the
    asyncio :class:`ratatoskr_client.RatatoskrClient` (read its docstrings for
    each call's contract); only ``await`` is gone::

        with RatatoskrClient("http://localhost:4151") as client:
            peers = client.enter_document("doc-123")  # blocks until confirmed

    The options are the asyncio client's (:class:`~ratatoskr_client.ClientOptions`),
    without ``session`` (an aiohttp session belongs to one event loop): the
    blocking clients of a process share one, owned by their background loop
    and closed when it stops, whose cookie jar keeps no cookies. Two
    differences follow from running on a shared background loop: callbacks
    run on that loop's thread (see the module docstring), and a closed
    blocking client cannot connect again — make a new one, as with
    ``httpx.Client``.

    One client may be used from several threads at once; calls from different
    threads run concurrently on the loop. A client that is garbage-collected
    while open is closed in the background (with a ``ResourceWarning``); one
    still open at interpreter exit is closed then.

    Raises:
        TypeError: an option that does not exist.
        ValueError: an option is out of range, or the URL is not a server URL.
    """

    # Slots, as the asyncio client's: a simulated Locust user is one of these,
    # and an instance dict of its six fields was 0.4 KiB of it.
    __slots__ = ("__weakref__", "_client", "_emitter", "_loop", "_release_lock", "_released", "url")

    def __init__(self, url: str | Sequence[str], **options: Unpack[ClientOptions]) -> None:
        self.url = url
        self._released = False
        self._release_lock = _native.allocate_lock()
        loop = self._loop = portal.attach()
        try:
            # Built on the loop thread: everything asyncio in it belongs there.
            # The loop's one HTTP session (not ours to close): see _portal.
            client = loop.call(lambda: AsyncClient(url, session=loop.session(), **options))
        except BaseException:
            portal.detach(loop, None)
            raise
        self._client = client
        #: ``on``/``once``/``off`` (:class:`~ratatoskr_client.events.EventSource`)
        #: go to the asyncio client's, on the loop thread
        self._emitter = _OnLoop(loop, client)
        portal.adopt(loop, client)

    def __del__(self) -> None:
        # Collected while open: closed in the background, with a warning. (Not
        # a weakref.finalize: its registry entry was 0.5 KiB of every client.)
        if getattr(self, "_released", True) or not hasattr(self, "_client") or portal.exiting:
            return  # closed; never built; or the portal closes it at exit
        _close_abandoned(self._loop, self._client)

    # ================================================================== properties

    @property
    def connection_state(self) -> ConnectionState:
        """The connection state (see the asyncio client)."""
        return self._loop.call(lambda: self._client.connection_state)

    @property
    def is_connected(self) -> bool:
        """True exactly when an authenticated socket is open."""
        return self._loop.call(lambda: self._client.is_connected)

    @property
    def me(self) -> Peer:
        """This connection's identity from ``auth_ok`` (after a disconnect, or
        once closed, the last one).

        Raises:
            RuntimeError: read before the first :meth:`connect` succeeded (a
                usage error, as in the asyncio client: there is no identity
                to show yet).
        """
        return self._loop.call(lambda: self._client.me)

    @property
    def peers(self) -> Mapping[str, Peer]:
        """The identities this client knows, by peer id, this client included
        (which ones depends on the server's identity scope: see the asyncio
        client's ``peers``): a snapshot taken now (it does not change afterwards)."""
        return self._loop.call(lambda: MappingProxyType(dict(self._client.peers)))

    @property
    def server_presence(self) -> bool:
        """True when the server provides server-side presence (see the asyncio client)."""
        return self._loop.call(lambda: self._client.server_presence)

    @property
    def features(self) -> tuple[str, ...]:
        """The ``features`` the server announced (empty for servers that send none)."""
        return self._loop.call(lambda: self._client.features)

    @property
    def entered_documents(self) -> tuple[str, ...]:
        """Documents the application entered and has not left."""
        return self._loop.call(lambda: self._client.entered_documents)

    def presence(self, document_id: str) -> tuple[Peer, ...]:
        """Peers present in ``document_id``, this client included, in join order
        (empty for documents not entered, and while disconnected)."""
        return self._loop.call(self._client.presence, document_id)

    def users(self, document_id: str) -> tuple[User, ...]:
        """The users present in ``document_id`` (its presence grouped by user
        id; an anonymous peer is its own user), in order of each one's first
        peer (empty for documents not entered, and while disconnected)."""
        return self._loop.call(self._client.users, document_id)

    def state(self, document_id: str) -> Mapping[str, Mapping[str, Any]]:
        """Each peer's state in ``document_id`` (peer id → state): a read-only
        snapshot taken now (it does not change afterwards; it prints like a dict)."""
        return self._loop.call(self._client.state, document_id)

    def stats(self) -> ClientStats:
        """A snapshot of what the client holds (see the asyncio client's ``stats()``)."""
        return self._loop.call(self._client.stats)

    @staticmethod
    def sidecar(document_id: str, channel: str) -> str:
        """The public sidecar channel of a document: ``eph:<channel>-<document_id>``."""
        return sidecar_id(document_id, channel)

    # ================================================================== lifecycle

    def connect(self) -> None:
        """Open the socket and authenticate; returns once connected.

        Raises:
            ConnectError: the server cannot be reached (not retried).
            AuthError: the server refused the credentials (not retried).
            OperationTimeout: no answer to the auth frame within ``connect_timeout``.
            ConnectionClosed: the client was closed (a closed blocking client
                cannot connect again).
        """
        self._check_open()
        self._loop.run(self._client.connect)

    def close(self) -> None:
        """Leave every entered document, close the socket, stop the client's
        tasks, and let go of the background loop (the last client stops it).
        Pending calls in other threads fail with :class:`ConnectionClosed`.
        Idempotent."""
        if self._released:
            return
        # ConnectionClosed: the loop stopped (interpreter exit) and closed it itself.
        with contextlib.suppress(ConnectionClosed):
            self._loop.run(self._client.close)
        if self._claim_release():
            portal.detach(self._loop, self._client)

    def _claim_release(self) -> bool:
        # Two threads may close at once: exactly one lets go of the loop.
        with self._release_lock:
            if self._released:
                return False
            self._released = True
            return True

    def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the client is connected (for example after a reconnect).

        Raises:
            OperationTimeout: not connected within ``timeout`` seconds.
            ConnectionClosed: the client is closed, or closes while waiting.
        """
        self._check_open()
        self._loop.run(self._client.wait_connected, timeout)

    def __enter__(self) -> RatatoskrClient:
        try:
            self.connect()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._released:
            raise ConnectionClosed("client is closed")

    # ================================================================== documents

    def enter_document(self, document_id: str, *, timeout: float | None = None) -> tuple[Peer, ...]:
        """Enter a document; return its presence once the server confirmed it.

        Raises:
            PermissionDenied, DocumentNotFound, LimitExceeded, PresenceUnsupported:
                the server refused (see the asyncio client).
            OperationTimeout: no answer within ``timeout`` (default
                ``request_timeout``); the document is left.
            ConnectionClosed: the client is closed, or was closed meanwhile.
        """
        self._check_open()
        return self._loop.run(self._client.enter_document, document_id, timeout=timeout)

    def leave_document(self, document_id: str) -> None:
        """Leave a document (no-op if it was not entered)."""
        self._check_open()
        self._loop.run(self._client.leave_document, document_id)

    def watch_presence(self, document_id: str, *, timeout: float | None = None) -> PresenceWatch:
        """Iterate over ``presence(document_id)`` now and every new value.

        Each value after the first must come within ``timeout`` seconds (None:
        no limit), else ``next()`` raises :class:`OperationTimeout`. Ends when the
        client closes; use ``with client.watch_presence(doc) as watch:`` (or
        ``watch.close()``) to stop early. Does not enter the document.
        """
        self._check_open()
        return PresenceWatch(
            self._loop, self._client.watch_presence(document_id), document_id, timeout
        )

    def wait_for_presence(
        self,
        document_id: str,
        predicate: Callable[[tuple[Peer, ...]], bool],
        *,
        timeout: float | None = None,
    ) -> tuple[Peer, ...]:
        """Wait until ``predicate(presence(document_id))`` is true; return that
        presence. The predicate runs on the loop thread.

        Raises:
            OperationTimeout: not true within ``timeout`` seconds (None: forever).
            ConnectionClosed: the client closed while waiting.
        """
        self._check_open()
        return self._loop.run(
            self._client.wait_for_presence, document_id, predicate, timeout=timeout
        )

    # ================================================================== sending

    def send_ephemeral(self, document_id: str, payload: Any) -> None:
        """Send a payload to every other peer present in ``document_id`` (waits
        for a pacing token first; server refusals arrive as ``error`` events).

        Raises:
            PayloadError: not encodable, too large, or a presence control message.
            ConnectionClosed: not connected (the message is not queued).
        """
        self._check_open()
        self._loop.run(self._client.send_ephemeral, document_id, payload)

    def set_state(self, document_id: str, channel: str, value: Any) -> None:
        """Set one channel of this client's state in a document and share it
        (coalesced; returns without waiting for the network).

        Raises:
            PayloadError: the value is not CBOR-encodable or too large.
            ValueError: empty document id or channel.
        """
        self._check_open()
        self._loop.run(self._client.set_state, document_id, channel, value)

    def __repr__(self) -> str:
        return self._loop.call(lambda: f"<blocking {self._client!r}>")


class _OnLoop:
    """The emitter interface :class:`~ratatoskr_client.events.EventSource`
    uses (pyee's ``on``, ``once``, ``remove_listener``), carried out by the
    asyncio client on the loop thread, where the callbacks will run."""

    __slots__ = ("_client", "_loop")

    def __init__(self, loop: LoopThread, client: AsyncClient) -> None:
        self._loop = loop
        self._client = client

    def on(self, event: str, callback: Callable[..., object] | None = None) -> Any:
        return self._add(self._client.on, event, callback)

    def once(self, event: str, callback: Callable[..., object] | None = None) -> Any:
        return self._add(self._client.once, event, callback)

    def remove_listener(self, event: str, callback: Callable[..., object]) -> None:
        self._loop.call(self._client.off, event, callback)

    def _add(
        self, add: Callable[..., Any], event: str, callback: Callable[..., object] | None
    ) -> Any:
        if callback is not None:
            self._loop.call(add, event, callback)
            return callback

        def decorator(function: Callable[..., object]) -> Callable[..., object]:
            self._loop.call(add, event, function)
            return function

        return decorator


def _close_abandoned(loop: LoopThread, client: AsyncClient) -> None:
    """A blocking client was garbage-collected while open: close it in the
    background and let go of the loop."""
    warnings.warn(f"unclosed blocking client {client.url}", ResourceWarning, stacklevel=1)

    async def close() -> None:
        try:
            await client.close()
        finally:
            portal.detach(loop, client)

    loop.submit(close)
