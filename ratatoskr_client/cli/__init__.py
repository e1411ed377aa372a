"""The ``ratatoskr`` command: ``relay``, ``demo`` and ``watch`` (``docs/cli.md``).

:func:`main` is the console script's entry point; :mod:`.demo` and
:mod:`.watch` are the two commands with a live view of their own.
"""

from .main import main

__all__ = ["main"]
