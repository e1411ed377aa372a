"""Resuming a peer after a brief drop, part of :class:`~.relay.RelayCore`. No I/O.

A bot's network blips; without this, the relay sees the socket go, every
other participant sees the peer leave, and the reconnection is a new peer
(new id, new anonymous name) that joins again. With it (``resume_grace``
seconds, 15 by default; feature ``"resume"``):

* a client that asks for it (``auth`` with ``resume: true``) gets a secret in
  its ``auth_ok`` (``resumeSecret``), known only to that connection (the
  relay keeps its SHA-256, never the secret);
* when that connection is lost **without a close frame** (a dead socket, the
  liveness rule) while the peer is present in some document, it is *held*:
  it stays present in its documents, with its name and its state, and frames
  for it are dropped; nobody is told anything;
* a new connection that presents the peer id and the secret (``resume:
  {peerId, secret}``, compared in constant time) within the grace, with the
  same credentials (the same user for a token; anonymous for an anonymous
  peer), takes the peer over: same peer id, name, documents and state, a new
  secret, ``resumed: true`` in ``auth_ok``. If the old socket is still open
  (the relay has not noticed it died yet) it is closed (``1000``,
  ``"resumed"``), and its close changes nothing;
* past the grace, the held peer leaves as if its connection had just closed.

A connection closed with a close frame (``close()``) leaves at once: the
client meant it. A wrong secret, an unknown peer or other credentials is not
an error: the connection authenticates as a new peer, as without the feature.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["DETACHED", "Resumption"]


class _Detached:
    """The outbox of a held peer: what is sent to it while nobody holds its
    socket is dropped (it learns the present state when it resumes)."""

    __slots__ = ()

    def send(self, frame: bytes) -> None:
        pass

    def send_ephemeral(self, prefix: bytes, suffix: bytes) -> None:
        pass

    def close(self, code: int, reason: str) -> None:
        pass

    def ping(self) -> None:
        pass


#: The one outbox of every held peer.
DETACHED = _Detached()


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class Resumption:
    """The resume secrets of the resumable peers and the held ones.

    Owns ``_secrets`` (peer id -> SHA-256 of its current secret) and ``held``
    (peer id -> (connection, deadline), in deadline order: the grace is the
    same for all).
    """

    __slots__ = ("_secrets", "grace", "held")

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._secrets: dict[str, bytes] = {}
        self.held: dict[str, tuple[Connection, float]] = {}

    @property
    def enabled(self) -> bool:
        """True when peers may be resumed (``resume_grace`` > 0)."""
        return self.grace > 0

    def issue(self, conn: Connection) -> str:
        """A new secret for ``conn`` (the previous one, if any, stops working)."""
        secret = secrets.token_urlsafe(24)
        self._secrets[conn.peer_id] = _digest(secret)
        return secret

    def hold(self, conn: Connection, now: float) -> bool:
        """``conn`` was lost without a close frame: hold it until the grace is
        over, if it can be resumed. True if it is held."""
        if not self.enabled or conn.peer_id not in self._secrets or not conn.docs:
            # (In no document, nobody would see it flap: a client that
            # close()s leaves its documents first, whatever its socket does.)
            return False
        conn.outbox = DETACHED
        self.held[conn.peer_id] = (conn, now + self.grace)
        return True

    def claim(self, peer_id: str, secret: str, live: Connection | None) -> Connection | None:
        """The peer ``peer_id`` if ``secret`` is its current one and it is held
        or still connected (``live``: the authenticated connection with that
        id, if any), else None. It is no longer held then."""
        expected = self._secrets.get(peer_id)
        if expected is None or not hmac.compare_digest(expected, _digest(secret)):
            return None
        entry = self.held.pop(peer_id, None)
        if entry is not None:
            return entry[0]
        return live

    def is_held(self, conn: Connection) -> bool:
        """True while ``conn`` waits for its client to resume it."""
        entry = self.held.get(conn.peer_id)
        return entry is not None and entry[0] is conn

    def due(self, now: float) -> list[Connection]:
        """The held peers whose grace is over at ``now`` (no longer held)."""
        late = []
        for peer_id, (_conn, deadline) in self.held.items():
            if deadline > now:
                break
            late.append(peer_id)
        return [self.held.pop(peer_id)[0] for peer_id in late]

    def next_deadline(self) -> float:
        """When the first held peer's grace is over (``inf``: nobody is held)."""
        for _conn, deadline in self.held.values():
            return deadline
        return float("inf")

    def forget(self, conn: Connection) -> None:
        """``conn`` is gone for good: its secret stops working."""
        self._secrets.pop(conn.peer_id, None)
        entry = self.held.get(conn.peer_id)
        if entry is not None and entry[0] is conn:
            del self.held[conn.peer_id]
