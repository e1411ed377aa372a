"""The client's event emitter: pyee, hardened so one bad callback harms nothing.

pyee's asyncio emitter re-emits a failing callback's exception as ``error`` and
raises when ``error`` has no listener, from inside whatever code called
``emit``: for us, the receive loop. Here every callback runs in isolation: an
exception is logged, wrapped in :class:`~ratatoskr_client.errors.CallbackError`
and emitted as ``error``; the other callbacks of the same event still run; an
``error`` nobody listens to is logged, never raised.

The emitter also says whenever an event gains its first callback or loses its
last (``once`` callbacks included, which remove themselves): the facade hands
that to the core (:meth:`~ratatoskr_client.core.client.ClientCore.listening`),
which then records no effect for events nobody listens to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from pyee.asyncio import AsyncIOEventEmitter

from ..errors import CallbackError

__all__ = ["SafeEmitter"]

_iscoroutine = asyncio.iscoroutine
#: ``_waiting`` of an emitter that never ran a coroutine callback (never written)
_NO_TASKS: Any = frozenset()

log = logging.getLogger("ratatoskr_client")


class SafeEmitter(AsyncIOEventEmitter):
    """An AsyncIOEventEmitter whose callbacks can never break the emitter.

    Args:
        listening: called with ``(event, True)`` when ``event`` gains its first
            callback and ``(event, False)`` when it loses its last.
    """

    def __init__(self, listening: Callable[[str, bool], None] | None = None) -> None:
        super().__init__()
        # Made on the first coroutine callback: most clients never have one,
        # and an empty set is 0.2 KiB of every client of a large process.
        self._waiting = _NO_TASKS
        self._listening = listening

    def _add_event_handler(self, event: str, k: Callable[..., Any], v: Callable[..., Any]) -> None:
        # pyee's, with a plain dict (insertion-ordered as well) where pyee
        # makes an OrderedDict per event: 0.16 KiB less for each event with
        # callbacks (a simulated Locust user listens to 7).
        self.emit("new_listener", event, k)
        with self._lock:
            events: dict[str, dict[Callable[..., Any], Callable[..., Any]]]
            events = self._events  # type: ignore[assignment]
            handlers = events.get(event)
            had = bool(handlers)
            if handlers is None:
                handlers = events[event] = {}
            handlers[k] = v
        if not had and self._listening is not None:
            self._listening(event, True)

    def _remove_listener(self, event: str, f: Callable[..., Any]) -> None:
        super()._remove_listener(event, f)
        if event not in self._events and self._listening is not None:
            self._listening(event, False)

    def remove_all_listeners(self, event: str | None = None) -> None:
        """Remove every callback of ``event`` (of every event: None)."""
        events = list(self._events) if event is None else [event]
        super().remove_all_listeners(event)
        if self._listening is not None:
            for name in events:
                self._listening(name, False)

    def emit(self, event: str, *args: Any, **kwargs: Any) -> bool:
        """Call every callback of ``event`` with ``args``, each in isolation
        (see the module docstring). True if the event had a callback."""
        # pyee's emit -> _call_handlers -> _run_one, flattened into one call: the
        # client emits once per received message, so the layers were a real cost.
        handlers = self._events.get(event)
        if not handlers:
            self._emit_handle_potential_error(event, args[0] if args else None)
            return False
        for handler in tuple(handlers.values()):
            try:
                result = handler(*args, **kwargs)
            except Exception as exc:
                self._failed(event, exc)
                continue
            if result is not None and _iscoroutine(result):
                self._track(event, result)
        return True

    def running(self) -> int:
        """Coroutine callbacks still running."""
        return sum(1 for task in self._waiting if not task.done())

    def _track(self, event: str, coro: Any) -> None:
        """Run a coroutine callback as a task; its failure is reported like a raise."""
        task = asyncio.ensure_future(coro)
        if self._waiting is _NO_TASKS:
            self._waiting = set()
        self._waiting.add(task)
        task.add_done_callback(partial(self._finished, event))

    def _finished(self, event: str, task: asyncio.Future[Any]) -> None:
        self._waiting.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, Exception):
            self._failed(event, exc)

    def _failed(self, event: str, exc: Exception) -> None:
        log.error("callback for %r raised", event, exc_info=exc)
        if event != "error":  # an error handler that raises must not loop forever
            self.emit("error", CallbackError(event, exc))

    def _emit_handle_potential_error(self, event: str, error: Any) -> None:
        if event == "error":
            # CallbackErrors were already logged with their traceback by _failed().
            level = logging.DEBUG if isinstance(error, CallbackError) else logging.WARNING
            log.log(level, "unhandled 'error' event: %s", error)

    async def drain(self, timeout: float) -> None:
        """Give running coroutine callbacks ``timeout`` seconds, then cancel the rest."""
        current = asyncio.current_task()
        # A callback may be the one closing the client: never wait for ourselves.
        pending = [t for t in self._waiting if not t.done() and t is not current]
        if not pending:
            return
        await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            task.cancel()
        self._waiting.difference_update(pending)
        # Let the cancellations be delivered so no task outlives the client.
        await asyncio.gather(*pending, return_exceptions=True)
