"""What a change of membership is: the values that
:class:`~ratatoskr_client.core.membership.MembershipStore` returns, re-exported by
:mod:`ratatoskr_client.core.membership`. No I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from ..errors import ProtocolError
from .peer import Peer

__all__ = [
    "Change",
    "IdentityAdded",
    "IdentityRemoved",
    "PeerJoined",
    "PeerLeft",
    "PresenceChanged",
    "Refused",
    "SelfRemoved",
]


@dataclass(frozen=True, slots=True)
class IdentityAdded:
    """The server announced (or updated) a peer's identity."""

    peer: Peer


@dataclass(frozen=True, slots=True)
class IdentityRemoved:
    """A peer disconnected from the server."""

    peer: Peer


@dataclass(frozen=True, slots=True)
class PeerJoined:
    """Another peer entered a tracked document."""

    document_id: str
    peer: Peer


@dataclass(frozen=True, slots=True)
class PeerLeft:
    """Another peer left a tracked document (or timed out, or disconnected)."""

    document_id: str
    peer: Peer


@dataclass(frozen=True, slots=True)
class PresenceChanged:
    """``presence(document_id)`` has a new value; read it from the store."""

    document_id: str


@dataclass(frozen=True, slots=True)
class SelfRemoved:
    """The server removed *this* client from a tracked document (presence TTL
    expired, e.g. after a stall). The driver should join again."""

    document_id: str


@dataclass(frozen=True, slots=True)
class Refused:
    """A frame would have taken a table beyond its bound: nothing of it was
    applied. ``error`` says which frame and which bound (an ``error`` event)."""

    error: ProtocolError


Change: TypeAlias = (
    IdentityAdded
    | IdentityRemoved
    | PeerJoined
    | PeerLeft
    | PresenceChanged
    | SelfRemoved
    | Refused
)
