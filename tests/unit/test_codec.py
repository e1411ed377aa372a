"""Property and example tests of the frame codec (``ratatoskr_client.protocol``).

The codec is the relay's first line of defence: every byte a peer sends goes
through :func:`decode`, so it must either return a frame or raise
:class:`ProtocolError`, and nothing else, whatever the input.
"""

from __future__ import annotations

import io
import sys
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratatoskr_client import protocol
from ratatoskr_client.errors import PayloadError, ProtocolError
from ratatoskr_client.protocol import (
    MAX_COUNT,
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
    RequestFrame,
    SyncFrame,
    UnknownFrame,
    UserInfo,
    cbor_map_header,
    cbor_text,
    decode,
    decode_payload,
    encode,
    encode_payload,
    loads_strict,
)

# The machine is shared and small: no per-example deadline, fewer examples for
# the expensive strategies.
FAST = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
THOROUGH = settings(deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- strategies

text = st.text(max_size=30)
nonempty = st.text(min_size=1, max_size=30)
opt_text = st.none() | text
peer_ids = st.lists(nonempty, max_size=6).map(tuple)
# Up to 2**53 - 1, the largest count accepted (larger ones, bignums included,
# are refused: test_wrongly_typed_field_is_named).
counts = st.integers(min_value=0, max_value=MAX_COUNT)
numbers = st.floats(min_value=0, allow_nan=False, allow_infinity=False) | st.integers(0, 10**6)

# auth_ok's user is lenient (upstream sends no name); peer_identity's is strict.
lenient_users = st.builds(UserInfo, opt_text, opt_text, st.booleans())
strict_users = st.builds(UserInfo, opt_text, text, st.booleans())

KNOWN_TYPES = frozenset(
    {
        "auth",
        "auth_ok",
        "auth_error",
        "error",
        "peer_identity",
        "peer_disconnected",
        "peer_joined_doc",
        "peer_left_doc",
        "doc_presence_state",
        "ephemeral",
        "request",
        "sync",
        "doc-unavailable",
    }
)

# Plain CBOR values (what an unknown frame may carry, and what fuzzed maps hold).
cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | text
    | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)


@st.composite
def unknown_frames(draw: st.DrawFn) -> UnknownFrame:
    frame_type = draw(text.filter(lambda t: t not in KNOWN_TYPES))
    fields = draw(st.dictionaries(text.filter(lambda k: k != "type"), cbor_values, max_size=5))
    return UnknownFrame(frame_type, {**fields, "type": frame_type})


FRAME_STRATEGIES: dict[type[Frame], st.SearchStrategy[Any]] = {
    AuthFrame: st.builds(AuthFrame, opt_text, st.booleans()),
    AuthOkFrame: st.builds(
        AuthOkFrame,
        nonempty,
        nonempty,
        st.none() | lenient_users,
        st.none() | st.lists(text, max_size=4).map(tuple),
        st.none() | nonempty,
        st.booleans(),
        st.none() | st.lists(nonempty, max_size=4).map(tuple),
    ),
    AuthErrorFrame: st.builds(AuthErrorFrame, nonempty, text),
    ErrorFrame: st.builds(ErrorFrame, nonempty, text, opt_text, st.none() | numbers.map(float)),
    PeerIdentityFrame: st.builds(PeerIdentityFrame, nonempty, strict_users),
    PeerDisconnectedFrame: st.builds(PeerDisconnectedFrame, nonempty),
    PeerJoinedDocFrame: st.builds(PeerJoinedDocFrame, nonempty, nonempty),
    PeerLeftDocFrame: st.builds(PeerLeftDocFrame, nonempty, nonempty),
    DocPresenceStateFrame: st.builds(DocPresenceStateFrame, nonempty, peer_ids),
    EphemeralFrame: st.builds(
        EphemeralFrame, text, text, nonempty, counts, nonempty, st.binary(max_size=200)
    ),
    RequestFrame: st.builds(RequestFrame, text, text, nonempty, st.binary(max_size=50)),
    SyncFrame: st.builds(SyncFrame, text, text, nonempty, st.binary(max_size=50)),
    DocUnavailableFrame: st.builds(DocUnavailableFrame, text, text, nonempty),
    UnknownFrame: unknown_frames(),
}

any_frame = st.one_of(*FRAME_STRATEGIES.values())


def all_frame_classes() -> set[type[Frame]]:
    """Every Frame subclass defined in the protocol package."""
    found: set[type[Frame]] = set()
    todo = [Frame]
    while todo:
        for sub in todo.pop().__subclasses__():
            # @dataclass(slots=True) replaces the class it decorates; the discarded
            # original still shows up in __subclasses__() until collected.
            module = sys.modules[sub.__module__]
            if getattr(module, sub.__name__, None) is sub:
                found.add(sub)
            todo.append(sub)
    return found


def decode_or_protocol_error(data: bytes) -> Frame | None:
    """decode(data), or None if it raised ProtocolError. Anything else propagates."""
    try:
        frame = decode(data)
    except ProtocolError:
        return None
    assert isinstance(frame, Frame)
    return frame


# --------------------------------------------------------------------------- round trips


def test_every_frame_class_has_a_strategy() -> None:
    # A new frame class must be added to FRAME_STRATEGIES, or this test fails.
    assert all_frame_classes() == set(FRAME_STRATEGIES)
    exported = {
        getattr(protocol, name)
        for name in protocol.__all__
        if isinstance(getattr(protocol, name), type)
        and issubclass(getattr(protocol, name), Frame)
        and getattr(protocol, name) is not Frame
    }
    assert exported == set(FRAME_STRATEGIES)


@pytest.mark.parametrize("cls", list(FRAME_STRATEGIES), ids=lambda c: c.__name__)
@FAST
@given(data=st.data())
def test_round_trip(cls: type[Frame], data: st.DataObject) -> None:
    frame = data.draw(FRAME_STRATEGIES[cls])
    wire = encode(frame)
    assert isinstance(wire, bytes)
    back = decode(wire)
    assert type(back) is cls
    assert back == frame
    # The wire form is a plain CBOR map with the frame's type.
    raw = cbor2.loads(wire)
    assert type(raw) is dict
    assert raw["type"] == (frame.type if isinstance(frame, UnknownFrame) else cls.TYPE)


@FAST
@given(frame=any_frame)
def test_encoding_is_stable(frame: Frame) -> None:
    assert encode(decode(encode(frame))) == encode(frame)


def test_wire_uses_camel_case_and_byte_strings() -> None:
    frame = EphemeralFrame("s", "t", "doc-1", 3, "sess", b"\x01\x02")
    raw = cbor2.loads(encode(frame))
    assert list(raw) == [
        "type",
        "senderId",
        "targetId",
        "documentId",
        "count",
        "sessionId",
        "data",
    ]
    assert type(raw["data"]) is bytes
    # major type 2 (byte string) holding two bytes, not a CBOR array of ints
    assert b"\x42\x01\x02" in encode(frame)


def test_error_frame_optional_fields_are_omitted() -> None:
    assert cbor2.loads(encode(ErrorFrame("invalid_message", "bad"))) == {
        "type": "error",
        "error": "invalid_message",
        "message": "bad",
    }
    assert cbor2.loads(encode(ErrorFrame("rate_limited", "slow down", None, 1.5))) == {
        "type": "error",
        "error": "rate_limited",
        "message": "slow down",
        "retryAfter": 1.5,
    }


# --------------------------------------------------------------------------- hostile input


@THOROUGH
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_protocol_error(data: bytes) -> None:
    decode_or_protocol_error(data)


@THOROUGH
@given(value=cbor_values)
def test_arbitrary_cbor_values_raise_only_protocol_error(value: Any) -> None:
    frame = decode_or_protocol_error(cbor2.dumps(value))
    if type(value) is not dict:
        assert frame is None  # only a map can be a frame


@THOROUGH
@given(
    frame_type=st.sampled_from(sorted(KNOWN_TYPES)),
    fields=st.dictionaries(
        st.sampled_from(
            [
                "token",
                "anonymous",
                "peerId",
                "clientPeerId",
                "user",
                "features",
                "error",
                "message",
                "documentId",
                "retryAfter",
                "peers",
                "senderId",
                "targetId",
                "count",
                "sessionId",
                "data",
            ]
        ),
        cbor_values
        | st.dictionaries(st.sampled_from(["id", "name", "isAnonymous"]), cbor_values, max_size=3),
        max_size=8,
    ),
)
@pytest.mark.slow
def test_known_types_with_random_fields_raise_only_protocol_error(
    frame_type: str, fields: dict[str, Any]
) -> None:
    frame = decode_or_protocol_error(cbor2.dumps({"type": frame_type, **fields}))
    if frame is not None:
        assert not isinstance(frame, UnknownFrame)


@THOROUGH
@given(frame=any_frame, data=st.data())
def test_mutated_frames_raise_only_protocol_error(frame: Frame, data: st.DataObject) -> None:
    wire = bytearray(encode(frame))
    index = data.draw(st.integers(0, len(wire) - 1))
    wire[index] ^= data.draw(st.integers(1, 255))
    decode_or_protocol_error(bytes(wire))


@THOROUGH
@given(frame=any_frame, data=st.data())
def test_truncated_frames_are_rejected(frame: Frame, data: st.DataObject) -> None:
    wire = encode(frame)
    cut = data.draw(st.integers(0, len(wire) - 1))
    with pytest.raises(ProtocolError):
        decode(wire[:cut])


@THOROUGH
@given(frame=any_frame, extra=st.binary(min_size=1, max_size=20))
def test_trailing_bytes_are_rejected(frame: Frame, extra: bytes) -> None:
    with pytest.raises(ProtocolError, match="trailing"):
        decode(encode(frame) + extra)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff",
        b"\x1c",  # reserved additional information
        b"\xa1",  # map with its only pair missing
        b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff",  # 2**64-1 byte string, no content
        b"\xbb\xff\xff\xff\xff\xff\xff\xff\xff",  # 2**64-1 pair map, no content
        b"\x81" * 50_000 + b"\x00",  # absurd nesting
        b"\xc1\x1b\xff\xff\xff\xff\xff\xff\xff\xff",  # epoch datetime out of range
        b"\xd8\x1e\x82\x01\x00",  # rational with zero denominator
        b"\xd8\x23\x61(",  # regular expression that does not compile
    ],
)
def test_hostile_byte_patterns(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(data)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (None, "must be a CBOR map, got null"),
        (5, "must be a CBOR map, got int"),
        ([1, 2], "must be a CBOR map, got list"),
        ("auth", "must be a CBOR map, got str"),
        ({"token": "x"}, "string 'type'"),
        ({"type": 7}, "string 'type', got int"),
        ({"type": None}, "string 'type', got null"),
    ],
)
def test_non_frames_are_rejected(value: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode(cbor2.dumps(value))


def test_shared_reference_cycle_is_refused() -> None:
    # tag 28 (shareable) map whose value is tag 29 (shared ref 0): a map containing itself
    with pytest.raises(ProtocolError, match="tag 29: tag not allowed"):
        decode(b"\xd8\x1c\xa2\x64type\x61x\x61a\xd8\x1d\x00")


# --------------------------------------------------------------------------- field validation

VALID_WIRE: dict[str, dict[str, Any]] = {
    "auth": {"type": "auth", "token": "t"},
    "auth_ok": {
        "type": "auth_ok",
        "peerId": "relay",
        "clientPeerId": "peer-1",
        "user": {"id": "alice", "name": "Alice", "isAnonymous": False},
        "features": ["identity"],
    },
    "auth_error": {"type": "auth_error", "error": "invalid_token", "message": "no"},
    "error": {
        "type": "error",
        "error": "rate_limited",
        "message": "slow",
        "documentId": "d",
        "retryAfter": 2,
    },
    "peer_identity": {
        "type": "peer_identity",
        "peerId": "p",
        "user": {"id": None, "name": "Neon Narwhal", "isAnonymous": True},
    },
    "peer_disconnected": {"type": "peer_disconnected", "peerId": "p"},
    "peer_joined_doc": {"type": "peer_joined_doc", "documentId": "d", "peerId": "p"},
    "peer_left_doc": {"type": "peer_left_doc", "documentId": "d", "peerId": "p"},
    "doc_presence_state": {"type": "doc_presence_state", "documentId": "d", "peers": ["p"]},
    "ephemeral": {
        "type": "ephemeral",
        "senderId": "s",
        "targetId": "t",
        "documentId": "d",
        "count": 1,
        "sessionId": "sess",
        "data": b"\xa0",
    },
    "request": {
        "type": "request",
        "senderId": "s",
        "targetId": "t",
        "documentId": "d",
        "data": b"",
    },
    "sync": {"type": "sync", "senderId": "s", "targetId": "t", "documentId": "d", "data": b""},
    "doc-unavailable": {
        "type": "doc-unavailable",
        "senderId": "s",
        "targetId": "t",
        "documentId": "d",
    },
}

REQUIRED: list[tuple[str, str]] = [
    ("auth_ok", "peerId"),
    ("auth_ok", "clientPeerId"),
    ("auth_error", "error"),
    ("error", "error"),
    ("peer_identity", "peerId"),
    ("peer_identity", "user"),
    ("peer_disconnected", "peerId"),
    ("peer_joined_doc", "documentId"),
    ("peer_joined_doc", "peerId"),
    ("peer_left_doc", "documentId"),
    ("peer_left_doc", "peerId"),
    ("doc_presence_state", "documentId"),
    ("doc_presence_state", "peers"),
    ("ephemeral", "documentId"),
    ("ephemeral", "count"),
    ("ephemeral", "sessionId"),
    ("ephemeral", "data"),
    ("request", "documentId"),
    ("request", "data"),
    ("sync", "documentId"),
    ("sync", "data"),
    ("doc-unavailable", "documentId"),
]

WRONG_TYPES: list[tuple[str, str, Any]] = [
    ("auth", "token", 5),
    ("auth", "anonymous", "yes"),
    ("auth", "anonymous", 1),
    ("auth_ok", "peerId", 5),
    ("auth_ok", "peerId", ""),
    ("auth_ok", "clientPeerId", b"peer"),
    ("auth_ok", "user", "alice"),
    ("auth_ok", "features", "identity"),
    ("auth_ok", "features", [1]),
    ("auth_ok", "documents", "doc"),
    ("auth_ok", "documents", [""]),
    ("auth_ok", "documents", ["d" * 257]),
    ("auth_error", "error", None),
    ("auth_error", "message", 3),
    ("error", "error", ["x"]),
    ("error", "message", {"a": 1}),
    ("error", "documentId", 9),
    ("error", "retryAfter", "soon"),
    ("error", "retryAfter", -1),
    ("error", "retryAfter", True),
    ("peer_identity", "peerId", 1.5),
    ("peer_identity", "user", None),
    ("peer_disconnected", "peerId", None),
    ("peer_joined_doc", "documentId", 1),
    ("peer_joined_doc", "peerId", []),
    ("peer_left_doc", "documentId", b"d"),
    ("peer_left_doc", "peerId", ""),
    ("doc_presence_state", "documentId", None),
    ("doc_presence_state", "peers", "p"),
    ("doc_presence_state", "peers", [1]),
    ("doc_presence_state", "peers", [""]),
    ("ephemeral", "senderId", 5),
    ("ephemeral", "targetId", [1]),
    ("ephemeral", "documentId", ""),
    ("ephemeral", "count", -1),
    ("ephemeral", "count", "1"),
    ("ephemeral", "count", 1.0),
    ("ephemeral", "count", True),
    ("ephemeral", "count", MAX_COUNT + 1),
    ("ephemeral", "count", 2**64 - 1),
    ("ephemeral", "count", 2**64),  # a CBOR bignum (tag 2)
    ("ephemeral", "sessionId", 7),
    ("ephemeral", "data", "text"),
    ("ephemeral", "data", [1, 2, 3]),
    ("request", "data", None),
    ("sync", "documentId", 3),
    ("doc-unavailable", "documentId", None),
]


@pytest.mark.parametrize("frame_type", sorted(VALID_WIRE))
def test_valid_wire_maps_decode(frame_type: str) -> None:
    frame = decode(cbor2.dumps(VALID_WIRE[frame_type]))
    assert frame_type == frame.TYPE
    assert not isinstance(frame, UnknownFrame)


@pytest.mark.parametrize(("frame_type", "key"), REQUIRED)
def test_missing_required_field_is_named(frame_type: str, key: str) -> None:
    wire = dict(VALID_WIRE[frame_type])
    del wire[key]
    with pytest.raises(ProtocolError) as info:
        decode(cbor2.dumps(wire))
    assert f"missing required field {key!r}" in str(info.value)
    assert frame_type in str(info.value)


@pytest.mark.parametrize(("frame_type", "key", "bad"), WRONG_TYPES)
def test_wrongly_typed_field_is_named(frame_type: str, key: str, bad: Any) -> None:
    wire = {**VALID_WIRE[frame_type], key: bad}
    with pytest.raises(ProtocolError) as info:
        decode(cbor2.dumps(wire))
    assert repr(key) in str(info.value)
    assert frame_type in str(info.value)


@pytest.mark.parametrize(
    ("frame_type", "user", "key"),
    [
        ("peer_identity", {"id": None, "isAnonymous": True}, "name"),
        ("peer_identity", {"id": None, "name": None, "isAnonymous": True}, "name"),
        ("peer_identity", {"id": "a", "name": "A"}, "isAnonymous"),
        ("peer_identity", {"id": 5, "name": "A", "isAnonymous": False}, "id"),
        ("auth_ok", {"id": "a", "name": 5}, "name"),
        ("auth_ok", {"id": "a", "isAnonymous": "no"}, "isAnonymous"),
    ],
)
def test_bad_user_maps_name_the_field(frame_type: str, user: dict[str, Any], key: str) -> None:
    wire = {**VALID_WIRE[frame_type], "user": user}
    with pytest.raises(ProtocolError, match=f"{frame_type}.user.*'{key}'"):
        decode(cbor2.dumps(wire))


def test_upstream_auth_ok_shapes_are_accepted() -> None:
    # The upstream server sends user:null, or user:{id} with no name and no features.
    anon = decode(
        cbor2.dumps({"type": "auth_ok", "peerId": "server-1", "clientPeerId": "c", "user": None})
    )
    assert anon == AuthOkFrame("server-1", "c", None, None)
    verified = decode(
        cbor2.dumps(
            {"type": "auth_ok", "peerId": "server-1", "clientPeerId": "c", "user": {"id": "a"}}
        )
    )
    assert verified == AuthOkFrame("server-1", "c", UserInfo("a", None, False), None)


def test_ephemeral_sender_and_target_are_optional_for_clients() -> None:
    wire = {k: v for k, v in VALID_WIRE["ephemeral"].items() if k not in ("senderId", "targetId")}
    assert decode(cbor2.dumps(wire)) == EphemeralFrame("", "", "d", 1, "sess", b"\xa0")


def test_unknown_type_decodes_to_unknown_frame_with_all_fields() -> None:
    frame = decode(cbor2.dumps({"type": "future_thing", "x": [1, 2], "y": b"z"}))
    assert frame == UnknownFrame("future_thing", {"type": "future_thing", "x": [1, 2], "y": b"z"})


def test_extra_fields_on_known_frames_are_ignored() -> None:
    wire = {**VALID_WIRE["peer_left_doc"], "extra": {"nested": True}}
    assert decode(cbor2.dumps(wire)) == PeerLeftDocFrame("d", "p")


# --------------------------------------------------------------------------- CBOR primitives


def _cbor2_map_header(pairs: int) -> bytes:
    fp = io.BytesIO()
    cbor2.CBOREncoder(fp).encode_length(5, pairs)
    return fp.getvalue()


@FAST
@given(value=st.text(max_size=300))
def test_cbor_text_equals_cbor2(value: str) -> None:
    assert cbor_text(value) == cbor2.dumps(value)


@pytest.mark.parametrize("length", [0, 23, 24, 255, 256, 65535, 65536, 70_000])
def test_cbor_text_length_boundaries(length: int) -> None:
    value = "é" * (length // 2) + "a" * (length % 2)  # multi-byte UTF-8 counts bytes
    assert cbor_text(value) == cbor2.dumps(value)
    assert cbor2.loads(cbor_text(value)) == value


@FAST
@given(pairs=st.integers(0, 300))
def test_cbor_map_header_equals_cbor2_small(pairs: int) -> None:
    encoded = cbor2.dumps(dict.fromkeys(range(pairs)))
    assert encoded.startswith(cbor_map_header(pairs))
    assert cbor_map_header(pairs) == _cbor2_map_header(pairs)


@FAST
@given(pairs=st.integers(0, 2**64 - 1))
def test_cbor_map_header_equals_cbor2_any_size(pairs: int) -> None:
    assert cbor_map_header(pairs) == _cbor2_map_header(pairs)


def test_cbor_map_header_boundaries() -> None:
    assert cbor_map_header(23) == b"\xb7"
    assert cbor_map_header(24) == b"\xb8\x18"
    assert cbor_map_header(256) == b"\xb9\x01\x00"
    assert cbor_map_header(65536) == b"\xba\x00\x01\x00\x00"
    assert cbor_map_header(2**32) == b"\xbb\x00\x00\x00\x01\x00\x00\x00\x00"
    assert cbor2.dumps(dict.fromkeys(range(65536))).startswith(cbor_map_header(65536))


def test_loads_strict() -> None:
    assert loads_strict(b"\x01") == 1
    with pytest.raises(ProtocolError, match="payload is empty"):
        loads_strict(b"", "payload")
    with pytest.raises(ProtocolError, match="1 trailing byte"):
        loads_strict(b"\x01\x02")


@FAST
@given(payload=cbor_values)
def test_payload_round_trip(payload: Any) -> None:
    assert decode_payload(encode_payload(payload)) == payload


def test_payload_errors() -> None:
    with pytest.raises(PayloadError):
        encode_payload(object())
    with pytest.raises(ProtocolError, match="ephemeral data"):
        decode_payload(b"\xff")
    with pytest.raises(ProtocolError, match="trailing"):
        decode_payload(cbor2.dumps({"a": 1}) + b"\x00")


# --------------------------------------------------------------------------- presence payload


@pytest.mark.parametrize("status", ["join", "leave", "heartbeat"])
def test_presence_message_round_trip(status: Any) -> None:
    message = PresenceMessage(status, "doc-1")
    assert message.to_payload() == {"type": "presence", "status": status, "documentId": "doc-1"}
    assert PresenceMessage.from_payload(message.to_payload()) == message
    assert PresenceMessage.from_payload(decode_payload(encode_payload(message.to_payload()))) == (
        message
    )


@pytest.mark.parametrize(
    "payload",
    [
        None,
        5,
        "presence",
        b"presence",
        ["presence"],
        {},
        {"status": "join", "documentId": "d"},
        {"type": "chat", "status": "join", "documentId": "d"},
        {"type": "Presence", "status": "join", "documentId": "d"},
        {"__presence": {"type": "heartbeat"}},
    ],
)
def test_non_presence_payloads_are_none(payload: Any) -> None:
    assert PresenceMessage.from_payload(payload) is None


@pytest.mark.parametrize(
    ("payload", "key"),
    [
        ({"type": "presence", "documentId": "d"}, "status"),
        ({"type": "presence", "status": "enter", "documentId": "d"}, "status"),
        ({"type": "presence", "status": None, "documentId": "d"}, "status"),
        ({"type": "presence", "status": 1, "documentId": "d"}, "status"),
        # Unhashable values must not escape as TypeError.
        ({"type": "presence", "status": ["join"], "documentId": "d"}, "status"),
        ({"type": "presence", "status": {"join": 1}, "documentId": "d"}, "status"),
        ({"type": "presence", "status": "join"}, "documentId"),
        ({"type": "presence", "status": "join", "documentId": ""}, "documentId"),
        ({"type": "presence", "status": "leave", "documentId": 5}, "documentId"),
    ],
)
def test_malformed_presence_raises_protocol_error(payload: dict[str, Any], key: str) -> None:
    with pytest.raises(ProtocolError, match=f"presence frame.*'{key}'"):
        PresenceMessage.from_payload(payload)


@FAST
@given(payload=cbor_values, status=cbor_values, doc=cbor_values)
def test_presence_from_payload_raises_only_protocol_error(
    payload: Any, status: Any, doc: Any
) -> None:
    candidates = [payload, {"type": "presence", "status": status, "documentId": doc}]
    if isinstance(payload, dict):
        candidates.append({**payload, "type": "presence"})
    for candidate in candidates:
        try:
            result = PresenceMessage.from_payload(candidate)
        except ProtocolError:
            continue
        if result is not None:
            assert result.status in ("join", "leave", "heartbeat")
            assert isinstance(result.document_id, str)
            assert result.document_id


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        # The sender's words, not the decoder's ("tag 258: tag not allowed").
        ({1, 2}, r"^payload cannot be sent: payload is a set: send a list instead$"),
        ({"tags": {1}}, r"^payload cannot be sent: payload\['tags'\] is a set: send a list"),
        (__import__("decimal").Decimal("1.5"), "payload is a Decimal: send a float or a str"),
        (__import__("uuid").UUID(int=1), r"payload is a UUID: send str\(uuid\) instead"),
        ({1: "int key"}, "has the map key 1 \\(int\\): dict keys must be str"),
        (
            [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["too deep"]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
            "payload is nested more than 32 lists or dicts deep",
        ),
        (object(), r"payload is an object \(payloads are made of str, bytes"),
        (__import__("datetime").datetime(2026, 1, 1), "naive datetime: give it a timezone"),
    ],
)
def test_payloads_receivers_would_refuse_are_refused_when_encoding(
    payload: Any, match: str
) -> None:
    with pytest.raises(PayloadError, match=match) as caught:
        encode_payload(payload)
    assert "semantic tag" not in str(caught.value)
    assert "\n" not in str(caught.value)


def test_date_times_and_bignums_are_allowed() -> None:
    import datetime

    at = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.UTC)
    value = {"at": at, "big": 2**100, "small": -(2**70)}
    assert decode_payload(encode_payload(value)) == value


_anything = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=4),
        st.binary(max_size=4),
        st.sampled_from([{1, 2}, frozenset(), __import__("decimal").Decimal("1.5")]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=5).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=3), st.binary(max_size=2)), inner, max_size=4),
        st.dictionaries(st.integers(0, 3), inner, max_size=2),
    ),
    max_leaves=40,
)


@settings(max_examples=500, deadline=None, database=None)
@given(_anything, st.integers(1, 40))
def test_the_encoders_shortcut_never_lets_a_refused_payload_through(
    value: Any, nesting: int
) -> None:
    # The sender skips the decode check when it can tell from the value alone;
    # whatever it lets through must decode under the rules.
    for _ in range(nesting):
        value = [value]
    try:
        data = encode_payload(value)
    except PayloadError:
        return
    loads_strict(data, "payload")  # raises if the shortcut was wrong


# --------------------------------------------------------------------------- one writer


ids = st.text(min_size=1, max_size=20)


@FAST
@given(
    sender=ids,
    target=ids,
    document=ids,
    count=st.integers(0, MAX_COUNT),
    session=ids,
    data=st.binary(max_size=300),
)
def test_both_ephemeral_layouts_are_the_plain_encoding(
    sender: str, target: str, document: str, count: int, session: str, data: bytes
) -> None:
    from ratatoskr_client.protocol import decode_plain, writers

    frame = EphemeralFrame(sender, target, document, count, session, data)
    # A peer's layout (automerge-repo's key order) is byte for byte the plain encoder's.
    peer = writers.ephemeral(sender, target, document, count, session, data)
    assert peer == encode(frame)
    # The relay's: targetId last, spliced on per recipient; the same map.
    relayed = writers.ephemeral_prefix(
        writers.target_suffix(sender), document, count, session, data
    ) + writers.target_suffix(target)
    wire = frame.to_wire()
    assert relayed == cbor2.dumps(
        {**{k: v for k, v in wire.items() if k != "targetId"}, "targetId": target}
    )
    for raw in (peer, relayed):
        assert decode_plain(raw) == decode(raw) == frame


def test_the_client_and_the_relay_write_ephemeral_frames_with_the_protocols_writer() -> None:
    from ratatoskr_client.core.documents import Documents
    from ratatoskr_client.core.outbox import Outbox
    from ratatoskr_client.core.outgoing import Outgoing
    from ratatoskr_client.core.peer_state import PeerStates
    from ratatoskr_client.core.sharing import StateSharing
    from ratatoskr_client.protocol import writers
    from ratatoskr_client.server import RelayConfig, RelayCore

    data = encode_payload({"cursor": [1, 2]})
    # The client's: its session's first frame.
    sharing = StateSharing(PeerStates(), interval=0.1, heartbeat=15.0)
    out = Outgoing(Outbox(), Documents(), sharing)
    out.start("session-1", "peer-a", "relay-x", None, server_presence=True)
    sent = out.ephemeral("doc", data)
    assert sent == writers.ephemeral("peer-a", "relay-x", "doc", 1, "session-1", data)
    assert sent == encode(EphemeralFrame("peer-a", "relay-x", "doc", 1, "session-1", data))

    # The relay's: what a member receives when another member sends it.
    class Recorder:
        def __init__(self) -> None:
            self.frames: list[bytes] = []

        def send(self, frame: bytes) -> None:
            self.frames.append(frame)

        def send_ephemeral(self, prefix: bytes, suffix: bytes) -> None:
            self.frames.append(prefix + suffix)

        def close(self, code: int, reason: str) -> None:
            raise AssertionError("closed")

        def ping(self) -> None:
            pass

    core = RelayCore(RelayConfig(open=True))
    a, b = Recorder(), Recorder()
    conns = [core.open(box) for box in (a, b)]
    for conn in conns:
        core.receive(conn, cbor2.dumps({"type": "auth", "anonymous": True}))
        presence = encode_payload({"type": "presence", "status": "join", "documentId": "doc"})
        core.receive(conn, writers.ephemeral("", "", "doc", 1, f"s-{id(conn)}", presence))
    a_id, b_id = conns[0].peer_id, conns[1].peer_id
    b.frames.clear()
    core.receive(conns[0], writers.ephemeral(a_id, "", "doc", 2, f"s-{id(conns[0])}", data))
    (relayed,) = b.frames
    assert relayed == writers.ephemeral_prefix(
        writers.target_suffix(a_id), "doc", 2, f"s-{id(conns[0])}", data
    ) + writers.target_suffix(b_id)
    assert decode(relayed) == EphemeralFrame(a_id, b_id, "doc", 2, f"s-{id(conns[0])}", data)


def test_the_ephemeral_frame_is_spelled_out_in_the_writer_and_the_reader_only() -> None:
    """Its keys and head appear in no other module of the package: whoever
    writes one, client or relay, uses :mod:`ratatoskr_client.protocol.writers`."""
    import ast
    from pathlib import Path

    package = Path(protocol.__file__).resolve().parent.parent
    spelled = {"EPHEMERAL_HEAD", "KEY_SENDER_ID", "KEY_TARGET_ID", "KEY_DOCUMENT_ID"}
    spelled |= {"KEY_COUNT", "KEY_SESSION_ID", "KEY_DATA"}
    users: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        found = names & spelled
        if found:
            users[str(path.relative_to(package))] = found
    assert set(users) == {"protocol/constants.py", "protocol/writers.py", "protocol/fastpaths.py"}


@pytest.mark.parametrize("user_id", [None, "alice"])
def test_the_upstream_auth_ok_has_no_features_and_the_user_id_only(user_id: str | None) -> None:
    from ratatoskr_client.protocol import decode_plain, writers

    raw = writers.upstream_auth_ok("server-1", "peer-1", user_id)
    assert raw == cbor2.dumps(
        {
            "type": "auth_ok",
            "peerId": "server-1",
            "clientPeerId": "peer-1",
            "user": None if user_id is None else {"id": user_id},
        }
    )
    user = None if user_id is None else UserInfo(user_id, None, False)
    assert decode_plain(raw) == AuthOkFrame("server-1", "peer-1", user, None)
    ours = writers.auth_ok("server-1", "peer-1", UserInfo(user_id, "Ann", user_id is None), ("x",))
    assert ours == encode(
        AuthOkFrame("server-1", "peer-1", UserInfo(user_id, "Ann", user_id is None), ("x",))
    )


def test_the_former_decoding_module_is_the_readers() -> None:
    import importlib

    from ratatoskr_client.protocol import readers

    former = importlib.import_module("ratatoskr_client.protocol.decoding")
    assert former is readers
    assert former.decode_plain(encode(PeerDisconnectedFrame("p"))) == PeerDisconnectedFrame("p")
