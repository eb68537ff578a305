"""Scale: many watch streams, agent memory and CPU, and pushes through a rotation storm.

A few client processes (bench.scale_worker), each in its own pod with its own manifest
and a short X.509-SVID TTL, hold many FetchX509SVID streams. All their SVIDs renew at
about half the TTL, within the CA's +/-10% jitter, which is the storm. The renewal
time of an SVID is the time of the agent's DEBUG line "X.509-SVID minted" for its
serial (logging's millisecond timestamp), so this section runs the agent at log level
DEBUG. The push latency of a stream is the time its new serial arrived minus that.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.agentproc import BenchAgent, Grant, mint_times, sha256_file
from bench.pods import Pods
from bench.procs import Child, Children
from bench.stats import Row, percentile

RSS_LIMIT_MB = 250.0
PUSH_LIMIT_SECONDS = 3.0
SAMPLE_SECONDS = 0.25
# Renewal is due at half the TTL, plus up to 10% jitter; then the push target.
RENEW_FRACTION_LATEST = 0.55


@dataclass(frozen=True)
class ScalePlan:
    processes: int
    streams: int  # per process
    channels: int  # per process
    ttl: int


@dataclass
class Sample:
    at: float
    rss: int
    cpu: float


def run_scale(
    agent: BenchAgent, children: Children, pods: Pods, plan: ScalePlan, work_dir: Path
) -> tuple[list[Row], dict[str, Any]]:
    digest = sha256_file(Path(os.path.realpath(sys.executable)))
    worker_pods = [pods.create() for _ in range(plan.processes)]
    agent.grant_many([
        Grant(f"scale-{index}", digest, pod, {"x509_svid_ttl": plan.ttl})
        for index, pod in enumerate(worker_pods)
    ])
    workers: list[Child] = [
        children.start(
            [sys.executable, "-m", "bench.scale_worker", str(agent.socket_path),
             str(plan.streams), str(plan.channels)],
            name=f"scale-{index}", pod=pod,
        )
        for index, pod in enumerate(worker_pods)
    ]
    total = plan.processes * plan.streams
    ready = sum(worker.receive(deadline=180.0)["ready"] for worker in workers)
    if ready != total:
        raise RuntimeError(f"only {ready} of {total} streams got their first SVID")
    samples = _observe(agent, plan.ttl * RENEW_FRACTION_LATEST + PUSH_LIMIT_SECONDS + 2.0)
    for worker in workers:
        worker.send({"stop": True})
    records = [record for worker in workers for record in worker.receive()["records"]]
    for worker in workers:
        children.stop(worker)
    return _results(plan, records, mint_times(agent.log_lines()), samples)


def _observe(agent: BenchAgent, seconds: float) -> list[Sample]:
    process = agent.process
    samples = []
    end = time.time() + seconds
    while time.time() < end:
        cpu = process.cpu_times()
        samples.append(Sample(time.time(), process.memory_info().rss, cpu.user + cpu.system))
        time.sleep(SAMPLE_SECONDS)
    return samples


def _results(
    plan: ScalePlan,
    records: list[list[Any]],
    minted_at: dict[int, float],
    samples: list[Sample],
) -> tuple[list[Row], dict[str, Any]]:
    total = len(records)
    latencies: list[float] = []
    received = 0
    open_streams = 0
    arrivals_end = 0.0
    renewed: set[int] = set()
    for arrivals, ended in records:
        open_streams += ended == "open"
        pushes = [(serial, at) for serial, at in arrivals[1:] if serial in minted_at]
        if pushes:
            received += 1
        for serial, at in pushes:
            renewed.add(serial)
            # The log's millisecond timestamps can put a mint up to 1 ms after an arrival.
            latencies.append(max(0.0, at - minted_at[serial]))
            arrivals_end = max(arrivals_end, at)
    if not latencies:
        raise RuntimeError("no stream received a renewed SVID; is the TTL too long?")

    storm_start = min(minted_at[serial] for serial in renewed) - 0.5
    storm = [sample for sample in samples if storm_start <= sample.at <= arrivals_end + 0.5]
    cpu_percent = 0.0
    if len(storm) >= 2:
        cpu_percent = 100 * (storm[-1].cpu - storm[0].cpu) / (storm[-1].at - storm[0].at)
    rss_peak = max(sample.rss for sample in samples) / 1e6
    label = f"{total} streams, {plan.processes} processes"
    rows = [
        Row("scale", f"{label}: agent RSS peak", "MB", rss_peak, limit=RSS_LIMIT_MB),
        Row("scale", f"{label}: streams still open at the end", "streams", open_streams,
            limit=total, higher_is_better=True),
        Row("scale", f"{label}: streams that got the renewed SVID", "streams", received,
            limit=total, higher_is_better=True),
        Row("scale", f"{label}: push latency after renewal, p50", "s",
            percentile(latencies, 0.5)),
        Row("scale", f"{label}: push latency after renewal, max", "s", max(latencies),
            limit=PUSH_LIMIT_SECONDS),
        Row("scale", f"{label}: agent CPU during the storm", "% of a core", cpu_percent,
            note=f"{len(renewed)} SVIDs renewed"),
    ]
    series = {
        "latencies_s": sorted(latencies),
        "rss_mb": [round(sample.rss / 1e6, 1) for sample in samples],
    }
    return rows, series
