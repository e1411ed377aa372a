"""Membership without server-side presence: derived from peers' own messages. No I/O.

On a server that sends no ``features`` (the upstream server today) nobody tells
a client who is in a document. What it can know is what peers say themselves:
a peer that sends automerge-repo ``Presence`` messages in a document is there,
under the name in its state, until it says goodbye or falls silent for the
state TTL. Two rules make that work behind upstream:

* **whose message is it?** Upstream relays the copies stock automerge-repo
  peers forward, relabelled with the forwarder's peer id. The gossip rule of
  :mod:`ratatoskr_client.protocol.gossip`, with ``reassign=True``, drops the
  copies and says which peer a session belongs to; a late joiner that first saw
  a relabelled copy has that corrected by the real sender's next message.
* **who is present?** Exactly the peers that own a session with state in the
  document (:meth:`PeerToPeer.sync`), so moving a session's state to its real
  owner also moves the presence, and a forwarder is present only for what it
  sent itself.
* **the first moments.** The gossip rule's trust in "the first arrival of a
  new count is the real sender's" holds for messages sent after we
  subscribed; a copy of one sent *before* can reach us first, relabelled as
  the forwarder's, in the moments after we subscribe. So what arrives in a
  document before :data:`TRUST_AFTER` seconds have passed since the server
  answered our subscription is **kept, not shown** (no ``state-changed``, not
  in ``state()`` or ``presence()``): the session's state is shown once a
  message on it arrives after that, under that message's sender, which the
  rule can trust. What this costs: a peer's first state shows no earlier than
  ``TRUST_AFTER`` after we subscribed, and, if its messages all came before,
  at its next message: for automerge-repo peers, their re-announce ~0.5 s
  after they hear our snapshot (every client shares one on entering here),
  or at once for a peer moving a cursor. A forwarder slower than
  ``TRUST_AFTER`` to send its copy back can still fool us, until the real
  sender's next message.
"""

from __future__ import annotations

import math
from typing import Final

from ..protocol import Admission, SessionOwners, UserInfo
from .membership import Change, MembershipStore
from .peer_state import PeerStates, chosen_name_of

__all__ = ["MAX_GOSSIP_SESSIONS", "TRUST_AFTER", "PeerToPeer"]

#: Seconds after the server answered our subscription to a document before a
#: message's sender is trusted (see "the first moments" above): shorter than
#: automerge-repo's re-announce delay (0.5 s after it hears us), so the
#: re-announces our arrival causes are trusted at once.
TRUST_AFTER: Final = 0.45

#: sessionIds remembered at once (oldest forgotten first): one per peer heard,
#: so a crowd or a hostile peer cannot grow the table without bound.
MAX_GOSSIP_SESSIONS: Final = 4096
# What a peer-to-peer identity says: nothing verified, no server-given name.
_UNVERIFIED: Final = UserInfo(None, None, True)


class PeerToPeer:
    """The gossip filter and derived membership of one connection."""

    __slots__ = ("_trusted_from", "gossip")

    def __init__(self) -> None:
        self.gossip: SessionOwners[str] = SessionOwners(
            max_sessions=MAX_GOSSIP_SESSIONS, reassign=True
        )
        #: document -> from when a message's sender is trusted there
        self._trusted_from: dict[str, float] = {}

    def subscribed(self, document_id: str, now: float) -> None:
        """The server answered our subscription to ``document_id`` at ``now``."""
        self._trusted_from.setdefault(document_id, now + TRUST_AFTER)

    def trusted(self, document_id: str, now: float) -> bool:
        """True if a message arriving in ``document_id`` at ``now`` comes from
        the sender the gossip rule says (see "the first moments")."""
        return now >= self._trusted_from.get(document_id, math.inf)

    def left(self, document_id: str) -> None:
        """We left ``document_id``: a new subscription starts a new window."""
        self._trusted_from.pop(document_id, None)

    def admit(self, sender_id: str, session_id: str, count: int) -> Admission:
        """The gossip rule for one received message (see the module docstring)."""
        return self.gossip.admit(sender_id, session_id, count)

    def sync(
        self,
        document_id: str,
        store: MembershipStore,
        states: PeerStates,
        *,
        confirmed: bool,
    ) -> list[Change]:
        """Make the document's membership and the identities match the peers'
        states: an identity per peer with state (named by it), and, once our own
        presence is ``confirmed``, exactly those peers present besides us."""
        changes: list[Change] = []
        views = states.views(document_id)
        for owner, view in views.items():
            changes += store.identity(owner, _UNVERIFIED, chosen_name_of(view))
            if confirmed:
                changes += store.joined(document_id, owner)
        if confirmed:
            me = store.me
            for peer in store.presence(document_id):
                pid = peer.peer_id
                if pid not in views and (me is None or pid != me.peer_id):
                    changes += self.gone(document_id, pid, store, states)
        return changes

    @staticmethod
    def gone(
        document_id: str, peer_id: str, store: MembershipStore, states: PeerStates
    ) -> list[Change]:
        """``peer_id`` has no state in ``document_id`` any more (goodbye,
        silence, or its session belongs to someone else): it leaves the
        document, and is forgotten once it has state nowhere."""
        changes = store.left(document_id, peer_id)
        if not states.has_peer(peer_id):
            changes += store.disconnected(peer_id)
        return changes

    def clear(self) -> None:
        """The connection is gone: forget every session."""
        self.gossip.clear()
        self._trusted_from.clear()

    def __len__(self) -> int:
        """sessionIds tracked."""
        return len(self.gossip)
