"""Where a client is in its life, and what it holds: :class:`ConnectionState`, :class:`ClientStats`.

Both are read from a :class:`~ratatoskr_client.RatatoskrClient`:
``client.connection_state`` and ``client.stats()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

__all__ = ["ClientStats", "ConnectionState", "DocumentState"]


class ConnectionState(Enum):
    """Where the client is in its life. Read it from :attr:`RatatoskrClient.connection_state`."""

    IDLE = "idle"  #: created and not connected yet (or connect() failed: it may be retried)
    CONNECTING = "connecting"  #: connect() in progress
    CONNECTED = "connected"  #: authenticated socket open
    RECONNECTING = "reconnecting"  #: connection lost, retrying with backoff
    CLOSED = "closed"  #: close() called, auth refused, reconnect gave up, or a fatal error


class DocumentState(Enum):
    """Where one document entered by the application is.

    A document has one membership record from
    :meth:`~ratatoskr_client.RatatoskrClient.enter_document` until
    :meth:`~ratatoskr_client.RatatoskrClient.leave_document` (or ``close()``):
    ``ENTERING`` → ``PRESENT`` → ``LEAVING`` → gone, and back to ``ENTERING``
    after every lost connection (it is re-entered on the next one).
    :attr:`ClientStats.documents` lists the documents in each state. A
    membership the server refuses (``permission_denied``,
    ``document_not_found``, ``too_many_documents``) has no state: its record
    is dropped at once, and whoever waits for it gets the error (else it is an
    ``error`` event). A membership whose permission the server *revokes*
    later (``permission_revoked``) is ``REFUSED``: the record stays, so the
    application sees it (``stats().documents``, a ``document-refused``
    event), and it is not joined again, on this connection or the next,
    until the application leaves it or enters it again.
    """

    ENTERING = "entering"  #: entered; the server has not confirmed it on this connection
    PRESENT = "present"  #: confirmed on this connection
    LEAVING = "leaving"  #: left; a goodbye is still waiting for its pacing token
    REFUSED = "refused"  #: the server revoked our permission; not joined again until re-entered


@dataclass(frozen=True, slots=True)
class ClientStats:
    """A snapshot of what a client holds, for monitoring and leak tests.

    Everything here goes back to its initial value when the client is closed,
    and stays bounded while it runs: that is what the leak tests check.

    Attributes:
        connection_state: the connection state when the snapshot was taken.
        documents: document ids by membership state, one key per
            :class:`DocumentState` value (``"entering"``, ``"present"``,
            ``"leaving"``), in the order they were entered.
        tasks: names of the client's own asyncio tasks still running: the
            receive loop ``"receive"`` (which also makes the reconnect
            attempts), and ``"write"`` while frames wait for the network on
            aiohttp's slow write path; application callbacks are counted in
            ``callbacks``.
        callbacks: coroutine callbacks of the application still running.
        timers: 1 when the client's one timer is armed, else 0.
        paced_sends: messages waiting for a pacing token (``send_ephemeral``
            calls still waiting among them).
        waiters: ``enter_document``, ``wait_for_presence`` and
            ``wait_connected`` calls waiting.
        watchers: ``watch_presence`` iterators running.
        peers: identities known on this connection (this client included).
        peer_states: per-peer states held (one per peer and document, more
            when a peer uses several sessions).
        gossip_sessions: sessionIds tracked by the gossip filter (peer-to-peer
            mode only; at most 4096).
    """

    connection_state: ConnectionState
    documents: Mapping[str, tuple[str, ...]]
    tasks: tuple[str, ...]
    callbacks: int
    timers: int
    paced_sends: int
    waiters: int
    watchers: int
    peers: int
    peer_states: int
    gossip_sessions: int
