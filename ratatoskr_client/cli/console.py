"""Line output for the CLI that survives a closed pipe (``ratatoskr watch --json | head``)."""

from __future__ import annotations

import os
import sys

__all__ = ["print_line"]

_pipe_closed = False


def print_line(text: str) -> None:
    """Print one line to stdout and flush it; once the reader has gone away,
    further lines are discarded instead of raising BrokenPipeError."""
    global _pipe_closed
    if _pipe_closed:
        return
    try:
        print(text, flush=True)
    except BrokenPipeError:
        _pipe_closed = True
        # Point stdout at /dev/null so the interpreter's final flush is quiet too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
