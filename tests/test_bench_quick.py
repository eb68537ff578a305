"""The benchmark's quick mode runs to completion and reports every row with sane values.

It runs ``python -m bench --quick`` as CI would, against the real agent, real client
processes in pod cgroups and the real Envoy binary. Timing targets are reported by
the benchmark, never asserted here: this machine is shared and its numbers are noisy.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from bench.pods import pod_parent_dirs

REPO_ROOT = Path(__file__).resolve().parents[1]
# Bounds a hung run; quick mode normally takes well under a minute.
RUN_TIMEOUT_SECONDS = 120

EXPECTED_ROWS = {
    "hotpaths": {
        "attest_pid, one process in its pod",
        "holder check on the event loop (check_small), one process in its pod",
        "holder check in a worker thread (check), one process in its pod",
        "match evidence against 64 manifests",
        "match evidence against 500 manifests",
        "mint an X.509-SVID (EC P-256 key and signature)",
    },
    "fetch": {
        f"{kind}, {clients}: {measure}"
        for kind in ("raw grpc", "py-spiffe")
        for clients in ("1 client", "8 clients")
        for measure in ("p50 latency", "p99 latency", "throughput")
    },
    "cold": {
        "first SVID, new 16 MiB binary (median of 2)",
        "first SVID minus the bare server's first response, new 16 MiB binary",
        "first SVID, 16 MiB binary already hashed (median of 2)",
    },
    "scale": {
        f"100 streams, 2 processes: {measure}"
        for measure in (
            "agent RSS peak",
            "streams still open at the end",
            "streams that got the renewed SVID",
            "push latency after renewal, p50",
            "push latency after renewal, max",
            "agent CPU during the storm",
        )
    },
    "sds": {"renewal to Envoy /certs, median of 1", "renewal to Envoy /certs, max of 1"},
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    if os.geteuid() != 0:
        pytest.skip("the benchmark creates pod cgroups under /sys/fs/cgroup, which needs root")
    output = tmp_path_factory.mktemp("bench")
    run = subprocess.Popen(
        [sys.executable, "-m", "bench", "--quick", "--output", str(output)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = run.communicate(timeout=RUN_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the benchmark stop its children and remove its cgroups.
        run.terminate()
        stdout, stderr = run.communicate(timeout=60)
        pytest.fail(f"quick benchmark ran past {RUN_TIMEOUT_SECONDS} s:\n{stdout[-4000:]}")
    assert run.returncode == 0, stdout[-4000:] + stderr[-4000:]
    results: dict[str, object] = json.loads((output / "benchmarks.json").read_text())
    results["output"] = str(output)
    results["stdout"] = stdout
    return results


def rows_by_section(results: dict[str, object]) -> dict[str, dict[str, dict[str, object]]]:
    sections: dict[str, dict[str, dict[str, object]]] = {}
    rows = results["rows"]
    assert isinstance(rows, list)
    for row in rows:
        sections.setdefault(row["section"], {})[row["name"]] = row
    return sections


def test_quick_every_row(quick_run: dict[str, object]) -> None:
    sections = rows_by_section(quick_run)
    assert set(sections) == set(EXPECTED_ROWS)
    for section, names in EXPECTED_ROWS.items():
        assert set(sections[section]) == names, section


def test_quick_values_sane(quick_run: dict[str, object]) -> None:
    for section, rows in rows_by_section(quick_run).items():
        for name, row in rows.items():
            value = row["agent"]
            assert isinstance(value, int | float), (section, name)
            assert math.isfinite(value), (section, name)
            if "minus" not in name:  # a difference of two medians may be below zero
                assert value >= 0, (section, name)
            if row["floor"] is not None:
                assert row["floor"] > 0, (section, name)
                assert row["ratio"] > 0, (section, name)


def test_quick_streams_complete(quick_run: dict[str, object]) -> None:
    scale = rows_by_section(quick_run)["scale"]
    assert scale["100 streams, 2 processes: streams still open at the end"]["agent"] == 100
    assert scale["100 streams, 2 processes: streams that got the renewed SVID"]["agent"] == 100
    assert scale["100 streams, 2 processes: agent RSS peak"]["agent"] > 1


def test_quick_machine_recorded(quick_run: dict[str, object]) -> None:
    machine = quick_run["machine"]
    assert isinstance(machine, dict)
    for fact in ("cpu", "cores", "kernel", "python", "grpcio"):
        assert machine.get(fact), fact
    assert quick_run["mode"] == "quick"


def test_quick_outputs_written(quick_run: dict[str, object]) -> None:
    stdout = str(quick_run["stdout"])
    assert "| section | measurement | agent | floor |" in stdout
    chart = Path(str(quick_run["output"])) / "benchmarks.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not chart.exists()
        assert "no chart drawn" in stdout
    else:
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_cleans_up(quick_run: dict[str, object]) -> None:
    work_dir = str(quick_run["work_dir"])
    assert not Path(work_dir).exists()
    leftovers = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if any(work_dir in part for part in process.info["cmdline"] or ()):
            leftovers.append(process.info)
    assert leftovers == []
    for parent in pod_parent_dirs():
        assert [name for name in os.listdir(parent) if name.startswith("bench-")] == []
