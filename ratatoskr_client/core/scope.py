"""Document identity scope on the client: which identities a
:class:`~ratatoskr_client.core.membership.MembershipStore` keeps. No I/O.

A server that announces ``"scoped-identity"`` in ``auth_ok`` sends a peer's
identity only to the peers sharing a document with it, right before the frame
that needs it (a ``peer_joined_doc``, a ``doc_presence_state``, or a message
from a peer not present in the document), and ``peer_disconnected`` only for
peers we knew, right after their last ``peer_left_doc``. The store then keeps
an identity exactly while its peer is present in one of our tracked documents
(it mirrors the relay's rule, so neither side keeps a table per pair):

* an identity of a peer in none of our documents waits for the next frame
  (it introduces that frame's peer) and is dropped after it, unless that
  frame put the peer in a document;
* a peer that leaves our last document with it is forgotten at once; if the
  next frame is its ``peer_disconnected`` (its connection closed), that is an
  ``IdentityRemoved`` all the same: ``peer-disconnected`` still means
  exactly "the server said it disconnected";
* the application's own leave is the one change the server learns after us:
  until it has the leave it still counts us in the document, and does not
  send again an identity it thinks we have. So for :data:`LINGER` seconds
  after ``MembershipStore.forget``, the identities we forget are kept out of
  sight (``lingering``, not in ``identities``) and taken back when a frame
  names their peer again.

Without the feature every identity the server announces is kept until its
``peer_disconnected``. Either way the store's bound holds: identities and the
incoming ones together are at most ``max_identities`` (one more is refused),
and at most as many more linger.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

from .changes import Change, IdentityAdded
from .peer import Peer

if TYPE_CHECKING:
    from .peer_tables import PeerTable

__all__ = ["LINGER", "ScopedIdentities"]

#: Seconds the identities of a left document's peers are kept out of sight
#: (document identity scope, see :meth:`MembershipStore.forget`): far longer
#: than a round trip; bounded by what was in the document.
LINGER: Final = 10.0


class ScopedIdentities:
    """The identity-scope rules of :class:`~ratatoskr_client.core.membership.MembershipStore`
    (a mixin: the store holds the tables). See the module docstring."""

    __slots__ = ("departed", "incoming", "linger_until", "lingering", "scoped")

    # What these rules use of the store they are part of.
    _docs: dict[str, PeerTable[Peer]]
    _identities: PeerTable[Peer]
    max_identities: int
    #: the server scopes identities to documents
    scoped: bool
    #: scoped: identities received for the next frame, not in any document yet
    incoming: dict[str, Peer]
    #: scoped: peers the frame before took out of our last document with them
    #: (already forgotten), in case this frame is their ``peer_disconnected``
    departed: dict[str, Peer]
    #: scoped: identities forgotten since we left a document, kept out of sight
    #: until :attr:`linger_until`: until the server has our leave it still
    #: counts us in that document, and sends no identity it thinks we have
    #: (see ``MembershipStore.forget``); any identity forgotten meanwhile too
    lingering: dict[str, Peer]
    linger_until: float

    def _start_scope(self) -> None:
        """No identity scope known (until ``auth_ok``), nothing held for it."""
        self.scoped = False
        self.incoming = {}
        self.departed = {}
        self.lingering = {}
        self.linger_until = math.inf

    def _reset_scope(self) -> None:
        """The connection is gone: nothing held for identity scope."""
        self.incoming.clear()
        self.departed.clear()
        self.lingering.clear()
        self.linger_until = math.inf

    def _in_a_document(self, peer_id: str) -> bool:
        return any(peer_id in members for members in self._docs.values())

    def _adopt(self, peer: Peer) -> list[Change]:
        """Scoped: ``peer`` (introduced by the frame before) is now in one of
        our documents: its identity is kept."""
        # (incoming is cleared whole after the frame: popping would leave a
        # large empty table behind in every client that received a state)
        pid = peer.peer_id
        if pid in self._identities or len(self._identities) >= self.max_identities:
            return []  # (at the bound it stays out of identities, as it came in)
        if pid not in self.incoming and self.lingering.pop(pid, None) is None:
            return []
        self._identities.put(peer)
        return [IdentityAdded(peer)]

    def _linger(self, peer_id: str, peer: Peer) -> None:
        """Keep a forgotten identity out of sight while a leave of ours is on
        its way (at most ``max_identities`` of them: a server that sends
        identities it never needs cannot grow this either)."""
        lingering = self.lingering
        if len(lingering) < self.max_identities or peer_id in lingering:
            lingering[peer_id] = peer

    def settle_incoming(self) -> None:
        """After the frame the incoming identities were sent for: those it did
        not put in one of our documents are dropped, or, while a leave of ours
        is on its way, kept out of sight (it may be a document we just left;
        the server counts us in it still)."""
        if self.linger_until != math.inf:
            known = self._identities
            for peer_id, peer in self.incoming.items():
                if peer_id not in known:
                    self._linger(peer_id, peer)
        self.incoming.clear()

    def stop_lingering(self, now: float) -> None:
        """Forget the lingering identities once their time is up (the core's timer)."""
        if now >= self.linger_until:
            self.lingering.clear()
            self.linger_until = math.inf
