"""CBOR primitives shared by the frame layer, the relay and the client. No I/O.

Two jobs live here:

* strict decoding: :func:`loads_strict` accepts exactly one CBOR data item and
  nothing after it, under rules that keep the cost of any input linear in its
  size (see "Decoding rules" below), and turns *every* failure into
  :class:`~ratatoskr_client.errors.ProtocolError`;
* hand-rolled encoders for the few CBOR heads and values the writers
  (:mod:`.writers`) splice together on the hot paths (a text string, an
  unsigned integer, a byte string, a map header), so the relay can rewrite
  ``targetId`` once per recipient without re-encoding the whole frame.

Decoding rules (the same for frames and for application payloads, on the relay
and in the client, because a payload is relayed to clients as it came in):

* **Tags**: only :data:`ALLOWED_TAGS` (date/times 0 and 1, bignums 2 and 3).
  Every other tag is refused instead of interpreted (its content is decoded
  first, at the cost of its own bytes): value-sharing (28/29) and stringref
  (25/256) describe a DAG whose expansion doubles per level, and most other
  semantic tags run arbitrary work (``2 ** exponent`` for bigfloats, regex
  compilation, MIME parsing). Nothing automerge-repo sends uses a tag.
* **Nesting**: at most :data:`MAX_NESTING` levels of arrays and maps.
* **Map keys**: text or byte strings only, never twice in one map. Integer,
  float and array keys hash predictably, so a frame of colliding keys would
  make building the map quadratic.
* **One item**: the item is decoded from a stream and the stream's position
  compared with the length, so trailing bytes are found without re-encoding
  the value (re-encoding is what expanded shared references).
"""

from __future__ import annotations

import io
import struct
from typing import Any, Final, NoReturn

import cbor2

from ..errors import PayloadError, ProtocolError

__all__ = [
    "ALLOWED_TAGS",
    "MAX_NESTING",
    "cbor_bytes",
    "cbor_map_header",
    "cbor_text",
    "cbor_uint",
    "dumps",
    "loads_strict",
]

#: CBOR tags accepted in frames and payloads: standard and epoch date/times
#: (0, 1) and positive and negative bignums (2, 3). Their cost is linear in
#: their size, and Python values of those types encode to them.
ALLOWED_TAGS: Final = frozenset((0, 1, 2, 3))
#: Deepest nesting of arrays and maps accepted in a frame or payload.
MAX_NESTING: Final = 32

_dumps = cbor2.dumps
_Decoder = cbor2.CBORDecoder
_BytesIO = io.BytesIO


def _refuse_tag(decoder: cbor2.CBORDecoder, *_: object) -> NoReturn:
    # cbor2 calls this with the decoder (and, depending on the tag, its content,
    # which at that point has cost no more than its own bytes); it reports
    # "error decoding semantic tag N", with this as the cause.
    raise cbor2.CBORDecodeError(
        f"tag not allowed (only {', '.join(map(str, sorted(ALLOWED_TAGS)))} are)"
    )


class _TagPolicy(dict[int, Any]):
    """cbor2's ``semantic_decoders``: it looks up every tag here before its own
    decoders, so answering for *every* tag number refuses the ones cbor2 knows
    today and any it learns later; a KeyError lets an allowed tag through."""

    def __getitem__(self, tag: int) -> Any:
        if tag in ALLOWED_TAGS:
            raise KeyError(tag)
        return _refuse_tag


_TAG_POLICY: Final = _TagPolicy()


def loads_strict(data: bytes | bytearray | memoryview, what: str = "frame") -> Any:
    """Decode exactly one CBOR data item from ``data``, under the decoding rules
    of this module. CPU and memory are linear in ``len(data)`` for any input.

    Raises:
        ProtocolError: ``data`` is empty, truncated, not CBOR, has trailing
            bytes, or breaks a decoding rule (a refused tag, nesting deeper than
            :data:`MAX_NESTING` (32), a map key that is not a string, a repeated key).
    """
    if not data:
        raise ProtocolError(f"{what} is empty")
    stream = _BytesIO(data)
    try:
        value = _Decoder(
            stream,
            semantic_decoders=_TAG_POLICY,
            max_depth=MAX_NESTING,
            strict_hashable_types=True,
            allow_duplicate_keys=False,
        ).decode()
    except Exception as exc:  # any decoder failure on untrusted bytes is bad input
        cause = exc.__cause__
        detail = f"{exc}: {cause}" if isinstance(cause, cbor2.CBORDecodeError) else str(exc)
        raise ProtocolError(f"{what} is not valid CBOR: {detail}") from exc
    end = stream.tell()
    if end != len(data):
        raise ProtocolError(f"{what} has {len(data) - end} trailing byte(s) after the CBOR item")
    return value


#: Types cbor2 writes without a tag (ints of 65 bits or more become bignums,
#: tags 2 and 3, which are allowed).
_UNTAGGED: Final = frozenset((str, bytes, int, float, bool, type(None)))
#: Values :func:`_plain` looks at before leaving the question to the decoder.
_PLAIN_BUDGET: Final = 64


def _plain(value: Any, depth: int, budget: list[int]) -> bool:
    """True if ``value`` certainly encodes to CBOR the decoding rules accept:
    dicts with text or byte-string keys, lists and tuples, nested at most
    :data:`MAX_NESTING` deep, of the plain types. False means "not sure": an
    unusual type, or more than :data:`_PLAIN_BUDGET` values (where decoding
    the encoded bytes is the faster check). Typical payloads are a handful of
    values, and this is a quarter of the cost of decoding them."""
    kind = type(value)
    if kind in _UNTAGGED:
        return True
    if kind is not dict and kind is not list and kind is not tuple:
        return False
    budget[0] -= 1 + len(value)
    if budget[0] < 0 or depth >= MAX_NESTING:
        return False
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str and type(key) is not bytes:
                return False
            if type(item) not in _UNTAGGED and not _plain(item, depth + 1, budget):
                return False
        return True
    for item in value:
        if type(item) not in _UNTAGGED and not _plain(item, depth + 1, budget):
            return False
    return True


def dumps(value: Any, what: str = "payload") -> bytes:
    """Encode ``value`` as CBOR that :func:`loads_strict` accepts.

    Raises:
        PayloadError: the value (or something inside it) cannot be encoded, or
            encodes to something receivers refuse (a type cbor2 writes as a
            refused tag, such as ``set``, ``Decimal`` or ``UUID``; nesting
            deeper than :data:`MAX_NESTING` (32); a map key that is not a string).
    """
    try:
        data = _dumps(value)
    except Exception as exc:  # CBOREncodeError, RecursionError on cycles, ...
        culprit = _unsendable(value, what)
        reason = culprit if culprit is not None else f"cannot be encoded as CBOR: {exc}"
        raise PayloadError(f"{what} cannot be sent: {reason}") from exc
    if _plain(value, 0, [_PLAIN_BUDGET]):
        return data  # nothing in it can break a decoding rule: no need to check
    try:
        loads_strict(data, what)
    except ProtocolError as exc:
        # Say it here, at the sender, rather than let every receiver refuse it;
        # and in the sender's terms (a Python type), not the decoder's (a tag).
        culprit = _unsendable(value, what)
        reason = culprit if culprit is not None else f"receivers would refuse it ({exc})"
        raise PayloadError(f"{what} cannot be sent: {reason}") from exc
    return data


#: What to send instead of a Python type that has no plain CBOR form.
_INSTEAD: Final = {
    "set": "a list",
    "frozenset": "a list",
    "Decimal": "a float or a str",
    "UUID": "str(uuid)",
    "date": "date.isoformat()",
    "Fraction": "a float or a str",
    "complex": "two floats",
}
_ACCEPTED: Final = (
    "payloads are made of str, bytes, int, float, bool, None, "
    "timezone-aware datetime, lists and dicts with str keys"
)


def _unsendable(value: Any, where: str) -> str | None:
    """The first part of ``value`` that no receiver accepts, in the sender's
    words ("payload['tags'] is a set: send a list instead"), or None when
    nothing but its size or shape is wrong (the caller then quotes the codec).
    Walked only once encoding has failed, so its cost is never on the hot path."""
    import datetime

    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        kind = type(item)
        if kind in _UNTAGGED:
            continue
        if isinstance(item, datetime.datetime):
            if item.tzinfo is None:
                return f"{path} is a naive datetime: give it a timezone (tzinfo=datetime.UTC)"
            continue
        if depth >= MAX_NESTING and isinstance(item, dict | list | tuple):
            return f"{where} is nested more than {MAX_NESTING} lists or dicts deep"
        if isinstance(item, dict):
            for key in item:
                if not isinstance(key, str | bytes):
                    return (
                        f"{path} has the map key {key!r} ({type(key).__name__}): "
                        "dict keys must be str"
                    )
            stack.extend((inner, f"{path}[{key!r}]", depth + 1) for key, inner in item.items())
            continue
        if isinstance(item, list | tuple):
            stack.extend((inner, f"{path}[{i}]", depth + 1) for i, inner in enumerate(item))
            continue
        name = kind.__name__
        instead = _INSTEAD.get(name)
        advice = f": send {instead} instead" if instead else f" ({_ACCEPTED})"
        article = "an" if name[:1] in "aeiouAEIO" else "a"  # (a UUID)
        return f"{path} is {article} {name}{advice}"
    return None


def _head(major: int, length: int) -> bytes:
    if length < 24:
        return bytes((major | length,))
    if length < 0x100:
        return bytes((major | 24, length))
    if length < 0x10000:
        return struct.pack(">BH", major | 25, length)
    if length < 0x100000000:
        return struct.pack(">BI", major | 26, length)
    return struct.pack(">BQ", major | 27, length)


def cbor_text(value: str) -> bytes:
    """The CBOR encoding of a text string (major type 3); equal to ``cbor2.dumps(value)``."""
    raw = value.encode("utf-8")
    return _head(0x60, len(raw)) + raw


def cbor_uint(value: int) -> bytes:
    """The CBOR encoding of a non-negative integer; equal to ``cbor2.dumps(value)``
    (major type 0, or a bignum from 2**64 on)."""
    if value >= 0x10000000000000000:
        return _dumps(value)
    return _head(0x00, value)


def cbor_bytes(value: bytes) -> bytes:
    """The CBOR encoding of a byte string (major type 2); equal to ``cbor2.dumps(value)``."""
    return _head(0x40, len(value)) + value


def cbor_map_header(pairs: int) -> bytes:
    """The CBOR head of a definite-length map with ``pairs`` entries (major type 5)."""
    return _head(0xA0, pairs)
