"""Per-call cost of the agent's hot paths, measured in this process without gRPC.

The profiles of the fetch and scale benchmarks (py-spy on the agent) put most of the
agent's CPU into attestation, and most of that into the socket holder scan; minting
runs once per SVID and renewal. This section times those calls directly, so a change
to them shows up without the noise of client processes:

- ``Attestor.attest_pid`` for a process alone in its pod (every /proc read and the
  cgroup parse, digest from the cache; no holder scan, which needs a connection);
- the socket holder check of a front-door connection, ``HolderScanner.check_small``
  (the event-loop path) and ``HolderScanner.check`` (the worker-thread path), for a
  process alone in its pod with a socket pair open;
- ``match_manifests`` against 64 and 500 manifests, one of which grants the caller,
  as on a node with that many pods (the event loop runs it on every call and wake);
- ``Authority.get_x509_svid`` for a new SPIFFE ID each time (key generation, signing).

With ``--profile`` it also writes a cProfile of the attestation loop.
"""

from __future__ import annotations

import asyncio
import cProfile
import functools
import logging
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.attest.attestor import (
    INLINE_SCAN_MAX_DIRS,
    INLINE_SCAN_MAX_FDS,
    INLINE_SCAN_MAX_PIDS,
    Attestor,
)
from agent.attest.evidence import Evidence
from agent.attest.holders import HolderScanner
from agent.ca import Authority, CASettings
from agent.manifests.matching import match_manifests
from agent.manifests.schema import Manifest
from bench.agentproc import TRUST_DOMAIN
from bench.pods import CGROUP_MOUNT as CGROUP_ROOT
from bench.pods import Pod, Pods
from bench.procs import Children
from bench.stats import Row, median

# A workload that waits until its stdin closes.
WAIT_SCRIPT = "import sys\nsys.stdin.readline()\n"
# A workload holding both ends of a socket pair; it prints one end's inode, then waits.
SOCKET_SCRIPT = (
    "import json, os, socket, sys\n"
    "ends = socket.socketpair()\n"
    "print(json.dumps({'inode': os.fstat(ends[0].fileno()).st_ino}), flush=True)\n"
    "sys.stdin.readline()\n"
)
MANIFEST_COUNTS = (64, 500)


@dataclass(frozen=True)
class HotPlan:
    calls: int
    mints: int


def _per_call_us(function: Any, calls: int, repeats: int = 5) -> float:
    """Return the median over ``repeats`` batches of the mean microseconds per call."""
    batches = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            function()
        batches.append((time.perf_counter() - started) / calls * 1e6)
    return median(batches)


async def _attest_us(pid: int, calls: int) -> float:
    attestor = Attestor()
    await attestor.attest_pid(pid)  # hashes the interpreter once; later calls hit the cache
    batches = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(calls):
            await attestor.attest_pid(pid)
        batches.append((time.perf_counter() - started) / calls * 1e6)
    return median(batches)


async def _mint_ms(state_dir: Path, mints: int) -> float:
    authority = Authority(CASettings(trust_domain=TRUST_DOMAIN, state_dir=state_dir))
    await authority.start()
    try:
        started = time.perf_counter()
        for index in range(mints):
            await authority.get_x509_svid(f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/mint-{index}")
        return (time.perf_counter() - started) / mints * 1000
    finally:
        await authority.close()


def run_hotpaths(
    children: Children, pods: Pods, plan: HotPlan, work_dir: Path,
    profile_dir: Path | None = None,
) -> tuple[list[Row], dict[str, Any]]:
    """Time the hot paths in this process; no agent subprocess is involved."""
    # The in-process CA logs its development-CA warnings; the agent's own log has them.
    logging.getLogger("agent").setLevel(logging.ERROR)
    pod = pods.create()
    holder = children.start([sys.executable, "-c", WAIT_SCRIPT], name="holder", pod=pod)
    attest_us = asyncio.run(_attest_us(holder.pid, plan.calls))
    small_us, shared_us = _holder_check_us(children, pods.create(), plan.calls)
    if profile_dir is not None:
        profiler = cProfile.Profile()
        profiler.enable()
        asyncio.run(_attest_us(holder.pid, plan.calls))
        profiler.disable()
        profiler.dump_stats(profile_dir / "attest_pid.prof")
    mint_ms = asyncio.run(_mint_ms(work_dir / "ca", plan.mints))
    children.stop(holder)
    rows = [
        Row("hotpaths", "attest_pid, one process in its pod", "us", attest_us,
            note=f"median of 5 batches of {plan.calls}; digest cached"),
    ]
    rows += [
        Row("hotpaths", "holder check on the event loop (check_small), one process in its pod",
            "us", small_us, note=f"median of 5 batches of {plan.calls}"),
        Row("hotpaths", "holder check in a worker thread (check), one process in its pod",
            "us", shared_us, note=f"median of 5 batches of {plan.calls}; called directly"),
    ]
    for count in MANIFEST_COUNTS:
        manifests, evidence = _manifests(count)
        match = functools.partial(match_manifests, manifests, evidence)
        match_us = _per_call_us(match, plan.calls // 10)
        rows.append(Row("hotpaths", f"match evidence against {count} manifests", "us",
                        match_us, note=f"median of 5 batches of {plan.calls // 10}"))
    rows += [
        Row("hotpaths", "mint an X.509-SVID (EC P-256 key and signature)", "ms", mint_ms,
            note=f"mean of {plan.mints}"),
    ]
    return rows, {}


def _holder_check_us(children: Children, pod: Pod, calls: int) -> tuple[float, float]:
    """Time both holder checks for a process in ``pod`` holding one socket pair."""
    holder = children.start([sys.executable, "-c", SOCKET_SCRIPT], name="sockets", pod=pod)
    try:
        inode = int(holder.receive()["inode"])
        cgroup_text = Path(f"/proc/{holder.pid}/cgroup").read_text()
        scanner = HolderScanner(Path("/proc"), CGROUP_ROOT)
        small = functools.partial(
            scanner.check_small, holder.pid, inode, cgroup_text,
            max_pids=INLINE_SCAN_MAX_PIDS, max_fds=INLINE_SCAN_MAX_FDS,
            max_dirs=INLINE_SCAN_MAX_DIRS,
        )
        if small() is None:
            raise RuntimeError("check_small declined a one-process pod")
        shared = functools.partial(scanner.check, holder.pid, inode, cgroup_text)
        return _per_call_us(small, calls), _per_call_us(shared, calls)
    finally:
        children.stop(holder)


def _manifests(count: int) -> tuple[list[Manifest], Evidence]:
    """Return ``count`` pod manifests and evidence that exactly one of them grants."""
    manifests = [
        Manifest(
            file=f"pod-{index:04d}.json",
            sha256=f"{index:064x}",
            spiffe_id=f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/pod-{index}",
            exe_sha256=frozenset({f"{index + 1:064x}"}),
            pod_uid=str(uuid.UUID(int=index + 1)),
            namespace="bench",
            service_account=f"pod-{index}",
        )
        for index in range(count)
    ]
    granted = manifests[count // 2]
    evidence = Evidence(
        pid=1, uid=0, gid=0, euid=0, egid=0, start_time=1,
        exe_sha256=next(iter(granted.exe_sha256)), pod_uid=granted.pod_uid,
        container_id=None, systemd_unit=None, exe_path="/usr/bin/workload",
    )
    return manifests, evidence
