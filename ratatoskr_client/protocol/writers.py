"""Writing frames: every byte the client and the relay send is made here. No I/O.

The wire's writers; its readers are :mod:`.readers` and :mod:`.fastpaths`.

* :func:`encode` writes any frame from its wire map (:meth:`~.frames.Frame.to_wire`),
  :func:`encode_payload` an application payload;
* the **ephemeral frame** is spliced from pre-encoded parts instead, because
  it is written once per message by every client and once per recipient by
  the relay. Both sides write the seven fields, ``type`` first, with the keys
  of :mod:`.constants`, in one of two layouts that the reader's fast path
  (:mod:`.fastpaths`) reads by position:

  - **as a peer sends it** (:func:`ephemeral`, :func:`ephemeral_head`,
    :func:`ephemeral_tail`, :func:`ephemeral_frame`): automerge-repo's key
    order, ``type, senderId, targetId, documentId, count, sessionId, data``,
    so our client's frames are byte for byte what :func:`encode` writes for
    the same :class:`~.frames.EphemeralFrame`, and what a JS peer sends;
  - **as the relay relays it** (:func:`ephemeral_prefix`): ``targetId``
    last, so the frame is encoded once per message and each recipient's
    ``targetId`` (:func:`target_suffix`) is appended to it: no per-recipient
    re-encoding of the payload. It decodes to the same frame as the plain
    encoding of the same fields (``tests/unit/test_codec.py`` checks both
    layouts against :func:`encode` and :func:`~.readers.decode_plain`);

* ``auth_ok`` in its two shapes: ours (:func:`auth_ok`, with ``features``)
  and the upstream server's (:func:`upstream_auth_ok`, which a relay with
  ``server_presence = false`` imitates: no features, a user of its id only).
"""

from __future__ import annotations

from typing import Any

import cbor2

from .codec import cbor_bytes, cbor_text, cbor_uint, dumps
from .constants import (
    EPHEMERAL_HEAD,
    KEY_COUNT,
    KEY_DATA,
    KEY_DOCUMENT_ID,
    KEY_SENDER_ID,
    KEY_SESSION_ID,
    KEY_TARGET_ID,
)
from .frames import AuthOkFrame, Frame, UserInfo

__all__ = [
    "auth_ok",
    "encode",
    "encode_payload",
    "ephemeral",
    "ephemeral_frame",
    "ephemeral_head",
    "ephemeral_prefix",
    "ephemeral_tail",
    "target_suffix",
    "upstream_auth_ok",
]

_dumps = cbor2.dumps


def encode(frame: Frame) -> bytes:
    """Encode one frame as the bytes of a binary WebSocket message."""
    return _dumps(frame.to_wire())


def encode_payload(payload: Any, what: str = "payload") -> bytes:
    """CBOR-encode an application payload for an ephemeral frame's ``data``.

    Raises:
        PayloadError: the payload is not CBOR-encodable, or encodes to something
            receivers would refuse; the message calls it ``what``.
    """
    return dumps(payload, what)


# --------------------------------------------------------------------------- ephemeral: a peer's


def ephemeral_head(sender_id: str, target_id: str) -> bytes:
    """A peer's ephemeral frame up to its ``documentId`` value: what stays the
    same for every frame of one connection (the client encodes it once)."""
    return b"".join(
        (
            EPHEMERAL_HEAD,
            KEY_SENDER_ID,
            cbor_text(sender_id),
            KEY_TARGET_ID,
            cbor_text(target_id),
            KEY_DOCUMENT_ID,
        )
    )


def ephemeral_tail(session_id: str) -> bytes:
    """The part of a peer's ephemeral frame between its ``count`` value and its
    ``data`` value: the ``sessionId`` and the ``data`` key (one per session)."""
    return KEY_SESSION_ID + cbor_text(session_id) + KEY_DATA


def ephemeral_frame(head: bytes, document_id: str, count: int, tail: bytes, data: bytes) -> bytes:
    """A peer's ephemeral frame from its connection's :func:`ephemeral_head`
    and :func:`ephemeral_tail`: equal to :func:`encode` of the same
    :class:`~.frames.EphemeralFrame`."""
    return b"".join(
        (head, cbor_text(document_id), KEY_COUNT, cbor_uint(count), tail, cbor_bytes(data))
    )


def ephemeral(
    sender_id: str, target_id: str, document_id: str, count: int, session_id: str, data: bytes
) -> bytes:
    """One ephemeral frame as a peer sends it (automerge-repo's key order)."""
    return ephemeral_frame(
        ephemeral_head(sender_id, target_id),
        document_id,
        count,
        ephemeral_tail(session_id),
        data,
    )


# --------------------------------------------------------------------------- ephemeral: relayed


def target_suffix(peer_id: str) -> bytes:
    """What completes an :func:`ephemeral_prefix` for the recipient ``peer_id``
    (its id as CBOR text; the relay encodes it once per connection)."""
    return cbor_text(peer_id)


def ephemeral_prefix(
    sender: bytes, document_id: str, count: int, session_id: str, data: bytes
) -> bytes:
    """A relayed ephemeral frame up to its ``targetId`` value (``sender`` is the
    sender's :func:`target_suffix`, the CBOR text of its peer id). Encoded once
    per message, with targetId last, so each recipient's id is spliced onto the
    end: no per-recipient re-encoding of the payload."""
    return b"".join(
        (
            EPHEMERAL_HEAD,
            KEY_SENDER_ID,
            sender,
            KEY_DOCUMENT_ID,
            cbor_text(document_id),
            KEY_COUNT,
            cbor_uint(count),
            KEY_SESSION_ID,
            cbor_text(session_id),
            KEY_DATA,
            cbor_bytes(data),
            KEY_TARGET_ID,
        )
    )


# --------------------------------------------------------------------------- auth_ok


def auth_ok(
    server_peer_id: str,
    client_peer_id: str,
    user: UserInfo,
    features: tuple[str, ...],
    resume_secret: str | None = None,
    *,
    resumed: bool = False,
    documents: tuple[str, ...] | None = None,
) -> bytes:
    """Our relay's ``auth_ok``: the user as verified, the ``features`` it
    offers, the secret that resumes this peer and, for a resumed peer, the
    documents it is present in (docs/protocol.md, "Authentication", "Resuming")."""
    return encode(
        AuthOkFrame(
            server_peer_id, client_peer_id, user, features, resume_secret, resumed, documents
        )
    )


def upstream_auth_ok(server_peer_id: str, client_peer_id: str, user_id: str | None) -> bytes:
    """The upstream server's ``auth_ok``: no ``features`` (so clients know
    there is no server-side presence), and ``user`` only ``{id}`` for a token
    user, null for an anonymous one (docs/protocol.md, "Differences from the
    upstream server")."""
    return _dumps(
        {
            "type": "auth_ok",
            "peerId": server_peer_id,
            "clientPeerId": client_peer_id,
            "user": None if user_id is None else {"id": user_id},
        }
    )
