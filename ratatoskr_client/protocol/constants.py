"""Wire constants shared by the client and the relay: one definition each. No I/O.

Everything here is part of the contract in ``docs/protocol.md`` (or of what the
upstream server and automerge-repo do, which the contract has to live with).
Both sides import these names; nothing else in the package spells them out.
"""

from __future__ import annotations

from typing import Final

from .codec import cbor_map_header, cbor_text

__all__ = [
    "AUTH_TIMEOUT",
    "EMPTY_DOC_SYNC",
    "EPHEMERAL_HEAD",
    "EPHEMERAL_PREFIX",
    "FEATURES",
    "FEATURE_PRESENCE",
    "FEATURE_REAUTH",
    "FEATURE_RESUME",
    "FEATURE_SCOPED_IDENTITY",
    "FEATURE_STATE_REPLAY",
    "KEY_COUNT",
    "KEY_DATA",
    "KEY_DOCUMENT_ID",
    "KEY_SENDER_ID",
    "KEY_SESSION_ID",
    "KEY_TARGET_ID",
    "MAX_COUNT",
    "MAX_DOCUMENT_ID_BYTES",
    "MAX_FRAME_SIZE",
    "MAX_IDENTITIES",
    "MAX_INCOMING_FRAME_SIZE",
    "MAX_PEER_ID_BYTES",
    "MAX_PRESENCE_PEERS",
    "MAX_SESSION_ID_BYTES",
    "PRESENCE_HEARTBEAT_INTERVAL",
    "PRESENCE_MARKER",
    "PRESENCE_TTL",
    "PRESENCE_TYPE",
    "RATE_LIMIT",
    "REANNOUNCE_DELAY",
    "STATE_HEARTBEAT",
    "STATE_INTERVAL",
    "STATE_TTL",
    "UPSTREAM_ANONYMOUS_LIMIT",
    "UPSTREAM_ANONYMOUS_WINDOW",
]

# --------------------------------------------------------------------------- ids and names

#: Document ids with this prefix are public relay channels (sidecars).
EPHEMERAL_PREFIX: Final = "eph:"
#: The ``features`` our relay announces in ``auth_ok`` (with ``identity_scope =
#: "global"``; in document scope it adds :data:`FEATURE_SCOPED_IDENTITY`).
FEATURES: Final = ("identity", "presence", "ephemeral")
#: The feature that means "this server keeps presence" (membership from the server).
#: In ``features``: the server accepts a new ``auth`` frame on an authenticated
#: connection (a fresh token for the same user) and tells a peer whose token
#: expired (``token_expired``) before it closes it (docs/protocol.md, "Re-authentication").
FEATURE_REAUTH: Final = "reauth"
FEATURE_PRESENCE: Final = "presence"
#: The feature that means "identities are scoped to documents": a peer learns
#: the identity of another only while they share a document (sent just before
#: the presence frame or message that needs it), and ``peer_disconnected``
#: only for peers it knew. Without it, every identity goes to everyone.
FEATURE_SCOPED_IDENTITY: Final = "scoped-identity"
#: The feature that means "the relay replays each present peer's latest
#: per-peer state to a joiner" (right after its ``doc_presence_state``): a
#: client need not re-announce its state when it hears a peer it did not know.
FEATURE_STATE_REPLAY: Final = "state-replay"
#: The feature that means "a connection lost without a close frame may be
#: resumed within a grace period" (``auth_ok`` then carries ``resume``).
FEATURE_RESUME: Final = "resume"
#: Longest document id (``documentId``, sidecar ids included) accepted, in UTF-8 bytes.
MAX_DOCUMENT_ID_BYTES: Final = 256
#: Longest peer id (``peerId``, ``senderId``, ``targetId``, ``clientPeerId``, and
#: the entries of ``peers``) accepted, in UTF-8 bytes.
MAX_PEER_ID_BYTES: Final = 128
#: Longest ephemeral ``sessionId`` accepted, in UTF-8 bytes.
MAX_SESSION_ID_BYTES: Final = 128
#: The largest ephemeral ``count`` accepted: 2**53 - 1, the largest integer a
#: JavaScript number holds exactly (automerge-repo counts from 0 in one). A
#: larger one is bad input (``invalid_message``); without a bound, one frame
#: with a huge count would outrank every later count of its session.
MAX_COUNT: Final = 2**53 - 1
#: The largest frame the relay processes by default, and the client sends.
MAX_FRAME_SIZE: Final = 64 * 1024
#: The largest frame a client reads by default: the relay's own hard limit (16
#: times its frame size, 1 MiB), beyond which it closes a socket with 1009 too.
#: What the relay sends is far smaller (a ``doc_presence_state`` of 10,000 of
#: its peers is about 220 KB), and a larger frame is refused while its header
#: is read, never buffered.
MAX_INCOMING_FRAME_SIZE: Final = 16 * MAX_FRAME_SIZE
#: The most peers a client holds in one document's presence: a
#: ``doc_presence_state`` with more entries, or a ``peer_joined_doc`` beyond
#: it, is refused whole. Ten times the 10,000 participants a document is built
#: for. A full document costs a client about 40 MiB when the server names
#: peers it never announced (measured), far less for announced ones (their
#: ``Peer`` objects are shared).
MAX_PRESENCE_PEERS: Final = 100_000
#: The most identities (``peer_identity``) a client holds at once; one beyond
#: it is refused. 100,000 identities cost a client about 40 MiB (measured).
MAX_IDENTITIES: Final = 100_000

# --------------------------------------------------------------------------- payloads

#: ``{"type": "presence", ...}`` payloads are presence control messages (join,
#: leave, heartbeat) that our relay consumes.
PRESENCE_TYPE: Final = "presence"
#: ``{"__presence": {...}}`` payloads are automerge-repo ``Presence`` messages
#: (per-peer state: snapshot, update, heartbeat, goodbye).
PRESENCE_MARKER: Final = "__presence"
#: The empty-document sync message automerge-repo sends in a ``request``; the
#: upstream server subscribes the connection to the document's ephemeral
#: messages when it sees one.
EMPTY_DOC_SYNC: Final = bytes.fromhex("42000001000000020102")

# --------------------------------------------------------------------------- ephemeral frames

#: How every ephemeral frame the relay and the client write begins: a CBOR map
#: of the seven fields, ``type`` first. The writer of both sides
#: (:mod:`ratatoskr_client.protocol.writers`) writes the rest from the encoded
#: keys below, and the reader reads frames laid out that way by position
#: (:mod:`ratatoskr_client.protocol.fastpaths`), so the two must agree byte
#: for byte: they are defined here once.
EPHEMERAL_HEAD: Final = cbor_map_header(7) + cbor_text("type") + cbor_text("ephemeral")
#: The ``senderId`` key of an ephemeral frame, CBOR-encoded.
KEY_SENDER_ID: Final = cbor_text("senderId")
#: The ``targetId`` key of an ephemeral frame, CBOR-encoded.
KEY_TARGET_ID: Final = cbor_text("targetId")
#: The ``documentId`` key of an ephemeral frame, CBOR-encoded.
KEY_DOCUMENT_ID: Final = cbor_text("documentId")
#: The ``count`` key of an ephemeral frame, CBOR-encoded.
KEY_COUNT: Final = cbor_text("count")
#: The ``sessionId`` key of an ephemeral frame, CBOR-encoded.
KEY_SESSION_ID: Final = cbor_text("sessionId")
#: The ``data`` key of an ephemeral frame, CBOR-encoded.
KEY_DATA: Final = cbor_text("data")

# --------------------------------------------------------------------------- timings and limits

#: Seconds between a client's presence heartbeats per entered document.
PRESENCE_HEARTBEAT_INTERVAL: Final = 30.0
#: Seconds without join or heartbeat after which the relay drops a peer from a document.
PRESENCE_TTL: Final = 90.0
#: Seconds a socket may stay unauthenticated (upstream and the relay).
AUTH_TIMEOUT: Final = 10.0
#: Relayed ephemeral messages per minute per connection on the relay, and the
#: client's own pacing by default.
RATE_LIMIT: Final = 600
#: automerge-repo ``Presence``: a heartbeat this long after the last message.
STATE_HEARTBEAT: Final = 15.0
#: automerge-repo ``Presence``: peers silent this long are forgotten.
STATE_TTL: Final = 45.0
#: automerge-repo ``Presence``: a snapshot is re-sent this long after hearing an unknown peer.
REANNOUNCE_DELAY: Final = 0.5
#: Our client: at most one coalesced state update per document per this many seconds.
STATE_INTERVAL: Final = 0.05
#: Upstream counts every frame of an anonymous connection: this many per window...
UPSTREAM_ANONYMOUS_LIMIT: Final = 100
#: ...of this many seconds, a fixed window that starts at the connection's
#: first frame (the next one starts at the first frame after it ends).
UPSTREAM_ANONYMOUS_WINDOW: Final = 60.0
