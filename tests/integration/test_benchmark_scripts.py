"""The benchmark scripts as documented in docs/performance.md and
docs/load-testing.md: both ways of starting them, a short real run, and a run
whose phases fail (a client timeout, a relay killed) without a traceback.

The phases here are the cheapest ones (``--quick --only presence``: two relays
and 100 presence changes); the heavy ones are for people to run, not tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from benchmarks import report
from benchmarks import run as bench_run
from benchmarks.harness import Relay
from ratatoskr_client.errors import OperationTimeout

ROOT = Path(__file__).resolve().parents[2]
IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s(?P<indent>\s*)(?P<name>\S+)$")
LOCAL_NAMES = {p.stem for p in (ROOT / "benchmarks").rglob("*.py")} | {"scenarios"}


def python(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
    )


def processes_with(marker: str) -> list[int]:
    """Processes whose environment holds ``marker`` (the children a command
    started inherit it; other tests' processes do not have it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if marker.encode() in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize(
    "command",
    [
        ["benchmarks/run.py"],
        ["-m", "benchmarks.run"],
        ["benchmarks/locust_capacity.py"],
        ["-m", "benchmarks.locust_capacity"],
        ["benchmarks/locust_memory.py"],
        ["-m", "benchmarks.locust_memory"],
        ["benchmarks/churn.py"],
        ["-m", "benchmarks.churn"],
        ["benchmarks/floods.py"],
        ["-m", "benchmarks.floods"],
        ["benchmarks/operator_view.py"],
        ["-m", "benchmarks.operator_view"],
        ["benchmarks/scale.py"],
        ["-m", "benchmarks.scale"],
    ],
    ids=[
        "run script",
        "run -m",
        "locust_capacity script",
        "locust_capacity -m",
        "locust_memory script",
        "locust_memory -m",
        "churn script",
        "churn -m",
        "floods script",
        "floods -m",
        "operator_view script",
        "operator_view -m",
        "scale script",
        "scale -m",
    ],
)
def test_each_module_is_loaded_once_under_its_package_name(command: list[str]):
    done = python("-X", "importtime", *command, "--help")
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
    names = [m["name"] for line in done.stderr.splitlines() if (m := IMPORTED.match(line))]
    ours = [n for n in names if n.split(".")[0] in LOCAL_NAMES | {"benchmarks"}]
    # Never ``harness`` beside ``benchmarks.harness``: one copy of each module.
    assert all(n.startswith("benchmarks.") or n == "benchmarks" for n in ours), ours
    assert len(ours) == len(set(ours))
    assert "benchmarks.harness" in ours


@pytest.mark.slow
def test_a_small_storm_measures_every_phase_and_stops_its_processes(tmp_path: Path):
    # scale.py storm at the smallest size: two load generators, a relay restart.
    out = tmp_path / "storm.json"
    marker = f"RATATOSKR_TEST_RUN={uuid.uuid4().hex}"  # this run's processes carry it
    done = python(
        "benchmarks/scale.py", "storm", "--participants", "20", "--documents", "4",
        "--moving", "0.5", "--move-every", "0.2", "--json", str(out), timeout=120,
        env=dict([marker.split("=", 1)]),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    results = json.loads(out.read_text())
    assert results["participants"] == 20 and results["restart_lost"] == 0
    assert results["fresh_storm_s"] > 0 and results["restart_storm_s"] > 0
    assert results["moves_delivered"] > 0  # 4 other participants see each move
    assert 0 < results["latency_p50_ms"] <= results["latency_p99_ms"]
    assert results["restart_connected_p100_s"] <= results["restart_storm_s"]
    # Only this run's: another worker may be running a relay of its own now.
    assert processes_with(marker) == [], "scale.py left processes running"


def test_a_quick_run_writes_the_documented_keys(tmp_path: Path):
    out = tmp_path / "bench.json"
    done = python("benchmarks/run.py", "--quick", "--only", "presence", "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "presence latency p50 (µs)" in done.stdout
    results = json.loads(out.read_text())
    assert set(results) == report.expected_keys(["presence"], cluster=False)
    assert 0 < results["presence_p50_us"] <= results["presence_p99_us"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "latency,storm"], "--only takes some of"),
        (["--json", "/nonexistent-dir/bench.json"], "is not a writable directory"),
    ],
)
def test_bad_arguments_are_refused_before_measuring(args: list[str], message: str):
    done = python("benchmarks/run.py", "--quick", *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_failed_phases_are_reported_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """Latency: a client times out. Presence: our relay is killed meanwhile.
    Fan-out: runs on a restarted relay. Exit status 1, no traceback."""
    seen: dict[str, Any] = {}

    async def latency_times_out(*args: object) -> None:
        raise OperationTimeout("enter_document('bench-latency') timed out")

    async def relay_dies(results: dict[str, float], ours: Relay, n: int) -> None:
        seen["killed"] = ours.pid
        assert ours.proc is not None
        ours.proc.kill()
        ours.proc.wait()
        raise ConnectionResetError("the relay went away")

    async def fanout_measures(
        results: dict[str, float], raw: Relay, ours: Relay, n: int, rounds: int
    ) -> None:
        seen["fanout_on"] = ours.pid if ours.exit_status() is None else None
        results.update(dict.fromkeys(report.PHASE_KEYS["fanout"], 1.0))

    monkeypatch.setattr(bench_run, "measure_latency", latency_times_out)
    monkeypatch.setattr(bench_run, "measure_presence", relay_dies)
    monkeypatch.setattr(bench_run, "measure_fanout", fanout_measures)
    out = tmp_path / "bench.json"

    status = bench_run.main(["--quick", "--only", "latency,presence,fanout", "--json", str(out)])

    assert status == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert "FAILED (their figures are missing" in captured.out
    assert "benchmark incomplete: 2 failure(s) (latency, presence); exit status 1" in captured.err
    results = json.loads(out.read_text())
    failures = {f["phase"]: f["error"] for f in results.pop("failures")}
    assert set(failures) == {"latency", "presence"}
    assert failures["latency"].startswith("OperationTimeout: enter_document('bench-latency')")
    assert failures["presence"].startswith("ConnectionResetError: the relay went away")
    assert "our relay was killed by SIGKILL" in failures["presence"]
    # The relay was restarted for the fan-out phase, whose keys are all there.
    assert seen["fanout_on"] not in (None, seen["killed"])
    assert set(results) == report.expected_keys(["fanout"], cluster=False)


def test_a_timeout_in_the_2000_client_phase_is_a_failed_phase_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """What a busy machine once did to a full run: OperationTimeout while the
    2,000 clients connect. The phase is reported as failed, the others keep
    their figures, and the run ends with exit status 1, without a traceback."""

    async def memory(results: dict[str, float], n: int, use_uvloop: bool, **kw: Any) -> None:
        suffix = kw.get("suffix", "")
        if n == 2000:
            raise OperationTimeout("no answer from ws://127.0.0.1:1/sync within 60 s")
        results.update(dict.fromkeys(report.PHASE_KEYS["memory"], 1.0))
        assert suffix == ""

    async def raw(results: dict[str, float], n: int, use_uvloop: bool) -> None:
        results.update(dict.fromkeys(report.PHASE_KEYS["memory_raw"], 1.0))

    monkeypatch.setattr(bench_run, "sdk_memory_and_storm", memory)
    monkeypatch.setattr(bench_run, "raw_memory", raw)

    status = bench_run.main(["--only", "memory"])

    assert status == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert "memory_2000: FAILED" in captured.err
    assert "OperationTimeout: no answer from" in captured.err
    assert "benchmark incomplete: 1 failure(s) (memory_2000); exit status 1" in captured.err
