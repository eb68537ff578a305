"""Command line: ``python -m bench [--quick] [--only SECTION ...] [--output DIR]``.

Runs the sections in order (hotpaths in this process, then fetch, cold, scale and
sds, each against a fresh agent subprocess), prints each row and then the machine
facts and results as a markdown table, and writes ``benchmarks.json`` (every number)
and ``benchmarks.png`` (the chart) to the output directory, by default docs/. Every
child process and agent is stopped before it returns, also on error. Exit status 0
means every section completed; targets that were missed are reported in the table,
not in the exit status.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.agentproc import BenchAgent
from bench.cold import ColdPlan, run_cold
from bench.fetch import FetchPlan, run_fetch
from bench.hotpaths import HotPlan, run_hotpaths
from bench.machine import machine_facts
from bench.pods import Pods
from bench.procs import REPO_ROOT, Children
from bench.scale import ScalePlan, run_scale
from bench.sds import SdsPlan, run_sds
from bench.stats import Row

SECTIONS = ("hotpaths", "fetch", "cold", "scale", "sds")
# These sections read the mint time of each SVID from the agent's DEBUG log.
LOG_LEVELS = {"scale": "DEBUG", "sds": "DEBUG"}


def plans(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "hotpaths": HotPlan(calls=200, mints=20),
            "fetch": FetchPlan(concurrency=(1, 8), seconds=1.0, rounds=1),
            "cold": ColdPlan(size_mib=16, runs=2),
            "scale": ScalePlan(processes=2, streams=50, channels=2, ttl=6),
            "sds": SdsPlan(rotations=1, ttl=6),
        }
    return {
        "hotpaths": HotPlan(calls=2000, mints=200),
        "fetch": FetchPlan(concurrency=(1, 8, 64), seconds=3.0, rounds=3),
        "cold": ColdPlan(size_mib=64, runs=7),
        # At 20 s the storm (several seconds on 2 cores) overlapped the next renewals.
        "scale": ScalePlan(processes=5, streams=200, channels=4, ttl=30),
        "sds": SdsPlan(rotations=3, ttl=10),
    }


def run_section(
    name: str, plan: Any, work_dir: Path, profile_dir: Path | None
) -> tuple[list[Row], dict[str, Any]]:
    """Run one section, with its own agent; every process is stopped on return."""
    work_dir.mkdir(parents=True)
    with Pods() as pods, Children(work_dir) as children:
        if name == "hotpaths":
            return run_hotpaths(children, pods, plan, work_dir, profile_dir)
        agent = BenchAgent.create(work_dir / "agent", log_level=LOG_LEVELS.get(name, "INFO"))
        profile = profile_dir / f"agent-{name}.prof" if profile_dir else None
        agent.start(children, profile_path=profile)
        try:
            if name == "fetch":
                return run_fetch(agent, children, pods, plan, work_dir)
            if name == "cold":
                return run_cold(agent, children, pods, plan, work_dir)
            if name == "scale":
                return run_scale(agent, children, pods, plan, work_dir)
            return run_sds(agent, children, pods, plan, work_dir)
        finally:
            agent.stop(children)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer clients and iterations, same code paths (under a minute)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="run only these sections")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "docs",
                        help="directory for benchmarks.json and benchmarks.png")
    parser.add_argument("--profile", type=Path, default=None,
                        help="run each agent under cProfile and write agent-<section>.prof here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--redraw", action="store_true",
                        help="only redraw the chart and table from OUTPUT/benchmarks.json")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every child, agent and cgroup is cleaned up.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    if args.redraw:
        saved = json.loads((args.output / "benchmarks.json").read_text())
        saved_rows = report.rows_from_json(saved)
        print(report.markdown(saved, saved_rows))
        print(f"chart: {report.chart(saved_rows, args.output / 'benchmarks.png')}")
        return 0

    args.output.mkdir(parents=True, exist_ok=True)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        args.profile = args.profile.resolve()
    # Under /tmp: Unix socket paths must fit in 107 bytes.
    work_root = Path(tempfile.mkdtemp(prefix="bench-", dir="/tmp"))
    facts = machine_facts()
    section_plans = plans(args.quick)
    rows: list[Row] = []
    series: dict[str, Any] = {}
    started = time.monotonic()
    try:
        for name in args.only:
            section_started = time.monotonic()
            print(f"== {name}", flush=True)
            new_rows, new_series = run_section(
                name, section_plans[name], work_root / name, args.profile
            )
            rows += new_rows
            series[name] = new_series
            for row in new_rows:
                print(report.text_line(row), flush=True)
            print(f"   ({time.monotonic() - section_started:.1f} s)", flush=True)
    finally:
        if args.keep:
            print(f"work directory kept: {work_root}")
        else:
            shutil.rmtree(work_root, ignore_errors=True)
    results = {
        "mode": "quick" if args.quick else "full",
        "machine": facts,
        "plans": {name: repr(section_plans[name]) for name in args.only},
        "seconds": round(time.monotonic() - started, 1),
        "work_dir": str(work_root),
        "rows": [row.to_json() for row in rows],
        "series": series,
    }
    (args.output / "benchmarks.json").write_text(json.dumps(results, indent=2) + "\n")
    chart = report.chart(rows, args.output / "benchmarks.png")
    print()
    print(report.markdown(results, rows))
    print(f"numbers: {args.output / 'benchmarks.json'}; chart: {chart or 'not drawn'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
