"""Field validation for decoded frames: one helper per kind of field. No I/O.

Each helper takes the decoded CBOR map, the key and the frame's name, and
returns the value or raises :class:`~ratatoskr_client.errors.ProtocolError`
saying which field of which frame is wrong and what it should be. The frame
parsers (:mod:`.readers`) are written entirely with these; the fast paths
(:mod:`.fastpaths`) check the common well-formed shapes inline and fall back to
the parsers, so every error message comes from here.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, Final

from ..errors import ProtocolError
from .constants import MAX_COUNT

__all__ = [
    "MISSING",
    "byte_string",
    "count",
    "describe",
    "fail",
    "finite_seconds",
    "fits_utf8",
    "ident",
    "opt_ident",
    "opt_text",
    "text",
]

#: Marks a key that is absent from the map (``None`` is CBOR null).
MISSING: Final = object()
_MAX_FLOAT: Final = sys.float_info.max


def describe(value: object) -> str:
    """A short name for a value's CBOR type, for error messages."""
    if value is None:
        return "null"
    return type(value).__name__


def fail(frame: str, key: str, expected: str, value: object) -> ProtocolError:
    """The error for field ``key`` of ``frame`` holding ``value`` instead of ``expected``."""
    if value is MISSING:
        return ProtocolError(f"{frame} frame: missing required field {key!r}")
    return ProtocolError(f"{frame} frame: field {key!r} must be {expected}, got {describe(value)}")


def fits_utf8(value: str, limit: int) -> bool:
    """True if ``value`` is at most ``limit`` bytes in UTF-8."""
    return len(value) * 4 <= limit or len(value.encode("utf-8", "surrogatepass")) <= limit


def text(m: Mapping[str, Any], key: str, frame: str) -> str:
    """A required, non-empty text string."""
    value = m.get(key, MISSING)
    if type(value) is not str or not value:
        raise fail(frame, key, "a non-empty string", value)
    return value


def opt_text(m: Mapping[str, Any], key: str, frame: str) -> str | None:
    """A text string, or None when absent or null."""
    value = m.get(key)
    if value is None or type(value) is str:
        return value
    raise fail(frame, key, "a string or null", value)


def ident(m: Mapping[str, Any], key: str, frame: str, limit: int) -> str:
    """A required id: a non-empty text string of at most ``limit`` UTF-8 bytes."""
    value = text(m, key, frame)
    if not fits_utf8(value, limit):
        raise ProtocolError(f"{frame} frame: field {key!r} is longer than {limit} bytes")
    return value


def opt_ident(m: Mapping[str, Any], key: str, frame: str, limit: int) -> str | None:
    """An optional id (absent or null allowed)."""
    value = opt_text(m, key, frame)
    if value is not None and not fits_utf8(value, limit):
        raise ProtocolError(f"{frame} frame: field {key!r} is longer than {limit} bytes")
    return value


def byte_string(m: Mapping[str, Any], key: str, frame: str) -> bytes:
    """A required CBOR byte string (never a list of ints)."""
    value = m.get(key, MISSING)
    if type(value) is not bytes:
        raise fail(frame, key, "a CBOR byte string", value)
    return value


def count(m: Mapping[str, Any], key: str, frame: str) -> int:
    """A required integer from 0 to :data:`~.constants.MAX_COUNT` (2**53 - 1,
    what a JavaScript number holds exactly; a bignum is refused like any larger
    value). CBOR true is not one, although bool is an int."""
    value = m.get(key, MISSING)
    if type(value) is not int or value < 0:
        raise fail(frame, key, "a non-negative integer", value)
    if value > MAX_COUNT:
        raise ProtocolError(f"{frame} frame: field {key!r} is larger than 2**53 - 1")
    return value


def finite_seconds(m: Mapping[str, Any], key: str, frame: str) -> float | None:
    """An optional finite, non-negative number of seconds."""
    value = m.get(key)
    # `0 <= value <= max float` also refuses nan, inf, and integers too large
    # for float() (which would raise OverflowError, not ProtocolError).
    if value is not None and (type(value) not in (int, float) or not 0 <= value <= _MAX_FLOAT):
        raise fail(frame, key, "a finite non-negative number", value)
    return None if value is None else float(value)
