"""Protection at the level of TCP connections, below the WebSocket protocol. No rules.

* :class:`HandshakeGuard` closes a connection that has not sent a complete
  HTTP request (for ``/sync``, the WebSocket upgrade) within
  ``handshake_timeout`` seconds of being accepted. Without it, sockets that
  send nothing, or trickle a request a byte at a time, stay open for as long as
  their peer likes, and enough of them exhaust the relay's file descriptors.
  (The auth timeout only starts once the upgrade is complete.)
* :class:`AcceptErrorFilter` turns asyncio's report of a failed ``accept()``
  at the file-descriptor limit (one ERROR with a traceback per attempt) into
  one WARNING line every 10 seconds, and silences the retries asyncio had
  scheduled when they fire after the listening socket has closed.
* :func:`raise_open_file_limit` lifts the soft limit on open files to the hard
  one, so the relay can hold as many connections as the system allows.
"""

from __future__ import annotations

import asyncio
import asyncio.constants
import logging
import time
from typing import Any, Final

__all__ = ["AcceptErrorFilter", "HandshakeGuard", "raise_open_file_limit"]

log = logging.getLogger("ratatoskr_client.server")

#: Seconds between two warnings about failed accepts.
ACCEPT_WARNING_INTERVAL: Final = 10.0
_ACCEPT_FAILED: Final = "socket.accept() out of system resource"
#: After a failed accept, asyncio stops listening and retries this many seconds
#: later, through a timer this code cannot cancel.
ACCEPT_RETRY_DELAY: Final = float(asyncio.constants.ACCEPT_RETRY_DELAY)


class HandshakeGuard:
    """Deadlines for connections that have not sent a complete request yet."""

    __slots__ = ("_pending", "closed", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        #: protocol (aiohttp's RequestHandler) -> its deadline timer
        self._pending: dict[asyncio.BaseProtocol, asyncio.TimerHandle] = {}
        #: connections closed for missing the deadline
        self.closed = 0

    def accepted(self, protocol: asyncio.BaseProtocol) -> None:
        """A connection was just accepted: start its deadline."""
        loop = asyncio.get_running_loop()
        self._pending[protocol] = loop.call_later(self.timeout, self._expire, protocol)

    def started(self, protocol: object) -> None:
        """The connection's request is complete: its deadline no longer applies."""
        timer = self._pending.pop(protocol, None)  # type: ignore[call-overload]
        if timer is not None:
            timer.cancel()

    def _expire(self, protocol: asyncio.BaseProtocol) -> None:
        if self._pending.pop(protocol, None) is None:
            return
        transport: asyncio.BaseTransport | None = getattr(protocol, "transport", None)
        if transport is None or transport.is_closing():
            return  # it went away on its own
        self.closed += 1
        log.debug("closing a connection with no complete request after %g s", self.timeout)
        # abort(): there is nothing to flush, and the descriptor is freed now.
        if isinstance(transport, asyncio.WriteTransport):
            transport.abort()
        else:
            transport.close()

    def cancel_all(self) -> None:
        """Stop every deadline (the server is stopping)."""
        for timer in self._pending.values():
            timer.cancel()
        self._pending.clear()


class AcceptErrorFilter:
    """An event-loop exception handler that rate-limits accept failures and
    hands every other report to the handler it replaced."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous
        self.suppressed = 0
        #: time.monotonic() of the last failed accept (0.0: none yet)
        self.last_failure = 0.0
        self._next_warning = 0.0

    @classmethod
    def install(cls, loop: asyncio.AbstractEventLoop) -> AcceptErrorFilter:
        """Make a filter ``loop``'s exception handler, in front of the current one."""
        previous = loop.get_exception_handler()
        if isinstance(previous, AcceptErrorFilter):
            # One left by a server that stopped a moment ago (see uninstall):
            # this one answers its retries too, so stand in its place.
            previous = previous.previous
        accept_filter = cls(previous)
        loop.set_exception_handler(accept_filter)
        return accept_filter

    def uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        """Give ``loop`` its previous handler back (the server has stopped
        listening), once no retry asyncio scheduled after a failed accept can
        fire any more: until then, this filter still has to answer them."""
        if not self.last_failure:
            self._restore(loop)
            return
        # Even when their time has passed, a busy loop may not have run those
        # timers yet: a timer due later than all of them runs after them
        # (+0.1: after the last one, scheduled a moment after the failure).
        pending = self.last_failure + ACCEPT_RETRY_DELAY - time.monotonic()
        loop.call_later(max(pending, 0.0) + 0.1, self._restore, loop)

    def _restore(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop.get_exception_handler() is self:  # nobody has installed another since
            loop.set_exception_handler(self.previous)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if _is_stale_accept_retry(context):
            # The relay stopped while at the limit: the retry found its socket
            # closed. Nothing is lost, and nothing can be done about it.
            log.debug("an accept retry fired after the relay stopped listening")
            return
        if context.get("message") == _ACCEPT_FAILED:
            now = self.last_failure = time.monotonic()
            if now >= self._next_warning:
                self._next_warning = now + ACCEPT_WARNING_INTERVAL
                log.warning(
                    "cannot accept connections: %s (open-file limit reached; "
                    "%d similar reports since the last warning)",
                    context.get("exception"),
                    self.suppressed,
                )
                self.suppressed = 0
            else:
                self.suppressed += 1
            return
        if self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)


def _is_stale_accept_retry(context: dict[str, Any]) -> bool:
    # asyncio schedules ``loop._start_serving`` on a timer after a failed
    # accept (once per connection waiting in the backlog). If the server closes
    # first, the timer raises on the closed socket (fd -1), and asyncio reports
    # "Exception in callback" with a traceback. A Handle does not expose its
    # callback publicly; ``_callback`` has been there since Python 3.4.
    callback = getattr(context.get("handle"), "_callback", None)
    return getattr(callback, "__name__", None) == "_start_serving" and isinstance(
        context.get("exception"), (ValueError, OSError)
    )


def raise_open_file_limit() -> tuple[int, int] | None:
    """Raise the soft limit on open files to the hard limit. Returns the
    (old, new) soft limits, or None where there is no such limit to raise."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft >= hard:
        return None
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return None
    return soft, target
