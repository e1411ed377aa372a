"""The send side of :class:`~ratatoskr_client.core.client.ClientCore`: calls in, frames out. No I/O.

Every frame leaves through here, in the order its ``count`` was given
(:mod:`._outgoing`). Application messages and per-peer state are paced: a frame
goes out at once when a token is free and nothing waits before it, otherwise it
waits in the queue and is built when its turn comes, so that coalesced state
takes the latest value. Presence control messages (join, leave, heartbeat) are
not paced: the relay does not count them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ConnectionClosed, PayloadError
from ..protocol import PresenceMessage, PresenceStatus, encode_payload, fits_utf8
from ..protocol.constants import MAX_DOCUMENT_ID_BYTES, PRESENCE_MARKER, PRESENCE_TYPE
from ..status import ConnectionState, DocumentState
from .effects import Effect, Emit, Resolve, Send
from .outgoing import Outgoing, Paced, PacedKind
from .peer_state import (
    goodbye_payload,
    heartbeat_payload,
    snapshot_payload,
    update_payload,
)
from .settings import ENVELOPE_OVERHEAD, Settings

if TYPE_CHECKING:
    from .documents import Documents
    from .membership import MembershipStore
    from .peer_state import PeerStates
    from .sharing import StateSharing
    from .waiters import Waiters

__all__ = ["MIN_TIMER_STEP", "Sending", "check_document_id"]

#: The shortest time the core asks to be woken after (seconds): no timer can
#: spin, whatever rounding does to a deadline.
MIN_TIMER_STEP = 0.001
_CONNECTED = ConnectionState.CONNECTED
_CLOSED = ConnectionState.CLOSED
_ENTERING = DocumentState.ENTERING
_LEAVING = DocumentState.LEAVING


def check_document_id(document_id: object) -> None:
    """Raise ValueError unless ``document_id`` is a document id we may send."""
    if not isinstance(document_id, str) or not document_id:
        raise ValueError(f"document_id must be a non-empty string, got {document_id!r}")
    if not document_id.isascii():
        try:
            document_id.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"document_id is not valid Unicode text: {document_id!r}") from None
    if not fits_utf8(document_id, MAX_DOCUMENT_ID_BYTES):
        raise ValueError(
            f"document_id must be at most {MAX_DOCUMENT_ID_BYTES} bytes in UTF-8, "
            f"got {len(document_id.encode('utf-8', 'surrogatepass'))}"
        )


class Sending:
    """Frames from the application and the core's timers (a mixin of ClientCore)."""

    __slots__ = ()

    if TYPE_CHECKING:
        settings: Settings
        effects: list[Effect]
        state: ConnectionState
        store: MembershipStore
        states: PeerStates
        sharing: StateSharing
        docs: Documents
        waiters: Waiters
        out: Outgoing

        @property
        def server_presence(self) -> bool: ...
        def arm(self, when: float) -> None: ...

    def send_ephemeral(self, document_id: str, payload: Any, now: float) -> int | None:
        """``send_ephemeral``: None if the frame went out (a Send effect), else
        the id of a waiter resolved when it does (paced).

        Raises:
            ValueError: a bad document id.
            PayloadError: not encodable, too large, or a reserved shape.
            ConnectionClosed: not connected (nothing is queued).
        """
        check_document_id(document_id)
        # Any mapping goes on the wire as a CBOR map (the type test first: an
        # isinstance() against an ABC is slow on this hot path).
        if type(payload) is dict or isinstance(payload, Mapping):
            if payload.get("type") == PRESENCE_TYPE:
                raise PayloadError('payloads with "type": "presence" are reserved for presence')
            if PRESENCE_MARKER in payload:
                raise PayloadError(
                    f"payloads with a {PRESENCE_MARKER!r} key are automerge-repo Presence "
                    "messages: share state with set_state()"
                )
        data = encode_payload(payload)
        if len(data) + ENVELOPE_OVERHEAD > self.settings.max_frame_size:
            raise PayloadError(
                f"payload of {len(data)} bytes is too large for a "
                f"{self.settings.max_frame_size}-byte frame"
            )
        if self.state is not _CONNECTED:
            if self.state is _CLOSED:
                raise ConnectionClosed("client is closed")
            raise ConnectionClosed(f"not connected (state: {self.state.value})")
        out = self.out
        if out.take(now) == 0:
            self.effects.append(Send(out.ephemeral(document_id, data)))
            return None
        waiter = self.waiters.new()
        self.waiters.paced.add(waiter)
        self._submit(Paced("app", document_id, data, waiter), now)
        return waiter

    def set_state(self, document_id: str, channel: str, value: Any, now: float) -> None:
        """``set_state``: merge one channel into our state in a document and share it.

        Raises:
            ValueError: a bad document id or channel.
            PayloadError: the value cannot be sent.
        """
        check_document_id(document_id)
        if not isinstance(channel, str) or not channel:
            raise ValueError(f"channel must be a non-empty string, got {channel!r}")
        size = len(encode_payload(update_payload(channel, value)))
        if size + ENVELOPE_OVERHEAD > self.settings.max_frame_size:
            raise PayloadError(
                f"state value of {size} bytes is too large for a "
                f"{self.settings.max_frame_size}-byte frame"
            )
        confirmed = self.state is _CONNECTED and self.docs.is_present(document_id)
        changed, go_live = self.sharing.set_local(
            document_id, channel, value, now, confirmed=confirmed
        )
        me = self.store.me
        if changed and me is not None:
            local = self.states.local_snapshot(document_id)
            self.effects.append(Emit("state-changed", (document_id, me, local)))
        if go_live:
            self._submit(Paced("snapshot", document_id), now)
        self.arm(self.sharing.deadline())

    def _presence(self, status: PresenceStatus, document_id: str) -> None:
        """A presence control message: not paced (the relay does not count them)."""
        data = encode_payload(PresenceMessage(status, document_id).to_payload())
        self.effects.append(Send(self.out.ephemeral(document_id, data)))

    def _submit(self, entry: Paced, now: float) -> None:
        """Send ``entry`` now if its turn and a token allow, else queue it."""
        queue = self.out.queue
        queue.append(entry)
        if len(queue) == 1:
            self._release(now)

    def _release(self, now: float) -> None:
        """Send queued frames while tokens allow; wake up when the next one may go."""
        out = self.out
        queue = out.queue
        while queue:
            entry = queue[0]
            if not self._wanted(entry):
                queue.popleft()
                continue
            if entry.kind != "leave":
                pacer = out.pacer
                wait = 0.0 if pacer is None else pacer.take(now)
                if wait > 0:
                    # At least a millisecond: a wait of a few ulps would round to
                    # `now` and wake us in a loop without the bucket refilling.
                    self.arm(now + max(wait, MIN_TIMER_STEP))
                    return
            if entry.kind != "update":  # (an update stays while values wait: _wanted)
                queue.popleft()
            self._send_entry(entry, now)

    def _wanted(self, entry: Paced) -> bool:
        doc = entry.document_id
        kind = entry.kind
        if kind == "app":
            return entry.waiter in self.waiters.paced
        if kind == "request":
            record = self.docs.get(doc)
            return record is not None and record.state is _ENTERING
        if kind in ("goodbye", "leave"):
            record = self.docs.get(doc)
            return record is not None and record.state is _LEAVING
        if kind == "update":
            return doc in self.sharing.live and self.sharing.coalescer.scheduled(doc)
        return doc in self.sharing.live

    def _send_entry(self, entry: Paced, now: float) -> None:
        kind = entry.kind
        doc = entry.document_id
        if kind == "app":
            assert entry.waiter is not None
            self.waiters.paced.discard(entry.waiter)
            self.effects.append(Send(self.out.ephemeral(doc, entry.data)))
            self.effects.append(Resolve(entry.waiter))
        elif kind == "request":
            self.effects.append(Send(self.out.request(doc)))
        elif kind == "leave":
            self.docs.drop(doc)
            if self.server_presence:
                self._presence("leave", doc)
        else:
            self._send_state(doc, kind, now)

    def _send_state(self, document_id: str, kind: PacedKind, now: float) -> None:
        if kind == "update":
            item = self.sharing.coalescer.take_one(document_id, now)
            if item is None:
                return
            payload = update_payload(*item)
        elif kind == "snapshot":
            payload = snapshot_payload(self.states.local(document_id))
        elif kind == "heartbeat":
            payload = heartbeat_payload()
        else:
            payload = goodbye_payload()
        data = encode_payload(payload)
        self.effects.append(Send(self.out.ephemeral(document_id, data)))
        self.sharing.sent(document_id, now)

    def _unqueue(self, document_id: str) -> None:
        queue = self.out.queue
        kept = [e for e in queue if e.document_id != document_id or e.kind == "app"]
        if len(kept) != len(queue):
            queue.clear()
            queue.extend(kept)
