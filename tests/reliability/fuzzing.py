"""Hypothesis strategies for hostile frames, and a bridge to run them against
live sockets.

A generated frame is a *recipe*, turned into bytes when it is sent:

* ``("text", str)`` — a text WebSocket frame;
* ``("bytes", bytes)`` — a binary frame with exactly these bytes (random bytes,
  random CBOR items, byte-level mutations of valid frames, oversized frames);
* ``("map", dict)`` — a CBOR map, usually a valid frame with a few fields
  deleted or replaced by random CBOR values. A value equal to :data:`NEXT_COUNT`
  is replaced, at send time, by the sender's next ephemeral ``count``, so that
  mutated-but-valid messages get past the relay's replay filter and reach the
  deeper checks; ``data`` holds a :class:`Payload` (encoded at send time) so
  mutations reach inside the payload too.

:func:`run_examples` runs a ``@given`` test in a worker thread while the
sockets stay in the test's event loop, so one relay and one set of peers live
through all the examples (and the other peers' traffic can be compared at the
end).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .hostile import hostile_cbor

Recipe = tuple[str, Any]

#: Placeholder for "the next count of the sender's session".
NEXT_COUNT = "\x00next-count\x00"
EMPTY_DOC_SYNC = bytes.fromhex("42000001000000020102")

# Leaves are small, but unbounded integers (CBOR bignums) and every float
# (nan, inf, -0.0) are in, plus a dictionary of values where decoders overflow
# or hash: Hypothesis rarely draws a 300-digit integer on its own.
edge_values = st.sampled_from(
    [
        2**63,
        2**64,
        -(2**64) - 1,
        10**400,
        -(10**400),
        float("inf"),
        float("-inf"),
        float("nan"),
        1e308,
        -0.0,
        "",
        [],
        {},
        [[]],
        {"": {}},
    ]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=12)
    | edge_values
)
cbor_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)

FIELD_NAMES = (
    "type",
    "documentId",
    "count",
    "sessionId",
    "data",
    "senderId",
    "targetId",
    "peerId",
    "peers",
    "user",
    "error",
    "message",
    "retryAfter",
    "token",
    "anonymous",
    "features",
    "clientPeerId",
    # inside payloads and user maps
    "status",
    "__presence",
    "state",
    "channel",
    "value",
    "id",
    "name",
    "isAnonymous",
)


class Payload:
    """An ephemeral ``data`` payload kept decoded until send time, so that
    mutations can reach inside it."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Payload({self.value!r})"


def _materialize(value: Any, next_count: Callable[[], int] | None) -> Any:
    if isinstance(value, Payload):
        return cbor2.dumps(_materialize(value.value, None))
    if isinstance(value, str) and value == NEXT_COUNT:
        return next_count() if next_count is not None else 1_000_000
    return value


def _maps_in(frame: dict[str, Any]) -> list[dict[str, Any]]:
    """The frame and every map nested in it (payloads included), to mutate one."""
    out = [frame]
    todo: list[Any] = list(frame.values())
    while todo:
        value = todo.pop()
        if isinstance(value, Payload):
            todo.append(value.value)
        elif isinstance(value, dict):
            out.append(value)
            todo.extend(value.values())
        elif isinstance(value, list):
            todo.extend(value)
    return out


def _copy(value: Any) -> Any:
    if isinstance(value, Payload):
        return Payload(_copy(value.value))
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


@st.composite
def mutated_map(
    draw: st.DrawFn, templates: list[dict[str, Any]], doc_ids: tuple[str, ...]
) -> Recipe:
    frame = _copy(draw(st.sampled_from(templates)))
    for _ in range(draw(st.integers(0, 3))):
        target = draw(st.sampled_from(_maps_in(frame)))
        op = draw(st.sampled_from(("delete", "set", "set", "set", "data", "doc")))
        own_keys = sorted(target, key=repr)
        if op == "doc":  # another real document, in the envelope or the payload
            target["documentId"] = draw(st.sampled_from(doc_ids))
        elif op == "delete" and target:
            del target[draw(st.sampled_from(own_keys))]
        elif op == "set":
            # Mostly a field the frame has: a wrong value where a right one was
            # expected goes deepest.
            keys = [st.sampled_from(FIELD_NAMES), st.text(max_size=6)]
            if own_keys:
                keys = [st.sampled_from(own_keys)] * 2 + keys
            key = draw(st.one_of(keys))
            value = draw(st.one_of(edge_values, cbor_values, cbor_values))
            target[key] = _copy(value)  # never mutate what Hypothesis drew
        elif op == "data":
            # random bytes, a mutated payload, or hostile CBOR (tags, shared
            # references, deep nesting) where the payload should be
            frame["data"] = _copy(
                draw(st.binary(max_size=24) | cbor_values.map(Payload) | hostile_cbor)
            )
    return ("map", frame)


@st.composite
def mutated_bytes(draw: st.DrawFn, templates: list[dict[str, Any]]) -> Recipe:
    frame = draw(st.sampled_from(templates))
    raw = bytearray(cbor2.dumps({k: _materialize(v, None) for k, v in frame.items()}))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(("truncate", "flip", "insert", "append")))
        pos = draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "truncate":
            del raw[pos:]
        elif op == "flip" and raw:
            raw[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        else:
            raw += draw(st.binary(min_size=1, max_size=4))
    return ("bytes", bytes(raw))


def frames(
    templates: list[dict[str, Any]], doc_ids: tuple[str, ...], *, oversize: int | None = None
) -> Any:
    """Every kind of hostile frame, valid frames' mutations weighted most.
    ``doc_ids`` are the documents worth pointing a frame at."""
    kinds = [
        st.binary(max_size=48).map(lambda b: ("bytes", b)),
        cbor_values.map(lambda v: ("bytes", cbor2.dumps(v))),
        hostile_cbor.map(lambda b: ("bytes", b)),
        st.text(max_size=24).map(lambda s: ("text", s)),
        mutated_map(templates, doc_ids),
        mutated_map(templates, doc_ids),
        mutated_map(templates, doc_ids),
        mutated_bytes(templates),
        mutated_bytes(templates),
    ]
    if oversize is not None:
        kinds.append(
            st.builds(
                lambda n, fill: ("bytes", bytes([fill]) * n),
                st.integers(oversize + 1, oversize * 2),
                st.integers(0, 255),
            )
        )
    return st.one_of(kinds)


def encode_recipe(recipe: Recipe, next_count: Callable[[], int]) -> bytes | str:
    kind, value = recipe
    if kind == "map":
        return cbor2.dumps({k: _materialize(v, next_count) for k, v in value.items()})
    return value  # type: ignore[no-any-return]


async def run_examples(
    strategy: Any,
    check: Callable[[Recipe], Coroutine[Any, Any, None]],
    *,
    max_examples: int,
) -> int:
    """Run ``check`` on ``max_examples`` generated recipes, each in this event
    loop; Hypothesis itself runs (and shrinks) in a worker thread. Returns the
    number of examples run."""
    loop = asyncio.get_running_loop()
    ran = 0

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(strategy)
    def property_(recipe: Recipe) -> None:
        nonlocal ran
        ran += 1
        asyncio.run_coroutine_threadsafe(check(recipe), loop).result(timeout=60)

    await asyncio.to_thread(property_)
    return ran
