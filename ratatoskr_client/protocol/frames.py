"""The frame types of the wire contract, one frozen dataclass each. No I/O.

One class per frame type in ``docs/protocol.md`` (and :class:`UnknownFrame` for
a well-formed map whose ``type`` this version does not know), plus the two
small value types inside frames: :class:`UserInfo` and the presence control
payload :class:`PresenceMessage`. Attribute names are Python style
(``peer_id``); the wire uses automerge-repo's camelCase (``peerId``);
``to_wire()`` gives the wire map of a frame. Reading is in :mod:`.readers`
and :mod:`.fastpaths`, writing in :mod:`.writers`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal, TypeAlias, cast

from .constants import MAX_DOCUMENT_ID_BYTES, PRESENCE_TYPE
from .fields import MISSING, fail, ident, opt_text

__all__ = [
    "AuthErrorFrame",
    "AuthFrame",
    "AuthOkFrame",
    "DocPresenceStateFrame",
    "DocUnavailableFrame",
    "EphemeralFrame",
    "ErrorFrame",
    "Frame",
    "PeerDisconnectedFrame",
    "PeerIdentityFrame",
    "PeerJoinedDocFrame",
    "PeerLeftDocFrame",
    "PresenceMessage",
    "PresenceStatus",
    "RequestFrame",
    "SyncFrame",
    "UnknownFrame",
    "UserInfo",
]

PresenceStatus: TypeAlias = Literal["join", "leave", "heartbeat"]
_PRESENCE_STATUSES: Final = frozenset(("join", "leave", "heartbeat"))


@dataclass(frozen=True, slots=True)
class UserInfo:
    """The ``user`` map of ``auth_ok`` and ``peer_identity``.

    ``id`` is None for anonymous users. ``name`` is None only when a server does
    not send one (the upstream server's ``auth_ok`` today).
    """

    id: str | None
    name: str | None
    is_anonymous: bool

    def to_wire(self) -> dict[str, Any]:
        """The wire map (``id``, ``name``, ``isAnonymous``)."""
        return {"id": self.id, "name": self.name, "isAnonymous": self.is_anonymous}

    @staticmethod
    def from_wire(value: object, frame: str, *, strict: bool) -> UserInfo:
        """Validate a decoded ``user`` map of ``frame``. ``strict`` requires
        ``name`` and ``isAnonymous`` (our relay's frames); without it a missing
        name is None and anonymity follows the id (the upstream server's
        ``auth_ok``).

        Raises:
            ProtocolError: the map or one of its fields is malformed.
        """
        if not isinstance(value, dict):
            raise fail(frame, "user", "a map", value)
        uid = opt_text(value, "id", f"{frame}.user")
        name = value.get("name", MISSING)
        if name is MISSING and not strict:
            name = None
        elif type(name) is not str and not (name is None and not strict):
            raise fail(f"{frame}.user", "name", "a string", name)
        anon = value.get("isAnonymous", MISSING)
        if anon is MISSING and not strict:
            anon = uid is None
        elif type(anon) is not bool:
            raise fail(f"{frame}.user", "isAnonymous", "a boolean", anon)
        return UserInfo(uid, name, anon)


class Frame:
    """Base class of every frame. ``TYPE`` is the wire ``type`` string."""

    __slots__ = ()
    TYPE: ClassVar[str] = ""

    def to_wire(self) -> dict[str, Any]:
        """The frame as the map that goes on the wire (camelCase keys)."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class AuthFrame(Frame):
    """Client → server, first frame: a token, or ``anonymous=True``."""

    TYPE: ClassVar[str] = "auth"
    token: str | None = None
    anonymous: bool = False
    #: our extension (feature ``"resume"``): the client can resume
    #: (``resume: true``), or resumes ``resume_peer`` with ``resume_secret``
    #: (``resume: {peerId, secret}``)
    resume: bool = False
    resume_peer: str | None = None
    resume_secret: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """The frame as the map that goes on the wire."""
        wire: dict[str, Any] = {"type": "auth"}
        if self.token is not None:
            wire["token"] = self.token
        if self.anonymous:
            wire["anonymous"] = True
        if self.resume_peer is not None and self.resume_secret is not None:
            wire["resume"] = {"peerId": self.resume_peer, "secret": self.resume_secret}
        elif self.resume:
            wire["resume"] = True
        return wire


@dataclass(frozen=True, slots=True)
class AuthOkFrame(Frame):
    """Server → client: authenticated. ``features`` is None when the server sends
    none (upstream today), which means "no server-side presence"."""

    TYPE: ClassVar[str] = "auth_ok"
    peer_id: str
    client_peer_id: str
    user: UserInfo | None
    features: tuple[str, ...] | None = None
    #: our extension (feature ``"resume"``): the secret that resumes this peer
    #: after an unclean drop, and whether this connection resumed one
    resume_secret: str | None = None
    resumed: bool = False
    #: our extension, with ``resumed``: the documents the resumed peer is
    #: present in on the relay (its client leaves those it left meanwhile);
    #: None when the server did not say
    documents: tuple[str, ...] | None = None

    def to_wire(self) -> dict[str, Any]:
        """The frame as the map that goes on the wire."""
        wire: dict[str, Any] = {
            "type": "auth_ok",
            "peerId": self.peer_id,
            "clientPeerId": self.client_peer_id,
            "user": self.user.to_wire() if self.user is not None else None,
        }
        if self.features is not None:
            wire["features"] = list(self.features)
        if self.resume_secret is not None:
            wire["resumeSecret"] = self.resume_secret
        if self.resumed:
            wire["resumed"] = True
        if self.documents is not None:
            wire["documents"] = list(self.documents)
        return wire


@dataclass(frozen=True, slots=True)
class AuthErrorFrame(Frame):
    """Server → client: credentials refused; the server closes the socket next."""

    TYPE: ClassVar[str] = "auth_error"
    error: str
    message: str = ""

    def to_wire(self) -> dict[str, Any]:
        """The frame as the map that goes on the wire."""
        return {"type": "auth_error", "error": self.error, "message": self.message}


@dataclass(frozen=True, slots=True)
class ErrorFrame(Frame):
    """Server → client: something was refused. ``error`` is the machine-readable code."""

    TYPE: ClassVar[str] = "error"
    error: str
    message: str = ""
    document_id: str | None = None
    retry_after: float | None = None

    def to_wire(self) -> dict[str, Any]:
        """The frame as the map that goes on the wire."""
        wire: dict[str, Any] = {"type": "error", "error": self.error, "message": self.message}
        if self.document_id is not None:
            wire["documentId"] = self.document_id
        if self.retry_after is not None:
            wire["retryAfter"] = self.retry_after
        return wire


@dataclass(frozen=True, slots=True)
class PeerIdentityFrame(Frame):
    """Server → client: the verified identity of a connected peer."""

    TYPE: ClassVar[str] = "peer_identity"
    peer_id: str
    user: UserInfo

    def to_wire(self) -> dict[str, Any]:
        """The frame as the map that goes on the wire."""
        return {"type": "peer_identity", "peerId": self.peer_id, "user": self.user.to_wire()}


@dataclass(frozen=True, slots=True)
class PeerDisconnectedFrame(Frame):
    """Server → client: a peer's socket closed."""

    TYPE: ClassVar[str] = "peer_disconnected"
    peer_id: str

    def to_wire(self) -> dict[str, Any]:
        """The frame as the map that goes on the wire."""
        return {"type": "peer_disconnected", "peerId": self.peer_id}


@dataclass(frozen=True, slots=True)
class PeerJoinedDocFrame(Frame):
    """Server → client: a peer entered a document we are present in."""

    TYPE: ClassVar[str] = "peer_joined_doc"
    document_id: str
    peer_id: str

    def to_wire(self) -> dict[str, Any]:
        """The frame as the map that goes on the wire."""
        return {"type": "peer_joined_doc", "documentId": self.document_id, "peerId": self.peer_id}


@dataclass(frozen=True, slots=True)
class PeerLeftDocFrame(Frame):
    """Server → client: a peer left (or timed out of, or disconnected from) a document."""

    TYPE: ClassVar[str] = "peer_left_doc"
    document_id: str
    peer_id: str

    def to_wire(self) -> dict[str, Any]:
        """The frame as the map that goes on the wire."""
        return {"type": "peer_left_doc", "documentId": self.document_id, "peerId": self.peer_id}


@dataclass(frozen=True, slots=True)
class DocPresenceStateFrame(Frame):
    """Server → joiner: everyone present in a document, the joiner included, in join order."""

    TYPE: ClassVar[str] = "doc_presence_state"
    document_id: str
    peers: tuple[str, ...]

    def to_wire(self) -> dict[str, Any]:
        """The frame as the map that goes on the wire."""
        return {
            "type": "doc_presence_state",
            "documentId": self.document_id,
            "peers": list(self.peers),
        }


@dataclass(frozen=True, slots=True)
class EphemeralFrame(Frame):
    """Both directions: an automerge-repo ephemeral message.

    ``data`` holds the CBOR encoding of the payload (see :func:`decode_payload`).
    ``count`` grows by one per message across every document a session sends to.
    """

    TYPE: ClassVar[str] = "ephemeral"
    sender_id: str
    target_id: str
    document_id: str
    count: int
    session_id: str
    data: bytes

    def to_wire(self) -> dict[str, Any]:
        """The frame as the map that goes on the wire."""
        # automerge-repo's key order, so our frames look exactly like a JS peer's.
        return {
            "type": "ephemeral",
            "senderId": self.sender_id,
            "targetId": self.target_id,
            "documentId": self.document_id,
            "count": self.count,
            "sessionId": self.session_id,
            "data": self.data,
        }


@dataclass(frozen=True, slots=True)
class RequestFrame(Frame):
    """automerge-repo: a peer asks for a document it does not have (subscribes to it)."""

    TYPE: ClassVar[str] = "request"
    sender_id: str
    target_id: str
    document_id: str
    data: bytes

    def to_wire(self) -> dict[str, Any]:
        """The frame as the map that goes on the wire."""
        return {
            "type": self.TYPE,
            "senderId": self.sender_id,
            "targetId": self.target_id,
            "documentId": self.document_id,
            "data": self.data,
        }


@dataclass(frozen=True, slots=True)
class SyncFrame(Frame):
    """automerge-repo: an Automerge sync message for a document."""

    TYPE: ClassVar[str] = "sync"
    sender_id: str
    target_id: str
    document_id: str
    data: bytes

    def to_wire(self) -> dict[str, Any]:
        """The frame as the map that goes on the wire."""
        return {
            "type": self.TYPE,
            "senderId": self.sender_id,
            "targetId": self.target_id,
            "documentId": self.document_id,
            "data": self.data,
        }


@dataclass(frozen=True, slots=True)
class DocUnavailableFrame(Frame):
    """automerge-repo: the sender does not have the requested document."""

    TYPE: ClassVar[str] = "doc-unavailable"
    sender_id: str
    target_id: str
    document_id: str

    def to_wire(self) -> dict[str, Any]:
        """The frame as the map that goes on the wire."""
        return {
            "type": self.TYPE,
            "senderId": self.sender_id,
            "targetId": self.target_id,
            "documentId": self.document_id,
        }


@dataclass(frozen=True, slots=True)
class UnknownFrame(Frame):
    """A well-formed frame whose ``type`` this version does not know.

    ``fields`` is the whole decoded map, ``type`` included.
    """

    type: str
    fields: Mapping[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        """The frame as the map that goes on the wire."""
        return {**self.fields, "type": self.type}


# --------------------------------------------------------------------------- presence payload


@dataclass(frozen=True, slots=True)
class PresenceMessage:
    """The payload (inside an ephemeral frame's ``data``) that signals presence.

    The relay consumes these; it never relays them to other peers.
    """

    status: PresenceStatus
    document_id: str

    def to_payload(self) -> dict[str, Any]:
        """The payload map to encode into an ephemeral frame's ``data``."""
        return {"type": PRESENCE_TYPE, "status": self.status, "documentId": self.document_id}

    @staticmethod
    def from_payload(payload: object) -> PresenceMessage | None:
        """The presence message in ``payload``, or None if it is not one.

        Raises:
            ProtocolError: ``payload`` says ``type: "presence"`` but is malformed.
        """
        if type(payload) is not dict or payload.get("type") != PRESENCE_TYPE:
            return None
        status = payload.get("status", MISSING)
        # Check the type first: `in` on a frozenset hashes the value, and a CBOR
        # array or map (list, dict) is unhashable (TypeError instead of ProtocolError).
        if type(status) is not str or status not in _PRESENCE_STATUSES:
            raise fail("presence", "status", '"join", "leave" or "heartbeat"', status)
        document_id = ident(payload, "documentId", "presence", MAX_DOCUMENT_ID_BYTES)
        return PresenceMessage(cast(PresenceStatus, status), document_id)
