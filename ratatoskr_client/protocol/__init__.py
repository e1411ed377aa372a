"""The wire contract as code: typed frames and their CBOR codec. No I/O.

Shared by :class:`~ratatoskr_client.RatatoskrClient` and the reference relay.
See ``docs/protocol.md`` for the rules these frames follow.
"""

from .codec import cbor_bytes, cbor_map_header, cbor_text, cbor_uint, loads_strict
from .messages import (
    FEATURES,
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
    PresenceMessage,
    PresenceStatus,
    RequestFrame,
    SyncFrame,
    UnknownFrame,
    UserInfo,
    decode,
    decode_payload,
    encode,
    encode_payload,
)

__all__ = [
    "FEATURES",
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
    "cbor_bytes",
    "cbor_map_header",
    "cbor_text",
    "cbor_uint",
    "decode",
    "decode_payload",
    "encode",
    "encode_payload",
    "loads_strict",
]
