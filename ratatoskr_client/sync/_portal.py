"""The process's one background event loop, shared by every blocking client.

:class:`LoopThread` is one asyncio event loop running on one OS thread. The
module-level :data:`portal` hands it out: the first blocking client starts it,
each client holds a reference until it closes, and the last close stops it and
joins the thread. At interpreter exit (``atexit``, which runs once every
non-daemon thread of the application has finished) the portal closes the clients
still open, stops the loop and joins the thread, so nothing is left behind:
no thread, no socket, no pending task.

The clients of one loop open their sockets through one aiohttp
``ClientSession`` the loop owns (:meth:`LoopThread.session`): a session, its
connector and its cookie jar cost about 6 KiB, which per client was an eighth
of a simulated Locust user. It is closed when the loop stops, after the
clients; closing one client leaves it open for the others.

A call from another thread is handed over with ``loop.call_soon_threadsafe``
and waited for with a :class:`~ratatoskr_client.sync._native.Waiter` (a real
lock, or a gevent-friendly wait in a monkey-patched process). If the wait is
interrupted — Ctrl-C's ``KeyboardInterrupt``, a killed greenlet, a gevent
timeout — the underlying task is cancelled and the interruption propagates.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any, Protocol, TypeVar

import aiohttp

from ..errors import ConnectionClosed
from . import _native

__all__ = ["LoopThread", "portal"]

log = logging.getLogger("ratatoskr_client")

T = TypeVar("T")

#: Seconds the clients still open at interpreter exit get to close cleanly.
EXIT_CLOSE_TIMEOUT = 5.0


class Closeable(Protocol):
    """What the portal closes at exit: an asyncio client."""

    async def close(self) -> None: ...


def _returning(value: Any) -> Callable[[], Any]:
    return lambda: value


def _raising(exc: BaseException) -> Callable[[], Any]:
    def outcome() -> Any:
        raise exc

    return outcome


class _Call:
    """One call handed to the loop thread, and the caller waiting for it."""

    __slots__ = ("cancelled", "task", "waiter")

    def __init__(self, waiter: _native.Waiter) -> None:
        self.waiter = waiter
        self.task: asyncio.Task[Any] | None = None
        self.cancelled = False


class _PortalLoop(asyncio.SelectorEventLoop):
    """A selector loop whose name resolution works under gevent's patching.

    asyncio resolves names in its default executor, a ThreadPoolExecutor; under
    gevent's patching its "threads" would be greenlets of this thread, which
    never run, so resolution would hang. Here each resolution gets a real
    thread and the original ``socket.getaddrinfo``.
    """

    async def getaddrinfo(
        self,
        host: bytes | str | None,
        port: bytes | str | int | None,
        *,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[tuple[Any, Any, int, str, Any]]:
        if not _native.threading_patched():
            return await super().getaddrinfo(
                host, port, family=family, type=type, proto=proto, flags=flags
            )
        future: asyncio.Future[list[tuple[Any, Any, int, str, Any]]] = self.create_future()

        def deliver(outcome: Callable[[], Any]) -> None:
            if not future.done():
                try:
                    future.set_result(outcome())
                except BaseException as exc:
                    future.set_exception(exc)

        def resolve() -> None:
            try:
                outcome = _returning(_native.getaddrinfo(host, port, family, type, proto, flags))
            except Exception as exc:  # socket.gaierror, mostly: the caller's to handle
                outcome = _raising(exc)
            # RuntimeError: the loop closed meanwhile, so nobody waits any more.
            with contextlib.suppress(RuntimeError):
                self.call_soon_threadsafe(deliver, outcome)

        _native.start_thread(resolve, "ratatoskr-resolve")
        return await future


class LoopThread:
    """An asyncio event loop running on its own OS thread until :meth:`stop`."""

    def __init__(self) -> None:
        self._lock = _native.allocate_lock()  # guards _pending and stopped
        self._pending: set[_Call] = set()
        self.stopped = False
        #: clients attached to this loop (the portal's bookkeeping)
        self.users = 0
        self.clients: set[Closeable] = set()
        self._to_close: list[Closeable] = []
        ready = _native.allocate_lock()
        ready.acquire()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ident = 0
        self._session: aiohttp.ClientSession | None = None
        self._join = _native.start_thread(partial(self._main, ready), "ratatoskr-loop")
        ready.acquire()  # a real wait: the thread is up within milliseconds

    # ----------------------------------------------------------------- the thread

    def _main(self, ready: Any) -> None:
        loop = _PortalLoop(_native.make_selector())
        self._loop = loop
        self._ident = _native.get_ident()
        ready.release()
        try:
            loop.run_forever()
            loop.run_until_complete(self._wind_down())
        except BaseException:  # pragma: no cover - the loop itself failed
            log.exception("the background event loop failed")
        finally:
            loop.close()
            with self._lock:
                self.stopped = True
                orphans = list(self._pending)
                self._pending.clear()
            # Handed over too late to run: run() reports ConnectionClosed, and
            # call() (a read) runs directly, since nothing changes any more.
            stopped = _LoopGone("the background event loop has stopped")
            for call in orphans:
                call.waiter.settle(_raising(stopped))

    async def _wind_down(self) -> None:
        loop = asyncio.get_running_loop()
        if self._to_close:
            closing = [loop.create_task(c.close()) for c in self._to_close]
            _, late = await asyncio.wait(closing, timeout=EXIT_CLOSE_TIMEOUT)
            if late:
                log.warning("%d client(s) did not close within %s s", len(late), EXIT_CLOSE_TIMEOUT)
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:  # after the clients, whose sockets it opened
            await session.close()
        await loop.shutdown_asyncgens()
        await loop.shutdown_default_executor()

    def session(self) -> aiohttp.ClientSession:
        """The HTTP session of every client on this loop (made on first use).
        Call it on the loop thread; the loop closes it when it stops.

        Its connector has no connection limit (an open WebSocket holds a slot
        for its whole life, and aiohttp's default allows 100). Its cookie jar
        keeps nothing: the SDK uses no cookies, and with one jar for all the
        clients a cookie one server set for one client (one identity) would
        be sent with every other client's handshake, as another identity's.
        """
        session = self._session
        if session is None or session.closed:
            session = self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), cookie_jar=aiohttp.DummyCookieJar()
            )
        return session

    # ----------------------------------------------------------------- callers

    def in_thread(self) -> bool:
        """True when called on this loop's own thread (from a callback)."""
        return _native.get_ident() == self._ident

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` (a coroutine) on the loop; block until done.

        Raises what the coroutine raises. An interrupted wait cancels the task.

        Raises:
            RuntimeError: called from the loop thread itself (it would deadlock).
            ConnectionClosed: the loop has stopped.
        """
        if self.in_thread():
            raise RuntimeError(
                "a blocking RatatoskrClient method was called from a callback, which runs "
                "on the client's event loop thread and would wait for itself forever; hand "
                "the work to another thread (queue.Queue) or use the asyncio client there"
            )
        try:
            return self._call(partial(self._start_task, fn, args, kwargs))  # type: ignore[no-any-return]
        except _LoopGone as exc:
            raise ConnectionClosed(str(exc)) from None

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run the plain function ``fn(*args)`` on the loop thread and return its
        result: how state is read consistently. Runs it directly when already on
        the loop thread, or when the loop has stopped (then nothing else runs)."""
        if self.in_thread() or self.stopped:
            return fn(*args)
        try:
            return self._call(partial(self._run_function, fn, args))  # type: ignore[no-any-return]
        except _LoopGone:
            return fn(*args)

    def submit(self, fn: Callable[[], Awaitable[Any]]) -> None:
        """Start ``fn()`` on the loop without waiting (no-op if the loop stopped)."""
        loop = self._loop
        assert loop is not None
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(lambda: loop.create_task(fn()))  # type: ignore[arg-type]

    def _call(self, start: Callable[[_Call], None]) -> Any:
        call = _Call(_native.new_waiter())
        loop = self._loop
        assert loop is not None
        # One handler from registration to the end of the wait: an interruption
        # (KeyboardInterrupt, GreenletExit, gevent.Timeout...) may land anywhere
        # in between, also after the hand-over and before the wait, and the work
        # handed over must then be stopped as well, or it would run on (an
        # interrupted enter_document would enter the document after all).
        try:
            with self._lock:
                if self.stopped:
                    raise _LoopGone("the background event loop has stopped")
                self._pending.add(call)
            try:
                loop.call_soon_threadsafe(start, call)
            except RuntimeError:  # closed between our check and the hand-over
                raise _LoopGone("the background event loop has stopped") from None
            outcome = call.waiter.wait()
        except BaseException:
            # Nobody waits for the outcome any more: stop the work too (a call
            # never handed over is only marked cancelled).
            with self._lock:
                self._pending.discard(call)
            call.waiter.abandon()
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(self._cancel, call)
            raise
        return outcome()

    # ----------------------------------------------------------------- loop side

    def _settle(self, call: _Call, outcome: Callable[[], Any]) -> None:
        with self._lock:
            if call not in self._pending:
                return  # the caller gave up
            self._pending.discard(call)
        call.waiter.settle(outcome)

    def _start_task(
        self,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        call: _Call,
    ) -> None:
        if not call.cancelled:
            call.task = asyncio.get_running_loop().create_task(self._drive(call, fn, args, kwargs))

    async def _drive(
        self,
        call: _Call,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        # The outcome is settled from inside the task, not from a done callback:
        # that would cost one more loop iteration per call, and on a busy loop
        # (a Locust worker's) an iteration is what a call's latency is made of.
        try:
            result = await fn(*args, **kwargs)
        except asyncio.CancelledError:
            self._settle(call, _raising(ConnectionClosed("the background event loop is stopping")))
            raise
        except BaseException as exc:
            self._settle(call, _raising(exc))
        else:
            self._settle(call, _returning(result))

    def _run_function(self, fn: Callable[..., Any], args: tuple[Any, ...], call: _Call) -> None:
        try:
            outcome = _returning(fn(*args))
        except BaseException as exc:
            outcome = _raising(exc)
        self._settle(call, outcome)

    @staticmethod
    def _cancel(call: _Call) -> None:
        call.cancelled = True
        if call.task is not None:
            call.task.cancel()

    # ----------------------------------------------------------------- stopping

    def stop(self, close: Iterable[Closeable] = (), *, join: bool = True) -> None:
        """Close ``close`` (with a deadline), cancel what is left, stop the loop;
        with ``join``, wait for the thread to end."""
        loop = self._loop
        assert loop is not None
        self._to_close = list(close)
        with contextlib.suppress(RuntimeError):  # already closed
            loop.call_soon_threadsafe(loop.stop)
        if join and not self.in_thread():
            self._join()

    def join(self) -> None:
        """Wait for the thread to end (after :meth:`stop`)."""
        self._join()

    def forget_after_fork(self) -> None:
        """In a forked child: this loop's thread does not exist here."""
        self._lock = _native.allocate_lock()
        self._pending.clear()
        self.stopped = True
        self._join = lambda: None


class _LoopGone(ConnectionClosed):
    """The loop stopped before the call could be handed over."""


class _Portal:
    """Hands out the current :class:`LoopThread`, starting and stopping it."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = _native.allocate_lock()
        self._current: LoopThread | None = None
        #: stopped from their own thread: joined by the next attach or at exit
        self._unjoined: list[LoopThread] = []
        self._exit_hook = False
        self._exited = False

    @property
    def exiting(self) -> bool:
        """True once interpreter exit began: the portal closes what is open."""
        return self._exited

    def attach(self) -> LoopThread:
        """The running loop (started if needed), with one more client on it."""
        with self._lock:
            if self._exited:
                raise RuntimeError("the interpreter is shutting down: no new blocking clients")
            self._reap()
            current = self._current
            if current is None or current.stopped:
                current = self._current = LoopThread()
                if not self._exit_hook:
                    atexit.register(self._at_exit)
                    self._exit_hook = True
            current.users += 1
            return current

    def adopt(self, loop: LoopThread, client: Closeable) -> None:
        """Remember ``client`` so that interpreter exit closes it if its owner did not."""
        with self._lock:
            loop.clients.add(client)

    def detach(self, loop: LoopThread, client: Closeable | None) -> None:
        """One client fewer on ``loop``; the last one stops it."""
        with self._lock:
            if client is not None:
                loop.clients.discard(client)
            loop.users -= 1
            if loop.users > 0 or loop is not self._current:
                return
            self._current = None
            if loop.in_thread():  # a finalizer on the loop thread: cannot join itself
                loop.stop(join=False)
                self._unjoined.append(loop)
            else:
                loop.stop()

    def _reap(self) -> None:
        while self._unjoined:
            self._unjoined.pop().join()

    def _at_exit(self) -> None:
        with self._lock:
            self._exited = True
            current, self._current = self._current, None
            if current is not None:
                current.stop(close=list(current.clients))
            self._reap()

    def _after_fork_in_child(self) -> None:
        # Threads do not survive fork(): the loop thread exists only in the
        # parent. Its clients fail in the child (ConnectionClosed) instead of
        # waiting forever, and the child's first new client starts its own loop.
        for loop in (self._current, *self._unjoined):
            if loop is not None:
                loop.forget_after_fork()
        self._reset()


#: The process's portal.
portal = _Portal()
if hasattr(os, "register_at_fork"):  # POSIX; Locust's --processes forks workers
    os.register_at_fork(after_in_child=portal._after_fork_in_child)
