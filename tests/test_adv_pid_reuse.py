"""A caller's pid reused by another process while the attestor reads its files.

tests/test_attest_pid_reuse.py covers reuse before attestation. Here the attestor has
already read the caller's status and cgroup when the caller exits and a newcomer gets
its pid, so the digest it takes next describes the newcomer. The scenario runs in a
fresh PID namespace (``unshare --pid --fork --mount-proc``), where the test sets
/proc/sys/kernel/ns_last_pid to hand out exactly the caller's pid. The swap is done
from inside ExeHasher.digest, which the scenario wraps. The row with the final
re-check disabled shows that the newcomer's digest would otherwise be accepted.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import copy_sleep, start_process

SCENARIO = r"""
import asyncio, json, os, subprocess, sys, time
from pathlib import Path
from agent.attest import attestor as attestor_module
from agent.attest.attestor import Attestor
from agent.attest.evidence import Evidence
from agent.attest.hashing import ExeHasher
from agent.peer.connection import Connection, PeerCredentials
from agent.peer.process import read_start_time

victim_binary, newcomer_binary, disable_recheck = sys.argv[1], sys.argv[2], sys.argv[3] == "1"


def wait_exe(pid, path):
    for _ in range(1000):
        try:
            if os.readlink(f"/proc/{pid}/exe") == path:
                return
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"{pid} never ran {path}")


victim = subprocess.Popen([victim_binary, "3600"])
wait_exe(victim.pid, victim_binary)
conn = Connection("reuse", PeerCredentials(victim.pid, 0, 0), os.pidfd_open(victim.pid),
                  read_start_time(victim.pid))
newcomers = []
original_digest = ExeHasher.digest


def digest_after_swap(self, pid):
    # The caller exits between the attestor's reads; its pid goes to a newcomer.
    victim.kill()
    victim.wait()
    Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
    newcomer = subprocess.Popen([newcomer_binary, "3600"])
    newcomers.append(newcomer)
    wait_exe(newcomer.pid, newcomer_binary)
    return original_digest(self, pid)


ExeHasher.digest = digest_after_swap
if disable_recheck:
    Attestor._recheck = lambda self, pin: None
result = asyncio.run(Attestor().attest(conn))
print(json.dumps({
    "victim_pid": victim.pid,
    "newcomer_pid": newcomers[0].pid,
    "result": result.exe_sha256 if isinstance(result, Evidence) else result.reason.value,
}), flush=True)
for newcomer in newcomers:
    newcomer.kill()
    newcomer.wait()
"""


@pytest.fixture
def work_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="reuse-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


@pytest.mark.parametrize("disable_recheck", [False, True], ids=["defended", "no-recheck"])
def test_pid_reused_during_attestation(work_dir: Path, disable_recheck: bool) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is needed to create a PID namespace")
    victim = copy_sleep(work_dir, "victim")
    newcomer = copy_sleep(work_dir, "newcomer")
    argv = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", SCENARIO,
            str(victim.path), str(newcomer.path), "1" if disable_recheck else "0"]
    with start_process(argv) as scenario:
        line = scenario.read_line(deadline=60)
        scenario.popen.wait(timeout=60)
    report = json.loads(line)
    assert report["newcomer_pid"] == report["victim_pid"], "the pid was not reused"
    if disable_recheck:
        assert report["result"] == newcomer.sha256
    else:
        assert report["result"] in ("process_exited", "process_replaced")
