#!/usr/bin/env python
"""What one simulated Locust user costs in memory, and of what it is made.

    python benchmarks/locust_memory.py [--users 2000] [--top 30]

Run from the repository root (it runs ``examples/locustfile.py``); needs the
``locust`` extra. What it measures and how: ``benchmarks/scenarios/locust_memory.py``;
the figures: docs/load-testing.md ("What one worker sustains").
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

from benchmarks.scenarios.locust_memory import main

if __name__ == "__main__":
    sys.exit(main())
