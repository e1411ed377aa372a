"""Anonymous "Adjective Animal" names (``ratatoskr_client.server.core.names``)."""

from __future__ import annotations

import random
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from ratatoskr_client.server.core.names import ADJECTIVES, ANIMALS, NameAllocator

COMBINATIONS = len(ADJECTIVES) * len(ANIMALS)
WORD = re.compile(r"^[A-Z][a-z]+$")


def split(name: str) -> tuple[str, str, int | None]:
    """("Neon", "Narwhal", None) or ("Neon", "Narwhal", 2) for a numbered name."""
    parts = name.split(" ")
    assert len(parts) in (2, 3), name
    number = int(parts[2]) if len(parts) == 3 else None
    return parts[0], parts[1], number


def test_word_lists() -> None:
    assert len(ADJECTIVES) >= 50
    assert len(ANIMALS) >= 50
    assert len(set(ADJECTIVES)) == len(ADJECTIVES)
    assert len(set(ANIMALS)) == len(ANIMALS)
    for word in (*ADJECTIVES, *ANIMALS):
        assert WORD.match(word), word
    assert COMBINATIONS == 3024  # the figure docs and the module docstring quote


def test_a_name_is_adjective_then_animal() -> None:
    names = NameAllocator(random.Random(1))
    for _ in range(50):
        adjective, animal, number = split(names.allocate())
        assert adjective in ADJECTIVES
        assert animal in ANIMALS
        assert number is None


def test_names_are_unique_until_every_combination_is_out() -> None:
    names = NameAllocator(random.Random(2))
    out = [names.allocate() for _ in range(COMBINATIONS)]
    assert len(set(out)) == COMBINATIONS
    assert len(names) == COMBINATIONS
    # No numbering was needed: exactly every combination, once.
    assert set(out) == {f"{a} {b}" for a in ADJECTIVES for b in ANIMALS}


def test_beyond_every_combination_names_get_a_unique_number() -> None:
    names = NameAllocator(random.Random(3))
    out = [names.allocate() for _ in range(COMBINATIONS + 300)]
    assert len(set(out)) == len(out) == len(names)
    extra = out[COMBINATIONS:]
    for name in extra:
        adjective, animal, number = split(name)
        assert adjective in ADJECTIVES
        assert animal in ANIMALS
        assert number is not None
        assert number >= 2


def test_numbered_names_stay_unique_when_one_base_is_drawn_repeatedly() -> None:
    class AlwaysFirst(random.Random):
        def choice(self, seq):
            return seq[0]

        def randrange(self, *args, **kwargs):
            return 0

    names = NameAllocator(AlwaysFirst())
    base = f"{ADJECTIVES[0]} {ANIMALS[0]}"
    out = [names.allocate() for _ in range(COMBINATIONS + 5)]
    assert out[0] == base
    assert out[COMBINATIONS:] == [f"{base} {n}" for n in range(2, 7)]
    names.release(f"{base} 3")
    assert names.allocate() == f"{base} 3"


def test_release_makes_a_name_reusable() -> None:
    names = NameAllocator(random.Random(4))
    out = [names.allocate() for _ in range(COMBINATIONS)]
    freed = out[1234]
    names.release(freed)
    assert len(names) == COMBINATIONS - 1
    # The freed name is the only combination left, so it is handed out again
    # rather than a numbered one.
    assert names.allocate() == freed
    assert len(names) == COMBINATIONS


def test_release_of_unknown_or_twice_is_ignored() -> None:
    names = NameAllocator(random.Random(5))
    name = names.allocate()
    names.release("Nobody Here")
    assert len(names) == 1
    names.release(name)
    names.release(name)
    assert len(names) == 0


def test_default_allocator_is_usable() -> None:
    names = NameAllocator()
    a, b = names.allocate(), names.allocate()
    assert a != b
    assert len(names) == 2


@settings(deadline=None, max_examples=60)
@given(
    seed=st.integers(0, 2**32),
    ops=st.lists(st.one_of(st.just(None), st.integers(0, 200)), max_size=300),
)
def test_names_in_use_are_always_unique(seed: int, ops: list[int | None]) -> None:
    """Any mix of allocate (None) and release (index into the names out)."""
    names = NameAllocator(random.Random(seed))
    out: list[str] = []
    for op in ops:
        if op is None:
            name = names.allocate()
            assert name not in out
            out.append(name)
        elif out:
            names.release(out.pop(op % len(out)))
        assert len(names) == len(out) == len(set(out))
