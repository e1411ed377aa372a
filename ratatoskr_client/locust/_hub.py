"""Hand measurements from the client's loop thread to Locust's gevent hub.

Callbacks run on the blocking client's background thread, but Locust's
statistics live in the gevent hub's thread and are not thread-safe, so a
measurement is queued here and reported from a greenlet. One wake-up of the
hub (``loop.run_callback_threadsafe``, gevent's way in from another thread)
reports everything queued since the last one.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import gevent

__all__ = ["HubInbox"]


class HubInbox:
    """Runs ``report(item)`` in a greenlet of the hub it was created on, for
    items :meth:`put` from any thread, in order."""

    def __init__(self, report: Callable[[Any], None]) -> None:
        self._report = report
        self._loop = gevent.get_hub().loop
        self._items: collections.deque[Any] = collections.deque()
        self._scheduled = False

    def put(self, item: Any) -> None:
        """Queue ``item`` (any thread)."""
        self._items.append(item)
        # Correct without a lock: _drain clears the flag before it empties the
        # queue, so an item appended while the flag still reads True is drained.
        if not self._scheduled:
            self._scheduled = True
            self._loop.run_callback_threadsafe(self._wake)

    def _wake(self) -> None:
        # A hub callback may not block; listeners of Locust's events might.
        gevent.spawn(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        items = self._items
        while items:
            self._report(items.popleft())
