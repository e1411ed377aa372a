"""``watch_presence`` for the blocking client: an iterator over presence values."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any

from ..core.membership import Peer
from ..errors import ConnectionClosed, OperationTimeout
from ._portal import LoopThread

__all__ = ["PresenceWatch"]

_END: Any = object()


class PresenceWatch(Iterator[tuple[Peer, ...]]):
    """Presence values of one document, as a blocking iterator.

    Returned by :meth:`ratatoskr_client.sync.RatatoskrClient.watch_presence`.
    Yields ``presence(document_id)`` at once, then every new value in order, and
    ends (``StopIteration``) when the client closes. Each value after the first
    must arrive within ``timeout`` seconds (None: wait forever), otherwise
    ``next()`` raises :class:`~ratatoskr_client.OperationTimeout` and the watch
    ends. To stop early use it as a context manager or call :meth:`close`: that
    unregisters it from the client at once. A watch belongs to the thread that
    iterates it.
    """

    def __init__(
        self,
        loop: LoopThread,
        source: AsyncIterator[tuple[Peer, ...]],
        document_id: str,
        timeout: float | None,
    ) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds or None, got {timeout}")
        self._loop = loop
        self._source = source
        self._document_id = document_id
        self._timeout = timeout
        self._first = True
        self._done = False

    def __iter__(self) -> PresenceWatch:
        return self

    def __next__(self) -> tuple[Peer, ...]:
        if self._done:
            raise StopIteration
        try:
            value = self._loop.run(self._next)
        except ConnectionClosed:
            self._done = True
            if self._loop.stopped:
                # The client closed and its loop stopped before (or while) this
                # call was handed over: the end the docstring promises, not an
                # error (whichever thread won the race).
                raise StopIteration from None
            raise
        except BaseException:
            # A timeout or an interruption cancelled the generator mid-wait,
            # which ends it: so does this watch.
            self._done = True
            raise
        if value is _END:
            self._done = True
            raise StopIteration
        return value  # type: ignore[no-any-return]

    async def _next(self) -> Any:
        # The first value is immediate; the timeout is for each change after it.
        timeout = None if self._first else self._timeout
        self._first = False
        try:
            return await asyncio.wait_for(anext(self._source), timeout)
        except StopAsyncIteration:
            return _END
        except TimeoutError:
            raise OperationTimeout(
                f"presence of {self._document_id!r} did not change within {self._timeout} s"
            ) from None

    def close(self) -> None:
        """Stop watching (idempotent)."""
        if self._done:
            return
        self._done = True
        # The asyncio client's watch is an async generator: aclose() unregisters it.
        aclose = getattr(self._source, "aclose", None)
        if aclose is None:
            return
        with contextlib.suppress(ConnectionClosed):  # the stopped loop finalized it
            self._loop.run(aclose)

    def __enter__(self) -> PresenceWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
