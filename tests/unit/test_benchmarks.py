"""The benchmarks package: its import structure, its JSON contract, its report
of failed phases. Nothing here runs a benchmark (see
``tests/integration/test_benchmark_scripts.py`` for that).

The JSON key sets below are those that ``benchmarks/run.py`` wrote before it
became a package (one file that loaded a second copy of itself for
``--cluster``), read from runs of that code: scripts compare runs by these
keys, so they change only on purpose.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import math
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.harness import Failure, Phases, describe, pct
from ratatoskr_client.errors import OperationTimeout

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
#: scripts run as programs; no module may import them
ENTRY_SCRIPTS = {
    "benchmarks.run",
    "benchmarks.locust_capacity",
    "benchmarks.locust_memory",
    "benchmarks.churn",
    "benchmarks.floods",
    "benchmarks.raw_relay",
}

QUICK_KEYS = {
    "client_kib_per_client", "client_rss_base_kib", "client_rss_kib", "fanout_messages",
    "fanout_ratio_paired_median", "fanout_receivers", "idle_clients", "join_converge_s",
    "latency_messages", "malloc_tuned", "pinned", "presence_cycles", "presence_enter_p50_us",
    "presence_leave_p50_us", "presence_p50_us", "presence_p99_us", "quick",
    "raw_client_cpu_us_per_delivery", "raw_client_kib_per_conn", "raw_fanout100_max_per_s",
    "raw_fanout100_min_per_s", "raw_fanout100_overall_per_s", "raw_fanout100_per_s",
    "raw_mean_us", "raw_on_ours_client_cpu_us_per_delivery", "raw_on_ours_fanout100_per_s",
    "raw_on_ours_p50_us", "raw_on_ours_p99_us", "raw_p50_us", "raw_p99_us",
    "raw_relay_kib_per_conn", "relay_kib_per_peer", "relay_rate_limit_per_min",
    "relay_rss_base_kib", "relay_rss_kib", "restart_all_connected_s", "restart_converge_s",
    "restart_relay_rss_kib", "restart_relay_start_s", "restart_relay_up_s", "rounds",
    "sdk_client_cpu_us_per_delivery", "sdk_fanout100_dropped", "sdk_fanout100_max_per_s",
    "sdk_fanout100_min_per_s", "sdk_fanout100_overall_per_s", "sdk_fanout100_per_s",
    "sdk_mean_us", "sdk_p50_us", "sdk_p99_us", "uvloop", "wall_s",
}  # fmt: skip
FULL_ONLY_KEYS = {
    "client_kib_per_client_2000", "client_rss_base_kib_2000", "client_rss_kib_2000",
    "join_converge_s_2000", "relay_kib_per_peer_2000", "relay_rss_base_kib_2000",
    "relay_rss_kib_2000",
}  # fmt: skip
CLUSTER_KEYS = {
    "cluster_cross_node_fanout100_per_s", "cluster_cross_node_fanout100_per_s_ratio",
    "cluster_cross_node_p50_us", "cluster_cross_node_p50_us_ratio",
    "cluster_cross_node_p99_us", "cluster_cross_node_p99_us_ratio",
    "cluster_memory_connections", "cluster_same_node_fanout100_per_s",
    "cluster_same_node_fanout100_per_s_ratio", "cluster_same_node_p50_us",
    "cluster_same_node_p50_us_ratio", "cluster_same_node_p99_us",
    "cluster_same_node_p99_us_ratio", "cluster_single_fanout100_per_s",
    "cluster_single_kib_per_conn", "cluster_single_p50_us", "cluster_single_p99_us",
    "cluster_throughput_messages", "cluster_workers1_cpu_us_per_delivery",
    "cluster_workers1_per_s", "cluster_workers2_cpu_us_per_delivery",
    "cluster_workers2_cpu_us_per_delivery_ratio", "cluster_workers2_per_s",
    "cluster_workers2_per_s_ratio", "cluster_workers4_kib_per_conn",
    "cluster_workers4_kib_per_conn_ratio", "cluster_workers4_redis_kib_per_conn",
    "cluster_workers4_rss_kib",
}  # fmt: skip


# --------------------------------------------------------------------------- structure


def module_name(path: Path) -> str:
    parts = list(path.relative_to(BENCHMARKS.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in BENCHMARKS.rglob("*.py")}


def imports(path: Path) -> set[str]:
    """Modules of ``benchmarks`` that ``path`` imports, anywhere in it."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "benchmarks")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "benchmarks":
                continue
            for alias in node.names:  # `from benchmarks import report` names a module
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in MODULES else target)
    found.discard(name)
    return found


@functools.cache
def graph() -> dict[str, set[str]]:
    """Module -> the ``benchmarks`` modules it imports. Read when a test first
    asks (not at collection, which every pytest-xdist worker does)."""
    return {name: imports(path) for name, path in MODULES.items()}


def test_the_package_has_its_modules():
    # What docs/performance.md and the package docstring describe.
    assert {
        "benchmarks.harness",
        "benchmarks.report",
        "benchmarks.scenarios.wire",
        "benchmarks.scenarios.latency",
        "benchmarks.scenarios.fanout",
        "benchmarks.scenarios.memory",
        "benchmarks.scenarios.cluster",
        "benchmarks.scenarios.capacity",
        "benchmarks.scenarios.churn",
    } <= set(MODULES)
    assert "benchmarks.cluster_bench" not in MODULES


def test_no_import_cycles():
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph().get(name, ())):
            if state.get(target) == "open":
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = "done"

    for name in sorted(graph()):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_no_module_imports_an_entry_script():
    # An entry script runs as __main__; importing it too would load a second copy.
    offenders = {
        name: found & ENTRY_SCRIPTS for name, found in graph().items() if found & ENTRY_SCRIPTS
    }
    assert offenders == {}


def test_layers_import_only_downwards():
    assert graph()["benchmarks.harness"] == set()
    assert graph()["benchmarks.report"] <= {"benchmarks.harness"}
    for name, targets in graph().items():
        if name.startswith("benchmarks.scenarios."):
            assert all(
                t in {"benchmarks.harness", "benchmarks.scenarios"}
                or t.startswith("benchmarks.scenarios.")
                for t in targets
            ), (name, targets)


# --------------------------------------------------------------------------- the JSON keys


@pytest.mark.parametrize(
    ("quick", "cluster", "expected"),
    [
        (True, False, QUICK_KEYS),
        (False, False, QUICK_KEYS | FULL_ONLY_KEYS),
        (True, True, QUICK_KEYS | CLUSTER_KEYS),
        (False, True, QUICK_KEYS | FULL_ONLY_KEYS | CLUSTER_KEYS),
    ],
)
def test_json_keys_are_those_of_the_code_before(quick, cluster, expected):
    phases = report.phases_for(quick=quick, cluster=cluster)
    assert report.expected_keys(phases, cluster=cluster) == expected


def test_required_keys_are_written_by_every_complete_run():
    phases = report.phases_for(quick=True, cluster=False)
    assert set(report.REQUIRED_KEYS) <= report.expected_keys(phases, cluster=False)


def test_only_selects_phase_groups():
    assert report.phases_for(quick=False, cluster=False, only=["memory"]) == [
        "memory",
        "memory_raw",
        "memory_2000",
    ]
    assert report.phases_for(quick=True, cluster=True, only=["fanout", "latency"]) == [
        "latency",
        "fanout",
        "cluster_placements",
        "cluster_workers",
        "cluster_memory",
    ]


def full_results(phases: list[str], *, cluster: bool = False) -> dict[str, float]:
    return dict.fromkeys(report.expected_keys(phases, cluster=cluster), 1.0)


def test_a_failed_phase_may_lack_its_keys_and_a_completed_one_may_not():
    phases = report.phases_for(quick=True, cluster=False)
    results = full_results(phases)
    for key in report.PHASE_KEYS["fanout"] + ("presence_p50_us",):
        del results[key]
    problems = report.check_keys(results, phases, [Failure("fanout", "boom")], cluster=False)
    assert problems == ["phase presence completed without the keys presence_p50_us"]


def test_a_key_no_phase_declares_is_a_problem():
    phases = ["presence"]
    results = {**full_results(phases), "presence_p75_us": 1.0}
    problems = report.check_keys(results, phases, [], cluster=False)
    assert problems == ["keys no phase declares: presence_p75_us"]


def test_cluster_ratios_only_where_both_figures_were_measured():
    results = {"cluster_single_p50_us": 100.0, "cluster_cross_node_p50_us": 300.0}
    report.add_cluster_ratios(results)
    assert results["cluster_cross_node_p50_us_ratio"] == pytest.approx(3.0)
    assert "cluster_same_node_p50_us_ratio" not in results


def test_json_has_failures_only_when_a_phase_failed():
    assert '"failures"' not in report.to_json({"quick": 1}, [])
    text = report.to_json({"quick": 1}, [Failure("memory_2000", "OperationTimeout: x")])
    assert '"phase": "memory_2000"' in text
    assert '"error": "OperationTimeout: x"' in text


def test_the_report_marks_missing_figures_instead_of_failing_their_targets():
    phases = report.phases_for(quick=True, cluster=True)
    results = full_results(phases, cluster=True)
    for key in report.PHASE_KEYS["fanout"] + report.PHASE_KEYS["cluster_workers"]:
        del results[key]
    text = report.render(results, 12.0)
    fanout_row = next(line for line in text.splitlines() if line.startswith("fan-out 1→100"))
    assert "not measured" in fanout_row
    assert "MISSED" not in fanout_row
    cluster_text = report.render_cluster(results)
    workers_row = next(line for line in cluster_text.splitlines() if "2 vs 1 worker" in line)
    assert workers_row.split()[-3:] == ["—", "—", "—"]
    failures = report.render_failures([Failure("fanout", "TimeoutError")])
    assert "fanout: TimeoutError" in failures


# --------------------------------------------------------------------------- phases


def test_a_phase_that_raises_is_recorded_and_the_next_one_runs():
    phases = Phases()
    ran: list[str] = []

    async def fails() -> None:
        ran.append("first")
        raise OperationTimeout("enter_document('bench-idle') timed out")

    async def works() -> None:
        ran.append("second")

    async def main() -> tuple[bool, bool]:
        return (
            await phases.run("memory_2000", fails, budget=5),
            await phases.run("latency", works, budget=5),
        )

    assert asyncio.run(main()) == (False, True)
    assert ran == ["first", "second"]
    [failure] = phases.failures
    assert failure.phase == "memory_2000"
    assert failure.error.startswith("OperationTimeout: enter_document('bench-idle') timed out")
    assert "tests/unit/test_benchmarks.py" not in failure.error  # only benchmarks/ frames
    assert set(phases.durations) == {"latency"}


def test_a_phase_past_its_budget_is_cancelled_and_recorded():
    phases = Phases()
    cancelled = asyncio.Event()

    async def hangs() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    async def main() -> bool:
        return await phases.run("fanout", hangs, budget=0.01)

    assert asyncio.run(main()) is False
    assert cancelled.is_set()
    assert phases.failures == [Failure("fanout", "did not finish within 0.01 s")]


def test_a_phase_does_not_swallow_an_interrupt():
    async def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(Phases().run("latency", interrupted, budget=5))


def test_describe_is_one_line_and_unwraps_groups():
    error = ExceptionGroup("tasks", [ConnectionResetError("peer\nreset")])
    assert describe(error) == "ConnectionResetError: peer reset"
    assert describe(TimeoutError()) == "TimeoutError"


# --------------------------------------------------------------------------- placement


@pytest.mark.parametrize(
    ("allowed", "pin", "clients", "relays"),
    [
        ({0, 1}, True, {0}, {1}),
        ({3, 1, 7}, True, {1}, {3}),
        ({0, 1}, False, None, None),
        ({2}, True, None, None),
    ],
)
def test_placement_puts_clients_and_relays_on_different_cpus(
    monkeypatch, allowed, pin, clients, relays
):
    from benchmarks.harness import Placement

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(allowed))
    place = Placement.choose(pin=pin)
    assert place.clients == (None if clients is None else frozenset(clients))
    assert place.relays == (None if relays is None else frozenset(relays))
    assert ("unpinned" in place.describe()) == (clients is None)


def test_percentiles():
    assert pct([3.0, 1.0, 2.0], 50) == 2.0
    assert pct([1.0, 2.0], 99) == pytest.approx(1.99)
    assert math.isnan(pct([], 50))
