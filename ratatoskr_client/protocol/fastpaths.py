"""The decoder in use: :func:`~.readers.decode_plain` with shortcuts for hot frames. No I/O.

Three shortcuts, all invisible in the result (``tests/unit/test_protocol_fastpaths.py``
decodes every frame type, well formed and not, with both decoders and requires
the same frame or the same error):

* **ephemeral frames read by position**: an ephemeral frame whose bytes are laid
  out the way our relay splices them, or the way our client and automerge-repo
  encode them (a map of exactly the seven fields, ``type`` first, in one of
  those two key orders, with definite lengths), is read field by field and
  proven complete by its position, without building the map. Every byte is
  checked: the heads and their major types, UTF-8, the id bounds, and that
  nothing follows the last field. Anything else, down to a needlessly long
  head, takes the general path below, which gives the same frame or says what
  is wrong. This is one per message received, on the relay and in every client.

* **inline field checks** for the frames that arrive by the thousand
  (``ephemeral``: one per message; ``peer_identity``, ``peer_joined_doc``,
  ``peer_left_doc``: N per client in a reconnect storm). A well-formed frame is
  checked with a few type tests and built directly; anything else takes the
  plain parser, which says what is wrong. Never a shortcut on the CBOR rules:
  every frame goes through :func:`~.codec.loads_strict`.
* **shared frames**: the relay sends each identity and presence change, byte
  for byte the same, to every peer concerned. Clients sharing a process (bots,
  load tests, test suites) all decode the same bytes: for these frame types,
  which are immutable, the frame is decoded once and shared. Bounded, oldest
  entry first.
* **shared states** (:func:`decode_state`): the same holds for the Presence
  messages of per-peer state (a map of one key, ``__presence``): every peer of
  a document receives the sender's bytes unchanged. Their payload, and the
  sender's and the session's id, are decoded once for the clients of a process
  and kept by each of them (the state they show): one copy of a peer's state
  values instead of one per client (a Locust user holds the states of the
  other nine users of its document: 5 KiB of copies each). Never done for
  other payloads, which go to the application, which may change them.
"""

from __future__ import annotations

import contextlib
from typing import Any, Final

from .codec import loads_strict
from .constants import (
    EPHEMERAL_HEAD,
    KEY_COUNT,
    KEY_DATA,
    KEY_DOCUMENT_ID,
    KEY_SENDER_ID,
    KEY_SESSION_ID,
    KEY_TARGET_ID,
    MAX_COUNT,
    MAX_DOCUMENT_ID_BYTES,
    MAX_PEER_ID_BYTES,
    MAX_SESSION_ID_BYTES,
    PRESENCE_MARKER,
)
from .frames import (
    EphemeralFrame,
    Frame,
    PeerDisconnectedFrame,
    PeerIdentityFrame,
    PeerJoinedDocFrame,
    PeerLeftDocFrame,
    UnknownFrame,
    UserInfo,
)
from .readers import PARSERS, decode_map, decode_payload

__all__ = ["STATE_HEAD", "decode", "decode_state", "forget_shared"]

# Ids of at most this many characters fit whatever they contain (UTF-8 spends at
# most 4 bytes per character): the shortcuts check them without encoding.
_DOC_CHARS: Final = MAX_DOCUMENT_ID_BYTES // 4
_PEER_CHARS: Final = MAX_PEER_ID_BYTES // 4
_SESSION_CHARS: Final = MAX_SESSION_ID_BYTES // 4


_EPHEMERAL_SENDER_FIRST: Final = EPHEMERAL_HEAD + KEY_SENDER_ID


def _ephemeral_by_position(data: bytes) -> EphemeralFrame | None:
    """An ephemeral frame in one of the two usual layouts, read exactly; None
    for anything else (see the module docstring).

    One function, with the CBOR heads read inline, because it runs once per
    message received by the relay and by every client: a helper call per field
    would double its cost. Text heads may carry a length up to 65,535 (ids are
    bounded far below), the payload's up to 2**32 - 1; a length in a longer
    head than it needs takes the general path.
    """
    if not data.startswith(_EPHEMERAL_SENDER_FIRST):
        return None
    pos = len(_EPHEMERAL_SENDER_FIRST)
    target = ""
    try:
        # senderId
        b = data[pos]
        if 0x60 <= b <= 0x77:
            n, pos = b - 0x60, pos + 1
        elif b == 0x78 and data[pos + 1] >= 24:
            n, pos = data[pos + 1], pos + 2
        else:
            return None
        sender = data[pos : pos + n].decode("utf-8")
        pos += n
        # targetId second (a client's and automerge-repo's order), or last (the relay's)
        relayed = not data.startswith(KEY_TARGET_ID, pos)
        if not relayed:
            pos += len(KEY_TARGET_ID)
            b = data[pos]
            if 0x60 <= b <= 0x77:
                n, pos = b - 0x60, pos + 1
            elif b == 0x78 and data[pos + 1] >= 24:
                n, pos = data[pos + 1], pos + 2
            else:
                return None
            target = data[pos : pos + n].decode("utf-8")
            pos += n
        # documentId
        if not data.startswith(KEY_DOCUMENT_ID, pos):
            return None
        pos += len(KEY_DOCUMENT_ID)
        b = data[pos]
        if 0x60 <= b <= 0x77:
            n, pos = b - 0x60, pos + 1
        elif b == 0x78 and data[pos + 1] >= 24:
            n, pos = data[pos + 1], pos + 2
        elif b == 0x79 and data[pos + 1]:
            n, pos = (data[pos + 1] << 8) | data[pos + 2], pos + 3
        else:
            return None
        doc = data[pos : pos + n].decode("utf-8")
        pos += n
        # count
        if not data.startswith(KEY_COUNT, pos):
            return None
        pos += len(KEY_COUNT)
        b = data[pos]
        if b <= 0x17:
            count, pos = b, pos + 1
        elif b == 0x18 and data[pos + 1] >= 24:
            count, pos = data[pos + 1], pos + 2
        elif b == 0x19 and data[pos + 1]:
            count, pos = (data[pos + 1] << 8) | data[pos + 2], pos + 3
        elif b == 0x1A and (data[pos + 1] or data[pos + 2]):
            count, pos = int.from_bytes(data[pos + 1 : pos + 5], "big"), pos + 5
        elif b == 0x1B and any(data[pos + 1 : pos + 5]):
            count, pos = int.from_bytes(data[pos + 1 : pos + 9], "big"), pos + 9
            if count > MAX_COUNT:
                return None  # the general path refuses it, and says why
        else:
            return None
        # sessionId
        if not data.startswith(KEY_SESSION_ID, pos):
            return None
        pos += len(KEY_SESSION_ID)
        b = data[pos]
        if 0x60 <= b <= 0x77:
            n, pos = b - 0x60, pos + 1
        elif b == 0x78 and data[pos + 1] >= 24:
            n, pos = data[pos + 1], pos + 2
        else:
            return None
        sid = data[pos : pos + n].decode("utf-8")
        pos += n
        # data
        if not data.startswith(KEY_DATA, pos):
            return None
        pos += len(KEY_DATA)
        b = data[pos]
        if 0x40 <= b <= 0x57:
            n, pos = b - 0x40, pos + 1
        elif b == 0x58 and data[pos + 1] >= 24:
            n, pos = data[pos + 1], pos + 2
        elif b == 0x59 and data[pos + 1]:
            n, pos = (data[pos + 1] << 8) | data[pos + 2], pos + 3
        elif b == 0x5A and (data[pos + 1] or data[pos + 2]):
            n, pos = int.from_bytes(data[pos + 1 : pos + 5], "big"), pos + 5
        else:
            return None
        payload = data[pos : pos + n]
        pos += n
        if relayed:
            if not data.startswith(KEY_TARGET_ID, pos):
                return None
            pos += len(KEY_TARGET_ID)
            b = data[pos]
            if 0x60 <= b <= 0x77:
                n, pos = b - 0x60, pos + 1
            elif b == 0x78 and data[pos + 1] >= 24:
                n, pos = data[pos + 1], pos + 2
            else:
                return None
            target = data[pos : pos + n].decode("utf-8")
            pos += n
    except (IndexError, ValueError):  # short data; invalid UTF-8 (UnicodeDecodeError)
        return None
    if (
        pos != len(data)  # short (a slice past the end) or trailing bytes
        or not 0 < len(doc) <= _DOC_CHARS
        or not 0 < len(sid) <= _SESSION_CHARS
        or len(sender) > _PEER_CHARS
        or len(target) > _PEER_CHARS
    ):
        return None  # the general path raises, or measures long ids exactly
    return _new_ephemeral(sender, target, doc, count, sid, payload)


def _ephemeral(m: dict[str, Any]) -> Frame:
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
        and 0 <= count <= MAX_COUNT
        and type(sid) is str
        and 0 < len(sid) <= _SESSION_CHARS
        and type(data) is bytes
        and (sender is None or (type(sender) is str and len(sender) <= _PEER_CHARS))
        and (target is None or (type(target) is str and len(target) <= _PEER_CHARS))
    ):
        return _new_ephemeral(sender or "", target or "", doc, count, sid, data)
    return PARSERS["ephemeral"](m)


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


def _peer_identity(m: dict[str, Any]) -> Frame:
    pid = m.get("peerId")
    user = m.get("user")
    if type(pid) is str and pid and len(pid) <= _PEER_CHARS and type(user) is dict:
        uid = user.get("id")
        name = user.get("name")
        anon = user.get("isAnonymous")
        if (uid is None or type(uid) is str) and type(name) is str and type(anon) is bool:
            return PeerIdentityFrame(pid, UserInfo(uid, name, anon))
    return PARSERS["peer_identity"](m)


def _doc_and_peer(m: dict[str, Any]) -> tuple[str, str] | None:
    doc = m.get("documentId")
    pid = m.get("peerId")
    if (
        type(doc) is str
        and 0 < len(doc) <= _DOC_CHARS
        and type(pid) is str
        and 0 < len(pid) <= _PEER_CHARS
    ):
        return doc, pid
    return None


def _peer_joined(m: dict[str, Any]) -> Frame:
    both = _doc_and_peer(m)
    return PeerJoinedDocFrame(*both) if both is not None else PARSERS["peer_joined_doc"](m)


def _peer_left(m: dict[str, Any]) -> Frame:
    both = _doc_and_peer(m)
    return PeerLeftDocFrame(*both) if both is not None else PARSERS["peer_left_doc"](m)


_FAST: Final = {
    **PARSERS,
    "ephemeral": _ephemeral,
    "peer_identity": _peer_identity,
    "peer_joined_doc": _peer_joined,
    "peer_left_doc": _peer_left,
}

_SHARED_TYPES: Final = (
    PeerIdentityFrame,
    PeerJoinedDocFrame,
    PeerLeftDocFrame,
    PeerDisconnectedFrame,
)
_SHARED: Final[dict[bytes, Frame]] = {}
_SHARED_MAX_ENTRIES: Final = 1024
_SHARED_MAX_BYTES: Final = 512  # such frames are ~100 bytes; never hash big ones


#: How the payload of a Presence message starts: a map of one entry whose key
#: is ``__presence`` (automerge-repo's layout, and ours).
STATE_HEAD: Final = b"\xa1" + bytes([0x60 + len(PRESENCE_MARKER)]) + PRESENCE_MARKER.encode()
#: Two generations: a message is looked up in the current one, then in the
#: previous; when the current is full it becomes the previous (the older one
#: goes whole). So the last 512 to 1,024 state messages are kept, at a
#: constant cost per message: a dict emptied oldest entry first gets slower to
#: take the next oldest from as deleted entries pile up at its front, and this
#: runs for every state message even a lone client receives. At most about 1 MB
#: for payloads only the table still holds.
_STATES: Final[list[dict[tuple[str, str, bytes], tuple[str, str, Any]]]] = [{}, {}]
_STATES_GENERATION: Final = 512
_STATES_MAX_BYTES: Final = 512  # a cursor, a name: ~100 bytes; never hash big ones


def decode_state(sender: str, session: str, data: bytes) -> tuple[str, str, Any]:
    """``(sender, session, decode_payload(data))`` for the payload of a Presence
    message (``data`` starts with :data:`STATE_HEAD`), the same three objects
    for every client of the process that receives the same message. Nothing
    may change the payload: it is shared (see the module docstring).

    Raises:
        ProtocolError: ``data`` is not a single well-formed CBOR item.
    """
    if len(data) > _STATES_MAX_BYTES:
        return sender, session, decode_payload(data)
    key = (sender, session, data)
    current, previous = _STATES
    shared = current.get(key) or previous.get(key)
    if shared is None:
        shared = (sender, session, decode_payload(data))
        if len(current) >= _STATES_GENERATION:
            # (Another thread may turn the generations at the same time: a
            # message decoded twice is all that race can cost.)
            current = {}
            _STATES[:] = [current, _STATES[0]]
        current[key] = shared
    return shared


def forget_shared() -> None:
    """Empty the tables of shared identity and presence frames and states.

    They pay during a burst (a join or a reconnect storm brings the same frame
    to every client of a process within moments); once the burst is over their
    entries will not come again, and they are 1,024 frames with their bytes,
    about 400 KiB, and up to 1,024 states. The next burst fills them again."""
    _SHARED.clear()
    _STATES[:] = [{}, {}]


def decode(data: bytes | bytearray | memoryview) -> Frame:
    """Decode the bytes of one binary WebSocket message into a frame.

    Frames are immutable, so decoding the same bytes twice may return the same
    object (identity and presence frames are shared this way between the clients
    of one process).

    Raises:
        ProtocolError: not exactly one CBOR map, no string ``type``, or a known
            frame type with a missing or wrongly typed field. Nothing else is raised.
    """
    if type(data) is bytes and data.startswith(EPHEMERAL_HEAD):
        ephemeral = _ephemeral_by_position(data)
        if ephemeral is not None:
            return ephemeral
        key = None  # ephemeral frames are never shared: don't hash them
    else:
        key = data if type(data) is bytes and len(data) <= _SHARED_MAX_BYTES else None
    if key is not None:
        cached = _SHARED.get(key)
        if cached is not None:
            return cached
    value, frame_type = decode_map(loads_strict(data))
    parser = _FAST.get(frame_type)
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
