"""Who is waiting for what: the application's pending awaits and presence watches. No I/O.

The core hands out an integer id for every await that cannot be answered at
once (``enter_document``, ``wait_connected``, a paced ``send_ephemeral``: the
send queue keeps those, :mod:`.outgoing`) and for every presence watch
(``watch_presence``, ``wait_for_presence``); the driver keeps the matching
future, or wakes the matching consumer. :class:`Waiters` knows what each one
waits for, so that the right ones are answered when it happens (through the
core's :class:`~.outbox.Outbox`), and so that the one teardown can end every
one of them.

A presence watch keeps its values here, not in the driver: every settled
presence of its document is appended to its backlog, and its consumer takes
them (:meth:`Waiters.take`) when the outbox says there is something
(:class:`~.outbox.Push`). A consumer more than :data:`WATCH_BACKLOG` values
behind loses the oldest. ``wait_for_presence`` is a watch too: its predicate
is the application's code, so it runs in the waiting call, on the values
taken, never in the core.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from ..errors import ConnectionClosed, RatatoskrError
from .membership import Peer
from .outbox import Outbox

__all__ = ["WATCH_BACKLOG", "Waiters", "Watch"]

#: Presence values a watch keeps for a consumer that does not take them: a
#: consumer further behind loses its oldest ones.
WATCH_BACKLOG: Final = 1000


class Watch:
    """One presence watch: ``watch_presence``'s iterator, or a ``wait_for_presence``.

    Attributes:
        document_id: the document watched.
        counted: a ``wait_for_presence`` (counted among the client's waiters),
            not a ``watch_presence`` iterator.
        values: presence values not taken yet, oldest first.
        end: why the watch is over, once it is (its values are taken first).
    """

    __slots__ = ("counted", "document_id", "end", "values")

    def __init__(self, document_id: str, *, counted: bool) -> None:
        self.document_id = document_id
        self.counted = counted
        self.values: deque[tuple[Peer, ...]] = deque(maxlen=WATCH_BACKLOG)
        self.end: ConnectionClosed | None = None


class Waiters:
    """Pending awaits by kind, and presence watches. Ids are unique for the
    life of the client (shared with the send queue's paced sends)."""

    __slots__ = ("_ended", "_next", "_outbox", "connect", "enter", "watches")

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._next = 0
        #: document -> enter_document() calls waiting for its confirmation
        self.enter: dict[str, list[int]] = {}
        #: wait_connected() calls
        self.connect: list[int] = []
        #: document -> its presence watches, by id
        self.watches: dict[str, dict[int, Watch]] = {}
        # Watches that are over, until their consumer has taken what they hold.
        self._ended: dict[int, Watch] = {}

    def new(self) -> int:
        """A fresh id."""
        self._next += 1
        return self._next

    # ------------------------------------------------------------------ queries

    def count(self) -> int:
        """Awaits pending: enter_document, wait_for_presence and wait_connected."""
        watches = sum(w.counted for ws in self.watches.values() for w in ws.values())
        return sum(map(len, self.enter.values())) + len(self.connect) + watches

    def watcher_count(self) -> int:
        """``watch_presence`` iterators registered."""
        return sum(not w.counted for ws in self.watches.values() for w in ws.values())

    def watched(self, document_id: str) -> bool:
        """True if a watch wants ``document_id``'s presence values."""
        return document_id in self.watches

    # ------------------------------------------------------------------ registering

    def wait_enter(self, document_id: str) -> int:
        """An ``enter_document`` waits for ``document_id``'s confirmation."""
        waiter = self.new()
        self.enter.setdefault(document_id, []).append(waiter)
        return waiter

    def wait_connect(self) -> int:
        """A ``wait_connected`` waits for the next connection."""
        waiter = self.new()
        self.connect.append(waiter)
        return waiter

    def watch(self, document_id: str, *, counted: bool) -> int:
        """A new presence watch of ``document_id`` (see :class:`Watch`)."""
        watcher = self.new()
        self.watches.setdefault(document_id, {})[watcher] = Watch(document_id, counted=counted)
        return watcher

    def ended_watch(self, document_id: str, reason: ConnectionClosed) -> int:
        """A watch that is over before it starts (the client is closed)."""
        watcher = self.new()
        watch = self._ended[watcher] = Watch(document_id, counted=False)
        watch.end = reason
        self._outbox.push(watcher)
        return watcher

    def cancel(self, waiter: int) -> None:
        """Forget ``waiter`` (its caller went away)."""
        for doc_id, ids in list(self.enter.items()):
            if waiter in ids:
                ids.remove(waiter)
                if not ids:
                    del self.enter[doc_id]
        for doc_id, watches in list(self.watches.items()):
            if watches.pop(waiter, None) is not None and not watches:
                del self.watches[doc_id]
        self._ended.pop(waiter, None)
        if waiter in self.connect:
            self.connect.remove(waiter)

    # ------------------------------------------------------------------ answers

    def take(self, watcher: int) -> tuple[Peer, ...] | ConnectionClosed | None:
        """The next value of a presence watch: a presence; None when there is
        none yet (the consumer waits for a :class:`~.outbox.Push`); or, once
        every value is taken, why the watch is over (it is then forgotten)."""
        watch = self._ended.get(watcher)
        if watch is None:
            for watches in self.watches.values():
                watch = watches.get(watcher)
                if watch is not None:
                    break
            else:
                return ConnectionClosed("client is closed")  # over and taken, or unknown
        if watch.values:
            return watch.values.popleft()
        if watch.end is not None:
            del self._ended[watcher]
            return watch.end
        return None

    def connected(self) -> None:
        """Every ``wait_connected`` returns."""
        for waiter in self.connect:
            self._outbox.resolve(waiter)
        self.connect.clear()

    def resolve_enter(self, document_id: str, value: tuple[Peer, ...]) -> None:
        """Every ``enter_document`` of ``document_id`` returns ``value``."""
        for waiter in self.enter.pop(document_id, ()):
            self._outbox.resolve(waiter, value)

    def fail_enter(self, document_id: str, error: RatatoskrError) -> bool:
        """Every ``enter_document`` of ``document_id`` raises ``error``; False
        if none was waiting."""
        waiting = self.enter.pop(document_id, None)
        for waiter in waiting or ():
            self._outbox.fail(waiter, error)
        return bool(waiting)

    def presence_changed(self, document_id: str, peers: tuple[Peer, ...]) -> None:
        """Every watch of ``document_id`` gets ``peers``."""
        outbox = self._outbox
        for watcher, watch in self.watches.get(document_id, {}).items():
            if not watch.values:  # otherwise its consumer has been told already
                outbox.push(watcher)
            watch.values.append(peers)

    def release_all(self, reason: ConnectionClosed) -> None:
        """Teardown: every await fails with ``reason``, every watch ends (after
        the values it holds)."""
        outbox = self._outbox
        for waiter in self.connect:
            outbox.fail(waiter, reason)
        for ids in self.enter.values():
            for waiter in ids:
                outbox.fail(waiter, reason)
        for watches in self.watches.values():
            for watcher, watch in watches.items():
                if not watch.values:
                    outbox.push(watcher)
                watch.end = reason
                self._ended[watcher] = watch
        self.connect.clear()
        self.enter.clear()
        self.watches.clear()
