"""The client's events, typed: names, callback signatures, and ``on``/``once``/``off``.

Events with the same callback signature form a group; each group has a public
``Literal`` of its event names (:data:`PeerEvent`...), a callback type
(:data:`PeerCallback`...) and a type variable bound by it
(:data:`PeerCallbackT`...). The overloads of :meth:`EventSource.on`,
:meth:`EventSource.once` and :meth:`EventSource.off` — one pair per group —
select the signature from the event name, so a type checker
(``mypy --strict``) accepts ``@client.on("presence-changed")`` as a typed
decorator that keeps the decorated function's type, rejects a callback with
the wrong arguments, and rejects an unknown event name. A callback passed
directly is checked against its group's callback type (a lambda's body
included); the decorator form keeps the decorated function's own type. At
run time an unknown name raises ``ValueError``. Both clients, asyncio
and blocking, take their ``on``/``once``/``off`` from :class:`EventSource`.

Callbacks may be plain functions or coroutine functions (run as tasks); what
they return is ignored. The events, with the callback's arguments:

* ``connected`` ``(me: Peer)`` — authenticated, on every (re)connection;
* ``disconnected`` ``(reason: RatatoskrError)`` — the connection is gone (also
  after ``close()``);
* ``reconnecting`` ``(attempt: int, delay: float)`` — the next attempt
  (1-based) starts in ``delay`` seconds;
* ``peer-identity`` ``(peer: Peer)`` — the server announced a peer (it is in
  ``client.peers`` now; with identities scoped to documents, when it first
  shares one with this client);
* ``peer-disconnected`` ``(peer: Peer)`` — a peer's connection closed (with
  scoped identities: a peer that shared a document with this client, after
  its ``peer-left`` events);
* ``peer-joined`` ``(document_id: str, peer: Peer)`` — a peer entered a
  document this client is in;
* ``peer-left`` ``(document_id: str, peer: Peer)`` — a peer left it, timed out
  or dropped out;
* ``presence-changed`` ``(document_id: str, peers: tuple[Peer, ...])`` —
  ``presence(document_id)`` has a new value. At most once per document per
  batch of frames the client reads at once (a burst of joins is one event,
  with its result): after the batch's ``peer-identity``, ``peer-joined``,
  ``peer-left`` and ``peer-disconnected`` events, before the client waits for
  more frames, so before any coroutine of the application runs again (an
  awaited ``enter_document`` returns after it). ``ephemeral-message`` and
  ``state-changed`` events of the same batch may come first. A document of
  1,000 peers or more that keeps changing is announced at most once per
  microsecond per peer (40 ms at 40,000), its latest value last;
* ``user-joined`` ``(document_id: str, user: User)`` — a user's first peer
  arrived in a document (``users(document_id)`` has a new user); a user is
  everyone with the same user id, an anonymous peer is its own user. Right
  after the ``presence-changed`` that shows it;
* ``user-left`` ``(document_id: str, user: User)`` — a user's last peer left
  it (``user.peers``: the peers it had when last seen), right after the
  ``presence-changed`` that shows it. Like presence, when this client leaves
  the document or loses its connection every user there leaves;
* ``ephemeral-message`` ``(document_id: str, sender: Peer, payload: Any)`` —
  an application message arrived (never a presence or state control message);
* ``state-changed`` ``(document_id: str, peer: Peer, state: Mapping[str, Any])``
  — a peer's state (``set_state`` / automerge-repo ``Presence``) has a new
  value; empty when it is forgotten;
* ``error`` ``(error: RatatoskrError)`` — an error frame answering no awaited
  call, a bad frame, a failing callback;
* ``token-refresh-failed`` ``(error: RatatoskrError)`` — the ``token``
  callable raised (its exception is ``__cause__``: a
  :class:`~ratatoskr_client.errors.TokenRefreshError`), or the server refused
  the fresh token (an :class:`~ratatoskr_client.errors.AuthError`); the
  client tries again with backoff until the token expires;
* ``document-refused`` ``(error: RatatoskrError)`` — the server revoked this
  client's permission on an entered document
  (:class:`~ratatoskr_client.errors.PermissionRevoked`, its ``document_id``
  says which): the document is ``DocumentState.REFUSED``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, TypeAlias, TypeVar, get_args, overload

from .core.membership import Peer
from .core.users import User
from .errors import RatatoskrError

__all__ = [
    "ConnectedCallback",
    "DisconnectedCallback",
    "DocumentRefusedCallback",
    "EphemeralMessageCallback",
    "ErrorCallback",
    "ErrorCallbackT",
    "ErrorEvent",
    "EventName",
    "EventSource",
    "MembershipCallback",
    "MembershipCallbackT",
    "MembershipEvent",
    "MessageCallback",
    "MessageCallbackT",
    "MessageEvent",
    "PeerCallback",
    "PeerCallbackT",
    "PeerDisconnectedCallback",
    "PeerEvent",
    "PeerIdentityCallback",
    "PeerJoinedCallback",
    "PeerLeftCallback",
    "PresenceCallback",
    "PresenceCallbackT",
    "PresenceChangedCallback",
    "PresenceEvent",
    "ReconnectingCallback",
    "ReconnectingCallbackT",
    "ReconnectingEvent",
    "StateCallback",
    "StateCallbackT",
    "StateChangedCallback",
    "StateEvent",
    "TokenRefreshFailedCallback",
    "UserCallback",
    "UserCallbackT",
    "UserEvent",
    "UserJoinedCallback",
    "UserLeftCallback",
]

EventName: TypeAlias = Literal[
    "connected",
    "disconnected",
    "reconnecting",
    "peer-identity",
    "peer-disconnected",
    "peer-joined",
    "peer-left",
    "presence-changed",
    "user-joined",
    "user-left",
    "ephemeral-message",
    "state-changed",
    "error",
    "token-refresh-failed",
    "document-refused",
]
"""Every event's name."""
_EVENTS: Final = frozenset(get_args(EventName))

# --------------------------------------------------------------------------- the groups

PeerEvent: TypeAlias = Literal["connected", "peer-identity", "peer-disconnected"]
"""Events whose callbacks get one peer: ``(peer: Peer)`` (:data:`PeerCallback`)."""
ErrorEvent: TypeAlias = Literal["disconnected", "error", "token-refresh-failed", "document-refused"]
"""Events whose callbacks get an error: ``(error: RatatoskrError)``, for
``disconnected`` the reason (:data:`ErrorCallback`)."""
ReconnectingEvent: TypeAlias = Literal["reconnecting"]
"""``(attempt: int, delay: float)`` (:data:`ReconnectingCallback`)."""
MembershipEvent: TypeAlias = Literal["peer-joined", "peer-left"]
"""``(document_id: str, peer: Peer)`` (:data:`MembershipCallback`)."""
PresenceEvent: TypeAlias = Literal["presence-changed"]
"""``(document_id: str, peers: tuple[Peer, ...])`` (:data:`PresenceCallback`)."""
MessageEvent: TypeAlias = Literal["ephemeral-message"]
"""``(document_id: str, sender: Peer, payload: Any)`` (:data:`MessageCallback`)."""
StateEvent: TypeAlias = Literal["state-changed"]
"""``(document_id: str, peer: Peer, state: Mapping[str, Any])`` (:data:`StateCallback`)."""
UserEvent: TypeAlias = Literal["user-joined", "user-left"]
"""``(document_id: str, user: User)`` (:data:`UserCallback`)."""

PeerCallback: TypeAlias = Callable[[Peer], object]
"""A callback of a :data:`PeerEvent`: ``(peer: Peer)``."""
ErrorCallback: TypeAlias = Callable[[RatatoskrError], object]
"""A callback of an :data:`ErrorEvent`: ``(error: RatatoskrError)``."""
ReconnectingCallback: TypeAlias = Callable[[int, float], object]
"""A ``reconnecting`` callback: ``(attempt: int, delay: float)``."""
MembershipCallback: TypeAlias = Callable[[str, Peer], object]
"""A callback of a :data:`MembershipEvent`: ``(document_id: str, peer: Peer)``."""
PresenceCallback: TypeAlias = Callable[[str, tuple[Peer, ...]], object]
"""A ``presence-changed`` callback: ``(document_id: str, peers: tuple[Peer, ...])``."""
MessageCallback: TypeAlias = Callable[[str, Peer, Any], object]
"""An ``ephemeral-message`` callback: ``(document_id: str, sender: Peer, payload: Any)``."""
StateCallback: TypeAlias = Callable[[str, Peer, Mapping[str, Any]], object]
"""A ``state-changed`` callback: ``(document_id: str, peer: Peer, state: Mapping[str, Any])``."""
UserCallback: TypeAlias = Callable[[str, User], object]
"""A callback of a :data:`UserEvent`: ``(document_id: str, user: User)``."""

# The decorator form: a decorated function keeps its own type.
PeerCallbackT = TypeVar("PeerCallbackT", bound=PeerCallback)
"""A function usable as a :data:`PeerCallback` (its own type is kept)."""
ErrorCallbackT = TypeVar("ErrorCallbackT", bound=ErrorCallback)
"""A function usable as an :data:`ErrorCallback` (its own type is kept)."""
ReconnectingCallbackT = TypeVar("ReconnectingCallbackT", bound=ReconnectingCallback)
"""A function usable as a :data:`ReconnectingCallback` (its own type is kept)."""
MembershipCallbackT = TypeVar("MembershipCallbackT", bound=MembershipCallback)
"""A function usable as a :data:`MembershipCallback` (its own type is kept)."""
PresenceCallbackT = TypeVar("PresenceCallbackT", bound=PresenceCallback)
"""A function usable as a :data:`PresenceCallback` (its own type is kept)."""
MessageCallbackT = TypeVar("MessageCallbackT", bound=MessageCallback)
"""A function usable as a :data:`MessageCallback` (its own type is kept)."""
StateCallbackT = TypeVar("StateCallbackT", bound=StateCallback)
"""A function usable as a :data:`StateCallback` (its own type is kept)."""
UserCallbackT = TypeVar("UserCallbackT", bound=UserCallback)
"""A function usable as a :data:`UserCallback` (its own type is kept)."""

# --------------------------------------------------------------------------- per event

#: A ``connected`` callback: ``(me: Peer)``.
ConnectedCallback: TypeAlias = PeerCallback
#: A ``disconnected`` callback: ``(reason: RatatoskrError)``.
DisconnectedCallback: TypeAlias = ErrorCallback
#: A ``token-refresh-failed`` callback: ``(error: RatatoskrError)``.
TokenRefreshFailedCallback: TypeAlias = ErrorCallback
#: A ``document-refused`` callback: ``(error: RatatoskrError)`` (a ``PermissionRevoked``).
DocumentRefusedCallback: TypeAlias = ErrorCallback
#: A ``peer-identity`` callback: ``(peer: Peer)``.
PeerIdentityCallback: TypeAlias = PeerCallback
#: A ``peer-disconnected`` callback: ``(peer: Peer)``.
PeerDisconnectedCallback: TypeAlias = PeerCallback
#: A ``peer-joined`` callback: ``(document_id: str, peer: Peer)``.
PeerJoinedCallback: TypeAlias = MembershipCallback
#: A ``peer-left`` callback: ``(document_id: str, peer: Peer)``.
PeerLeftCallback: TypeAlias = MembershipCallback
#: A ``presence-changed`` callback: ``(document_id: str, peers: tuple[Peer, ...])``.
PresenceChangedCallback: TypeAlias = PresenceCallback
#: An ``ephemeral-message`` callback: ``(document_id: str, sender: Peer, payload: Any)``.
EphemeralMessageCallback: TypeAlias = MessageCallback
#: A ``state-changed`` callback: ``(document_id: str, peer: Peer, state: Mapping[str, Any])``.
StateChangedCallback: TypeAlias = StateCallback
#: A ``user-joined`` callback: ``(document_id: str, user: User)``.
UserJoinedCallback: TypeAlias = UserCallback
#: A ``user-left`` callback: ``(document_id: str, user: User)``.
UserLeftCallback: TypeAlias = UserCallback


class EventSource:
    """``on``, ``once`` and ``off`` over an event emitter (``self._emitter``:
    pyee's interface, ``on``, ``once`` and ``remove_listener``). Both clients
    have them from here; the blocking client's emitter runs them on its event
    loop's thread, where its callbacks run too."""

    __slots__ = ()
    #: the facade's emitter (pyee's interface: ``on``, ``once``, ``remove_listener``)
    _emitter: Any

    @overload
    def on(self, event: PeerEvent) -> Callable[[PeerCallbackT], PeerCallbackT]: ...
    @overload
    def on(self, event: PeerEvent, callback: PeerCallback) -> PeerCallback: ...
    @overload
    def on(self, event: ErrorEvent) -> Callable[[ErrorCallbackT], ErrorCallbackT]: ...
    @overload
    def on(self, event: ErrorEvent, callback: ErrorCallback) -> ErrorCallback: ...
    @overload
    def on(
        self, event: ReconnectingEvent
    ) -> Callable[[ReconnectingCallbackT], ReconnectingCallbackT]: ...
    @overload
    def on(
        self, event: ReconnectingEvent, callback: ReconnectingCallback
    ) -> ReconnectingCallback: ...
    @overload
    def on(
        self, event: MembershipEvent
    ) -> Callable[[MembershipCallbackT], MembershipCallbackT]: ...
    @overload
    def on(self, event: MembershipEvent, callback: MembershipCallback) -> MembershipCallback: ...
    @overload
    def on(self, event: PresenceEvent) -> Callable[[PresenceCallbackT], PresenceCallbackT]: ...
    @overload
    def on(self, event: PresenceEvent, callback: PresenceCallback) -> PresenceCallback: ...
    @overload
    def on(self, event: MessageEvent) -> Callable[[MessageCallbackT], MessageCallbackT]: ...
    @overload
    def on(self, event: MessageEvent, callback: MessageCallback) -> MessageCallback: ...
    @overload
    def on(self, event: StateEvent) -> Callable[[StateCallbackT], StateCallbackT]: ...
    @overload
    def on(self, event: StateEvent, callback: StateCallback) -> StateCallback: ...
    @overload
    def on(self, event: UserEvent) -> Callable[[UserCallbackT], UserCallbackT]: ...
    @overload
    def on(self, event: UserEvent, callback: UserCallback) -> UserCallback: ...
    def on(self, event: EventName, callback: Callable[..., object] | None = None) -> Any:
        """Call ``callback`` every time ``event`` fires; without ``callback``,
        a decorator that registers the function it decorates (and returns it).

        The callback's signature is its event's, listed in
        :mod:`ratatoskr_client.events`: ``@client.on("presence-changed")``
        expects a :data:`PresenceCallback`, ``(document_id: str, peers:
        tuple[Peer, ...])``. A type checker picks it from the event name (one
        overload per group of events with the same signature).

        Raises:
            ValueError: ``event`` is not one of the documented event names.
        """
        _check(event)
        if callback is None:
            return self._emitter.on(event)
        return self._emitter.on(event, callback)

    @overload
    def once(self, event: PeerEvent) -> Callable[[PeerCallbackT], PeerCallbackT]: ...
    @overload
    def once(self, event: PeerEvent, callback: PeerCallback) -> PeerCallback: ...
    @overload
    def once(self, event: ErrorEvent) -> Callable[[ErrorCallbackT], ErrorCallbackT]: ...
    @overload
    def once(self, event: ErrorEvent, callback: ErrorCallback) -> ErrorCallback: ...
    @overload
    def once(
        self, event: ReconnectingEvent
    ) -> Callable[[ReconnectingCallbackT], ReconnectingCallbackT]: ...
    @overload
    def once(
        self, event: ReconnectingEvent, callback: ReconnectingCallback
    ) -> ReconnectingCallback: ...
    @overload
    def once(
        self, event: MembershipEvent
    ) -> Callable[[MembershipCallbackT], MembershipCallbackT]: ...
    @overload
    def once(self, event: MembershipEvent, callback: MembershipCallback) -> MembershipCallback: ...
    @overload
    def once(self, event: PresenceEvent) -> Callable[[PresenceCallbackT], PresenceCallbackT]: ...
    @overload
    def once(self, event: PresenceEvent, callback: PresenceCallback) -> PresenceCallback: ...
    @overload
    def once(self, event: MessageEvent) -> Callable[[MessageCallbackT], MessageCallbackT]: ...
    @overload
    def once(self, event: MessageEvent, callback: MessageCallback) -> MessageCallback: ...
    @overload
    def once(self, event: StateEvent) -> Callable[[StateCallbackT], StateCallbackT]: ...
    @overload
    def once(self, event: StateEvent, callback: StateCallback) -> StateCallback: ...
    @overload
    def once(self, event: UserEvent) -> Callable[[UserCallbackT], UserCallbackT]: ...
    @overload
    def once(self, event: UserEvent, callback: UserCallback) -> UserCallback: ...
    def once(self, event: EventName, callback: Callable[..., object] | None = None) -> Any:
        """Like :meth:`on`, but the callback runs at most once.

        Raises:
            ValueError: ``event`` is not one of the documented event names.
        """
        _check(event)
        if callback is None:
            return self._emitter.once(event)
        return self._emitter.once(event, callback)

    @overload
    def off(self, event: PeerEvent, callback: PeerCallback) -> None: ...
    @overload
    def off(self, event: ErrorEvent, callback: ErrorCallback) -> None: ...
    @overload
    def off(self, event: ReconnectingEvent, callback: ReconnectingCallback) -> None: ...
    @overload
    def off(self, event: MembershipEvent, callback: MembershipCallback) -> None: ...
    @overload
    def off(self, event: PresenceEvent, callback: PresenceCallback) -> None: ...
    @overload
    def off(self, event: MessageEvent, callback: MessageCallback) -> None: ...
    @overload
    def off(self, event: StateEvent, callback: StateCallback) -> None: ...
    @overload
    def off(self, event: UserEvent, callback: UserCallback) -> None: ...
    def off(self, event: EventName, callback: Callable[..., object]) -> None:
        """Remove a callback added with :meth:`on` or :meth:`once` (no-op if absent).

        Raises:
            ValueError: ``event`` is not one of the documented event names.
        """
        _check(event)
        with contextlib.suppress(KeyError):
            self._emitter.remove_listener(event, callback)

    remove_listener = off


def _check(event: str) -> None:
    if event not in _EVENTS:
        raise ValueError(f"unknown event {event!r}; expected one of {sorted(_EVENTS)}")
