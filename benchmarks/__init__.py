"""Benchmarks of the SDK and the reference relay, each against a floor measured
in the same run (see docs/performance.md).

Entry scripts, run from the repository root with the project's Python:

* ``python benchmarks/run.py [--quick] [--json PATH] [--uvloop] [--malloc-tuned]
  [--cluster]`` (or ``python -m benchmarks.run ...``): the relay and SDK benchmark;
* ``python benchmarks/locust_capacity.py [--users ...] [--steady S]``: what one
  Locust worker sustains (or ``python -m benchmarks.locust_capacity``);
* ``python benchmarks/churn.py [--idle 0,500,1500] [--cycles 300] [--scope both]``:
  what a connection cycle costs the relay with N idle peers, in both identity
  scopes (or ``python -m benchmarks.churn``);
* ``python benchmarks/floods.py {togglers,scrapes,relay-cost} ...``: hostile
  load against the relay and what it costs everyone else (or ``python -m
  benchmarks.floods``);
* ``python benchmarks/raw_relay.py``: the floor relay, started by ``run.py``.

Modules, each importing only those listed before it (no entry script is imported):

* ``harness``: processes (our relay, the floor, Redis), /proc readings,
  percentiles, logging, and :class:`~benchmarks.harness.Phases`, which lets a
  phase fail without ending the run;
* ``scenarios``: the measurements (see its docstring);
* ``report``: the keys each phase writes, the printed tables, the JSON.
"""
