"""Warm X.509-SVID fetch latency and throughput: the agent beside a bare grpcio floor.

One pool of client processes per client kind (py-spiffe, raw grpc) fetches from the
agent and from the floor server (bench.floor) in alternating rounds, so both sides see
the same machine load. The floor sends the exact bytes of an X509SVIDResponse captured
from the agent, so py-spiffe parses an identical message from both.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.agentproc import BenchAgent, Grant, sha256_file
from bench.pods import Pod, Pods
from bench.procs import Child, Children
from bench.stats import Row, percentile

KINDS = {"raw": "raw grpc", "pyspiffe": "py-spiffe"}
P50_LIMIT = 1.5
THROUGHPUT_LIMIT = 0.6
SIZE_TOLERANCE_BYTES = 16


@dataclass(frozen=True)
class FetchPlan:
    concurrency: tuple[int, ...]
    seconds: float
    rounds: int


@dataclass
class Side:
    """Pooled results of one (kind, clients, target)."""

    latencies_us: list[int]
    count: int = 0
    seconds: float = 0.0
    errors: int = 0
    first_error: str = ""

    @property
    def throughput(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


def capture_response(children: Children, agent: BenchAgent, pod: Pod, path: Path) -> bytes:
    """Save one X509SVIDResponse that a client in ``pod`` receives from the agent."""
    child = children.start_python(
        "bench.cold_worker", str(agent.socket_path), str(path), name="capture", pod=pod
    )
    result = child.receive()
    children.stop(child)
    if "error" in result:
        raise RuntimeError(f"no X509SVIDResponse from the agent: {result['error']}")
    return path.read_bytes()


def run_fetch(
    agent: BenchAgent, children: Children, pods: Pods, plan: FetchPlan, work_dir: Path
) -> tuple[list[Row], dict[str, Any]]:
    """Measure every kind and concurrency; return rows and raw numbers for the chart.

    Each client process runs in its own pod with its own manifest, as one workload per
    pod would on a node.
    """
    python_digest = sha256_file(Path(os.path.realpath(sys.executable)))
    client_pods = [pods.create() for _ in range(max(plan.concurrency))]
    agent.grant_many([
        Grant(f"fetch-{index:03d}", python_digest, pod) for index, pod in enumerate(client_pods)
    ])
    response = capture_response(children, agent, client_pods[0], work_dir / "response.bin")
    response_file = work_dir / "response.bin"
    floor_socket = work_dir / "floor.sock"
    floor = children.start_python(
        "bench.floor", str(floor_socket), str(response_file), name="floor"
    )
    floor.receive()

    rows: list[Row] = []
    series: dict[str, Any] = {"response_bytes": len(response)}
    for kind, label in KINDS.items():
        pool = _start_pool(children, kind, client_pods, agent.socket_path, floor_socket)
        for clients in plan.concurrency:
            sides = _measure(pool[:clients], plan)
            rows += _rows(label, clients, sides)
            series[f"{kind}/{clients}"] = {
                target: {
                    "p50_ms": percentile(side.latencies_us, 0.5) / 1000,
                    "p99_ms": percentile(side.latencies_us, 0.99) / 1000,
                    "throughput": side.throughput,
                }
                for target, side in sides.items()
            }
        for child in pool:
            children.stop(child)
    children.stop(floor, grace=5.0)
    return rows, series


def _start_pool(
    children: Children, kind: str, pods: Sequence[Pod], agent_socket: Path, floor_socket: Path
) -> list[Child]:
    pool = [
        children.start_python(
            "bench.fetch_worker", kind, str(agent_socket), str(floor_socket),
            name=f"fetch-{kind}-{index}", pod=pod,
        )
        for index, pod in enumerate(pods)
    ]
    for child in pool:
        ready = child.receive(deadline=120.0)
        sizes = ready["sizes"]
        # DER signatures and serial numbers vary by a few bytes from one SVID to another.
        if abs(sizes["agent"] - sizes["floor"]) > SIZE_TOLERANCE_BYTES:
            raise RuntimeError(f"agent and floor responses differ in size: {sizes}")
    return pool


def _measure(clients: Sequence[Child], plan: FetchPlan) -> dict[str, Side]:
    sides = {"agent": Side([]), "floor": Side([])}
    for round_index in range(plan.rounds):
        # Alternate which side goes first, so neither always follows the other.
        order = ("agent", "floor") if round_index % 2 == 0 else ("floor", "agent")
        for target in order:
            start_at = time.time() + 0.2 + 0.01 * len(clients)
            for child in clients:
                child.send({"target": target, "start_at": start_at, "seconds": plan.seconds})
            side = sides[target]
            for child in clients:
                result = child.receive(deadline=plan.seconds + 120.0)
                side.latencies_us += result["latencies_us"]
                side.count += result["count"]
                side.errors += result["errors"]
                side.first_error = side.first_error or result["first_error"]
            # Every client ran for the same window, so the pooled rate is count / window.
            side.seconds += plan.seconds
    for target, side in sides.items():
        if side.errors or not side.latencies_us:
            raise RuntimeError(
                f"{target}: {side.errors} failed fetches, {side.count} good; "
                f"first error: {side.first_error}"
            )
    return sides


def _rows(label: str, clients: int, sides: dict[str, Side]) -> list[Row]:
    agent, floor = sides["agent"], sides["floor"]
    prefix = f"{label}, {clients} client{'s' if clients > 1 else ''}"
    return [
        Row("fetch", f"{prefix}: p50 latency", "ms",
            percentile(agent.latencies_us, 0.5) / 1000,
            percentile(floor.latencies_us, 0.5) / 1000, limit=P50_LIMIT),
        Row("fetch", f"{prefix}: p99 latency", "ms",
            percentile(agent.latencies_us, 0.99) / 1000,
            percentile(floor.latencies_us, 0.99) / 1000),
        Row("fetch", f"{prefix}: throughput", "fetch/s", agent.throughput, floor.throughput,
            limit=THROUGHPUT_LIMIT, higher_is_better=True),
    ]
