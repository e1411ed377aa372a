"""The codec's fast paths (see docs/performance.md) behave exactly like the slow ones."""

from __future__ import annotations

from collections.abc import Callable

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratatoskr_client.errors import ProtocolError
from ratatoskr_client.protocol import (
    MAX_COUNT,
    EphemeralFrame,
    PeerDisconnectedFrame,
    PeerIdentityFrame,
    PeerJoinedDocFrame,
    UserInfo,
    cbor_bytes,
    cbor_text,
    cbor_uint,
    decode,
    decode_plain,
    encode,
    fastpaths,
    loads_strict,
)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # Not what cbor2 would write, but one well-formed item each: the fast path
        # (re-encode and compare) misses, the strict decoder accepts.
        (b"\xf9\x3c\x00", 1.0),  # half-precision float
        (b"\x18\x05", 5),  # integer with a needlessly long head
        (b"\xbf\x61\x61\x01\xff", {"a": 1}),  # indefinite-length map
        (cbor2.dumps({"a": [1, 2, b"x"]}), {"a": [1, 2, b"x"]}),
    ],
)
def test_loads_strict_accepts_any_encoding_of_one_item(data: bytes, expected: object) -> None:
    assert loads_strict(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        cbor2.dumps({"a": 1}) + b"\x00",
        cbor2.dumps({"a": 1}) + cbor2.dumps({"a": 1}),
        b"\xf9\x3c\x00\x01",
        cbor2.dumps("ab") + b"\x60",  # a second item: the empty string
    ],
)
def test_loads_strict_still_rejects_trailing_bytes(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="trailing"):
        loads_strict(data)


@pytest.mark.parametrize(
    "value", [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, 2**64, 2**100]
)
def test_cbor_uint_is_cbor2s_encoding(value: int) -> None:
    assert cbor_uint(value) == cbor2.dumps(value)


@pytest.mark.parametrize("size", [0, 1, 23, 24, 255, 256, 65535, 65536])
def test_cbor_bytes_is_cbor2s_encoding(size: int) -> None:
    value = b"x" * size
    assert cbor_bytes(value) == cbor2.dumps(value)


def test_identity_and_presence_frames_are_decoded_once_and_shared() -> None:
    frames = [
        PeerIdentityFrame("peer-shared-1", UserInfo(None, "Neon Narwhal", True)),
        PeerJoinedDocFrame("doc-shared", "peer-shared-1"),
        PeerDisconnectedFrame("peer-shared-1"),
    ]
    for frame in frames:
        data = encode(frame)
        first = decode(data)
        assert first == frame
        assert decode(bytes(data)) is first  # same bytes, another object: shared
        assert decode(bytearray(data)) == frame  # other buffer types still decode


def test_ephemeral_frames_are_never_shared() -> None:
    data = encode(EphemeralFrame("peer-a", "peer-b", "doc", 1, "s", cbor2.dumps(1)))
    assert decode(data) is not decode(data)
    assert data not in fastpaths._SHARED


def test_the_shared_frames_are_bounded() -> None:
    for i in range(fastpaths._SHARED_MAX_ENTRIES + 50):
        decode(encode(PeerDisconnectedFrame(f"peer-bound-{i}")))
    assert len(fastpaths._SHARED) <= fastpaths._SHARED_MAX_ENTRIES


def test_a_malformed_frame_is_never_shared() -> None:
    data = cbor2.dumps({"type": "peer_disconnected", "peerId": 5})
    for _ in range(2):
        with pytest.raises(ProtocolError):
            decode(data)
    assert data not in fastpaths._SHARED


def test_relay_spliced_ephemeral_frames_decode_like_encoded_ones() -> None:
    # The relay splices pre-encoded pieces (documents._relay_ephemeral); the client's
    # fast path must see exactly what cbor2 would have written.
    from ratatoskr_client.protocol.constants import EPHEMERAL_HEAD

    spliced = b"".join(
        (
            EPHEMERAL_HEAD,
            cbor2.dumps("senderId"),
            cbor2.dumps("peer-a"),
            cbor2.dumps("documentId"),
            cbor2.dumps("doc"),
            cbor2.dumps("count"),
            cbor_uint(7),
            cbor2.dumps("sessionId"),
            cbor2.dumps("s"),
            cbor2.dumps("data"),
            cbor_bytes(cbor2.dumps({"x": 1})),
            cbor2.dumps("targetId"),
            cbor2.dumps("peer-b"),
        )
    )
    assert cbor2.dumps(cbor2.loads(spliced)) == spliced
    assert decode(spliced) == EphemeralFrame("peer-a", "peer-b", "doc", 7, "s", b"\xa1ax\x01")


# ----------------------------------------------------------------- ephemeral fast path

_EPH_FIELDS = {
    "type": "ephemeral",
    "senderId": "peer-a",
    "targetId": "peer-b",
    "documentId": "doc-ü",
    "count": 300,
    "sessionId": "s1",
    "data": cbor2.dumps({"x": 1}),
}
_EPH_FRAME = EphemeralFrame("peer-a", "peer-b", "doc-ü", 300, "s1", cbor2.dumps({"x": 1}))


def _long_count(count: int) -> bytes:
    """`count` with a needlessly long (4-byte) head: valid CBOR, not the shortest."""
    return b"\x1a" + count.to_bytes(4, "big")


@pytest.mark.parametrize(
    "data",
    [
        cbor2.dumps(_EPH_FIELDS),
        # Not the shortest encoding: the fast path cannot prove the length, the
        # general path decodes it.
        cbor2.dumps(_EPH_FIELDS).replace(b"\x19\x01\x2c", _long_count(300)),
        # Indefinite-length map.
        b"\xbf" + cbor2.dumps(_EPH_FIELDS)[1:] + b"\xff",
        # Another key order (automerge-repo's).
        cbor2.dumps({k: _EPH_FIELDS[k] for k in reversed(list(_EPH_FIELDS))}),
    ],
)
def test_ephemeral_frames_decode_whatever_their_encoding(data: bytes) -> None:
    assert decode(data) == _EPH_FRAME


@pytest.mark.parametrize(
    "extra",
    [b"\x00", b"\xf6", cbor2.dumps(_EPH_FIELDS), b"\xff"],
)
def test_ephemeral_frames_with_trailing_bytes_are_rejected(extra: bytes) -> None:
    with pytest.raises(ProtocolError, match="trailing"):
        decode(cbor2.dumps(_EPH_FIELDS) + extra)


def test_ephemeral_frames_with_other_fields_take_the_general_path() -> None:
    with_extra = cbor2.dumps({**_EPH_FIELDS, "extra": 1})
    assert decode(with_extra) == _EPH_FRAME
    without_ids = cbor2.dumps({**_EPH_FIELDS, "senderId": None, "targetId": None})
    assert decode(without_ids) == EphemeralFrame("", "", "doc-ü", 300, "s1", _EPH_FRAME.data)
    with pytest.raises(ProtocolError, match="count"):
        decode(cbor2.dumps({**_EPH_FIELDS, "count": -1}))
    with pytest.raises(ProtocolError, match="data"):
        decode(cbor2.dumps({**_EPH_FIELDS, "data": "text"}))


@pytest.mark.parametrize(
    ("sender", "document", "count", "size"),
    [("", "d", 0, 0), ("ä" * 20, "d" * 200, 2**40, 70_000), ("p", "ü", MAX_COUNT, 23)],
)
def test_ephemeral_frames_of_any_size_decode_exactly(
    sender: str, document: str, count: int, size: int
) -> None:
    frame = EphemeralFrame(sender, "t", document, count, "s", b"x" * size)
    data = encode(frame)
    assert decode(data) == frame
    with pytest.raises(ProtocolError, match="trailing"):
        decode(data + b"\x00")
    with pytest.raises(ProtocolError, match="not valid CBOR"):
        decode(data[:-1])


def test_value_sharing_cannot_hide_trailing_bytes_or_expand():
    # targetId encoded as a reference (tag 29) to the shareable senderId (tag 28)
    # is shorter than the strings themselves: the old fast path proved frames
    # complete by re-encoding, so it had to account for this. Value sharing is
    # now refused outright, whatever follows it.
    sid = "s" * 40
    frame = b"".join(
        [
            b"\xa7",
            cbor_text("type"),
            cbor_text("ephemeral"),
            cbor_text("senderId"),
            b"\xd8\x1c" + cbor_text(sid),
            cbor_text("targetId"),
            b"\xd8\x1d\x00",
            cbor_text("documentId"),
            cbor_text("doc"),
            cbor_text("count"),
            b"\x01",
            cbor_text("sessionId"),
            cbor_text("sess"),
            cbor_text("data"),
            cbor2.dumps(cbor2.dumps({"x": 1})),
        ]
    )
    for data in (frame, frame + b"\xff" * 40):
        with pytest.raises(ProtocolError, match="tag 28"):
            decode(data)


# ------------------------------------------------------------------- fast paths = plain decoder

FRAME_TYPES = [
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
    "from-the-future",
]
FIELDS = [
    "senderId",
    "targetId",
    "documentId",
    "count",
    "sessionId",
    "data",
    "peerId",
    "clientPeerId",
    "user",
    "features",
    "peers",
    "error",
    "message",
    "retryAfter",
    "token",
    "anonymous",
]
_texts = st.one_of(
    st.sampled_from(["", "doc", "peer-1", "s", "ä" * 33, "𝄞" * 32, "x" * 64, "x" * 65, "y" * 129]),
    st.text(max_size=8),
)
_scalars = st.one_of(
    _texts,
    st.integers(min_value=-3, max_value=2**70),
    st.booleans(),
    st.none(),
    st.binary(max_size=8),
    st.floats(allow_nan=True),
)
_values = st.one_of(
    _scalars,
    st.lists(_scalars, max_size=3),
    st.fixed_dictionaries(
        {},
        optional={"id": _scalars, "name": _scalars, "isAnonymous": _scalars},
    ),
)


def outcome(decoder: Callable[[bytes], object], data: bytes) -> object:
    try:
        return ("frame", decoder(data))
    except ProtocolError as exc:
        return ("error", str(exc))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    frame_type=st.sampled_from(FRAME_TYPES),
    fields=st.dictionaries(st.sampled_from(FIELDS), _values, max_size=8),
    typical=st.booleans(),
)
@pytest.mark.slow
def test_the_fast_paths_agree_with_the_plain_decoder_on_every_frame_type(
    frame_type: str, fields: dict[str, object], typical: bool
) -> None:
    if typical:  # well-formed shapes, which the fast paths take
        base = {
            "senderId": "peer-a",
            "targetId": "peer-b",
            "documentId": "doc",
            "count": 3,
            "sessionId": "s",
            "data": b"\x01",
            "peerId": "peer-a",
            "user": {"id": None, "name": "N", "isAnonymous": True},
        }
        fields = {**base, **dict(list(fields.items())[:1])}
    data = cbor2.dumps({"type": frame_type, **fields})
    # repr: NaN is never equal to itself, but prints the same.
    assert repr(outcome(decode, data)) == repr(outcome(decode_plain, data))


# ------------------------------------------------------------------- ephemeral frames by position

_ids = st.one_of(
    st.sampled_from(["", "d", "peer-0123456789abcdef", "ä" * 12, "𝄞" * 8, "x" * 23, "x" * 24]),
    st.text(max_size=40),
    st.text(min_size=60, max_size=70),  # around the bounds the fast path checks by length
)
_counts = st.one_of(
    st.sampled_from(
        [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, MAX_COUNT, 2**53, 2**64 - 1]
    ),
    st.integers(min_value=0, max_value=2**64 - 1),
    st.integers(min_value=MAX_COUNT - 2, max_value=MAX_COUNT + 2),
)
_payloads = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([23, 24, 255, 256, 65535, 65536]).map(lambda n: b"p" * n),
)


def _relay_layout(sender: str, target: str, doc: str, count: int, sid: str, data: bytes) -> bytes:
    from ratatoskr_client.server.core.documents import ephemeral_prefix

    return ephemeral_prefix(cbor_text(sender), doc, count, sid, data) + cbor_text(target)


@st.composite
def _mutation(draw: st.DrawFn, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["none", "truncate", "append", "flip", "insert"]))
    if kind == "none" or not data:
        return data
    pos = draw(st.integers(0, len(data) - 1))
    if kind == "truncate":
        return data[:pos]
    if kind == "append":
        return data + draw(st.binary(min_size=1, max_size=3))
    if kind == "flip":
        return data[:pos] + bytes([data[pos] ^ (1 << draw(st.integers(0, 7)))]) + data[pos + 1 :]
    return data[:pos] + draw(st.binary(min_size=1, max_size=2)) + data[pos:]


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    sender=_ids,
    target=_ids,
    doc=_ids,
    count=_counts,
    sid=_ids,
    payload=_payloads,
    relayed=st.booleans(),
    data=st.data(),
)
@pytest.mark.slow
def test_ephemeral_frames_read_by_position_agree_with_the_plain_decoder(
    sender: str,
    target: str,
    doc: str,
    count: int,
    sid: str,
    payload: bytes,
    relayed: bool,
    data: st.DataObject,
) -> None:
    frame = EphemeralFrame(sender, target, doc, count, sid, payload)
    wire = _relay_layout(sender, target, doc, count, sid, payload) if relayed else encode(frame)
    if relayed:
        assert outcome(decode_plain, wire) == outcome(decode_plain, encode(frame))
    mutated = data.draw(_mutation(wire))
    assert outcome(decode, mutated) == outcome(decode_plain, mutated)
    if mutated == wire and fastpaths._ephemeral_by_position(wire) is None:
        # Only ids the general path must measure (or refuse), and counts it
        # refuses, leave the fast path.
        assert (
            max(len(doc), len(sid), len(sender), len(target)) > 32
            or not doc
            or not sid
            or count > MAX_COUNT
        )


@pytest.mark.parametrize("count", [MAX_COUNT + 1, 2**64 - 1, 2**64, 2**200])
@pytest.mark.parametrize("relayed", [False, True])
def test_a_count_beyond_2_53_is_refused_on_both_paths(count: int, relayed: bool) -> None:
    # 2**64 and more are CBOR bignums (tag 2), which the codec otherwise allows.
    frame = EphemeralFrame("peer-a", "peer-b", "doc", count, "s", b"x")
    wire = _relay_layout("peer-a", "peer-b", "doc", count, "s", b"x") if relayed else encode(frame)
    assert fastpaths._ephemeral_by_position(wire) is None
    for decoder in (decode, decode_plain):
        with pytest.raises(ProtocolError, match=r"count.*2\*\*53 - 1"):
            decoder(wire)
    largest = EphemeralFrame("peer-a", "peer-b", "doc", MAX_COUNT, "s", b"x")
    relayed_largest = _relay_layout("peer-a", "peer-b", "doc", MAX_COUNT, "s", b"x")
    for ok in (encode(largest), relayed_largest):
        assert fastpaths._ephemeral_by_position(ok) == largest == decode_plain(ok)


@pytest.mark.parametrize(
    "replace",
    [
        (b"ecount\x01", b"ecount\x18\x01"),  # a needlessly long head
        (b"ddata\x41", b"ddata\x58\x01"),
        (b"jdocumentIdcdoc", b"jdocumentIdx\x03doc"),
    ],
)
def test_a_needlessly_long_head_takes_the_general_path(replace: tuple[bytes, bytes]) -> None:
    frame = EphemeralFrame("peer-a", "peer-b", "doc", 1, "s", b"x")
    wire = encode(frame).replace(*replace)
    assert fastpaths._ephemeral_by_position(wire) is None
    assert decode(wire) == frame == decode_plain(wire)


def test_invalid_utf8_in_an_id_is_a_protocol_error_on_both_paths() -> None:
    wire = encode(EphemeralFrame("peer-a", "peer-b", "doc", 1, "s", b"x")).replace(
        b"cdoc", b"c\xff\xfeo"
    )
    assert fastpaths._ephemeral_by_position(wire) is None
    with pytest.raises(ProtocolError):
        decode(wire)


def test_identity_frames_are_shared_until_the_burst_is_over() -> None:
    from ratatoskr_client.protocol import fastpaths

    user = {"id": None, "name": "U", "isAnonymous": True}
    data = cbor2.dumps({"type": "peer_identity", "peerId": "p-shared", "user": user})
    first = fastpaths.decode(data)
    assert fastpaths.decode(bytes(data)) is first  # one object for every client
    fastpaths.forget_shared()
    again = fastpaths.decode(data)
    assert again == first and again is not first  # decoded anew, and shared again
    assert fastpaths.decode(data) is again


def _copy(text: str) -> str:
    return "".join(list(text))  # equal, not the same object


def test_a_state_message_is_decoded_once_for_every_client_of_the_process():
    """Equal bytes from equal ids (each client reads its own copies) give the
    same three objects: the state values a process's clients keep are one copy."""
    fastpaths.forget_shared()
    payload = {"__presence": {"type": "snapshot", "state": {"name": "Ada", "cursor": [1, 2]}}}
    data = cbor2.dumps(payload)
    assert data.startswith(fastpaths.STATE_HEAD)
    first = fastpaths.decode_state(_copy("peer-1"), _copy("s-1"), bytes(bytearray(data)))
    second = fastpaths.decode_state(_copy("peer-1"), _copy("s-1"), bytes(bytearray(data)))
    assert first == ("peer-1", "s-1", payload)
    assert all(a is b for a, b in zip(first, second, strict=True))
    # Another session's (or sender's) equal bytes are its own entry.
    other = fastpaths.decode_state("peer-1", "s-2", data)
    assert other[2] == payload and other[2] is not first[2]
    fastpaths.forget_shared()
    assert fastpaths.decode_state("peer-1", "s-1", data)[2] is not first[2]


def test_shared_states_are_bounded_and_bad_bytes_are_refused_not_kept():
    """The last 512 to 1,024 state messages are kept, in two generations."""
    fastpaths.forget_shared()
    heartbeat = cbor2.dumps({"__presence": {"type": "heartbeat"}})
    size = fastpaths._STATES_GENERATION

    def held() -> int:
        return sum(len(generation) for generation in fastpaths._STATES)

    first = fastpaths.decode_state("p", "s-0", heartbeat)
    for n in range(1, size + 1):  # the last one turns the generations
        fastpaths.decode_state("p", f"s-{n}", heartbeat)
    assert held() == size + 1
    assert fastpaths.decode_state("p", "s-0", heartbeat) is first  # in the previous one
    for n in range(size + 1, 2 * size + 1):  # and once more: the first is gone
        fastpaths.decode_state("p", f"s-{n}", heartbeat)
    assert held() <= 2 * size
    assert fastpaths.decode_state("p", "s-0", heartbeat) is not first
    fastpaths.forget_shared()
    assert held() == 0
    bad = fastpaths.STATE_HEAD + b"\xff"  # the marker's value is a stray break
    with pytest.raises(ProtocolError, match="ephemeral data"):
        fastpaths.decode_state("p", "s", bad)
    assert fastpaths._STATES == [{}, {}]
    big = cbor2.dumps({"__presence": {"type": "snapshot", "state": {"x": "y" * 600}}})
    assert fastpaths.decode_state("p", "s", big)[2]["__presence"]["state"]["x"] == "y" * 600
    assert fastpaths._STATES == [{}, {}]  # large payloads are not hashed, nor kept
