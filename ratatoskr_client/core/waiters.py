"""Who is waiting for what: the application's pending awaits, by id. No I/O.

The core hands out an integer id for every await that cannot be answered at
once (``enter_document``, ``wait_for_presence``, ``wait_connected``, a paced
``send_ephemeral``) and for every ``watch_presence`` iterator; the driver keeps
the matching future or queue. :class:`Waiters` is what the core knows about
them: what each one waits for, so that the right ones are resolved when it
happens, and so that teardown can fail every one of them. :class:`Waiting` is
the core's side of ``wait_for_presence``, ``watch_presence`` and
``wait_connected`` (a mixin of ClientCore).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

from ..errors import RatatoskrError
from ..status import ConnectionState
from .effects import Effect, Fail, Push, Resolve
from .membership import Peer

if TYPE_CHECKING:
    from .membership import MembershipStore

__all__ = ["PresencePredicate", "Waiters", "Waiting"]

PresencePredicate: TypeAlias = Callable[[tuple[Peer, ...]], bool]


class Waiters:
    """Pending awaits by kind. Ids are unique for the life of the client."""

    __slots__ = ("_next", "connect", "enter", "paced", "presence", "watchers")

    def __init__(self) -> None:
        self._next = 0
        #: document -> enter_document() calls waiting for its confirmation
        self.enter: dict[str, list[int]] = {}
        #: document -> wait_for_presence() calls and their predicates
        self.presence: dict[str, dict[int, PresencePredicate]] = {}
        #: wait_connected() calls
        self.connect: list[int] = []
        #: document -> watch_presence() iterators
        self.watchers: dict[str, list[int]] = {}
        #: send_ephemeral() calls waiting for a pacing token
        self.paced: set[int] = set()

    def new(self) -> int:
        """A fresh id."""
        self._next += 1
        return self._next

    def count(self) -> int:
        """Awaits pending (enter, presence, connect; not paced sends or watchers)."""
        return (
            sum(map(len, self.enter.values()))
            + sum(map(len, self.presence.values()))
            + len(self.connect)
        )

    def watcher_count(self) -> int:
        """``watch_presence`` iterators registered."""
        return sum(map(len, self.watchers.values()))

    def cancel(self, waiter: int) -> None:
        """Forget ``waiter`` (its caller timed out or was cancelled)."""
        for doc_id, ids in list(self.enter.items()):
            if waiter in ids:
                ids.remove(waiter)
                if not ids:
                    del self.enter[doc_id]
        for doc_id, predicates in list(self.presence.items()):
            if predicates.pop(waiter, None) is not None and not predicates:
                del self.presence[doc_id]
        for doc_id, ids in list(self.watchers.items()):
            if waiter in ids:
                ids.remove(waiter)
                if not ids:
                    del self.watchers[doc_id]
        if waiter in self.connect:
            self.connect.remove(waiter)
        self.paced.discard(waiter)

    def resolve_enter(self, document_id: str, value: tuple[Peer, ...]) -> list[Effect]:
        """Every ``enter_document`` of ``document_id`` returns ``value``."""
        return [Resolve(w, value) for w in self.enter.pop(document_id, ())]

    def fail_enter(self, document_id: str, error: RatatoskrError) -> list[Effect]:
        """Every ``enter_document`` of ``document_id`` raises ``error``."""
        return [Fail(w, error) for w in self.enter.pop(document_id, ())]

    def presence_changed(self, document_id: str, peers: tuple[Peer, ...]) -> list[Effect]:
        """Resolve the ``wait_for_presence`` calls whose predicate now holds (or
        fail those whose predicate raised), and feed the watchers."""
        out: list[Effect] = []
        predicates = self.presence.get(document_id)
        if predicates:
            for waiter, predicate in list(predicates.items()):
                try:
                    done = predicate(peers)
                except Exception as exc:  # the application's predicate: its error is its answer
                    del predicates[waiter]
                    out.append(Fail(waiter, exc))
                    continue
                if done:
                    del predicates[waiter]
                    out.append(Resolve(waiter, peers))
            if not predicates:
                del self.presence[document_id]
        for watcher in self.watchers.get(document_id, ()):
            out.append(Push(watcher, peers))
        return out

    def release_all(self, error: RatatoskrError) -> list[Effect]:
        """Teardown: every await fails with ``error``, every watch ends."""
        out: list[Effect] = [Fail(w, error) for w in self.connect]
        for ids in self.enter.values():
            out += [Fail(w, error) for w in ids]
        for predicates in self.presence.values():
            out += [Fail(w, error) for w in predicates]
        out += [Fail(w, error) for w in sorted(self.paced)]
        for ids in self.watchers.values():
            out += [Push(w, None) for w in ids]
        self.connect.clear()
        self.enter.clear()
        self.presence.clear()
        self.paced.clear()
        self.watchers.clear()
        return out


class Waiting:
    """Waiting for presence and for a connection (a mixin of ClientCore)."""

    __slots__ = ()

    if TYPE_CHECKING:
        effects: list[Effect]
        state: ConnectionState
        store: MembershipStore
        waiters: Waiters

        def usable(self) -> None: ...

    def wait_presence(
        self, document_id: str, predicate: PresencePredicate
    ) -> int | tuple[Peer, ...]:
        """``wait_for_presence``: the presence at once if the predicate holds,
        else a waiter id resolved when it does (checked when the core settles:
        :meth:`~ratatoskr_client.core.incoming.Incoming.settle`)."""
        current = self.store.presence(document_id)
        if predicate(current):
            return current
        self.usable()
        waiter = self.waiters.new()
        self.waiters.presence.setdefault(document_id, {})[waiter] = predicate
        return waiter

    def watch(self, document_id: str) -> int:
        """``watch_presence``: a watcher id that gets every new presence, once
        per settle (a closed client's watch ends at once)."""
        watcher = self.waiters.new()
        if self.state is ConnectionState.CLOSED:
            self.effects.append(Push(watcher, None))
        else:
            self.waiters.watchers.setdefault(document_id, []).append(watcher)
        return watcher

    def wait_connected(self, *, connected: bool) -> int | None:
        """``wait_connected``: None if ``connected`` (the driver knows the
        socket is open), else a waiter id resolved on the next connection."""
        self.usable()
        if connected:
            return None
        waiter = self.waiters.new()
        self.waiters.connect.append(waiter)
        return waiter
