"""Cold attestation: a new process running a large binary, time to its first SVID.

The binary is a copy of the Python interpreter padded with random bytes to the planned
size; bytes after an ELF image do not change how it runs. Each cold run copies it to a
new file (a new inode, so the agent's digest cache cannot hit) and runs
bench.cold_worker in it; the floor is hashlib's SHA-256 of that same copy, timed in this
process in the same run. The warm case runs a copy that the agent hashed before and
that is older than the cache's 2 s window for recently changed files; its floor is the
same new process's first response from the bare grpcio server (bench.floor), which
costs the connection and the call without attestation.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.agentproc import BenchAgent
from bench.pods import Pod, Pods
from bench.procs import Children, python_env
from bench.stats import Row, median

COLD_LIMIT = 1.3
COLD_OFFSET_MS = 2.0
# The agent caches no digest of a file changed less than this long ago
# (agent.attest.hashing.RACY_WINDOW_NS), so the warm copy must be older.
CACHE_WINDOW_SECONDS = 2.0
_PAD_CHUNK = 1 << 20


@dataclass(frozen=True)
class ColdPlan:
    size_mib: int
    runs: int


def make_padded_python(dest: Path, size_mib: int) -> tuple[Path, dict[str, str]]:
    """Copy the real interpreter to ``dest`` padded to ``size_mib`` MiB; return it and its env."""
    source = Path(os.path.realpath(sys.executable))
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    target = size_mib << 20
    with dest.open("ab") as handle:
        while (size := handle.tell()) < target:
            handle.write(os.urandom(min(_PAD_CHUNK, target - size)))
    dest.chmod(0o755)
    # A copy outside the installation may not find its standard library by itself.
    env = python_env(extra={"PYTHONHOME": sys.base_prefix})
    return dest, env


def hash_file(path: Path) -> tuple[str, float]:
    """Return the SHA-256 of ``path`` and the milliseconds hashlib took."""
    started = time.perf_counter()
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return digest, (time.perf_counter() - started) * 1000


def _first_svid_ms(
    children: Children, binary: Path, env: dict[str, str], socket: Path, pod: Pod,
    save: Path | None = None,
) -> float:
    argv = [str(binary), "-m", "bench.cold_worker", str(socket)]
    argv += [str(save)] if save is not None else []
    child = children.start(argv, name=f"cold-{binary.name}", env=env, pod=pod)
    result = child.receive(deadline=120.0)
    children.stop(child)
    if "error" in result:
        raise RuntimeError(f"cold worker in {binary} got no SVID: {result['error']}")
    return float(result["first_svid_ms"])


def run_cold(
    agent: BenchAgent, children: Children, pods: Pods, plan: ColdPlan, work_dir: Path
) -> tuple[list[Row], dict[str, Any]]:
    copies = work_dir / "binaries"
    template, env = make_padded_python(copies / "python-padded", plan.size_mib)
    digest, _ = hash_file(template)
    pod = pods.create()
    agent.grant("cold", digest, pod)
    # The first request mints the SVID; the measured runs find it in the CA's cache.
    response = work_dir / "response.bin"
    _first_svid_ms(children, template, env, agent.socket_path, pod, save=response)
    floor_socket = work_dir / "floor.sock"
    floor = children.start_python("bench.floor", str(floor_socket), str(response), name="floor")
    floor.receive()

    agent_ms: list[float] = []
    floor_ms: list[float] = []
    for run in range(plan.runs):
        copy = copies / f"python-cold-{run}"
        shutil.copyfile(template, copy)
        copy.chmod(0o755)
        if run % 2:
            agent_ms.append(_first_svid_ms(children, copy, env, agent.socket_path, pod))
            floor_ms.append(hash_file(copy)[1])
        else:
            floor_ms.append(hash_file(copy)[1])
            agent_ms.append(_first_svid_ms(children, copy, env, agent.socket_path, pod))
        copy.unlink()

    # Warm: the template is older than the cache window and was hashed by the priming run
    # only if it was already old enough then, so run it once more before measuring.
    time.sleep(max(0.0, CACHE_WINDOW_SECONDS + 0.2 - (time.time() - template.stat().st_ctime)))
    _first_svid_ms(children, template, env, agent.socket_path, pod)
    warm_ms: list[float] = []
    connect_ms: list[float] = []
    for _ in range(plan.runs):
        warm_ms.append(_first_svid_ms(children, template, env, agent.socket_path, pod))
        connect_ms.append(_first_svid_ms(children, template, env, floor_socket, pod))
    children.stop(floor, grace=5.0)

    size = f"{plan.size_mib} MiB binary"
    rows = [
        Row("cold", f"first SVID, new {size} (median of {plan.runs})", "ms",
            median(agent_ms), median(floor_ms), limit=COLD_LIMIT, offset=COLD_OFFSET_MS,
            note="floor: hashlib SHA-256 of the same file"),
        Row("cold", f"first SVID minus the bare server's first response, new {size}", "ms",
            median(agent_ms) - median(connect_ms), median(floor_ms),
            limit=COLD_LIMIT, offset=COLD_OFFSET_MS,
            note="the agent's own share: a new client's connection and call cost as much "
            "with the bare grpcio server; floor: hashlib"),
        Row("cold", f"first SVID, {size} already hashed (median of {plan.runs})", "ms",
            median(warm_ms), median(connect_ms),
            note="digest cache hit; floor: first response of the bare grpcio server "
            "to a new process"),
    ]
    series = {
        "agent_ms": agent_ms, "floor_ms": floor_ms, "warm_ms": warm_ms, "connect_ms": connect_ms,
    }
    return rows, series
