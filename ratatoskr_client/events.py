"""The client's events, typed: names, callback signatures, and ``on``/``once``/``off``.

Every event has one callback signature; the overloads of
:meth:`EventSource.on`, :meth:`EventSource.once` and :meth:`EventSource.off`
select it from the ``Literal`` event name, so a type checker (``mypy --strict``)
accepts ``@client.on("presence-changed")`` as a typed decorator, rejects a
callback with the wrong arguments, and rejects an unknown event name. At run
time an unknown name raises :class:`ValueError`.

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
* ``ephemeral-message`` ``(document_id: str, sender: Peer, payload: Any)`` —
  an application message arrived (never a presence or state control message);
* ``state-changed`` ``(document_id: str, peer: Peer, state: Mapping[str, Any])``
  — a peer's state (``set_state`` / automerge-repo ``Presence``) has a new
  value; empty when it is forgotten;
* ``error`` ``(error: RatatoskrError)`` — an error frame answering no awaited
  call, a bad frame, a failing callback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, TypeAlias, TypeVar, get_args, overload

from .core.membership import Peer
from .errors import RatatoskrError

__all__ = [
    "ConnectedCallback",
    "DisconnectedCallback",
    "EphemeralMessageCallback",
    "ErrorCallback",
    "EventName",
    "EventSource",
    "PeerDisconnectedCallback",
    "PeerIdentityCallback",
    "PeerJoinedCallback",
    "PeerLeftCallback",
    "PresenceChangedCallback",
    "ReconnectingCallback",
    "StateChangedCallback",
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
    "ephemeral-message",
    "state-changed",
    "error",
]
_EVENTS: Final = frozenset(get_args(EventName))

#: A ``connected`` callback: ``(me: Peer)``.
ConnectedCallback: TypeAlias = Callable[[Peer], object]
#: A ``disconnected`` callback: ``(reason: RatatoskrError)``.
DisconnectedCallback: TypeAlias = Callable[[RatatoskrError], object]
#: A ``reconnecting`` callback: ``(attempt: int, delay: float)``.
ReconnectingCallback: TypeAlias = Callable[[int, float], object]
#: A ``peer-identity`` callback: ``(peer: Peer)``.
PeerIdentityCallback: TypeAlias = Callable[[Peer], object]
#: A ``peer-disconnected`` callback: ``(peer: Peer)``.
PeerDisconnectedCallback: TypeAlias = Callable[[Peer], object]
#: A ``peer-joined`` callback: ``(document_id: str, peer: Peer)``.
PeerJoinedCallback: TypeAlias = Callable[[str, Peer], object]
#: A ``peer-left`` callback: ``(document_id: str, peer: Peer)``.
PeerLeftCallback: TypeAlias = Callable[[str, Peer], object]
#: A ``presence-changed`` callback: ``(document_id: str, peers: tuple[Peer, ...])``.
PresenceChangedCallback: TypeAlias = Callable[[str, tuple[Peer, ...]], object]
#: An ``ephemeral-message`` callback: ``(document_id: str, sender: Peer, payload: Any)``.
EphemeralMessageCallback: TypeAlias = Callable[[str, Peer, Any], object]
#: A ``state-changed`` callback: ``(document_id: str, peer: Peer, state: Mapping[str, Any])``.
StateChangedCallback: TypeAlias = Callable[[str, Peer, Mapping[str, Any]], object]
#: An ``error`` callback: ``(error: RatatoskrError)``.
ErrorCallback: TypeAlias = Callable[[RatatoskrError], object]

_Connected = TypeVar("_Connected", bound=ConnectedCallback)
_Disconnected = TypeVar("_Disconnected", bound=DisconnectedCallback)
_Reconnecting = TypeVar("_Reconnecting", bound=ReconnectingCallback)
_PeerIdentity = TypeVar("_PeerIdentity", bound=PeerIdentityCallback)
_PeerDisconnected = TypeVar("_PeerDisconnected", bound=PeerDisconnectedCallback)
_PeerJoined = TypeVar("_PeerJoined", bound=PeerJoinedCallback)
_PeerLeft = TypeVar("_PeerLeft", bound=PeerLeftCallback)
_PresenceChanged = TypeVar("_PresenceChanged", bound=PresenceChangedCallback)
_EphemeralMessage = TypeVar("_EphemeralMessage", bound=EphemeralMessageCallback)
_StateChanged = TypeVar("_StateChanged", bound=StateChangedCallback)
_Error = TypeVar("_Error", bound=ErrorCallback)


class EventSource:
    """``on``, ``once`` and ``off`` over an event emitter (``self._emitter``:
    pyee's, in the asyncio client)."""

    __slots__ = ()
    #: the facade's emitter (pyee's interface: ``on``, ``once``, ``remove_listener``)
    _emitter: Any

    @overload
    def on(self, event: Literal["connected"]) -> Callable[[_Connected], _Connected]: ...
    @overload
    def on(self, event: Literal["connected"], callback: _Connected) -> _Connected: ...
    @overload
    def on(self, event: Literal["disconnected"]) -> Callable[[_Disconnected], _Disconnected]: ...
    @overload
    def on(self, event: Literal["disconnected"], callback: _Disconnected) -> _Disconnected: ...
    @overload
    def on(self, event: Literal["reconnecting"]) -> Callable[[_Reconnecting], _Reconnecting]: ...
    @overload
    def on(self, event: Literal["reconnecting"], callback: _Reconnecting) -> _Reconnecting: ...
    @overload
    def on(self, event: Literal["peer-identity"]) -> Callable[[_PeerIdentity], _PeerIdentity]: ...
    @overload
    def on(self, event: Literal["peer-identity"], callback: _PeerIdentity) -> _PeerIdentity: ...
    @overload
    def on(
        self, event: Literal["peer-disconnected"]
    ) -> Callable[[_PeerDisconnected], _PeerDisconnected]: ...
    @overload
    def on(
        self, event: Literal["peer-disconnected"], callback: _PeerDisconnected
    ) -> _PeerDisconnected: ...
    @overload
    def on(self, event: Literal["peer-joined"]) -> Callable[[_PeerJoined], _PeerJoined]: ...
    @overload
    def on(self, event: Literal["peer-joined"], callback: _PeerJoined) -> _PeerJoined: ...
    @overload
    def on(self, event: Literal["peer-left"]) -> Callable[[_PeerLeft], _PeerLeft]: ...
    @overload
    def on(self, event: Literal["peer-left"], callback: _PeerLeft) -> _PeerLeft: ...
    @overload
    def on(
        self, event: Literal["presence-changed"]
    ) -> Callable[[_PresenceChanged], _PresenceChanged]: ...
    @overload
    def on(
        self, event: Literal["presence-changed"], callback: _PresenceChanged
    ) -> _PresenceChanged: ...
    @overload
    def on(
        self, event: Literal["ephemeral-message"]
    ) -> Callable[[_EphemeralMessage], _EphemeralMessage]: ...
    @overload
    def on(
        self, event: Literal["ephemeral-message"], callback: _EphemeralMessage
    ) -> _EphemeralMessage: ...
    @overload
    def on(self, event: Literal["state-changed"]) -> Callable[[_StateChanged], _StateChanged]: ...
    @overload
    def on(self, event: Literal["state-changed"], callback: _StateChanged) -> _StateChanged: ...
    @overload
    def on(self, event: Literal["error"]) -> Callable[[_Error], _Error]: ...
    @overload
    def on(self, event: Literal["error"], callback: _Error) -> _Error: ...
    def on(self, event: EventName, callback: Callable[..., object] | None = None) -> Any:
        """Call ``callback`` every time ``event`` fires; without ``callback``,
        a decorator that registers the function it decorates (and returns it).

        Raises:
            ValueError: ``event`` is not one of the documented event names.
        """
        _check(event)
        if callback is None:
            return self._emitter.on(event)
        return self._emitter.on(event, callback)

    @overload
    def once(self, event: Literal["connected"]) -> Callable[[_Connected], _Connected]: ...
    @overload
    def once(self, event: Literal["connected"], callback: _Connected) -> _Connected: ...
    @overload
    def once(self, event: Literal["disconnected"]) -> Callable[[_Disconnected], _Disconnected]: ...
    @overload
    def once(self, event: Literal["disconnected"], callback: _Disconnected) -> _Disconnected: ...
    @overload
    def once(self, event: Literal["reconnecting"]) -> Callable[[_Reconnecting], _Reconnecting]: ...
    @overload
    def once(self, event: Literal["reconnecting"], callback: _Reconnecting) -> _Reconnecting: ...
    @overload
    def once(self, event: Literal["peer-identity"]) -> Callable[[_PeerIdentity], _PeerIdentity]: ...
    @overload
    def once(self, event: Literal["peer-identity"], callback: _PeerIdentity) -> _PeerIdentity: ...
    @overload
    def once(
        self, event: Literal["peer-disconnected"]
    ) -> Callable[[_PeerDisconnected], _PeerDisconnected]: ...
    @overload
    def once(
        self, event: Literal["peer-disconnected"], callback: _PeerDisconnected
    ) -> _PeerDisconnected: ...
    @overload
    def once(self, event: Literal["peer-joined"]) -> Callable[[_PeerJoined], _PeerJoined]: ...
    @overload
    def once(self, event: Literal["peer-joined"], callback: _PeerJoined) -> _PeerJoined: ...
    @overload
    def once(self, event: Literal["peer-left"]) -> Callable[[_PeerLeft], _PeerLeft]: ...
    @overload
    def once(self, event: Literal["peer-left"], callback: _PeerLeft) -> _PeerLeft: ...
    @overload
    def once(
        self, event: Literal["presence-changed"]
    ) -> Callable[[_PresenceChanged], _PresenceChanged]: ...
    @overload
    def once(
        self, event: Literal["presence-changed"], callback: _PresenceChanged
    ) -> _PresenceChanged: ...
    @overload
    def once(
        self, event: Literal["ephemeral-message"]
    ) -> Callable[[_EphemeralMessage], _EphemeralMessage]: ...
    @overload
    def once(
        self, event: Literal["ephemeral-message"], callback: _EphemeralMessage
    ) -> _EphemeralMessage: ...
    @overload
    def once(self, event: Literal["state-changed"]) -> Callable[[_StateChanged], _StateChanged]: ...
    @overload
    def once(self, event: Literal["state-changed"], callback: _StateChanged) -> _StateChanged: ...
    @overload
    def once(self, event: Literal["error"]) -> Callable[[_Error], _Error]: ...
    @overload
    def once(self, event: Literal["error"], callback: _Error) -> _Error: ...
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
    def off(self, event: Literal["connected"], callback: ConnectedCallback) -> None: ...
    @overload
    def off(self, event: Literal["disconnected"], callback: DisconnectedCallback) -> None: ...
    @overload
    def off(self, event: Literal["reconnecting"], callback: ReconnectingCallback) -> None: ...
    @overload
    def off(self, event: Literal["peer-identity"], callback: PeerIdentityCallback) -> None: ...
    @overload
    def off(
        self, event: Literal["peer-disconnected"], callback: PeerDisconnectedCallback
    ) -> None: ...
    @overload
    def off(self, event: Literal["peer-joined"], callback: PeerJoinedCallback) -> None: ...
    @overload
    def off(self, event: Literal["peer-left"], callback: PeerLeftCallback) -> None: ...
    @overload
    def off(
        self, event: Literal["presence-changed"], callback: PresenceChangedCallback
    ) -> None: ...
    @overload
    def off(
        self, event: Literal["ephemeral-message"], callback: EphemeralMessageCallback
    ) -> None: ...
    @overload
    def off(self, event: Literal["state-changed"], callback: StateChangedCallback) -> None: ...
    @overload
    def off(self, event: Literal["error"], callback: ErrorCallback) -> None: ...
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
