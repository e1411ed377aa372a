"""An exclusive lock on a file (``flock``), held across processes: the
pytest-xdist workers of one run, or pytest sessions side by side in one
checkout."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

#: False where there is no ``flock`` (Windows): :func:`exclusive` cannot be used.
AVAILABLE = fcntl is not None


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold the lock on ``path`` (created if missing) until the block ends."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
