"""CBOR primitives shared by the frame layer, the relay and the client. No I/O.

Two jobs live here:

* strict decoding: :func:`loads_strict` accepts exactly one CBOR data item and
  nothing after it, and turns *every* failure (cbor2 errors, but also the
  ``ValueError``/``OverflowError``/``RecursionError`` a semantic tag decoder can
  raise on hostile input) into :class:`~ratatoskr_client.errors.ProtocolError`;
* hand-rolled encoders for the few byte patterns the relay splices together on
  its hot path (a text string, a map header), so it can rewrite ``targetId``
  once per recipient without re-encoding the whole frame.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import cbor2

from ..errors import PayloadError, ProtocolError

__all__ = ["cbor_bytes", "cbor_map_header", "cbor_text", "cbor_uint", "dumps", "loads_strict"]

_loads = cbor2.loads
_dumps = cbor2.dumps


def loads_strict(data: bytes | bytearray | memoryview, what: str = "frame") -> Any:
    """Decode exactly one CBOR data item from ``data``.

    Raises:
        ProtocolError: ``data`` is empty, truncated, not CBOR, or has trailing bytes.
    """
    if not data:
        raise ProtocolError(f"{what} is empty")
    # cbor2.loads() silently ignores trailing bytes. Fast path (almost every frame:
    # both ends encode with cbor2): if re-encoding the decoded value gives back
    # exactly ``data``, then ``data`` is one item and nothing else. It costs a
    # third of the byte-at-a-time decoder below, which is the fallback for
    # everything else (other encoders' choices, bad input) and gives the errors.
    try:
        value = _loads(data)
        if _dumps(value) == data:
            return value
    except Exception:  # any failure: let the strict decoder judge and explain
        pass
    # A decoder reading one byte at a time leaves the stream position exactly
    # after the first item, so we can tell whether anything follows it.
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(stream, read_size=1).decode()
    except Exception as exc:  # any decoder failure on untrusted bytes is bad input
        raise ProtocolError(f"{what} is not valid CBOR: {exc}") from exc
    if stream.tell() != len(data):
        raise ProtocolError(
            f"{what} has {len(data) - stream.tell()} trailing byte(s) after the CBOR item"
        )
    return value


def dumps(value: Any, what: str = "payload") -> bytes:
    """Encode ``value`` as CBOR.

    Raises:
        PayloadError: the value (or something inside it) cannot be encoded.
    """
    try:
        return cbor2.dumps(value)
    except Exception as exc:  # CBOREncodeError, RecursionError on cycles, ...
        raise PayloadError(f"{what} cannot be encoded as CBOR: {exc}") from exc


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
