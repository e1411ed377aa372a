"""The benchmark's results: which keys each phase writes, the printed tables,
and the JSON.

The JSON keys are a contract (docs/performance.md lists them; scripts compare
runs by them): :data:`PHASE_KEYS` declares them per phase, and a run whose keys
differ from :func:`expected_keys` reports that as a failure. A phase that
failed leaves its keys out, and the JSON gets a ``failures`` list; every other
value is a number.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence

from benchmarks.harness import BENCH_RATE_LIMIT, Failure

#: the run's settings, always written
SETTINGS_KEYS = (
    "quick",
    "uvloop",
    "malloc_tuned",
    "latency_messages",
    "fanout_messages",
    "fanout_receivers",
    "rounds",
    "presence_cycles",
    "idle_clients",
    "relay_rate_limit_per_min",
    "pinned",
    "wall_s",
)
_MEMORY = (
    "join_converge_s",
    "relay_kib_per_peer",
    "client_kib_per_client",
    "relay_rss_base_kib",
    "relay_rss_kib",
    "client_rss_base_kib",
    "client_rss_kib",
)
#: the cluster's settings, written with --cluster
CLUSTER_SETTINGS_KEYS = ("cluster_memory_connections", "cluster_throughput_messages")
#: a cluster ratio key (``{key}_ratio``) for each (one relay, cluster) pair printed
CLUSTER_RATIOS = (
    ("1:1 p50 (µs), same node", "cluster_single_p50_us", "cluster_same_node_p50_us"),
    ("1:1 p50 (µs), cross node", "cluster_single_p50_us", "cluster_cross_node_p50_us"),
    ("1:1 p99 (µs), same node", "cluster_single_p99_us", "cluster_same_node_p99_us"),
    ("1:1 p99 (µs), cross node", "cluster_single_p99_us", "cluster_cross_node_p99_us"),
    (
        "fan-out 1→100/s, same node",
        "cluster_single_fanout100_per_s",
        "cluster_same_node_fanout100_per_s",
    ),
    (
        "fan-out 1→100/s, cross node",
        "cluster_single_fanout100_per_s",
        "cluster_cross_node_fanout100_per_s",
    ),
    ("deliveries/s, 2 vs 1 worker", "cluster_workers1_per_s", "cluster_workers2_per_s"),
    (
        "CPU µs per delivery, 2 vs 1",
        "cluster_workers1_cpu_us_per_delivery",
        "cluster_workers2_cpu_us_per_delivery",
    ),
    (
        "KiB per connection, 4 workers",
        "cluster_single_kib_per_conn",
        "cluster_workers4_kib_per_conn",
    ),
)
_PLACEMENTS = tuple(
    f"cluster_{where}_{what}"
    for where in ("single", "same_node", "cross_node")
    for what in ("p50_us", "p99_us", "fanout100_per_s")
)
_CLUSTER_WORKERS = tuple(
    f"cluster_workers{n}_{what}" for n in (1, 2) for what in ("per_s", "cpu_us_per_delivery")
)
_CLUSTER_MEMORY = (
    "cluster_single_kib_per_conn",
    "cluster_workers4_kib_per_conn",
    "cluster_workers4_redis_kib_per_conn",
    "cluster_workers4_rss_kib",
)


def _with_ratios(keys: tuple[str, ...]) -> tuple[str, ...]:
    return keys + tuple(f"{many}_ratio" for _, _, many in CLUSTER_RATIOS if many in keys)


#: the keys each phase writes (the cluster's include their ratios)
PHASE_KEYS: dict[str, tuple[str, ...]] = {
    "memory": (
        *_MEMORY,
        "restart_relay_up_s",
        "restart_relay_start_s",
        "restart_converge_s",
        "restart_all_connected_s",
        "restart_relay_rss_kib",
    ),
    "memory_raw": ("raw_relay_kib_per_conn", "raw_client_kib_per_conn"),
    "memory_2000": tuple(f"{key}_2000" for key in _MEMORY),
    "latency": (
        *(f"{side}_{q}_us" for side in ("raw", "raw_on_ours", "sdk") for q in ("p50", "p99")),
        "raw_mean_us",
        "sdk_mean_us",
    ),
    "presence": (
        "presence_p50_us",
        "presence_p99_us",
        "presence_enter_p50_us",
        "presence_leave_p50_us",
    ),
    "fanout": (
        *(f"{side}_fanout100_per_s" for side in ("raw", "raw_on_ours", "sdk")),
        *(f"{side}_client_cpu_us_per_delivery" for side in ("raw", "raw_on_ours", "sdk")),
        *(
            f"{side}_fanout100_{w}_per_s"
            for side in ("raw", "sdk")
            for w in ("overall", "min", "max")
        ),
        "sdk_fanout100_dropped",
        "fanout_ratio_paired_median",
    ),
    "cluster_placements": _with_ratios(_PLACEMENTS),
    "cluster_workers": _with_ratios(_CLUSTER_WORKERS),
    "cluster_memory": _with_ratios(_CLUSTER_MEMORY),
}

#: the keys a complete run without ``--only`` must write (``--json`` checks them)
REQUIRED_KEYS = (
    "raw_p50_us",
    "raw_p99_us",
    "sdk_p50_us",
    "sdk_p99_us",
    "presence_p50_us",
    "presence_p99_us",
    "raw_fanout100_per_s",
    "sdk_fanout100_per_s",
    "relay_kib_per_peer",
    "client_kib_per_client",
    "restart_converge_s",
)


def phases_for(*, quick: bool, cluster: bool, only: Iterable[str] | None = None) -> list[str]:
    """The phases a run does, in order. ``only``: the ``--only`` groups
    (``memory`` is the three memory phases)."""
    chosen = None if only is None else set(only)
    out: list[str] = []
    for group, phases in (
        ("memory", ["memory", "memory_raw", *([] if quick else ["memory_2000"])]),
        ("latency", ["latency"]),
        ("presence", ["presence"]),
        ("fanout", ["fanout"]),
    ):
        if chosen is None or group in chosen:
            out += phases
    if cluster:
        out += ["cluster_placements", "cluster_workers", "cluster_memory"]
    return out


def expected_keys(phases: Iterable[str], *, cluster: bool) -> frozenset[str]:
    """Every key a run of ``phases`` writes when none fails."""
    keys = set(SETTINGS_KEYS)
    if cluster:
        keys.update(CLUSTER_SETTINGS_KEYS)
    for phase in phases:
        keys.update(PHASE_KEYS.get(phase, ()))
    return frozenset(keys)


def check_keys(
    results: Mapping[str, float],
    phases: Sequence[str],
    failures: Sequence[Failure],
    *,
    cluster: bool,
) -> list[str]:
    """What is wrong with the key set, one line per problem: keys missing from
    a phase that did not fail, keys nobody declared."""
    failed = {f.phase for f in failures}
    problems = []
    for phase in phases:
        if phase in failed:
            continue
        missing = [k for k in PHASE_KEYS.get(phase, ()) if k not in results]
        if missing:
            problems.append(f"phase {phase} completed without the keys {', '.join(missing)}")
    unknown = sorted(set(results) - expected_keys(phases, cluster=cluster))
    if unknown:
        problems.append(f"keys no phase declares: {', '.join(unknown)}")
    return problems


def add_cluster_ratios(results: dict[str, float]) -> None:
    """``{key}_ratio`` for each cluster figure over its one-relay figure, when
    both were measured."""
    for _, one, many in CLUSTER_RATIOS:
        if one in results and many in results:
            a, b = results[one], results[many]
            results[f"{many}_ratio"] = b / a if a else float("nan")


def to_json(results: Mapping[str, float], failures: Sequence[Failure]) -> str:
    """The JSON document: every result, and ``failures`` if a phase failed."""
    document: dict[str, object] = dict(results)
    if failures:
        document["failures"] = [f.as_json() for f in failures]
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


# --------------------------------------------------------------------------- printing


def _cell(value: float, width: int = 12) -> str:
    return f"{value:{width}.1f}" if not math.isnan(value) else f"{'—':>{width}}"


def render(results: Mapping[str, float], wall: float) -> str:
    """The main table: each figure next to the floor's, with its ratio and target."""

    def get(key: str) -> float:
        return results.get(key, math.nan)

    lines = ["", f"{'measure':34} {'raw floor':>12} {'ours':>12} {'ratio':>7}  target"]
    rows = [
        ("1:1 latency p50 (µs)", "raw_p50_us", "sdk_p50_us", "≤ 1.5 × raw", 1.5, "le"),
        ("1:1 latency p99 (µs)", "raw_p99_us", "sdk_p99_us", "≤ 2 × raw", 2.0, "le"),
        (
            "fan-out 1→100 (deliveries/s)",
            "raw_fanout100_per_s",
            "sdk_fanout100_per_s",
            "≥ 0.7 × raw",
            0.7,
            "ge",
        ),
    ]
    for label, rk, sk, target, bound, op in rows:
        raw, ours = get(rk), get(sk)
        if math.isnan(raw) or math.isnan(ours):
            lines.append(f"{label:34} {_cell(raw)} {_cell(ours)} {'—':>7}  {target} not measured")
            continue
        ratio = ours / raw if raw else math.nan
        ok = ratio <= bound if op == "le" else ratio >= bound
        lines.append(
            f"{label:34} {raw:12.1f} {ours:12.1f} {ratio:7.2f}  {target} {'ok' if ok else 'MISSED'}"
        )
    split = [
        ("  relay alone: raw clients, p50", "raw_p50_us", "raw_on_ours_p50_us"),
        ("  relay alone: raw clients, p99", "raw_p99_us", "raw_on_ours_p99_us"),
        ("  relay alone: fan-out", "raw_fanout100_per_s", "raw_on_ours_fanout100_per_s"),
        ("  SDK alone: vs raw clients, p50", "raw_on_ours_p50_us", "sdk_p50_us"),
        ("  SDK alone: vs raw clients, p99", "raw_on_ours_p99_us", "sdk_p99_us"),
        ("  SDK alone: fan-out", "raw_on_ours_fanout100_per_s", "sdk_fanout100_per_s"),
        (
            "  client CPU µs per delivery",
            "raw_client_cpu_us_per_delivery",
            "sdk_client_cpu_us_per_delivery",
        ),
        (
            "  … raw clients on our relay",
            "raw_client_cpu_us_per_delivery",
            "raw_on_ours_client_cpu_us_per_delivery",
        ),
    ]
    for label, rk, sk in split:
        raw, ours = get(rk), get(sk)
        if not (math.isnan(raw) or math.isnan(ours)):
            lines.append(f"{label:34} {raw:12.1f} {ours:12.1f} {ours / raw:7.2f}")
    absolute = [
        ("presence latency p50 (µs)", "presence_p50_us", None),
        ("presence latency p99 (µs)", "presence_p99_us", None),
        ("relay KiB per peer", "relay_kib_per_peer", 32.0),
        ("client KiB per client", "client_kib_per_client", 24.0),
        ("client KiB per client, 2,000", "client_kib_per_client_2000", 24.0),
        ("reconnect storm converge (s)", "restart_converge_s", 5.0),
    ]
    floor = {
        "relay_kib_per_peer": "raw_relay_kib_per_conn",
        "client_kib_per_client": "raw_client_kib_per_conn",
        "client_kib_per_client_2000": "raw_client_kib_per_conn",
    }
    for label, key, limit in absolute:
        value = get(key)
        if math.isnan(value):
            continue  # not measured in this run
        raw = get(floor[key]) if key in floor else math.nan
        raw_txt = f"{raw:12.1f}" if not math.isnan(raw) else f"{'':12}"
        target = f"≤ {limit:g} {'ok' if value <= limit else 'MISSED'}" if limit else ""
        lines.append(f"{label:34} {raw_txt} {value:12.1f} {'':7}  {target}")
    paired = results.get("fanout_ratio_paired_median")
    if paired is not None:
        lines.append(f"{'fan-out ratio, paired rounds':34} {'':12} {'':12} {paired:7.2f}  (median)")
    lines.append(
        f"\n(wall time {wall:.1f} s; our relay ran with --rate-limit {BENCH_RATE_LIMIT}/min)"
    )
    return "\n".join(lines)


def render_cluster(results: Mapping[str, float]) -> str:
    """The cluster figures with their ratios to the single relay."""

    def get(key: str) -> float:
        return results.get(key, math.nan)

    lines = [
        "",
        f"{'cluster (ratios to one relay)':34} {'one relay':>12} {'cluster':>12} {'ratio':>7}",
    ]
    for label, one, many in CLUSTER_RATIOS:
        ratio = get(f"{many}_ratio")
        ratio_txt = f"{ratio:7.2f}" if not math.isnan(ratio) else f"{'—':>7}"
        lines.append(f"{label:34} {_cell(get(one))} {_cell(get(many))} {ratio_txt}")
    redis_kib = get("cluster_workers4_redis_kib_per_conn")
    lines.append(f"{'Redis KiB per connection':34} {'':12} {_cell(redis_kib)}")
    return "\n".join(lines)


def render_failures(failures: Sequence[Failure]) -> str:
    """The phases that failed, one line each; empty if none did."""
    if not failures:
        return ""
    lines = ["", "FAILED (their figures are missing from the tables and the JSON):"]
    lines += [f"  {f.phase}: {f.error}" for f in failures]
    return "\n".join(lines)
