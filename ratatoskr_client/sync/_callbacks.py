"""The callback signature of each event, for typed ``on()`` / ``once()``.

Each type variable is bound by the signature the client calls that event's
callbacks with (those of :mod:`ratatoskr_client.events`, grouped by
signature), so mypy checks a callback against its event and a decorated
function keeps its type.
A callback's return value is ignored (a coroutine is run as a task). A
callback passed directly is checked against its event's ``...Callback`` type
(lambdas included); the decorator form keeps the decorated function's type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeAlias, TypeVar

from ..core.membership import Peer
from ..errors import RatatoskrError

__all__ = [
    "ErrorCallback",
    "ErrorEvent",
    "MembershipCallback",
    "MembershipEvent",
    "MessageCallback",
    "MessageEvent",
    "PeerCallback",
    "PeerEvent",
    "PresenceCallback",
    "PresenceEvent",
    "ReconnectingCallback",
    "ReconnectingEvent",
    "StateCallback",
    "StateEvent",
]

#: ``(peer: Peer)``
PeerEvent: TypeAlias = Literal["connected", "peer-identity", "peer-disconnected"]
#: ``(error: RatatoskrError)`` — for ``disconnected``, the reason
ErrorEvent: TypeAlias = Literal["disconnected", "error"]
#: ``(attempt: int, delay: float)``
ReconnectingEvent: TypeAlias = Literal["reconnecting"]
#: ``(document_id: str, peer: Peer)``
MembershipEvent: TypeAlias = Literal["peer-joined", "peer-left"]
#: ``(document_id: str, peers: tuple[Peer, ...])``
PresenceEvent: TypeAlias = Literal["presence-changed"]
#: ``(document_id: str, sender: Peer, payload: Any)``
MessageEvent: TypeAlias = Literal["ephemeral-message"]
#: ``(document_id: str, peer: Peer, state: Mapping[str, Any])``
StateEvent: TypeAlias = Literal["state-changed"]

#: The callback types: a lambda passed for an event is checked against them.
PeerCallback: TypeAlias = Callable[[Peer], object]
ErrorCallback: TypeAlias = Callable[[RatatoskrError], object]
ReconnectingCallback: TypeAlias = Callable[[int, float], object]
MembershipCallback: TypeAlias = Callable[[str, Peer], object]
PresenceCallback: TypeAlias = Callable[[str, tuple[Peer, ...]], object]
MessageCallback: TypeAlias = Callable[[str, Peer, Any], object]
StateCallback: TypeAlias = Callable[[str, Peer, Mapping[str, Any]], object]

# For the decorator form: a decorated function keeps its own type.
PeerCallbackT = TypeVar("PeerCallbackT", bound=PeerCallback)
ErrorCallbackT = TypeVar("ErrorCallbackT", bound=ErrorCallback)
ReconnectingCallbackT = TypeVar("ReconnectingCallbackT", bound=ReconnectingCallback)
MembershipCallbackT = TypeVar("MembershipCallbackT", bound=MembershipCallback)
PresenceCallbackT = TypeVar("PresenceCallbackT", bound=PresenceCallback)
MessageCallbackT = TypeVar("MessageCallbackT", bound=MessageCallback)
StateCallbackT = TypeVar("StateCallbackT", bound=StateCallback)
