"""What a client knows, read without waiting: the facade's properties and queries.

:class:`ClientViews` is the synchronous half of
:class:`~ratatoskr_client.RatatoskrClient` (the awaitable half is in
:mod:`ratatoskr_client.asyncio.client`): every value here is read from the core's
tables at the moment of the call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from ..core.membership import Peer
from ..status import ClientStats, ConnectionState

if TYPE_CHECKING:
    from ..core.client import ClientCore
    from .driver import Driver
    from .emitter import SafeEmitter

__all__ = ["ClientViews"]

_CONNECTED: Final = ConnectionState.CONNECTED


class ClientViews:
    """Properties and queries of a client (a mixin of RatatoskrClient)."""

    __slots__ = ()

    if TYPE_CHECKING:
        _core: ClientCore
        _driver: Driver
        _emitter: SafeEmitter

    @property
    def connection_state(self) -> ConnectionState:
        """The connection state, kept in step with the socket."""
        state = self._core.state
        if state is _CONNECTED and self._driver.socket_closed:
            # The socket died and the receive loop has not run yet: say so now.
            if self._core.settings.reconnect:
                return ConnectionState.RECONNECTING
            return ConnectionState.CLOSED
        return state

    @property
    def is_connected(self) -> bool:
        """True exactly when an authenticated socket is open."""
        return self.connection_state is _CONNECTED

    @property
    def me(self) -> Peer:
        """This connection's identity from ``auth_ok`` (after a disconnect, the last
        one; a reconnect brings a new peer id). Its ``chosen_name`` is the
        ``name=`` argument.

        Raises:
            RuntimeError: read before the first
                :meth:`~ratatoskr_client.RatatoskrClient.connect` succeeded (a
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
        return self._core.store.identities

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
        return self._core.docs.entered()

    def presence(self, document_id: str) -> tuple[Peer, ...]:
        """Peers present in ``document_id``, this client included, in join order.

        Empty for documents not entered, and while disconnected.
        """
        return self._core.store.presence(document_id)

    def state(self, document_id: str) -> Mapping[str, Mapping[str, Any]]:
        """Each peer's state in ``document_id``: peer id → its latest state.

        Peers' states come from their automerge-repo Presence messages (snapshots
        and per-channel updates, merged); this client's own state is included,
        under its own peer id, once it shares state there
        (:meth:`~ratatoskr_client.RatatoskrClient.set_state`, or always in
        peer-to-peer mode). A read-only snapshot that prints like a dict;
        empty while disconnected.
        """
        return self._core.state_of(document_id)

    def stats(self) -> ClientStats:
        """A snapshot of what the client holds (see :class:`ClientStats`)."""
        core = self._core
        driver = self._driver
        paced = core.out.queue
        return ClientStats(
            connection_state=self.connection_state,
            documents=core.docs.by_state(),
            tasks=driver.tasks(),
            callbacks=self._emitter.running(),
            timers=driver.timers(),
            paced_sends=len(paced),
            waiters=core.waiters.count(),
            watchers=core.waiters.watcher_count(),
            peers=len(core.store.identities),
            peer_states=len(core.states),
            gossip_sessions=len(core.p2p) if core.p2p is not None else 0,
        )
