"""The receive side of :class:`~ratatoskr_client.core.client.ClientCore`: frames in, effects out.

One frame at a time, in the order the connection delivered them. The path of
an application message is a straight line: decode, the gossip filter (only
without server-side presence), decode the payload, one ``ephemeral-message``
event (handed to ``ClientCore.deliver`` when the driver set one and no effect
is pending, else an Emit effect). Everything else a peer sends is per-peer
state (``{"__presence": ...}``) and never reaches ``ephemeral-message``: it
updates :mod:`.peer_state`, and without server-side presence also membership
(:mod:`._peer_to_peer`).

Presence changes are announced in batches: a frame only marks its document
(:attr:`ClientCore.unsettled`), and :meth:`Incoming.settle` — called by the
driver once it has handled every frame it had read, and by the core at the end
of every other input — emits one ``presence-changed`` per marked document and
checks that document's ``wait_for_presence`` predicates and feeds its
``watch_presence`` iterators, with the presence as it is then. Building that
tuple costs O(peers), so doing it per frame made a burst of N joins cost
O(N²) (40,000 joins: 8.6 s of CPU). Batches alone do not bound it: a server
whose frames arrive one at a time makes batches of one. So a document of
:data:`THROTTLE_PEERS` or more is announced at most once per
:data:`ANNOUNCE_SPACING` × its size (40 ms at 40,000 peers) while it keeps
changing — the last change always announced, on the core's timer — which
keeps building the tuple under 1 % of the time (a few nanoseconds per peer
per microsecond per peer) whatever the arrival pattern: O(1) per change,
amortized. Smaller documents cost too little to matter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from ..errors import (
    DocumentNotFound,
    LimitExceeded,
    PermissionDenied,
    ProtocolError,
    RatatoskrError,
    RateLimited,
    error_from_frame,
)
from ..protocol import (
    Admission,
    DocPresenceStateFrame,
    DocUnavailableFrame,
    EphemeralFrame,
    ErrorFrame,
    PeerDisconnectedFrame,
    PeerIdentityFrame,
    SyncFrame,
    decode,
    decode_payload,
)
from ..protocol.constants import PRESENCE_MARKER
from ..status import ConnectionState, DocumentState
from .effects import Effect, Emit, PresenceChanged
from .membership import (
    Change,
    IdentityAdded,
    IdentityRemoved,
    PeerJoined,
    PeerLeft,
    Refused,
    SelfRemoved,
)
from .membership import (
    PresenceChanged as StoreChanged,
)
from .outgoing import Paced
from .peer_state import EMPTY, ReadOnlyMap, chosen_name_of, parse_state_payload

if TYPE_CHECKING:
    from .documents import Documents
    from .liveness import Liveness
    from .membership import MembershipStore
    from .outgoing import Outgoing
    from .peer_state import PeerStates
    from .peer_to_peer import PeerToPeer
    from .sharing import StateSharing
    from .waiters import Waiters

__all__ = ["ANNOUNCE_SPACING", "THROTTLE_PEERS", "Incoming"]

#: Documents with this many peers or more are throttled (see the module docstring).
THROTTLE_PEERS: Final = 1000
#: Seconds per peer present between two announcements of a throttled document.
ANNOUNCE_SPACING: Final = 1e-6

# Error codes by which the server refuses a presence membership.
_MEMBERSHIP_REFUSALS: Final = (PermissionDenied, DocumentNotFound, LimitExceeded)
_ENTERING: Final = DocumentState.ENTERING
_PRESENT: Final = DocumentState.PRESENT
_REPLAY: Final = Admission.REPLAY
_COPY: Final = Admission.COPY
_REASSIGNED: Final = Admission.REASSIGNED


class Incoming:
    """Frames from the server, applied to the core's state (a mixin of ClientCore)."""

    __slots__ = ()

    if TYPE_CHECKING:
        effects: list[Effect]
        unsettled: dict[str, None]
        _announced: dict[str, float]
        liveness: Liveness
        deliver: Callable[..., object] | None
        listens: Callable[[str], bool] | None
        state: ConnectionState
        store: MembershipStore
        states: PeerStates
        sharing: StateSharing
        docs: Documents
        waiters: Waiters
        out: Outgoing
        p2p: PeerToPeer | None

        @property
        def server_presence(self) -> bool: ...
        def report(self, error: RatatoskrError) -> None: ...
        def arm(self, when: float) -> None: ...
        def _join(self, document_id: str, now: float) -> None: ...
        def _refuse(self, document_id: str, error: RatatoskrError) -> None: ...
        def _rejoin_later(self, document_id: str, at: float) -> None: ...
        def _submit(self, entry: Paced, now: float) -> None: ...
        def _release(self, now: float) -> None: ...

    # ------------------------------------------------------------------ frames

    def receive(self, data: bytes, now: float) -> None:
        """One binary frame from the server, while connected (whole: the
        connection is alive, :mod:`._liveness`)."""
        self.liveness.heard_at = now
        try:
            frame = decode(data)
        except ProtocolError as exc:
            self.report(exc)
            return
        store = self.store
        if type(frame) is EphemeralFrame:  # the hot path: one per message received
            if store.departed:
                store.departed.clear()
            self._ephemeral(frame, now)
            if store.incoming:  # (it introduced the sender: document scope)
                store.settle_incoming()
            if store.changed:  # (peers' own messages, without server presence)
                self.arm(store.touched(now))
            return
        kind = type(frame)
        if kind is PeerIdentityFrame:
            # Scoped identities travel just before the frame that needs them.
            self._dispatch(store.apply(frame))
            if store.changed:
                self.arm(store.touched(now))
            return
        if store.departed and kind is not PeerDisconnectedFrame:
            store.departed.clear()  # kept for the frame right after their leave only
        if kind is ErrorFrame:
            self._error_frame(frame, now)  # type: ignore[arg-type]
        elif kind is SyncFrame or kind is DocUnavailableFrame:
            # automerge-repo's answer to our `request` (peer-to-peer mode only;
            # with server-side presence we send none, and it means nothing).
            doc_id = frame.document_id  # type: ignore[attr-defined]
            record = self.docs.get(doc_id)
            if self.p2p is not None and record is not None and record.join_sent:
                # Subscribed now. Present: us, plus whoever already sent us state.
                me = self.store.me
                ids = (me.peer_id,) if me is not None else ()
                self._confirmed(doc_id, ids + self.states.peers(doc_id), now)
        elif kind is DocPresenceStateFrame:
            doc_id = frame.document_id  # type: ignore[attr-defined]
            self._confirmed(doc_id, frame.peers, now)  # type: ignore[attr-defined]
        else:
            self._dispatch(store.apply(frame))
        if store.incoming:
            store.settle_incoming()  # introduced for that frame only
        if store.changed:
            self.arm(store.touched(now))

    def heard(self, now: float) -> None:
        """A whole WebSocket frame other than a message (a ping, a pong) arrived."""
        self.liveness.heard_at = now

    def _confirmed(self, document_id: str, peer_ids: tuple[str, ...], now: float) -> None:
        """The server confirmed our presence in a document (or answered a join
        that was already confirmed)."""
        record = self.docs.get(document_id)
        changes = self.store.present(document_id, peer_ids)
        self._dispatch(changes)
        if changes and type(changes[0]) is Refused:
            return  # refused whole (too many peers): it confirms nothing either
        if record is None or record.state is not _ENTERING:
            return
        self._announced.pop(document_id, None)  # not throttled: enter returns after it
        record.state = _PRESENT
        record.join_sent = False
        me = self.store.me
        if me is None:
            return
        share = self.p2p is not None
        if self.sharing.confirmed(document_id, me.chosen_name or me.name, share=share):
            self._submit(Paced("snapshot", document_id), now)
        if self.p2p is not None:
            self._dispatch(self.p2p.sync(document_id, self.store, self.states, confirmed=True))
        self.effects += self.waiters.resolve_enter(document_id, self.store.presence(document_id))

    def _ephemeral(self, frame: EphemeralFrame, now: float) -> None:
        if frame.session_id == self.out.session_id:
            return  # our own message, echoed back by a gossiping peer
        doc_id = frame.document_id
        p2p = self.p2p
        if p2p is not None:
            if doc_id not in self.docs:
                return  # not entered: not ours to see (upstream sends them after a leave)
            verdict = p2p.admit(frame.sender_id, frame.session_id, frame.count)
            if verdict is _REPLAY or verdict is _COPY:
                return
            if verdict is _REASSIGNED:
                self._reassigned(frame.session_id, frame.sender_id)
        try:
            payload = decode_payload(frame.data)
        except ProtocolError as exc:
            self.report(exc)
            return
        if type(payload) is dict and PRESENCE_MARKER in payload:
            self._state_message(frame, payload, now)
            return
        deliver = self.deliver
        if deliver is not None and not self.effects:
            # Nothing is pending ahead of it: hand it over now, not as an Emit
            # effect (the same order, without an allocation per message).
            deliver("ephemeral-message", doc_id, self.store.peer(frame.sender_id), payload)
        else:
            self.effects.append(
                Emit("ephemeral-message", (doc_id, self.store.peer(frame.sender_id), payload))
            )

    def _state_message(self, frame: EphemeralFrame, payload: dict[str, Any], now: float) -> None:
        """An automerge-repo Presence message: per-peer state, never an
        ``ephemeral-message``."""
        try:
            message = parse_state_payload(payload)
        except ProtocolError as exc:
            self.report(exc)
            return
        sender = frame.sender_id
        if message is None or not sender:
            return
        doc_id = frame.document_id
        states = self.states
        outcome = states.receive(doc_id, sender, message, now, session=frame.session_id)
        if outcome.unknown_sender and self.sharing.heard_unknown(doc_id, now):
            self.arm(self.sharing.deadline())
        if outcome.appeared:
            self.arm(states.deadline())
        if not outcome.changed:
            return
        view = states.peer_state(doc_id, sender)  # what is shown for the sender now
        chosen = chosen_name_of(view)
        p2p = self.p2p
        if p2p is not None:
            known = self.store.identities.get(sender)
            if outcome.appeared or outcome.removed or known is None or known.chosen_name != chosen:
                confirmed = self.docs.is_present(doc_id)
                self._dispatch(p2p.sync(doc_id, self.store, states, confirmed=confirmed))
        elif view is not None:
            self._dispatch(self.store.chosen_name(sender, chosen))
        self._emit_state(doc_id, sender, view if view is not None else EMPTY)

    def _reassigned(self, session_id: str, owner: str) -> None:
        """The gossip filter moved a session to its real sender: its state, and
        the presence that came with it, follow."""
        assert self.p2p is not None
        states = self.states
        for doc_id, previous in states.reassign(session_id, owner):
            confirmed = self.docs.is_present(doc_id)
            self._dispatch(self.p2p.sync(doc_id, self.store, states, confirmed=confirmed))
            for peer_id in (previous, owner):
                view = states.peer_state(doc_id, peer_id)
                self._emit_state(doc_id, peer_id, view if view is not None else EMPTY)

    def _error_frame(self, frame: ErrorFrame, now: float) -> None:
        exc = error_from_frame(
            frame.error, frame.message, document_id=frame.document_id, retry_after=frame.retry_after
        )
        doc_id = frame.document_id
        if isinstance(exc, RateLimited):
            if doc_id is None:
                pacer = self.out.pacer
                if pacer is not None:
                    pacer.pause(now, exc.retry_after)
                    self._release(now)  # re-arms for when the pause ends
            else:
                record = self.docs.get(doc_id)
                if record is not None and record.join_sent:
                    # The relay's per-document bound on joins: try again when allowed.
                    self._rejoin_later(doc_id, now + exc.retry_after)
        if doc_id is not None and isinstance(exc, _MEMBERSHIP_REFUSALS) and doc_id in self.docs:
            self._refuse(doc_id, exc)
            return
        self.report(exc)

    # ------------------------------------------------------------------ changes to effects

    def _dispatch(self, changes: list[Change]) -> None:
        # Runs once or twice per presence frame (N of them per client in a
        # reconnect storm): plain type tests, no cast() calls, and no effect for
        # an event nobody listens to (``listens``, when the driver set it).
        if changes:
            self.store.changed = True
        listens = self.listens
        effects = self.effects
        for change in changes:
            kind = type(change)
            if kind is StoreChanged:
                # Announced by settle(), once per document per batch.
                self.unsettled[change.document_id] = None  # type: ignore[union-attr]
            elif kind is PeerJoined:
                if listens is None or listens("peer-joined"):
                    effects.append(Emit("peer-joined", (change.document_id, change.peer)))  # type: ignore[union-attr]
            elif kind is IdentityAdded:
                if listens is None or listens("peer-identity"):
                    effects.append(Emit("peer-identity", (change.peer,)))  # type: ignore[union-attr]
            elif kind is PeerLeft:
                doc_id, peer = change.document_id, change.peer  # type: ignore[union-attr]
                if self.p2p is None and self.states.forget_peer(doc_id, peer.peer_id):
                    self._emit_state(doc_id, peer.peer_id, EMPTY)
                if listens is None or listens("peer-left"):
                    effects.append(Emit("peer-left", (doc_id, peer)))
            elif kind is IdentityRemoved:
                if listens is None or listens("peer-disconnected"):
                    effects.append(Emit("peer-disconnected", (change.peer,)))  # type: ignore[union-attr]
            elif kind is SelfRemoved:
                doc_id = change.document_id  # type: ignore[union-attr]
                record = self.docs.get(doc_id)
                if self.state is ConnectionState.CONNECTED and record is not None:
                    if record.state is _PRESENT:
                        record.state = _ENTERING
                    if not record.join_sent:
                        # The server expired our presence (a stall): join again, at once.
                        self._rejoin_later(doc_id, 0.0)
            elif kind is Refused:  # a frame beyond a bound: nothing of it was applied
                self.report(change.error)  # type: ignore[union-attr]

    def settle(self, now: float, *, force: bool = False) -> None:
        """Announce the presence of every document that changed and is not
        throttled (see the module docstring; ``force``: none is, for the ends
        of a connection and leaving): ``presence-changed``, then the
        document's ``wait_for_presence`` and ``watch_presence`` calls."""
        unsettled = self.unsettled
        if not unsettled:
            return
        listens = self.listens
        announce = listens is None or listens("presence-changed")
        waiters = self.waiters
        effects = self.effects
        store = self.store
        announced = self._announced
        later = math.inf
        for document_id in list(unsettled):
            size = store.size(document_id)
            if size >= THROTTLE_PEERS and not force:
                due = announced.get(document_id, now)
                if now < due:  # announced a moment ago: once more when allowed
                    later = min(later, due)
                    continue
                announced[document_id] = now + size * ANNOUNCE_SPACING
            elif announced:
                announced.pop(document_id, None)
            del unsettled[document_id]
            if announce:
                effects.append(PresenceChanged(document_id))
            if document_id in waiters.presence or document_id in waiters.watchers:
                effects += waiters.presence_changed(document_id, store.presence(document_id))
        if later < math.inf:
            self.arm(later)

    def _emit_state(self, document_id: str, peer_id: str, state: Mapping[str, Any]) -> None:
        # A snapshot: a callback that keeps it must not see it change later.
        snapshot = ReadOnlyMap(dict(state)) if state else EMPTY
        self.effects.append(
            Emit("state-changed", (document_id, self.store.peer(peer_id), snapshot))
        )

    def _clear_peer_states(self) -> None:
        """Every peer's state is gone (the connection is): say so, per peer."""
        states = self.states
        cleared = [(d, p) for d in states.documents() for p in states.peers(d)]
        states.clear_peers()
        for doc_id, peer_id in cleared:
            self._emit_state(doc_id, peer_id, EMPTY)

    def prune(self, now: float) -> None:
        """Forget peers whose state went silent for the TTL (without server-side
        presence, that is also how a peer that vanished leaves)."""
        for doc_id, peer_id in self.states.prune(now):
            self._emit_state(doc_id, peer_id, EMPTY)
            if self.p2p is not None:
                self._dispatch(self.p2p.gone(doc_id, peer_id, self.store, self.states))
