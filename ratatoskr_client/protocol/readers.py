"""Reading frames, the plain way: every field through :mod:`.fields`. No I/O.

The wire's readers; its writers are :mod:`.writers`. :func:`decode_plain` is
the reference decoder: strict CBOR (:func:`.codec.loads_strict`),
then one parser per frame type, each written with the field helpers only. The
decoder the client and the relay actually use, :func:`.fastpaths.decode`, takes
shortcuts for the frames that arrive by the thousand and must agree with this
one on every input (``tests/unit/test_protocol_fastpaths.py`` checks that).
Anything malformed raises :class:`~ratatoskr_client.errors.ProtocolError` and
nothing else; a well-formed map of a ``type`` this version does not know decodes
to :class:`~.frames.UnknownFrame`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from ..errors import ProtocolError
from .codec import loads_strict
from .constants import MAX_DOCUMENT_ID_BYTES, MAX_PEER_ID_BYTES, MAX_SESSION_ID_BYTES
from .fields import (
    MISSING,
    byte_string,
    count,
    describe,
    fail,
    finite_seconds,
    fits_utf8,
    ident,
    opt_ident,
    opt_text,
    text,
)
from .frames import (
    AuthErrorFrame,
    AuthFrame,
    AuthOkFrame,
    DocPresenceStateFrame,
    DocUnavailableFrame,
    EphemeralFrame,
    ErrorFrame,
    Frame,
    PeerDisconnectedFrame,
    PeerIdentityFrame,
    PeerJoinedDocFrame,
    PeerLeftDocFrame,
    RequestFrame,
    SyncFrame,
    UnknownFrame,
    UserInfo,
)

__all__ = [
    "PARSERS",
    "decode_map",
    "decode_payload",
    "decode_plain",
]


def decode_payload(data: bytes) -> Any:
    """Decode an ephemeral frame's ``data`` (exactly one CBOR item).

    Raises:
        ProtocolError: ``data`` is not a single well-formed CBOR item.
    """
    return loads_strict(data, "ephemeral data")


# --------------------------------------------------------------------------- parsers


def _auth(m: dict[str, Any]) -> AuthFrame:
    token = opt_text(m, "token", "auth")
    anonymous = m.get("anonymous", False)
    if type(anonymous) is not bool:
        raise fail("auth", "anonymous", "a boolean", anonymous)
    resume = m.get("resume", False)
    if type(resume) is bool:
        return AuthFrame(token, anonymous, resume)
    if type(resume) is not dict:
        raise fail("auth", "resume", "a boolean or a map {peerId, secret}", resume)
    return AuthFrame(
        token,
        anonymous,
        True,
        ident(resume, "peerId", "auth", MAX_PEER_ID_BYTES),
        ident(resume, "secret", "auth", MAX_PEER_ID_BYTES),
    )


def _auth_ok(m: dict[str, Any]) -> AuthOkFrame:
    user_raw = m.get("user")
    user = None if user_raw is None else UserInfo.from_wire(user_raw, "auth_ok", strict=False)
    features_raw = m.get("features")
    features: tuple[str, ...] | None = None
    if features_raw is not None:
        if type(features_raw) is not list or any(type(f) is not str for f in features_raw):
            raise fail("auth_ok", "features", "a list of strings", features_raw)
        features = tuple(features_raw)
    secret = opt_text(m, "resumeSecret", "auth_ok")
    resumed = m.get("resumed", False)
    if type(resumed) is not bool:
        raise fail("auth_ok", "resumed", "a boolean", resumed)
    docs_raw = m.get("documents")
    documents: tuple[str, ...] | None = None
    if docs_raw is not None:
        if type(docs_raw) is not list or not all(
            type(d) is str and d and fits_utf8(d, MAX_DOCUMENT_ID_BYTES) for d in docs_raw
        ):
            raise fail("auth_ok", "documents", "a list of document ids", docs_raw)
        documents = tuple(docs_raw)
    return AuthOkFrame(
        ident(m, "peerId", "auth_ok", MAX_PEER_ID_BYTES),
        ident(m, "clientPeerId", "auth_ok", MAX_PEER_ID_BYTES),
        user,
        features,
        secret,
        resumed,
        documents,
    )


def _auth_error(m: dict[str, Any]) -> AuthErrorFrame:
    return AuthErrorFrame(
        text(m, "error", "auth_error"), opt_text(m, "message", "auth_error") or ""
    )


def _error(m: dict[str, Any]) -> ErrorFrame:
    retry = finite_seconds(m, "retryAfter", "error")
    return ErrorFrame(
        text(m, "error", "error"),
        opt_text(m, "message", "error") or "",
        opt_ident(m, "documentId", "error", MAX_DOCUMENT_ID_BYTES),
        retry,
    )


def _peer_identity(m: dict[str, Any]) -> PeerIdentityFrame:
    return PeerIdentityFrame(
        ident(m, "peerId", "peer_identity", MAX_PEER_ID_BYTES),
        UserInfo.from_wire(m.get("user", MISSING), "peer_identity", strict=True),
    )


def _peer_disconnected(m: dict[str, Any]) -> PeerDisconnectedFrame:
    return PeerDisconnectedFrame(ident(m, "peerId", "peer_disconnected", MAX_PEER_ID_BYTES))


def _peer_joined(m: dict[str, Any]) -> PeerJoinedDocFrame:
    t = "peer_joined_doc"
    return PeerJoinedDocFrame(
        ident(m, "documentId", t, MAX_DOCUMENT_ID_BYTES), ident(m, "peerId", t, MAX_PEER_ID_BYTES)
    )


def _peer_left(m: dict[str, Any]) -> PeerLeftDocFrame:
    t = "peer_left_doc"
    return PeerLeftDocFrame(
        ident(m, "documentId", t, MAX_DOCUMENT_ID_BYTES), ident(m, "peerId", t, MAX_PEER_ID_BYTES)
    )


def _presence_state(m: dict[str, Any]) -> DocPresenceStateFrame:
    peers = m.get("peers", MISSING)
    if type(peers) is not list or any(type(p) is not str or not p for p in peers):
        raise fail("doc_presence_state", "peers", "a list of peer id strings", peers)
    if any(not fits_utf8(p, MAX_PEER_ID_BYTES) for p in peers):
        raise ProtocolError(
            f"doc_presence_state frame: a peer id is longer than {MAX_PEER_ID_BYTES} bytes"
        )
    return DocPresenceStateFrame(
        ident(m, "documentId", "doc_presence_state", MAX_DOCUMENT_ID_BYTES), tuple(peers)
    )


def _ephemeral(m: dict[str, Any]) -> EphemeralFrame:
    t = "ephemeral"
    # The relay overwrites senderId/targetId, so a client may leave them out.
    return EphemeralFrame(
        opt_ident(m, "senderId", t, MAX_PEER_ID_BYTES) or "",
        opt_ident(m, "targetId", t, MAX_PEER_ID_BYTES) or "",
        ident(m, "documentId", t, MAX_DOCUMENT_ID_BYTES),
        count(m, "count", t),
        ident(m, "sessionId", t, MAX_SESSION_ID_BYTES),
        byte_string(m, "data", t),
    )


def _request(m: dict[str, Any]) -> RequestFrame:
    t = "request"
    return RequestFrame(
        opt_ident(m, "senderId", t, MAX_PEER_ID_BYTES) or "",
        opt_ident(m, "targetId", t, MAX_PEER_ID_BYTES) or "",
        ident(m, "documentId", t, MAX_DOCUMENT_ID_BYTES),
        byte_string(m, "data", t),
    )


def _sync(m: dict[str, Any]) -> SyncFrame:
    t = "sync"
    return SyncFrame(
        opt_ident(m, "senderId", t, MAX_PEER_ID_BYTES) or "",
        opt_ident(m, "targetId", t, MAX_PEER_ID_BYTES) or "",
        ident(m, "documentId", t, MAX_DOCUMENT_ID_BYTES),
        byte_string(m, "data", t),
    )


def _doc_unavailable(m: dict[str, Any]) -> DocUnavailableFrame:
    t = "doc-unavailable"
    return DocUnavailableFrame(
        opt_ident(m, "senderId", t, MAX_PEER_ID_BYTES) or "",
        opt_ident(m, "targetId", t, MAX_PEER_ID_BYTES) or "",
        ident(m, "documentId", t, MAX_DOCUMENT_ID_BYTES),
    )


#: The parser of every known frame type, by wire ``type``.
PARSERS: Final[dict[str, Callable[[dict[str, Any]], Frame]]] = {
    "auth": _auth,
    "auth_ok": _auth_ok,
    "auth_error": _auth_error,
    "error": _error,
    "peer_identity": _peer_identity,
    "peer_disconnected": _peer_disconnected,
    "peer_joined_doc": _peer_joined,
    "peer_left_doc": _peer_left,
    "doc_presence_state": _presence_state,
    "ephemeral": _ephemeral,
    "request": _request,
    "sync": _sync,
    "doc-unavailable": _doc_unavailable,
}


def decode_map(value: object) -> tuple[dict[str, Any], str]:
    """Check that a decoded CBOR value is a frame: a map with a text ``type``.

    Raises:
        ProtocolError: it is not.
    """
    if type(value) is not dict:
        raise ProtocolError(f"frame must be a CBOR map, got {describe(value)}")
    frame_type = value.get("type", MISSING)
    if type(frame_type) is not str:
        raise ProtocolError(f"frame must have a string 'type', got {describe(frame_type)}")
    return value, frame_type


def decode_plain(data: bytes | bytearray | memoryview) -> Frame:
    """Decode the bytes of one binary WebSocket message into a frame, without
    any fast path or sharing: the reference for :func:`.fastpaths.decode`.

    Raises:
        ProtocolError: not exactly one CBOR map, no string ``type``, or a known
            frame type with a missing or wrongly typed field. Nothing else is raised.
    """
    value, frame_type = decode_map(loads_strict(data))
    parser = PARSERS.get(frame_type)
    if parser is None:
        return UnknownFrame(frame_type, value)
    return parser(value)
