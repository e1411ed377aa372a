#!/usr/bin/env python
"""What one connection cycle costs the relay, with N idle peers connected.

    python benchmarks/churn.py [--idle 0,500,1500] [--cycles 300] [--scope both]
    python benchmarks/churn.py --idle 500 --duration 30 --scope document

Run from the repository root; needs the ``metrics`` extra. What it measures
and how: ``benchmarks/scenarios/churn.py``; the figures: docs/reliability.md
("Connection churn").
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:
    # Run as a script: import this package's modules as benchmarks.* (see run.py).
    _here = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0] or ".").resolve() == _here:
        del sys.path[0]
    sys.path.insert(0, str(_here.parent))

from benchmarks.scenarios.churn import main

if __name__ == "__main__":
    sys.exit(main())
