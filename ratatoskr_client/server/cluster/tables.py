"""The plain records of a relay's cluster view: remote peers, node snapshots,
table sizes (what to write to Redis is :class:`.publisher.Outgoing`). No I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ...protocol import UserInfo

__all__ = ["ClusterStats", "NodeSnapshot", "RemotePeer"]


@dataclass(slots=True, eq=False)
class RemotePeer:
    """A peer connected to another relay."""

    node: str
    peer_id: str
    user: UserInfo
    identity_frame: bytes
    #: the tracked documents it is present in
    docs: set[str] = field(default_factory=set)
    #: its identity key for the gossip rule, as its relay announced it (None: none)
    identity: str | None = None


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """One node's state as read from Redis.

    Attributes:
        peers: peer id -> user, for every peer connected to the node.
        docs: document id -> the node's peers present there, for the documents
            that were asked for.
        identities: peer id -> its identity key, for the peers the node
            stored one for.
    """

    peers: Mapping[str, UserInfo]
    docs: Mapping[str, Sequence[str]]
    identities: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClusterStats:
    """Sizes of the view's tables."""

    nodes: int
    remote_peers: int
    remote_memberships: int
    documents: int
