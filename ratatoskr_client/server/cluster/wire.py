"""What the relays of a cluster tell each other through Redis. No I/O.

Names (all under one prefix per Redis database, ``ratatoskr:<db>``, because
Redis pub/sub channels are shared by every database of a server):

* the **cluster channel** ``ratatoskr:<db>:cluster`` (plain pub/sub, every
  relay subscribes): :class:`Hello`, :class:`Bye`, :class:`PeerUp`,
  :class:`PeerGone`;
* the **resume channel** ``ratatoskr:<db>:resume`` (plain pub/sub, every
  relay that resumes across relays subscribes): the resume of a peer held by
  another relay (:class:`Claim`, :class:`Handover`, :class:`Refusal`,
  addressed to one node, which the others ignore; :class:`Moved`, for
  everyone). A channel of their own, so that a relay of an earlier version,
  which would refuse a batch holding a kind it does not know, never gets one;
* one **document channel** per document, ``ratatoskr:<db>:doc:<document id>``
  (sharded pub/sub, ``SSUBSCRIBE``; a relay subscribes while a local peer is
  present in the document): :class:`Joined`, :class:`Left`, :class:`Relayed`;
* the **node table** ``ratatoskr:<db>:nodes``, a sorted set of node ids scored
  by the time (Redis server time, in ms) after which the node counts as dead;
* per node, two hashes: ``ratatoskr:<db>:node:<id>:peers`` (peer id -> the
  user and the peer's identity key, as :func:`encode_user`) and ``ratatoskr:<db>:node:<id>:docs``
  (document id -> the node's local peers present, as :func:`encode_members`).

A Redis message is one version byte (``0x01``), the sender's 12-character
node id in ASCII, then a CBOR array of one or more *messages*, each a CBOR map
whose ``t`` says what it is (see :func:`encode_body`). A relay sends the
messages for one channel that it has queued at once as one array (see
:func:`encode_batch`): one Redis command, one delivery per subscriber. The
fixed-size header lets a relay skip its own messages, which Redis delivers
back to it, without decoding them.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import cbor2

from ...errors import ProtocolError
from ...protocol import (
    MAX_COUNT,
    MAX_DOCUMENT_ID_BYTES,
    MAX_PEER_ID_BYTES,
    MAX_SESSION_ID_BYTES,
    UserInfo,
    fits_utf8,
    loads_strict,
)
from ..config import database_of
from ..core.resume import HandedPeer, HandedState

__all__ = [
    "MAX_BATCH",
    "NODE_ID_LENGTH",
    "WIRE_VERSION",
    "BusMessage",
    "Bye",
    "Claim",
    "Handover",
    "Hello",
    "Joined",
    "Left",
    "Moved",
    "Names",
    "PeerGone",
    "PeerUp",
    "Refusal",
    "Relayed",
    "batch_messages",
    "belongs_on",
    "decode_members",
    "decode_message",
    "decode_peer",
    "decode_user",
    "encode_batch",
    "encode_body",
    "encode_members",
    "encode_message",
    "encode_user",
    "header",
    "is_node_id",
    "new_node_id",
    "text",
]

#: The first byte of every message; a relay ignores messages of other versions.
WIRE_VERSION: Final = 1
#: Characters in a node id (lowercase hex).
NODE_ID_LENGTH: Final = 12
#: Messages in one Redis message at most.
MAX_BATCH: Final = 1000
_HEX: Final = frozenset("0123456789abcdef")


def new_node_id() -> str:
    """A fresh random node id (12 lowercase hex characters)."""
    return secrets.token_hex(NODE_ID_LENGTH // 2)


def is_node_id(value: object) -> bool:
    """True if ``value`` has the shape of a node id."""
    return isinstance(value, str) and len(value) == NODE_ID_LENGTH and set(value) <= _HEX


def header(node: str) -> bytes:
    """The bytes every message from ``node`` starts with."""
    return bytes((WIRE_VERSION,)) + node.encode("ascii")


def text(value: bytes | str) -> str:
    """A Redis reply (a key, a channel, a hash field) as text."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class Names:
    """The channel and key names of one cluster."""

    prefix: str

    @classmethod
    def for_url(cls, url: str) -> Names:
        """The names for the cluster that shares the Redis database of ``url``."""
        return cls(f"ratatoskr:{database_of(url)}")

    @property
    def cluster_channel(self) -> str:
        """The channel every relay subscribes to."""
        return f"{self.prefix}:cluster"

    @property
    def resume_channel(self) -> str:
        """The channel of the resumes across relays (every relay that can
        resume across relays subscribes; one of an earlier version does not,
        so it never meets these messages)."""
        return f"{self.prefix}:resume"

    @property
    def nodes_key(self) -> str:
        """The sorted set of live nodes (score: deadline in Redis server ms)."""
        return f"{self.prefix}:nodes"

    def peers_key(self, node: str) -> str:
        """The hash of ``node``'s authenticated peers."""
        return f"{self.prefix}:node:{node}:peers"

    def docs_key(self, node: str) -> str:
        """The hash of ``node``'s local presence, per document."""
        return f"{self.prefix}:node:{node}:docs"

    def doc_channel(self, document_id: str) -> str:
        """The sharded channel of one document."""
        return f"{self.prefix}:doc:{document_id}"

    def document_of(self, channel: bytes | str) -> str | None:
        """The document id of a document channel, or None for any other channel."""
        name = text(channel)
        start = f"{self.prefix}:doc:"
        return name[len(start) :] if name.startswith(start) else None


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Hello:
    """Cluster channel: the node (re)wrote its state; read it again."""


@dataclass(frozen=True, slots=True)
class Bye:
    """Cluster channel: the node is stopping; drop its peers now."""


#: The longest identity key accepted from another relay (ours are at most
#: ``user:`` + a user id, or ``anon:`` + 32 hex digits).
MAX_IDENTITY_BYTES: Final = 512


@dataclass(frozen=True, slots=True)
class PeerUp:
    """Cluster channel: a peer authenticated on the node.

    ``identity`` is the peer's identity key for the gossip rule
    (``ratatoskr_client.server.core.identity``): every relay must apply the same
    rule to its messages. None when the node sent none (a relay of a version
    before identities): its sessions then belong to that peer alone.
    """

    peer_id: str
    user: UserInfo
    identity: str | None = None


@dataclass(frozen=True, slots=True)
class PeerGone:
    """Cluster channel: a peer's connection to the node closed."""

    peer_id: str


@dataclass(frozen=True, slots=True)
class Joined:
    """Document channel: a peer on the node became present in the document."""

    peer_id: str


@dataclass(frozen=True, slots=True)
class Left:
    """Document channel: a peer on the node is no longer present in the document;
    ``gone``: because its connection closed (its ``peer_disconnected`` follows
    the leave, for the peers that knew it only through this document)."""

    peer_id: str
    gone: bool = False


@dataclass(frozen=True, slots=True)
class Relayed:
    """Document channel: the node accepted an ephemeral message from one of its peers."""

    peer_id: str
    count: int
    session_id: str
    data: bytes


#: The longest resume request id (ours are 16 hex digits).
MAX_REQUEST_BYTES: Final = 64
#: Documents in one :class:`Handover` at most (a peer's memberships are
#: bounded by ``max_documents_per_peer``, 1000 by default).
MAX_HANDOVER_DOCUMENTS: Final = 10_000


@dataclass(frozen=True, slots=True)
class Claim:
    """Resume channel, for node ``to``: a client asks the sending node to
    resume ``peer_id``, which ``to`` holds. ``digest`` is the SHA-256 of the
    secret it presented (the secret itself never crosses Redis); ``user`` the
    user its credentials were verified as (None: anonymous)."""

    to: str
    request: str
    peer_id: str
    digest: bytes
    user: str | None


@dataclass(frozen=True, slots=True)
class Handover:
    """Resume channel, for node ``to``: the answer to its :class:`Claim`
    ``request``: the peer is the claimant's now (the sender no longer has it,
    and announced no leave): who it is, where it is present, its state."""

    to: str
    request: str
    peer: HandedPeer


@dataclass(frozen=True, slots=True)
class Refusal:
    """Resume channel, for node ``to``: its :class:`Claim` ``request`` is
    refused (wrong secret, other credentials, no such peer held): the client
    is a new peer."""

    to: str
    request: str


@dataclass(frozen=True, slots=True)
class Moved:
    """Resume channel: the sending node handed its peer ``peer_id`` over to
    node ``node`` (a resume there): the same peer, elsewhere; nobody is told."""

    peer_id: str
    node: str


BusMessage: TypeAlias = (
    Hello | Bye | PeerUp | PeerGone | Joined | Left | Relayed | Claim | Handover | Refusal | Moved
)


def belongs_on(message: BusMessage, document_id: str | None) -> bool:
    """True if ``message`` may come on the channel it came on: :class:`Joined`,
    :class:`Left` and :class:`Relayed` on a document channel (``document_id``
    is its document), every other kind on the cluster channel (None). A
    message on the wrong kind of channel is malformed, and ignored."""
    return isinstance(message, Joined | Left | Relayed) == (document_id is not None)


def encode_user(user: UserInfo, identity: str | None = None) -> bytes:
    """A peer as stored in a node's peers hash: ``{u: id, n: name, a:
    anonymous}``, and ``i``, its identity key, when given."""
    body: dict[str, Any] = {"u": user.id, "n": user.name, "a": user.is_anonymous}
    if identity is not None:
        body["i"] = identity
    return cbor2.dumps(body)


def encode_message(node: str, message: BusMessage) -> bytes:
    """The bytes of a Redis message from ``node`` carrying only ``message``."""
    return encode_batch(node, [encode_body(message)])


def encode_batch(node: str, bodies: list[bytes]) -> bytes:
    """The bytes of a Redis message from ``node`` carrying ``bodies`` (from
    :func:`encode_body`), in order: the header, then a CBOR array of them."""
    n = len(bodies)
    if n < 24:
        head = bytes((0x80 | n,))
    elif n < 0x10000:
        head = struct.pack(">BH", 0x99, n)
    else:
        head = struct.pack(">BI", 0x9A, n)
    return header(node) + head + b"".join(bodies)


def batch_messages(
    node: str, queued: list[tuple[str, bool, bytes]]
) -> list[tuple[str, bool, bytes]]:
    """``(channel, sharded, body)`` messages queued by ``node``, in order, as
    few Redis messages ``(channel, sharded, bytes)`` as order allows.

    A peer's messages depend on each other only through its identity: its
    ``peer`` comes before its joins, its ``gone`` after (or, harmlessly,
    before) its leaves. So the cluster channel's messages (not sharded) stay
    where they are, each run of them one batch, and between two of them the
    document channels' messages are grouped per channel, in order within each.
    """
    out: list[tuple[str, bool, bytes]] = []
    run: list[bytes] = []
    run_channel = ""
    segment: dict[str, list[bytes]] = {}

    def flush_segment() -> None:
        for channel, bodies in segment.items():
            for i in range(0, len(bodies), MAX_BATCH):
                out.append((channel, True, encode_batch(node, bodies[i : i + MAX_BATCH])))
        segment.clear()

    def flush_run() -> None:
        if run:
            out.append((run_channel, False, encode_batch(node, run[:])))
            run.clear()

    for channel, sharded, body in queued:
        if sharded:
            flush_run()
            segment.setdefault(channel, []).append(body)
        else:
            flush_segment()
            if run and (channel != run_channel or len(run) >= MAX_BATCH):
                flush_run()
            run_channel = channel
            run.append(body)
    flush_run()
    flush_segment()
    return out


def encode_body(message: BusMessage) -> bytes:
    """One message as a CBOR map. By ``t``: ``hello``, ``bye``: nothing else;
    ``peer``: ``p`` (peer id), the user's ``u``, ``n``, ``a``, and ``i`` (its
    identity key; a relay that sends none is still understood); ``gone``,
    ``join``: ``p``; ``leave``: ``p``, and ``g: true`` when the connection
    closed; ``msg``: ``p``, ``c`` (count), ``s`` (sessionId), ``d`` (the
    payload's bytes)."""
    body: dict[str, Any]
    match message:
        case Relayed(peer_id, count, session_id, data):
            body = {"t": "msg", "p": peer_id, "c": count, "s": session_id, "d": data}
        case Joined(peer_id):
            body = {"t": "join", "p": peer_id}
        case Left(peer_id, gone):
            body = {"t": "leave", "p": peer_id}
            if gone:
                body["g"] = True
        case PeerUp(peer_id, user, identity):
            body = {"t": "peer", "p": peer_id, "u": user.id, "n": user.name, "a": user.is_anonymous}
            if identity is not None:
                body["i"] = identity
        case PeerGone(peer_id):
            body = {"t": "gone", "p": peer_id}
        case Claim(to, request, peer_id, digest, user):
            body = {"t": "claim", "to": to, "r": request, "p": peer_id, "h": digest, "u": user}
        case Handover(to, request, peer):
            user = peer.user
            body = {
                "t": "handover",
                "to": to,
                "r": request,
                "p": peer.peer_id,
                "u": user.id,
                "n": user.name,
                "a": user.is_anonymous,
                "i": peer.identity,
                "d": list(peer.documents),
                "s": [[h.document_id, h.session_id, h.count, h.state] for h in peer.states],
            }
        case Refusal(to, request):
            body = {"t": "refused", "to": to, "r": request}
        case Moved(peer_id, node):
            body = {"t": "moved", "p": peer_id, "o": node}
        case Hello():
            body = {"t": "hello"}
        case Bye():
            body = {"t": "bye"}
    return cbor2.dumps(body)


def _text(body: dict[str, Any], key: str, limit: int) -> str:
    value = body.get(key)
    if type(value) is not str or not value or not fits_utf8(value, limit):
        raise ProtocolError(f"bus message: {key!r} must be a non-empty string, got {value!r}")
    return value


def _user(body: dict[str, Any]) -> UserInfo:
    uid, name, anon = body.get("u"), body.get("n"), body.get("a")
    if not (uid is None or type(uid) is str) or type(name) is not str or type(anon) is not bool:
        raise ProtocolError(f"bus message: malformed user {body!r}")
    return UserInfo(uid, name, anon)


def _identity(body: dict[str, Any]) -> str | None:
    value = body.get("i")
    if value is None:
        return None
    return _text(body, "i", MAX_IDENTITY_BYTES)


def decode_peer(data: bytes) -> tuple[UserInfo, str | None]:
    """A peer from a node's peers hash: its user and identity key (None if the
    node stored none). Raises ProtocolError."""
    body = loads_strict(data, "bus user")
    if type(body) is not dict:
        raise ProtocolError("bus user: not a map")
    return _user(body), _identity(body)


def decode_user(data: bytes) -> UserInfo:
    """A user from a node's peers hash (raises ProtocolError)."""
    return decode_peer(data)[0]


def decode_message(data: bytes) -> tuple[str, list[BusMessage]]:
    """``(node id, messages)`` from the bytes of one Redis message.

    Raises:
        ProtocolError: not a message of this version, or malformed.
    """
    if len(data) <= 1 + NODE_ID_LENGTH or data[0] != WIRE_VERSION:
        raise ProtocolError("bus message: unknown version or truncated header")
    node = data[1 : 1 + NODE_ID_LENGTH].decode("ascii", "replace")
    if not is_node_id(node):
        raise ProtocolError(f"bus message: bad node id {node!r}")
    bodies = loads_strict(data[1 + NODE_ID_LENGTH :], "bus message")
    if type(bodies) is not list or not bodies:
        raise ProtocolError("bus message: not a non-empty array of messages")
    return node, [_decode_body(body) for body in bodies]


def _decode_body(body: object) -> BusMessage:
    if type(body) is not dict:
        raise ProtocolError("bus message: a message is not a map")
    kind = body.get("t")
    if kind == "msg":
        count, data = body.get("c"), body.get("d")
        if type(count) is not int or not 0 <= count <= MAX_COUNT or type(data) is not bytes:
            raise ProtocolError("bus message: malformed msg")
        return Relayed(
            _text(body, "p", MAX_PEER_ID_BYTES),
            count,
            _text(body, "s", MAX_SESSION_ID_BYTES),
            data,
        )
    if kind == "join":
        return Joined(_text(body, "p", MAX_PEER_ID_BYTES))
    if kind == "leave":
        return Left(_text(body, "p", MAX_PEER_ID_BYTES), body.get("g") is True)
    if kind == "peer":
        return PeerUp(_text(body, "p", MAX_PEER_ID_BYTES), _user(body), _identity(body))
    if kind == "gone":
        return PeerGone(_text(body, "p", MAX_PEER_ID_BYTES))
    if kind == "claim":
        digest, user = body.get("h"), body.get("u")
        if type(digest) is not bytes or len(digest) != 32:
            raise ProtocolError("bus message: malformed claim")
        if user is not None:
            user = _text(body, "u", MAX_IDENTITY_BYTES)
        return Claim(
            _node(body, "to"),
            _text(body, "r", MAX_REQUEST_BYTES),
            _text(body, "p", MAX_PEER_ID_BYTES),
            digest,
            user,
        )
    if kind == "handover":
        return _handover(body)
    if kind == "refused":
        return Refusal(_node(body, "to"), _text(body, "r", MAX_REQUEST_BYTES))
    if kind == "moved":
        return Moved(_text(body, "p", MAX_PEER_ID_BYTES), _node(body, "o"))
    if kind == "hello":
        return Hello()
    if kind == "bye":
        return Bye()
    raise ProtocolError(f"bus message: unknown kind {kind!r}")


def _node(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not is_node_id(value):
        raise ProtocolError(f"bus message: {key!r} must be a node id, got {value!r}")
    assert isinstance(value, str)
    return value


def _handover(body: dict[str, Any]) -> Handover:
    docs, states = body.get("d"), body.get("s")
    if (
        type(docs) is not list
        or len(docs) > MAX_HANDOVER_DOCUMENTS
        or not all(type(d) is str and d and fits_utf8(d, MAX_DOCUMENT_ID_BYTES) for d in docs)
    ):
        raise ProtocolError("bus message: a handover's documents must be document ids")
    if type(states) is not list or len(states) > len(docs):
        raise ProtocolError("bus message: a handover's states must be a list")
    handed: list[HandedState] = []
    for item in states:
        if (
            type(item) is not list
            or len(item) != 4
            or type(item[0]) is not str
            or type(item[1]) is not str
            or not fits_utf8(item[1], MAX_SESSION_ID_BYTES)
            or type(item[2]) is not int
            or not 0 <= item[2] <= MAX_COUNT
            or type(item[3]) is not dict
        ):
            raise ProtocolError("bus message: malformed handover state")
        handed.append(HandedState(item[0], item[1], item[2], item[3]))
    peer = HandedPeer(
        _text(body, "p", MAX_PEER_ID_BYTES),
        _user(body),
        _text(body, "i", MAX_IDENTITY_BYTES),
        tuple(docs),
        tuple(handed),
    )
    return Handover(_node(body, "to"), _text(body, "r", MAX_REQUEST_BYTES), peer)


def encode_members(peer_ids: list[str] | tuple[str, ...]) -> bytes:
    """A node's local peers present in one document, in join order."""
    return cbor2.dumps(list(peer_ids))


def decode_members(data: bytes) -> tuple[str, ...]:
    """The inverse of :func:`encode_members` (raises ProtocolError)."""
    value = loads_strict(data, "bus members")
    if type(value) is not list or not all(
        type(v) is str and v and fits_utf8(v, MAX_PEER_ID_BYTES) for v in value
    ):
        raise ProtocolError("bus members: not a list of peer ids")
    return tuple(value)
