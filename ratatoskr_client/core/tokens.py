"""The client's token: the current one, and when to renew it. No I/O.

``token=`` is a string, None (anonymous) or a callable returning one (plain
or ``async``). A callable is called by the driver before every connect, and
when this part says so: at 90–95 % of the token's lifetime (uniform jitter,
so that a fleet of bots started together does not renew together; late
enough that a short-lived token is not renewed much more often than its
lifetime, early enough that an hour's token still has 3 minutes) when its
``exp`` can be read (:func:`~ratatoskr_client.protocol.tokens.read_lifetime`:
upstream session tokens and JWTs, unverified) and the server re-authenticates
in the connection (``"reauth"`` in ``features``). A server without it
(upstream today) checks a token only when a connection opens, so the client
does not renew in the connection there: the next connect calls the callable.
A renewal that fails is tried again after 1, 2, 4... seconds (at most 30,
with jitter), each failure a ``token-refresh-failed`` event.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from ..protocol.tokens import read_lifetime

__all__ = ["REFRESH_AT", "REFRESH_JITTER", "Tokens"]

#: The share of a token's lifetime after which it is renewed...
REFRESH_AT: Final = 0.9
#: ...plus up to this share more, at random.
REFRESH_JITTER: Final = 0.05
#: Retries of a failed renewal: the first after this many seconds, doubling...
RETRY_FIRST: Final = 1.0
#: ...up to this many.
RETRY_MAX: Final = 30.0


class Tokens:
    """The current token and the renewal schedule (times on the core's clock)."""

    __slots__ = (
        "_failures",
        "_rand",
        "_wall",
        "current",
        "reauth_pending",
        "refresh_at",
        "renewable",
    )

    def __init__(
        self, source: object, wall: Callable[[], float], rand: Callable[[], float]
    ) -> None:
        #: the token the next auth frame carries (None: anonymous, or not fetched yet)
        self.current: str | None = source if isinstance(source, str) else None
        #: ``token`` is a callable
        self.renewable = callable(source)
        #: when to ask the driver for a fresh token (inf: not scheduled)
        self.refresh_at = math.inf
        #: a fresh token was sent (``auth``) and not answered yet
        self.reauth_pending = False
        self._failures = 0
        self._wall = wall
        self._rand = rand

    def fetched(self, token: str) -> None:
        """The callable returned ``token``."""
        self.current = token

    def confirmed(self) -> None:
        """The server accepted the fresh token."""
        self.reauth_pending = False
        self._failures = 0

    def schedule(self, now: float, *, reauth: bool) -> float:
        """Schedule the next renewal of the current token (on a connection
        whose server re-authenticates when ``reauth``); returns when (inf:
        never: not renewable, no readable ``exp``, or no re-auth)."""
        self.refresh_at = math.inf
        if not self.renewable or not reauth or self.current is None:
            return math.inf
        lifetime = read_lifetime(self.current)
        if lifetime is None:
            return math.inf
        wall = self._wall()
        start = lifetime.issued_at if lifetime.issued_at is not None else wall
        share = REFRESH_AT + REFRESH_JITTER * self._rand()
        due = start + share * (lifetime.expires_at - start)
        self.refresh_at = now + max(0.0, due - wall)
        return self.refresh_at

    def retry_delay(self) -> float:
        """Seconds before the next try after a failure (counted)."""
        self._failures += 1
        base: float = min(RETRY_MAX, RETRY_FIRST * 2.0 ** (self._failures - 1))
        return base * (0.5 + 0.5 * self._rand())

    def stop(self) -> None:
        """The connection is gone: nothing is scheduled on it any more."""
        self.refresh_at = math.inf
        self.reauth_pending = False
