"""`attest-agent inspect PID` run as a separate process against real processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.cgroups import pod_cgroup, service_cgroup
from tests.support.processes import copy_sleep, start_sleeper

INSPECT = [sys.executable, "-m", "agent", "inspect"]
KEYS = ["pid", "uid", "gid", "exe_sha256", "pod_uid", "container_id", "systemd_unit", "start_time"]


def _inspect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*INSPECT, *args], capture_output=True, text=True, timeout=60, check=False
    )


def _start_time(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def test_inspect_pod_process(tmp_path: Path) -> None:
    sleep = copy_sleep(tmp_path, "inspect")
    with (
        pod_cgroup("pids", driver="systemd", runtime="containerd") as pod,
        start_sleeper(sleep, cgroup_dirs=[pod.path]) as proc,
    ):
        start_time = _start_time(proc.pid)
        result = _inspect(str(proc.pid))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    assert json.loads(result.stdout) == {
        "pid": proc.pid,
        "uid": 0,
        "gid": 0,
        "exe_sha256": sleep.sha256,
        "pod_uid": pod.pod_uid,
        "container_id": pod.container_id,
        "systemd_unit": None,
        "start_time": start_time,
    }
    assert list(json.loads(result.stdout)) == KEYS


def test_inspect_service_process(tmp_path: Path) -> None:
    sleep = copy_sleep(tmp_path, "inspect-svc")
    with (
        service_cgroup("unified", unit="metrics-exporter.service") as group,
        start_sleeper(sleep, cgroup_dirs=[group.path]) as proc,
    ):
        result = _inspect(str(proc.pid))
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["systemd_unit"] == "metrics-exporter.service"
    assert body["pod_uid"] is None
    assert body["container_id"] is None


def test_inspect_exited_process(tmp_path: Path) -> None:
    sleep = copy_sleep(tmp_path, "inspect-gone")
    proc = start_sleeper(sleep)
    pid = proc.pid
    proc.stop()
    result = _inspect(str(pid))
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("attest-agent inspect: process_exited: "), result.stderr
    assert str(pid) in result.stderr
    assert result.stderr.count("\n") == 1


def test_inspect_ambiguous_cgroups(tmp_path: Path) -> None:
    sleep = copy_sleep(tmp_path, "inspect-ambiguous")
    with (
        pod_cgroup("pids") as first,
        pod_cgroup("unified") as second,
        start_sleeper(sleep, cgroup_dirs=[first.path, second.path]) as proc,
    ):
        result = _inspect(str(proc.pid))
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("attest-agent inspect: ambiguous_cgroups: "), result.stderr


def test_inspect_too_large(tmp_path: Path) -> None:
    sleep = copy_sleep(tmp_path, "inspect-large")
    with start_sleeper(sleep) as proc:
        result = _inspect(str(proc.pid), "--max-exe-size", "1000")
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("attest-agent inspect: exe_too_large: "), result.stderr
