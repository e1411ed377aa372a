"""Friendly "Adjective Animal" names for anonymous peers. No I/O.

:class:`NameAllocator` hands out names that are unique among the names it
currently has out (56 × 54 = 3,024 combinations); once every combination is in
use it appends a number ("Neon Narwhal 2"), so a name is always unique.
"""

from __future__ import annotations

import random
from itertools import chain, islice
from typing import Final

__all__ = ["ADJECTIVES", "ANIMALS", "NameAllocator"]

ADJECTIVES: Final = (
    "Amber",
    "Ancient",
    "Bold",
    "Brave",
    "Breezy",
    "Bright",
    "Brisk",
    "Calm",
    "Candid",
    "Cheerful",
    "Clever",
    "Cosmic",
    "Cozy",
    "Crimson",
    "Curious",
    "Daring",
    "Dapper",
    "Dreamy",
    "Eager",
    "Electric",
    "Emerald",
    "Fearless",
    "Fluffy",
    "Frosty",
    "Gentle",
    "Gleaming",
    "Golden",
    "Graceful",
    "Happy",
    "Hasty",
    "Humble",
    "Jolly",
    "Keen",
    "Lively",
    "Lucky",
    "Mellow",
    "Merry",
    "Mighty",
    "Misty",
    "Neon",
    "Nimble",
    "Noble",
    "Plucky",
    "Polite",
    "Quick",
    "Quiet",
    "Radiant",
    "Rapid",
    "Rustic",
    "Sparkling",
    "Sunny",
    "Swift",
    "Tidy",
    "Velvet",
    "Witty",
    "Zesty",
)

ANIMALS: Final = (
    "Aardvark",
    "Albatross",
    "Alpaca",
    "Badger",
    "Beaver",
    "Bison",
    "Capybara",
    "Caracal",
    "Chameleon",
    "Cheetah",
    "Chinchilla",
    "Coyote",
    "Crane",
    "Dolphin",
    "Dormouse",
    "Falcon",
    "Ferret",
    "Flamingo",
    "Fox",
    "Gazelle",
    "Gecko",
    "Giraffe",
    "Hedgehog",
    "Heron",
    "Ibis",
    "Jackal",
    "Jaguar",
    "Kangaroo",
    "Koala",
    "Lemur",
    "Lynx",
    "Manatee",
    "Meerkat",
    "Mongoose",
    "Narwhal",
    "Ocelot",
    "Otter",
    "Panda",
    "Pangolin",
    "Pelican",
    "Penguin",
    "Platypus",
    "Puffin",
    "Quokka",
    "Raccoon",
    "Salamander",
    "Seal",
    "Sloth",
    "Tapir",
    "Toucan",
    "Walrus",
    "Wombat",
    "Yak",
    "Zebra",
)

# Random draws before falling back to a scan: with the space less than half full
# the chance that 8 draws all collide is below 0.4%.
_RANDOM_TRIES: Final = 8

# Every "Adjective Animal", in scan order (index = adjective * len(ANIMALS) + animal):
# built once, so a scan of a crowded space is set lookups, not string formatting.
_COMBINATIONS: Final = tuple(
    f"{adjective} {animal}" for adjective in ADJECTIVES for animal in ANIMALS
)


class NameAllocator:
    """Allocates unique anonymous display names and takes them back on release."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._in_use: set[str] = set()
        self._numbered: set[str] = set()  # the subset of _in_use past every combination

    def __len__(self) -> int:
        """How many names are currently out."""
        return len(self._in_use)

    def allocate(self) -> str:
        """A name not currently in use."""
        for _ in range(_RANDOM_TRIES):
            name = f"{self._rng.choice(ADJECTIVES)} {self._rng.choice(ANIMALS)}"
            if name not in self._in_use:
                return self._take(name)
        # Crowded: scan every combination from a random starting point (drawn
        # even when the scan is skipped, so a seeded allocator's names do not
        # depend on that shortcut).
        total = len(_COMBINATIONS)
        start = self._rng.randrange(total)
        if len(self._in_use) - len(self._numbered) < total:
            in_use = self._in_use
            for name in chain(islice(_COMBINATIONS, start, None), islice(_COMBINATIONS, start)):
                if name not in in_use:
                    return self._take(name)
        # Every combination is out: number a random one past its existing copies.
        base = f"{self._rng.choice(ADJECTIVES)} {self._rng.choice(ANIMALS)}"
        n = 2
        while f"{base} {n}" in self._in_use:
            n += 1
        self._numbered.add(f"{base} {n}")
        return self._take(f"{base} {n}")

    def reserve(self, name: str) -> None:
        """Count ``name`` as in use (a peer resumed here from another relay
        of the cluster keeps the name it was given there)."""
        self._in_use.add(name)

    def release(self, name: str) -> None:
        """Return a name allocated earlier (unknown names are ignored)."""
        self._in_use.discard(name)
        self._numbered.discard(name)

    def _take(self, name: str) -> str:
        self._in_use.add(name)
        return name
