"""The wire contract as code: constants, typed frames, their CBOR codec, the gossip rule. No I/O.

Shared by :class:`~ratatoskr_client.RatatoskrClient` and the reference relay.
See ``docs/protocol.md`` for the rules these frames follow. The modules, split
the way h11 splits its own:

* :mod:`.constants` — wire constants (prefixes, feature names, limits, timings);
* :mod:`.frames` — one frozen dataclass per frame type;
* :mod:`.fields` — validation of one decoded field each;
* :mod:`.readers` — the plain decoder (:func:`decode_plain`) and the payload's;
* :mod:`.fastpaths` — :func:`decode`, the plain decoder with shortcuts for hot frames;
* :mod:`.writers` — every frame either side sends: :func:`encode`, the
  ephemeral frame spliced from pre-encoded parts (a peer's layout and the
  relay's), ``auth_ok`` in our shape and upstream's;
* :mod:`.codec` — strict CBOR, and the CBOR heads the writers splice;
* :mod:`.gossip` — the gossip and replay rule (:class:`SessionOwners`).
"""

from .codec import (
    ALLOWED_TAGS,
    MAX_NESTING,
    cbor_bytes,
    cbor_map_header,
    cbor_text,
    cbor_uint,
    loads_strict,
)
from .constants import (
    EMPTY_DOC_SYNC,
    EPHEMERAL_PREFIX,
    FEATURE_REAUTH,
    FEATURE_SCOPED_IDENTITY,
    FEATURES,
    MAX_COUNT,
    MAX_DOCUMENT_ID_BYTES,
    MAX_PEER_ID_BYTES,
    MAX_SESSION_ID_BYTES,
    PRESENCE_MARKER,
    PRESENCE_TYPE,
)
from .fastpaths import decode
from .fields import fits_utf8
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
    PresenceMessage,
    PresenceStatus,
    RequestFrame,
    SyncFrame,
    UnknownFrame,
    UserInfo,
)
from .gossip import Admission, SessionOwners
from .readers import decode_payload, decode_plain
from .writers import encode, encode_payload

__all__ = [
    "ALLOWED_TAGS",
    "EMPTY_DOC_SYNC",
    "EPHEMERAL_PREFIX",
    "FEATURES",
    "FEATURE_REAUTH",
    "FEATURE_SCOPED_IDENTITY",
    "MAX_COUNT",
    "MAX_DOCUMENT_ID_BYTES",
    "MAX_NESTING",
    "MAX_PEER_ID_BYTES",
    "MAX_SESSION_ID_BYTES",
    "PRESENCE_MARKER",
    "PRESENCE_TYPE",
    "Admission",
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
    "SessionOwners",
    "SyncFrame",
    "UnknownFrame",
    "UserInfo",
    "cbor_bytes",
    "cbor_map_header",
    "cbor_text",
    "cbor_uint",
    "decode",
    "decode_payload",
    "decode_plain",
    "encode",
    "encode_payload",
    "fits_utf8",
    "loads_strict",
]
