"""RatatoskrClient: one WebSocket to a Ratatoskr server, presence and ephemeral messages.

This is the public facade. The client is built in three layers (see
``docs/architecture.md``):

* :class:`~ratatoskr_client.core.client.ClientCore` — every rule, as a state machine
  without I/O: frames and calls in, effects recorded in its outbox;
* :class:`~ratatoskr_client.asyncio.driver.Driver` — the aiohttp socket, the receive
  and reconnect loop and the one timer, carrying the effects out;
* :class:`RatatoskrClient` (here) — options, properties, queries and the
  awaitable methods, each a call into the core and a wait on what it answered.
  It translates, and decides nothing: even what its properties say is the
  core's answer to a query.

The options are declared once, in :class:`~ratatoskr_client.core.settings.ClientOptions`;
events and their callbacks' signatures are in :mod:`ratatoskr_client.events`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any, Final, Unpack, get_args

import aiohttp

from ..core.client import ClientCore
from ..core.membership import Peer
from ..core.settings import DEFAULT_PING_INTERVAL, DEFAULT_REQUEST_TIMEOUT, ClientOptions, Settings
from ..core.users import User
from ..errors import ConnectionClosed, OperationTimeout
from ..events import EventName, EventSource
from ..protocol.constants import EPHEMERAL_PREFIX, PRESENCE_HEARTBEAT_INTERVAL, RATE_LIMIT
from ..status import ClientStats, ConnectionState
from .driver import Driver
from .emitter import SafeEmitter

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_RATE_LIMIT",
    "DEFAULT_REQUEST_TIMEOUT",
    "ConnectionState",
    "EventName",
    "RatatoskrClient",
    "sidecar_id",
]

#: The default ``heartbeat_interval`` (seconds; see :class:`ClientOptions`).
DEFAULT_HEARTBEAT_INTERVAL: Final = PRESENCE_HEARTBEAT_INTERVAL
#: The default ``rate_limit`` (messages per minute; see :class:`ClientOptions`).
DEFAULT_RATE_LIMIT: Final = RATE_LIMIT

_CONNECTED: Final = ConnectionState.CONNECTED


def sidecar_id(document_id: str, channel: str) -> str:
    """The public relay channel tied to a document: ``eph:<channel>-<document_id>``.

    Raises:
        ValueError: ``channel`` is empty.
    """
    if not channel:
        raise ValueError("channel must be a non-empty string")
    return f"{EPHEMERAL_PREFIX}{channel}-{document_id}"


class RatatoskrClient(EventSource):
    """A connection to a Ratatoskr server, with presence and ephemeral messaging.

    Use it as an async context manager, or call :meth:`connect` and :meth:`close`::

        async with RatatoskrClient("http://localhost:4151", token="alice-secret") as client:
            peers = await client.enter_document("doc-123")

    Args:
        url: the server, ``http(s)://`` or ``ws(s)://``; the socket path ``/sync`` is
            appended unless the URL already ends with it. Or a sequence of the
            URLs of the relays of one cluster: the client connects to the first
            and, after each lost connection or failed attempt, tries the next
            in turn; its peer resumes on whichever it reaches within the
            relays' ``resume_grace``.
        session: an aiohttp ``ClientSession`` to use (the caller closes it); by
            default the client creates and closes its own. Many clients in one
            process can share one session (it saves memory); an open socket holds
            one of the session connector's slots, so give it a connector without
            that limit: ``ClientSession(connector=aiohttp.TCPConnector(limit=0))``.
        **options: the client's options (``token``, ``heartbeat_interval``,
            ``reconnect``, ``backoff``, ``rate_limit``...): every one, with its
            type, default and meaning, is in :class:`ClientOptions`.

    Raises:
        TypeError: an option that does not exist.
        ValueError: an option is out of range, or the URL is not a server URL.
    """

    __slots__ = ("__weakref__", "_core", "_driver", "_emitter", "url")

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        session: aiohttp.ClientSession | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        settings = Settings.from_options(url, options)
        #: the server URL (or URLs) this client was given
        self.url = url
        core = self._core = ClientCore(settings)
        self._emitter = SafeEmitter(listening=core.listening)
        for event in get_args(EventName):  # no callback yet
            core.listening(event, False)
        self._driver = Driver(core, self._emitter, session)

    @staticmethod
    def sidecar(document_id: str, channel: str) -> str:
        """The public sidecar channel of a document: ``sidecar("doc-123", "chat")``
        is ``"eph:chat-doc-123"``. Anyone may join and send on it."""
        return sidecar_id(document_id, channel)

    # ================================================================== what it knows

    @property
    def connection_state(self) -> ConnectionState:
        """The connection state, kept in step with the socket (a socket that
        died is lost at once, before the receive loop has noticed)."""
        return self._core.connection_state(socket_closed=self._driver.socket_closed)

    @property
    def is_connected(self) -> bool:
        """True exactly when an authenticated socket is open."""
        return self.connection_state is _CONNECTED

    @property
    def me(self) -> Peer:
        """This connection's identity from ``auth_ok`` (after a disconnect, the last
        one; a reconnect brings a new peer id). Its ``chosen_name`` is the
        ``name=`` option.

        Raises:
            RuntimeError: read before the first :meth:`connect` succeeded (a
                usage error: there is no identity to show yet).
        """
        me = self._core.me
        if me is None:
            raise RuntimeError(
                "client.me is only known once connected: await client.connect() "
                "(or use `async with RatatoskrClient(...) as client`) first"
            )
        return me

    @property
    def peers(self) -> Mapping[str, Peer]:
        """The identities this client knows, by peer id, this client included.
        Empty while disconnected. A read-only live view.

        Which peers that is depends on the server's identity scope (see
        :attr:`features`):

        * ``"scoped-identity"`` in ``features`` (our relay's default): the
          peers present in a document this client entered, and nobody else.
          A peer that leaves the last such document leaves ``peers`` silently
          (a ``peer-left`` event said so); ``peer-disconnected`` comes only
          for a peer the server said disconnected. The sender of a message is
          always identified in the ``ephemeral-message`` event, even when it
          is in none of your documents (and so not in ``peers``).
        * otherwise: every peer connected to the server (the server announced
          them all), until its ``peer-disconnected``; without server-side
          presence, the peers seen in entered documents.
        """
        return self._core.peers

    @property
    def server_presence(self) -> bool:
        """Which presence mode is in use.

        True: the server announced server-side presence (``features`` in
        ``auth_ok`` includes ``"presence"``), so membership comes from the server.
        False (a server like today's upstream): peer-to-peer mode, membership is
        derived from the peers' automerge-repo Presence messages. Also False
        before the first connection.
        """
        return self._core.server_presence

    @property
    def features(self) -> tuple[str, ...]:
        """The ``features`` the server announced (empty for servers that send none).

        ``"presence"``: server-side presence (:attr:`server_presence`).
        ``"scoped-identity"``: identities are scoped to documents (see :attr:`peers`).
        """
        return self._core.features or ()

    @property
    def entered_documents(self) -> tuple[str, ...]:
        """Documents the application entered and has not left (re-entered
        automatically after a reconnect)."""
        return self._core.entered()

    def presence(self, document_id: str) -> tuple[Peer, ...]:
        """Peers present in ``document_id``, this client included, in join order.

        Empty for documents not entered, and while disconnected.
        """
        return self._core.presence(document_id)

    def users(self, document_id: str) -> tuple[User, ...]:
        """The users present in ``document_id``: its :meth:`presence` grouped
        by user id (every peer of one account together; an anonymous peer is
        its own user), in the order of each user's first peer, this client's
        included. ``user-joined`` and ``user-left`` say when it changes.

        Empty for documents not entered, and while disconnected.
        """
        return self._core.users_of(document_id)

    def state(self, document_id: str) -> Mapping[str, Mapping[str, Any]]:
        """Each peer's state in ``document_id``: peer id → its latest state.

        Peers' states come from their automerge-repo Presence messages (snapshots
        and per-channel updates, merged); this client's own state is included,
        under its own peer id, once it shares state there (:meth:`set_state`,
        or always in peer-to-peer mode). A read-only snapshot that prints like
        a dict; empty while disconnected.
        """
        return self._core.state_of(document_id)

    def stats(self) -> ClientStats:
        """A snapshot of what the client holds (see :class:`ClientStats`)."""
        driver = self._driver
        return self._core.stats(
            socket_closed=driver.socket_closed,
            tasks=driver.tasks(),
            callbacks=self._emitter.running(),
            timers=driver.timers(),
        )

    # ================================================================== lifecycle

    async def __aenter__(self) -> RatatoskrClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the socket and authenticate; returns once connected.

        A client that was closed may connect again (with nothing entered).
        Calling it while connected does nothing.

        Raises:
            ConnectError: the server cannot be reached, or answers without a
                Ratatoskr WebSocket (``.status`` is its HTTP status). Not retried.
            AuthError: the server refused the credentials (not retried).
            OperationTimeout: the server accepted the connection but did not
                complete the WebSocket upgrade, or did not answer ``auth``,
                within ``connect_timeout``.
            ConnectionClosed: :meth:`close` was called before the connection was made.
            RuntimeError: another ``connect()`` is in progress.
        """
        core = self._core
        if not core.connect_started():
            return
        try:
            await self._driver.open()
        except BaseException as exc:
            await self._driver.close_http()
            instead = core.connect_failed()
            if instead is not None:
                raise instead from exc
            raise
        self._driver.start()

    async def close(self) -> None:
        """Leave every entered document, close the socket, stop every task.

        Emits ``presence-changed`` (empty) for each entered document and
        ``disconnected`` if a connection was open. Whatever waits is released
        at once with :class:`ConnectionClosed`: a :meth:`connect` in progress,
        :meth:`enter_document`, :meth:`wait_for_presence`, :meth:`wait_connected`,
        a :meth:`send_ephemeral` waiting for pacing; :meth:`watch_presence`
        iterations end. Coroutine callbacks still running get a second to
        finish, then are cancelled. Idempotent. (A reconnect that gives up,
        refused credentials and an internal error tear the client down the
        same way.)
        """
        await self._driver.close()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the client is connected (for example after a reconnect).

        Raises:
            OperationTimeout: not connected within ``timeout`` seconds.
            ConnectionClosed: the client is closed, or closes (or stops
                reconnecting) while waiting.
        """
        driver = self._driver
        waiter = self._core.wait_connected(socket_closed=driver.socket_closed)
        if waiter is None:
            return
        fut = driver.future(waiter)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancellation
            # that arrives as the future completes (CPython gh-86296), and a task
            # cancelled then keeps running (the demo's bots did, hanging Ctrl-C).
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            raise OperationTimeout(f"not connected within {timeout} s") from None
        finally:
            driver.forget(waiter)

    # ================================================================== documents

    async def enter_document(
        self, document_id: str, *, timeout: float | None = None
    ) -> tuple[Peer, ...]:
        """Enter a document and return its presence once the server confirmed it.

        The client then heartbeats the document every ``heartbeat_interval`` and
        re-enters it after every reconnect, until :meth:`leave_document` or
        :meth:`close`. Entering a document already entered returns its presence.

        Args:
            document_id: the document, or a sidecar channel (``eph:...``).
            timeout: seconds to wait for the server (default ``request_timeout``).

        Returns:
            The peers present, this client included, in join order.

        On a server without server-side presence (peer-to-peer mode, see
        :attr:`server_presence`) entering sends automerge-repo's empty-document
        ``request``, which subscribes this connection to the document's ephemeral
        messages, and the returned presence is this client plus the peers whose
        Presence messages it has seen; others appear as their messages arrive.

        Raises:
            ValueError: ``document_id`` is empty, not text, or too long.
            PermissionDenied: this user may not read the document.
            DocumentNotFound: the server does not know the document.
            LimitExceeded: this connection is present in too many documents.
            PresenceUnsupported: peer-to-peer mode and an ``eph:`` channel, which
                such servers cannot relay.
            OperationTimeout: no answer within ``timeout`` (the document is left).
            ConnectionClosed: the client is not connected yet, is closed, or
                was closed meanwhile.
        """
        core = self._core
        driver = self._driver
        result = core.enter(document_id, driver.now())
        if type(result) is tuple:
            driver.apply()
            return result
        assert type(result) is int
        fut = driver.future(result)
        driver.apply()
        wait = core.enter_timeout(timeout)
        try:
            async with asyncio.timeout(wait):  # (not wait_for: see wait_connected)
                value: tuple[Peer, ...] = await fut
        except TimeoutError:
            self._abandon(document_id, result)
            raise OperationTimeout(
                f"the server did not confirm entering {document_id!r} within {wait} s"
            ) from None
        except asyncio.CancelledError:
            self._abandon(document_id, result)
            raise
        return value

    def _abandon(self, document_id: str, waiter: int) -> None:
        # The caller gave up (timeout or cancelled): the core decides whether to
        # stay in the document (another call may still wait for it).
        driver = self._driver
        driver.forget(waiter)
        self._core.enter_abandoned(document_id, waiter, driver.now())
        driver.apply()

    async def leave_document(self, document_id: str) -> None:
        """Leave a document: the server tells the other peers, and this client stops
        tracking it (``presence-changed`` fires with an empty tuple). Leaving a
        document not entered does nothing."""
        self._core.leave(document_id, self._driver.now())
        self._driver.apply()

    # ================================================================== watching

    async def watch_presence(self, document_id: str) -> AsyncGenerator[tuple[Peer, ...], None]:
        """Yield ``presence(document_id)`` now, then every new value, in order.

        New values come when ``presence-changed`` does (see
        :mod:`ratatoskr_client.events`): at most one per batch of frames the
        client handles at once, so a burst of joins yields its result, not
        every step of it. A consumer more than 1,000 values behind loses the
        oldest. It does not enter the document. Ends when the client closes.
        To stop early, iterate inside
        ``contextlib.aclosing(client.watch_presence(doc))``: that unregisters
        the watcher at once (after a bare ``break`` it is only unregistered
        when the generator is garbage-collected).
        """
        core = self._core
        driver = self._driver
        watcher = core.watch(document_id)
        driver.apply()
        try:
            yield core.presence(document_id)
            while True:
                item = core.next_presence(watcher)
                if item is None:
                    await driver.woken(watcher)
                elif isinstance(item, ConnectionClosed):
                    return  # the client closed
                else:
                    yield item
        finally:
            driver.forget(watcher)

    async def wait_for_presence(
        self,
        document_id: str,
        predicate: Callable[[tuple[Peer, ...]], bool],
        *,
        timeout: float | None = None,
    ) -> tuple[Peer, ...]:
        """Wait until ``predicate(presence(document_id))`` is true; return that presence.

        Checks the current presence first, then each new value when
        ``presence-changed`` announces it (see :mod:`ratatoskr_client.events`;
        a value that lasted only within one batch of frames is not seen).
        ``timeout`` None waits forever. The predicate runs in this call, and
        what it raises is raised here.

        Raises:
            OperationTimeout: the predicate did not become true within ``timeout``.
            ConnectionClosed: the client is not connected yet, is closed, or
                closed while waiting.
        """
        core = self._core
        current = core.presence(document_id)
        if predicate(current):
            return current
        waiter = core.wait_presence(document_id)
        driver = self._driver
        try:
            async with asyncio.timeout(timeout):
                while True:
                    item = core.next_presence(waiter)
                    if item is None:
                        await driver.woken(waiter)
                    elif isinstance(item, ConnectionClosed):
                        raise item
                    elif predicate(item):
                        return item
        except TimeoutError:
            names = [p.name for p in self.presence(document_id)]
            raise OperationTimeout(
                f"presence of {document_id!r} did not match within {timeout} s (present: {names})"
            ) from None
        finally:
            driver.forget(waiter)

    # ================================================================== sending

    async def send_ephemeral(self, document_id: str, payload: Any) -> None:
        """Send a payload to every other peer present in ``document_id``.

        Waits for a pacing token first (see ``rate_limit``), so the client never
        trips the server's rate limit on its own; the frame is written at once
        when one is available. Errors the server sends back
        (``permission_denied``, ``document_not_found``, ``rate_limited``) arrive
        later as ``error`` events.

        Args:
            payload: any CBOR-encodable value (dicts, lists, str, bytes, numbers...).

        Raises:
            ValueError: ``document_id`` is empty, not text, or too long.
            PayloadError: not encodable, too large, or shaped like a control
                message (``{"type": "presence", ...}``, or a ``"__presence"``
                key: use :meth:`set_state` for per-peer state).
            ConnectionClosed: not connected (the message is not queued), or the
                connection was lost or the client closed while it waited for pacing.
        """
        driver = self._driver
        waiter = self._core.send_ephemeral(
            document_id, payload, driver.now(), socket_closed=driver.socket_closed
        )
        if waiter is None:
            driver.apply()
            writer = driver.writer
            if writer is not None and writer.paused:  # backpressure, like send_bytes
                await writer.drained()
            return
        fut = driver.future(waiter)
        driver.apply()
        try:
            await fut
        finally:
            driver.forget(waiter)

    async def set_state(self, document_id: str, channel: str, value: Any) -> None:
        """Set one channel of this client's state in a document and share it.

        Like automerge-repo's ``Presence.broadcast(channel, value)``: the value is
        merged into our state, which peers (Python or JavaScript) see in their
        :meth:`state` / ``getPeerStates()``. The first call for a document sends a
        full snapshot once the document is entered; later calls are coalesced,
        so at most one update per ``state_interval`` goes out per document and
        the latest value always does. Returns without waiting for the network.

        Raises:
            PayloadError: the value is not CBOR-encodable or too large.
            ValueError: empty document id or channel.
        """
        self._core.set_state(document_id, channel, value, self._driver.now())
        self._driver.apply()

    def __repr__(self) -> str:
        me = self._core.me
        who = f" as {me.name!r} ({me.peer_id})" if me is not None else ""
        return f"<RatatoskrClient {self._driver.socket_url} {self.connection_state.value}{who}>"
