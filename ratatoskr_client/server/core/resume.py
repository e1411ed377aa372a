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

**In a cluster** the client may come back on another relay. That relay (B)
knows from the cluster which relay holds the peer (A), parks the ``auth``
and asks A (a *claim*: the peer id, the SHA-256 of the secret presented, the
user the credentials were verified as). A checks it as it would a local
resume; if it matches, A *hands the peer over*: it drops it without telling
anyone (its members now see it as a peer of B) and sends B a
:class:`HandedPeer` (name, identity, documents, state), which B adopts on
the new connection as its own, again without telling anyone; every relay
then sees the same peer on a new node, which is no event. A refusal, or no
answer within :data:`CLAIM_TIMEOUT`, and the connection is a new peer. A
handover that arrives after B gave up is adopted and then closed at once
(a normal leave), so no peer is ever lost without one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ...protocol import UserInfo

if TYPE_CHECKING:
    from .connection import Connection

__all__ = [
    "CLAIM_TIMEOUT",
    "DETACHED",
    "Claim",
    "HandedPeer",
    "HandedState",
    "Resumption",
    "digest",
]

#: Seconds a relay of a cluster waits for the relay that holds a peer to
#: answer a resume there; then the connection authenticates as a new peer.
CLAIM_TIMEOUT: Final = 1.0


@dataclass(frozen=True, slots=True)
class HandedState:
    """A handed-over peer's latest state in one document, as its relay kept it."""

    document_id: str
    session_id: str
    count: int
    state: dict[str, Any]


@dataclass(frozen=True, slots=True)
class HandedPeer:
    """What a relay of a cluster hands over when another resumes its peer:
    who it is, where it is present, its state there."""

    peer_id: str
    user: UserInfo
    identity: str
    documents: tuple[str, ...]
    states: tuple[HandedState, ...] = ()


@dataclass(slots=True)
class Claim:
    """A resume this relay asked another relay of its cluster for: the
    parked connection, what its credentials were verified as (``verdict``:
    an ``Identity``, None for anonymous), whether it asked to be resumable,
    and when to give up."""

    conn: Connection
    verdict: Any
    resumable: bool
    deadline: float
    #: the SHA-256 of the secret the client presented
    secret_digest: bytes = b""


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


def digest(secret: str) -> bytes:
    """The SHA-256 of a resume secret: what the relay keeps, and what it asks
    another relay of its cluster with."""
    return hashlib.sha256(secret.encode()).digest()


class Resumption:
    """The resume secrets of the resumable peers and the held ones.

    Owns ``_secrets`` (peer id -> SHA-256 of its current secret) and ``held``
    (peer id -> (connection, deadline), in deadline order: the grace is the
    same for all).
    """

    __slots__ = ("_secrets", "claims", "grace", "held")

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._secrets: dict[str, bytes] = {}
        self.held: dict[str, tuple[Connection, float]] = {}
        #: request id -> a resume asked of another relay (in deadline order)
        self.claims: dict[str, Claim] = {}

    @property
    def enabled(self) -> bool:
        """True when peers may be resumed (``resume_grace`` > 0)."""
        return self.grace > 0

    def issue(self, conn: Connection) -> str:
        """A new secret for ``conn`` (the previous one, if any, stops working)."""
        secret = secrets.token_urlsafe(24)
        self._secrets[conn.peer_id] = digest(secret)
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

    def take(
        self,
        peer_id: str,
        secret_digest: bytes,
        user_id: str | None,
        anonymous: bool,
        live: Connection | None,
    ) -> Connection | None:
        """The rule of a resume, on this relay or asked by another of its
        cluster: the peer ``peer_id`` if it is held here or still connected
        (``live``: the authenticated connection with that id, if any), if
        the credentials are its own (the same user; anonymous for an
        anonymous peer) and ``secret_digest`` is its current secret's; else
        None. It is no longer held then."""
        held = self.held.get(peer_id)
        candidate = held[0] if held is not None else live
        # A peer belongs to its identity: the same user, or an anonymous peer.
        if candidate is None or (candidate.user_id, candidate.is_anonymous) != (user_id, anonymous):
            return None
        return self.claim_digest(peer_id, secret_digest, candidate)

    def claim_digest(
        self, peer_id: str, secret_digest: bytes, live: Connection | None
    ) -> Connection | None:
        """The peer ``peer_id`` if ``secret_digest`` (the SHA-256 of the
        secret presented: all another relay of the cluster sends, the secret
        itself never leaves the relay it was presented to) is its current
        secret's, compared in constant time, and it is held or still
        connected (``live``); else None. It is no longer held then."""
        expected = self._secrets.get(peer_id)
        if expected is None or not hmac.compare_digest(expected, secret_digest):
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

    # ------------------------------------------------------------------ across relays

    def ask(
        self, conn: Connection, verdict: Any, resumable: bool, secret_digest: bytes, now: float
    ) -> str:
        """``conn`` waits for another relay to hand its peer over: a new request id."""
        request = secrets.token_hex(8)
        self.claims[request] = Claim(conn, verdict, resumable, now + CLAIM_TIMEOUT, secret_digest)
        return request

    def hold_handed(self, conn: Connection, secret_digest: bytes, now: float) -> bool:
        """A peer handed over after the connection that claimed it closed:
        held here as if that connection had been lost, resumable with the
        secret its client presented (``secret_digest``, which the holder
        matched). True if it is held."""
        self._secrets[conn.peer_id] = secret_digest
        if self.hold(conn, now):
            return True
        self._secrets.pop(conn.peer_id, None)
        return False

    def answered(self, request: str) -> Claim | None:
        """The claim ``request`` (no longer pending), or None if it is not
        pending any more (it timed out, or was never asked)."""
        return self.claims.pop(request, None)

    def claims_due(self, now: float) -> list[Claim]:
        """The claims unanswered at their deadline (no longer pending)."""
        late = []
        for request, claim in self.claims.items():
            if claim.deadline > now:
                break
            late.append(request)
        return [self.claims.pop(request) for request in late]

    def next_claim_deadline(self) -> float:
        """When the first pending claim times out (``inf``: none is pending)."""
        for claim in self.claims.values():
            return claim.deadline
        return float("inf")
