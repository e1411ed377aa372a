"""Typed frames of the Ratatoskr wire contract, and their CBOR codec. No I/O.

One frozen dataclass per frame type in ``docs/protocol.md``. :func:`decode` turns
the bytes of one WebSocket frame into one of them, validating every field it
relies on; :func:`encode` does the reverse. Anything malformed raises
:class:`~ratatoskr_client.errors.ProtocolError` and nothing else. A well-formed
map whose ``type`` this version does not know decodes to :class:`UnknownFrame`,
so a newer server never crashes an older client.

Attribute names are Python style (``peer_id``); the wire uses automerge-repo's
camelCase (``peerId``). ``to_wire()`` gives the wire map of a frame.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal, TypeAlias, cast

import cbor2

from ..errors import ProtocolError
from .codec import dumps, loads_strict

__all__ = [
    "FEATURES",
    "MAX_DOCUMENT_ID_BYTES",
    "MAX_PEER_ID_BYTES",
    "MAX_SESSION_ID_BYTES",
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
    "decode",
    "decode_payload",
    "encode",
    "encode_payload",
    "fits_utf8",
]

#: The ``features`` our relay announces in ``auth_ok``.
FEATURES: Final = ("identity", "presence", "ephemeral")

#: Longest document id (``documentId``, sidecar ids included) accepted, in UTF-8 bytes.
MAX_DOCUMENT_ID_BYTES: Final = 256
#: Longest peer id (``peerId``, ``senderId``, ``targetId``, ``clientPeerId``, and
#: the entries of ``peers``) accepted, in UTF-8 bytes.
MAX_PEER_ID_BYTES: Final = 128
#: Longest ephemeral ``sessionId`` accepted, in UTF-8 bytes.
MAX_SESSION_ID_BYTES: Final = 128
# Ids of at most this many characters fit whatever they contain (UTF-8 spends at
# most 4 bytes per character): the hot paths check them without encoding.
_DOC_CHARS: Final = MAX_DOCUMENT_ID_BYTES // 4
_PEER_CHARS: Final = MAX_PEER_ID_BYTES // 4
_SESSION_CHARS: Final = MAX_SESSION_ID_BYTES // 4

PresenceStatus: TypeAlias = Literal["join", "leave", "heartbeat"]
_PRESENCE_STATUSES: Final = frozenset(("join", "leave", "heartbeat"))
_MAX_FLOAT: Final = sys.float_info.max


# --------------------------------------------------------------------------- helpers


def _describe(value: object) -> str:
    if value is None:
        return "null"
    return type(value).__name__


def _fail(frame: str, key: str, expected: str, value: object) -> ProtocolError:
    if value is _MISSING:
        return ProtocolError(f"{frame} frame: missing required field {key!r}")
    return ProtocolError(f"{frame} frame: field {key!r} must be {expected}, got {_describe(value)}")


_MISSING: Final = object()


def _str(m: Mapping[str, Any], key: str, frame: str) -> str:
    value = m.get(key, _MISSING)
    if type(value) is not str or not value:
        raise _fail(frame, key, "a non-empty string", value)
    return value


def fits_utf8(value: str, limit: int) -> bool:
    """True if ``value`` is at most ``limit`` bytes in UTF-8."""
    return len(value) * 4 <= limit or len(value.encode("utf-8", "surrogatepass")) <= limit


def _id(m: Mapping[str, Any], key: str, frame: str, limit: int) -> str:
    value = _str(m, key, frame)
    if not fits_utf8(value, limit):
        raise ProtocolError(f"{frame} frame: field {key!r} is longer than {limit} bytes")
    return value


def _opt_id(m: Mapping[str, Any], key: str, frame: str, limit: int) -> str | None:
    value = _opt_str(m, key, frame)
    if value is not None and not fits_utf8(value, limit):
        raise ProtocolError(f"{frame} frame: field {key!r} is longer than {limit} bytes")
    return value


def _opt_str(m: Mapping[str, Any], key: str, frame: str) -> str | None:
    value = m.get(key)
    if value is None or type(value) is str:
        return value
    raise _fail(frame, key, "a string or null", value)


def _bytes(m: Mapping[str, Any], key: str, frame: str) -> bytes:
    value = m.get(key, _MISSING)
    if type(value) is not bytes:
        raise _fail(frame, key, "a CBOR byte string", value)
    return value


def _count(m: Mapping[str, Any], key: str, frame: str) -> int:
    value = m.get(key, _MISSING)
    # bool is an int subclass in Python; CBOR true is not a count.
    if type(value) is not int or value < 0:
        raise _fail(frame, key, "a non-negative integer", value)
    return value


# --------------------------------------------------------------------------- frames


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
        return {"id": self.id, "name": self.name, "isAnonymous": self.is_anonymous}

    @staticmethod
    def from_wire(value: object, frame: str, *, strict: bool) -> UserInfo:
        if not isinstance(value, dict):
            raise _fail(frame, "user", "a map", value)
        uid = _opt_str(value, "id", f"{frame}.user")
        name = value.get("name", _MISSING)
        if name is _MISSING and not strict:
            name = None
        elif type(name) is not str and not (name is None and not strict):
            raise _fail(f"{frame}.user", "name", "a string", name)
        anon = value.get("isAnonymous", _MISSING)
        if anon is _MISSING and not strict:
            anon = uid is None
        elif type(anon) is not bool:
            raise _fail(f"{frame}.user", "isAnonymous", "a boolean", anon)
        return UserInfo(uid, name, anon)


class Frame:
    """Base class of every frame. ``TYPE`` is the wire ``type`` string."""

    __slots__ = ()
    TYPE: ClassVar[str] = ""

    def to_wire(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class AuthFrame(Frame):
    """Client → server, first frame: a token, or ``anonymous=True``."""

    TYPE: ClassVar[str] = "auth"
    token: str | None = None
    anonymous: bool = False

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"type": "auth"}
        if self.token is not None:
            wire["token"] = self.token
        if self.anonymous:
            wire["anonymous"] = True
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

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "type": "auth_ok",
            "peerId": self.peer_id,
            "clientPeerId": self.client_peer_id,
            "user": self.user.to_wire() if self.user is not None else None,
        }
        if self.features is not None:
            wire["features"] = list(self.features)
        return wire


@dataclass(frozen=True, slots=True)
class AuthErrorFrame(Frame):
    """Server → client: credentials refused; the server closes the socket next."""

    TYPE: ClassVar[str] = "auth_error"
    error: str
    message: str = ""

    def to_wire(self) -> dict[str, Any]:
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
        return {"type": "peer_identity", "peerId": self.peer_id, "user": self.user.to_wire()}


@dataclass(frozen=True, slots=True)
class PeerDisconnectedFrame(Frame):
    """Server → client: a peer's socket closed."""

    TYPE: ClassVar[str] = "peer_disconnected"
    peer_id: str

    def to_wire(self) -> dict[str, Any]:
        return {"type": "peer_disconnected", "peerId": self.peer_id}


@dataclass(frozen=True, slots=True)
class PeerJoinedDocFrame(Frame):
    """Server → client: a peer entered a document we are present in."""

    TYPE: ClassVar[str] = "peer_joined_doc"
    document_id: str
    peer_id: str

    def to_wire(self) -> dict[str, Any]:
        return {"type": "peer_joined_doc", "documentId": self.document_id, "peerId": self.peer_id}


@dataclass(frozen=True, slots=True)
class PeerLeftDocFrame(Frame):
    """Server → client: a peer left (or timed out of, or disconnected from) a document."""

    TYPE: ClassVar[str] = "peer_left_doc"
    document_id: str
    peer_id: str

    def to_wire(self) -> dict[str, Any]:
        return {"type": "peer_left_doc", "documentId": self.document_id, "peerId": self.peer_id}


@dataclass(frozen=True, slots=True)
class DocPresenceStateFrame(Frame):
    """Server → joiner: everyone present in a document, the joiner included, in join order."""

    TYPE: ClassVar[str] = "doc_presence_state"
    document_id: str
    peers: tuple[str, ...]

    def to_wire(self) -> dict[str, Any]:
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
        return {"type": "presence", "status": self.status, "documentId": self.document_id}

    @staticmethod
    def from_payload(payload: object) -> PresenceMessage | None:
        """The presence message in ``payload``, or None if it is not one.

        Raises:
            ProtocolError: ``payload`` says ``type: "presence"`` but is malformed.
        """
        if type(payload) is not dict or payload.get("type") != "presence":
            return None
        status = payload.get("status", _MISSING)
        # Check the type first: `in` on a frozenset hashes the value, and a CBOR
        # array or map (list, dict) is unhashable (TypeError instead of ProtocolError).
        if type(status) is not str or status not in _PRESENCE_STATUSES:
            raise _fail("presence", "status", '"join", "leave" or "heartbeat"', status)
        document_id = _id(payload, "documentId", "presence", MAX_DOCUMENT_ID_BYTES)
        return PresenceMessage(cast(PresenceStatus, status), document_id)


# --------------------------------------------------------------------------- codec


def encode(frame: Frame) -> bytes:
    """Encode one frame as the bytes of a binary WebSocket message."""
    return cbor2.dumps(frame.to_wire())


def encode_payload(payload: Any) -> bytes:
    """CBOR-encode an application payload for an ephemeral frame's ``data``.

    Raises:
        PayloadError: the payload is not CBOR-encodable.
    """
    return dumps(payload)


def decode_payload(data: bytes) -> Any:
    """Decode an ephemeral frame's ``data`` (exactly one CBOR item).

    Raises:
        ProtocolError: ``data`` is not a single well-formed CBOR item.
    """
    return loads_strict(data, "ephemeral data")


def _p_auth(m: dict[str, Any]) -> AuthFrame:
    token = _opt_str(m, "token", "auth")
    anonymous = m.get("anonymous", False)
    if type(anonymous) is not bool:
        raise _fail("auth", "anonymous", "a boolean", anonymous)
    return AuthFrame(token, anonymous)


def _p_auth_ok(m: dict[str, Any]) -> AuthOkFrame:
    user_raw = m.get("user")
    user = None if user_raw is None else UserInfo.from_wire(user_raw, "auth_ok", strict=False)
    features_raw = m.get("features")
    features: tuple[str, ...] | None = None
    if features_raw is not None:
        if type(features_raw) is not list or any(type(f) is not str for f in features_raw):
            raise _fail("auth_ok", "features", "a list of strings", features_raw)
        features = tuple(features_raw)
    return AuthOkFrame(
        _id(m, "peerId", "auth_ok", MAX_PEER_ID_BYTES),
        _id(m, "clientPeerId", "auth_ok", MAX_PEER_ID_BYTES),
        user,
        features,
    )


def _p_auth_error(m: dict[str, Any]) -> AuthErrorFrame:
    return AuthErrorFrame(
        _str(m, "error", "auth_error"), _opt_str(m, "message", "auth_error") or ""
    )


def _p_error(m: dict[str, Any]) -> ErrorFrame:
    retry = m.get("retryAfter")
    # `0 <= retry <= max float` also refuses nan, inf, and integers too large
    # for float() (which would raise OverflowError, not ProtocolError).
    if retry is not None and (type(retry) not in (int, float) or not 0 <= retry <= _MAX_FLOAT):
        raise _fail("error", "retryAfter", "a finite non-negative number", retry)
    return ErrorFrame(
        _str(m, "error", "error"),
        _opt_str(m, "message", "error") or "",
        _opt_id(m, "documentId", "error", MAX_DOCUMENT_ID_BYTES),
        None if retry is None else float(retry),
    )


def _p_peer_identity(m: dict[str, Any]) -> PeerIdentityFrame:
    # Hot during a reconnect storm (N frames per client): check the well-formed
    # shape inline; anything else takes the helpers, which say what is wrong.
    pid = m.get("peerId")
    user = m.get("user")
    if type(pid) is str and pid and len(pid) <= _PEER_CHARS and type(user) is dict:
        uid = user.get("id")
        name = user.get("name")
        anon = user.get("isAnonymous")
        if (uid is None or type(uid) is str) and type(name) is str and type(anon) is bool:
            return PeerIdentityFrame(pid, UserInfo(uid, name, anon))
    return PeerIdentityFrame(
        _id(m, "peerId", "peer_identity", MAX_PEER_ID_BYTES),
        UserInfo.from_wire(m.get("user", _MISSING), "peer_identity", strict=True),
    )


def _p_peer_disconnected(m: dict[str, Any]) -> PeerDisconnectedFrame:
    return PeerDisconnectedFrame(_id(m, "peerId", "peer_disconnected", MAX_PEER_ID_BYTES))


def _p_peer_joined(m: dict[str, Any]) -> PeerJoinedDocFrame:
    doc = m.get("documentId")
    pid = m.get("peerId")
    if (
        type(doc) is str
        and 0 < len(doc) <= _DOC_CHARS
        and type(pid) is str
        and 0 < len(pid) <= _PEER_CHARS
    ):
        return PeerJoinedDocFrame(doc, pid)
    t = "peer_joined_doc"
    return PeerJoinedDocFrame(
        _id(m, "documentId", t, MAX_DOCUMENT_ID_BYTES), _id(m, "peerId", t, MAX_PEER_ID_BYTES)
    )


def _p_peer_left(m: dict[str, Any]) -> PeerLeftDocFrame:
    doc = m.get("documentId")
    pid = m.get("peerId")
    if (
        type(doc) is str
        and 0 < len(doc) <= _DOC_CHARS
        and type(pid) is str
        and 0 < len(pid) <= _PEER_CHARS
    ):
        return PeerLeftDocFrame(doc, pid)
    t = "peer_left_doc"
    return PeerLeftDocFrame(
        _id(m, "documentId", t, MAX_DOCUMENT_ID_BYTES), _id(m, "peerId", t, MAX_PEER_ID_BYTES)
    )


def _p_presence_state(m: dict[str, Any]) -> DocPresenceStateFrame:
    peers = m.get("peers", _MISSING)
    if type(peers) is not list or any(type(p) is not str or not p for p in peers):
        raise _fail("doc_presence_state", "peers", "a list of peer id strings", peers)
    if any(not fits_utf8(p, MAX_PEER_ID_BYTES) for p in peers):
        raise ProtocolError(
            f"doc_presence_state frame: a peer id is longer than {MAX_PEER_ID_BYTES} bytes"
        )
    return DocPresenceStateFrame(
        _id(m, "documentId", "doc_presence_state", MAX_DOCUMENT_ID_BYTES), tuple(peers)
    )


def _p_ephemeral(m: dict[str, Any]) -> EphemeralFrame:
    # The hot path of both the relay and the client: check a well-formed frame
    # inline; anything else goes through the field helpers, which say what is wrong.
    get = m.get
    sender = get("senderId")
    target = get("targetId")
    doc = get("documentId")
    count = get("count")
    sid = get("sessionId")
    data = get("data")
    if (
        type(doc) is str
        and 0 < len(doc) <= _DOC_CHARS
        and type(count) is int
        and count >= 0
        and type(sid) is str
        and 0 < len(sid) <= _SESSION_CHARS
        and type(data) is bytes
        and (sender is None or (type(sender) is str and len(sender) <= _PEER_CHARS))
        and (target is None or (type(target) is str and len(target) <= _PEER_CHARS))
    ):
        return _new_ephemeral(sender or "", target or "", doc, count, sid, data)
    t = "ephemeral"
    # The relay overwrites senderId/targetId, so a client may leave them out.
    return EphemeralFrame(
        _opt_id(m, "senderId", t, MAX_PEER_ID_BYTES) or "",
        _opt_id(m, "targetId", t, MAX_PEER_ID_BYTES) or "",
        _id(m, "documentId", t, MAX_DOCUMENT_ID_BYTES),
        _count(m, "count", t),
        _id(m, "sessionId", t, MAX_SESSION_ID_BYTES),
        _bytes(m, "data", t),
    )


# A frozen dataclass's __init__ goes through object.__setattr__ once per field;
# setting the slots through their descriptors builds the same object in half the
# time (this runs once per ephemeral message received, by the relay and clients).
_EPHEMERAL_SLOTS: Final = tuple(
    EphemeralFrame.__dict__[name].__set__
    for name in ("sender_id", "target_id", "document_id", "count", "session_id", "data")
)


def _new_ephemeral(
    sender_id: str, target_id: str, document_id: str, count: int, session_id: str, data: bytes
) -> EphemeralFrame:
    frame: EphemeralFrame = object.__new__(EphemeralFrame)
    s_sender, s_target, s_doc, s_count, s_session, s_data = _EPHEMERAL_SLOTS
    s_sender(frame, sender_id)
    s_target(frame, target_id)
    s_doc(frame, document_id)
    s_count(frame, count)
    s_session(frame, session_id)
    s_data(frame, data)
    return frame


def _p_request(m: dict[str, Any]) -> RequestFrame:
    t = "request"
    return RequestFrame(
        _opt_id(m, "senderId", t, MAX_PEER_ID_BYTES) or "",
        _opt_id(m, "targetId", t, MAX_PEER_ID_BYTES) or "",
        _id(m, "documentId", t, MAX_DOCUMENT_ID_BYTES),
        _bytes(m, "data", t),
    )


def _p_sync(m: dict[str, Any]) -> SyncFrame:
    t = "sync"
    return SyncFrame(
        _opt_id(m, "senderId", t, MAX_PEER_ID_BYTES) or "",
        _opt_id(m, "targetId", t, MAX_PEER_ID_BYTES) or "",
        _id(m, "documentId", t, MAX_DOCUMENT_ID_BYTES),
        _bytes(m, "data", t),
    )


def _p_doc_unavailable(m: dict[str, Any]) -> DocUnavailableFrame:
    t = "doc-unavailable"
    return DocUnavailableFrame(
        _opt_id(m, "senderId", t, MAX_PEER_ID_BYTES) or "",
        _opt_id(m, "targetId", t, MAX_PEER_ID_BYTES) or "",
        _id(m, "documentId", t, MAX_DOCUMENT_ID_BYTES),
    )


_PARSERS: Final[dict[str, Callable[[dict[str, Any]], Frame]]] = {
    "auth": _p_auth,
    "auth_ok": _p_auth_ok,
    "auth_error": _p_auth_error,
    "error": _p_error,
    "peer_identity": _p_peer_identity,
    "peer_disconnected": _p_peer_disconnected,
    "peer_joined_doc": _p_peer_joined,
    "peer_left_doc": _p_peer_left,
    "doc_presence_state": _p_presence_state,
    "ephemeral": _p_ephemeral,
    "request": _p_request,
    "sync": _p_sync,
    "doc-unavailable": _p_doc_unavailable,
}


# The relay sends each identity and presence change, byte for byte the same, to
# every peer concerned. When many clients share a process (bots, load tests, test
# suites) they all decode the same bytes: for these frame types, which are
# immutable, the frame is decoded once and shared. Bounded, oldest entry first.
_SHARED_TYPES: Final = (
    PeerIdentityFrame,
    PeerJoinedDocFrame,
    PeerLeftDocFrame,
    PeerDisconnectedFrame,
)
_SHARED: Final[dict[bytes, Frame]] = {}
_SHARED_MAX_ENTRIES: Final = 1024
_SHARED_MAX_BYTES: Final = 512  # such frames are ~100 bytes; never hash big ones
# How ephemeral frames start (our relay's, and any encoder's that puts `type` first).
_EPHEMERAL_HEAD: Final = b"\xa7dtypeiephemeral"


def decode(data: bytes | bytearray | memoryview) -> Frame:
    """Decode the bytes of one binary WebSocket message into a frame.

    Frames are immutable, so decoding the same bytes twice may return the same
    object (identity and presence frames are shared this way between the clients
    of one process).

    Raises:
        ProtocolError: not exactly one CBOR map, no string ``type``, or a known
            frame type with a missing or wrongly typed field. Nothing else is raised.
    """
    key = (
        data
        if type(data) is bytes
        and len(data) <= _SHARED_MAX_BYTES
        and not data.startswith(_EPHEMERAL_HEAD)  # never shared: don't hash them
        else None
    )
    if key is not None:
        cached = _SHARED.get(key)
        if cached is not None:
            return cached
    value = loads_strict(data)
    if type(value) is not dict:
        raise ProtocolError(f"frame must be a CBOR map, got {_describe(value)}")
    frame_type = value.get("type", _MISSING)
    if type(frame_type) is not str:
        raise ProtocolError(f"frame must have a string 'type', got {_describe(frame_type)}")
    parser = _PARSERS.get(frame_type)
    if parser is None:
        return UnknownFrame(frame_type, value)
    frame = parser(value)
    if key is not None and type(frame) in _SHARED_TYPES:
        if len(_SHARED) >= _SHARED_MAX_ENTRIES:
            # Another thread may evict at the same time: losing that race is harmless.
            with contextlib.suppress(KeyError, RuntimeError, StopIteration):
                del _SHARED[next(iter(_SHARED))]
        _SHARED[key] = frame
    return frame
