"""The seam between a relay's rules and the other relays of its cluster. No I/O.

:class:`~.relay.RelayCore` calls a :class:`Bus` synchronously with what its
local peers did that the other relays must know, and asks it who is present on
them; the cluster (:mod:`ratatoskr_client.server.cluster`) implements it. A
relay without a cluster has no bus, and none of this runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from .connection import Connection
from .resume import HandedPeer

__all__ = ["Bus", "Member", "RemoteSender"]

#: A peer on another relay of the cluster, as the gossip table keys it: (node id, peer id).
RemoteSender = tuple[str, str]


class Member(Protocol):
    """A peer a document's members can be told about: a local connection, or
    a peer on another relay of the cluster."""

    @property
    def peer_id(self) -> str:
        """Its peer id."""

    @property
    def identity_frame(self) -> bytes:
        """Its ``peer_identity`` frame, encoded."""


class Bus(Protocol):
    """The core's link to the other relays of a cluster. Calls never block.

    Only what passed the core's checks reaches it: authenticated identities,
    memberships that passed the read check, messages that passed every check.
    """

    def peer_authenticated(self, conn: Connection) -> None:
        """A local connection authenticated."""

    def peer_closed(self, conn: Connection) -> None:
        """An authenticated local connection closed (after its leaves)."""

    def joined(self, document_id: str, conn: Connection) -> None:
        """A local peer became present in a document: it receives the
        document's messages from now on (:meth:`announce` says when the other
        relays are told)."""

    def left(self, document_id: str, conn: Connection) -> None:
        """A local peer is no longer present in a document."""

    def announce(
        self, document_id: str, conn: Connection, present: bool, gone: bool = False
    ) -> None:
        """A local peer's join (``present``) or leave is announced now: the
        other relays are to be told (at the pace of the presence budget, so
        their peers hear no more than ours). ``gone``: it left because its
        connection closed."""

    def remote_peers(self) -> Iterable[Member]:
        """The peers connected to the other relays (global scope: a newcomer
        is told every one of them)."""

    def others_present(self, document_id: str) -> bool:
        """True unless the document is known to have no peer on another relay
        (a change there costs the presence budget only if someone hears it)."""

    def presence_state(self, document_id: str, conn: Connection) -> tuple[Member, ...] | None:
        """The peers present on other relays, for ``conn``'s
        ``doc_presence_state`` (they are listed before the local ones); None
        when not known yet: the bus then has the core send it (``send_presence_state``)
        once it knows."""

    def knows(self, conn: Connection, peer_id: str, skip: str | None) -> bool:
        """Document scope: True if the local ``conn`` was told the identity of
        ``peer_id``, a peer on another relay, through a document other than
        ``skip`` that they still share (see :mod:`.visibility`)."""

    def relayed(
        self, document_id: str, sender: Connection, count: int, session_id: str, data: bytes
    ) -> None:
        """A local peer's ephemeral message was accepted and relayed here."""

    # Resuming a peer held by another relay (see :mod:`.resume`).

    def holder(self, peer_id: str) -> str | None:
        """The node that has ``peer_id`` (connected or held), if another one does."""

    def claim(self, node: str, request: str, peer_id: str, digest: bytes, user: str | None) -> None:
        """Ask ``node`` to hand ``peer_id`` over (its answer comes back to
        :meth:`~.relay.RelayCore.claim_answered`)."""

    def hand_over(self, node: str, request: str, peer: HandedPeer | None) -> None:
        """Answer ``node``'s claim ``request``: the peer (None: refused)."""

    def handed_off(self, conn: Connection, node: str, documents: tuple[str, ...]) -> None:
        """The local ``conn`` was handed over to ``node``, present in
        ``documents``: it is now a peer of that node, which nobody is told."""

    def adopted(self, conn: Connection) -> None:
        """The local ``conn`` is a peer handed over by another relay, now
        present in its documents here: it is no longer that relay's peer here,
        and the others learn where it is now (nobody is told of a change)."""
