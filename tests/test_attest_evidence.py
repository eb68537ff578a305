"""Attestor.attest_pid and Attestor.attest on real processes in real cgroups."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from agent.attest.attestor import Attestor
from agent.attest.evidence import Evidence
from agent.attest.hashing import RACY_WINDOW_NS
from agent.denial import Denial, Reason
from agent.peer.connection import Connection, PeerCredentials
from agent.peer.process import read_start_time
from tests.support.cgroups import pod_cgroup, service_cgroup
from tests.support.processes import copy_sleep, sha256_file, start_process, start_sleeper


def _evidence(result: Evidence | Denial) -> Evidence:
    assert isinstance(result, Evidence), f"expected evidence, got {result}"
    return result


def _denial(result: Evidence | Denial) -> Denial:
    assert isinstance(result, Denial), f"expected a denial, got {result}"
    return result


@pytest.mark.parametrize(
    ("hierarchy", "driver", "runtime"),
    [
        ("pids", "cgroupfs", "containerd"),
        ("pids", "systemd", "docker"),
        ("unified", "cgroupfs", "crio"),
        ("unified", "systemd", "containerd"),
    ],
    ids=["v1-cgroupfs", "v1-systemd-docker", "v2-cgroupfs-crio", "v2-systemd-containerd"],
)
async def test_attest_pod_process(
    tmp_path: Path, hierarchy: str, driver: str, runtime: str
) -> None:
    sleep = copy_sleep(tmp_path, "pod")
    with (
        pod_cgroup(hierarchy, driver=driver, runtime=runtime) as pod,
        start_sleeper(sleep, cgroup_dirs=[pod.path]) as proc,
    ):
        start_time = read_start_time(proc.pid)
        evidence = _evidence(await Attestor().attest_pid(proc.pid))
    assert evidence.pid == proc.pid
    assert evidence.pod_uid == pod.pod_uid
    assert evidence.container_id == pod.container_id
    assert evidence.systemd_unit is None
    assert evidence.exe_sha256 == sleep.sha256
    assert evidence.uid == 0
    assert evidence.euid == 0
    assert evidence.start_time == start_time


async def test_attest_both_hierarchies(tmp_path: Path) -> None:
    sleep = copy_sleep(tmp_path, "both")
    with (
        pod_cgroup("pids", driver="cgroupfs") as v1,
        pod_cgroup(
            "unified", driver="systemd", pod_uid=v1.pod_uid, container_id=v1.container_id
        ) as v2,
        start_sleeper(sleep, cgroup_dirs=[v1.path, v2.path]) as proc,
    ):
        evidence = _evidence(await Attestor().attest_pid(proc.pid))
    assert evidence.pod_uid == v1.pod_uid
    assert evidence.container_id == v1.container_id


async def test_attest_conflicting_hierarchies(tmp_path: Path) -> None:
    sleep = copy_sleep(tmp_path, "conflict")
    with (
        pod_cgroup("pids") as first,
        pod_cgroup("unified") as second,
        start_sleeper(sleep, cgroup_dirs=[first.path, second.path]) as proc,
    ):
        denial = _denial(await Attestor().attest_pid(proc.pid))
    assert denial.reason == Reason.AMBIGUOUS_CGROUPS
    assert denial.pid == proc.pid
    assert str(first.pod_uid) in denial.message


async def test_attest_systemd_service(tmp_path: Path) -> None:
    sleep = copy_sleep(tmp_path, "svc")
    with (
        service_cgroup("systemd", unit="web-frontend.service") as v1,
        service_cgroup("unified", unit="web-frontend.service") as v2,
        start_sleeper(sleep, cgroup_dirs=[v1.path, v2.path]) as proc,
    ):
        evidence = _evidence(await Attestor().attest_pid(proc.pid))
    assert evidence.systemd_unit == "web-frontend.service"
    assert evidence.pod_uid is None
    assert evidence.container_id is None


async def test_attest_unprivileged_uid(tmp_path: Path) -> None:
    sleep = copy_sleep(tmp_path, "nobody")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to start a process as another uid")
    argv = [setpriv, "--reuid=65534", "--regid=65533", "--clear-groups", str(sleep.path), "3600"]
    with pod_cgroup("unified") as pod, start_process(argv, cgroup_dirs=[pod.path]) as proc:
        proc.wait_exe(sleep.path)
        evidence = _evidence(await Attestor().attest_pid(proc.pid))
    assert evidence.uid == 65534
    assert evidence.euid == 65534
    assert evidence.gid == 65533
    assert evidence.egid == 65533
    assert evidence.exe_sha256 == sleep.sha256
    assert evidence.pod_uid == pod.pod_uid


async def test_attest_deleted_replaced_binary(tmp_path: Path) -> None:
    sleep = copy_sleep(tmp_path, "original")
    with start_sleeper(sleep) as proc:
        sleep.path.unlink()
        shutil.copyfile(shutil.which("true") or "/bin/true", sleep.path)
        replacement_sha256 = sha256_file(sleep.path)
        evidence = _evidence(await Attestor().attest_pid(proc.pid))
    assert evidence.exe_sha256 == sleep.sha256
    assert evidence.exe_sha256 != replacement_sha256
    assert evidence.exe_path is not None
    assert evidence.exe_path.endswith("(deleted)")


def _wait_past_racy_window(path: Path) -> None:
    """Sleep until the file's ctime is old enough for its digest to be cached."""
    age_ns = time.time_ns() - path.stat().st_ctime_ns
    if age_ns < RACY_WINDOW_NS:
        time.sleep((RACY_WINDOW_NS - age_ns) / 1e9 + 0.05)


async def test_attest_hash_cache(tmp_path: Path) -> None:
    sleep = copy_sleep(tmp_path, "cached")
    size = sleep.path.stat().st_size
    _wait_past_racy_window(sleep.path)
    attestor = Attestor()
    with start_sleeper(sleep) as first, start_sleeper(sleep) as second:
        one = _evidence(await attestor.attest_pid(first.pid))
        after_first = attestor.hash_cache_stats
        two = _evidence(await attestor.attest_pid(second.pid))
        after_second = attestor.hash_cache_stats
    assert one.exe_sha256 == two.exe_sha256 == sleep.sha256
    assert after_first.misses == 1
    assert after_first.bytes_hashed == size
    assert after_second.hits == 1
    assert after_second.misses == 1
    assert after_second.bytes_hashed == size  # the second caller read nothing

    # The same path with changed content is a new file identity and is hashed again.
    with sleep.path.open("ab") as handle:
        handle.write(b"changed")
    changed_sha256 = sha256_file(sleep.path)
    with start_sleeper(sleep) as third:
        three = _evidence(await attestor.attest_pid(third.pid))
    assert three.exe_sha256 == changed_sha256
    assert three.exe_sha256 != sleep.sha256
    assert attestor.hash_cache_stats.misses == 2
    assert attestor.hash_cache_stats.bytes_hashed == size + size + len(b"changed")


async def test_attest_fresh_file_uncached(tmp_path: Path) -> None:
    # Written just now: its ctime may share a clock tick with a later write.
    sleep = copy_sleep(tmp_path, "fresh")
    attestor = Attestor()
    with start_sleeper(sleep) as first, start_sleeper(sleep) as second:
        _evidence(await attestor.attest_pid(first.pid))
        _evidence(await attestor.attest_pid(second.pid))
    assert attestor.hash_cache_stats.misses == 2
    assert attestor.hash_cache_stats.entries == 0


async def test_attest_distinct_copy_rehashed(tmp_path: Path) -> None:
    first_copy = copy_sleep(tmp_path, "first")
    second_copy = copy_sleep(tmp_path, "second")
    attestor = Attestor()
    with start_sleeper(first_copy) as first, start_sleeper(second_copy) as second:
        one = _evidence(await attestor.attest_pid(first.pid))
        two = _evidence(await attestor.attest_pid(second.pid))
    assert one.exe_sha256 == first_copy.sha256
    assert two.exe_sha256 == second_copy.sha256
    assert attestor.hash_cache_stats.hits == 0
    assert attestor.hash_cache_stats.misses == 2


async def test_attest_cache_bounded(tmp_path: Path) -> None:
    attestor = Attestor(cache_size=1)
    copies = [copy_sleep(tmp_path, f"lru{index}") for index in range(3)]
    _wait_past_racy_window(copies[-1].path)
    for binary in copies:
        with start_sleeper(binary) as proc:
            _evidence(await attestor.attest_pid(proc.pid))
    assert attestor.hash_cache_stats.entries == 1


async def test_attest_exe_too_large(tmp_path: Path) -> None:
    sleep = copy_sleep(tmp_path, "large")
    size = sleep.path.stat().st_size
    with start_sleeper(sleep) as proc:
        denial = _denial(await Attestor(max_exe_size=size - 1).attest_pid(proc.pid))
    assert denial.reason == Reason.EXE_TOO_LARGE
    assert str(size) in denial.message


async def test_attest_exited_pid(tmp_path: Path) -> None:
    sleep = copy_sleep(tmp_path, "gone")
    proc = start_sleeper(sleep)
    pid = proc.pid
    proc.stop()
    denial = _denial(await Attestor().attest_pid(pid))
    # The pid may already belong to a newcomer, which is then attested as itself.
    assert denial.reason == Reason.PROCESS_EXITED


async def test_attest_kernel_thread() -> None:
    denial = _denial(await Attestor().attest_pid(2))  # kthreadd has no executable
    assert denial.reason == Reason.EXE_UNREADABLE


async def test_attest_invalid_pid() -> None:
    denial = _denial(await Attestor().attest_pid(-5))
    assert denial.reason == Reason.PROC_UNREADABLE
    assert "-5" in denial.message


def _pinned_connection(pid: int, *, uid: int = 0, gid: int = 0) -> Connection:
    creds = PeerCredentials(pid=pid, uid=uid, gid=gid)
    return Connection("test", creds, os.pidfd_open(pid), read_start_time(pid))


async def test_attest_connection(tmp_path: Path) -> None:
    sleep = copy_sleep(tmp_path, "conn")
    with start_sleeper(sleep) as proc:
        conn = _pinned_connection(proc.pid)
        try:
            evidence = _evidence(await Attestor().attest(conn))
        finally:
            conn.close()
    assert evidence.exe_sha256 == sleep.sha256
    assert evidence.start_time == conn.start_time


async def test_attest_closed_connection(tmp_path: Path) -> None:
    sleep = copy_sleep(tmp_path, "closed")
    with start_sleeper(sleep) as proc:
        conn = _pinned_connection(proc.pid)
        conn.close()
        denial = _denial(await Attestor().attest(conn))
    assert denial.reason == Reason.SOCKET_NOT_HELD


async def test_attest_changed_euid(tmp_path: Path) -> None:
    # SO_PEERCRED said uid 1000; the process runs as root now (as after a setuid call).
    sleep = copy_sleep(tmp_path, "setuid")
    with start_sleeper(sleep) as proc:
        conn = _pinned_connection(proc.pid, uid=1000, gid=1000)
        try:
            denial = _denial(await Attestor().attest(conn))
        finally:
            conn.close()
    assert denial.reason == Reason.PROCESS_REPLACED
    assert "1000/1000 at connect, 0/0 now" in denial.message


async def test_attest_pid_zero() -> None:
    conn = Connection("hidden", PeerCredentials(0, 0, 0), os.pidfd_open(os.getpid()), 0)
    try:
        denial = _denial(await Attestor().attest(conn))
    finally:
        conn.close()
    assert denial.reason == Reason.PID_NAMESPACE_HIDDEN
    assert "hostPID: true" in denial.message


def _fake_proc(tmp_path: Path, pid: int, start_time_delta: int) -> Path:
    """Capture /proc/<pid> into a directory, shifting the start time in its stat file."""
    real = Path(f"/proc/{pid}")
    fake = tmp_path / "proc" / str(pid)
    fake.mkdir(parents=True)
    stat_text = (real / "stat").read_text()
    head, _, tail = stat_text.rpartition(")")
    fields = tail.split()
    fields[19] = str(int(fields[19]) + start_time_delta)
    (fake / "stat").write_text(head + ") " + " ".join(fields) + "\n")
    for name in ("status", "cgroup"):
        (fake / name).write_text((real / name).read_text())
    (fake / "exe").symlink_to(os.readlink(real / "exe"))
    return tmp_path / "proc"


async def test_attest_start_time_mismatch(tmp_path: Path) -> None:
    # The captured /proc stands in for a pid reused by a newcomer with a later start time;
    # the pidfd still belongs to the real, live process.
    sleep = copy_sleep(tmp_path, "reused")
    with start_sleeper(sleep) as proc:
        proc_root = _fake_proc(tmp_path, proc.pid, start_time_delta=250)
        conn = _pinned_connection(proc.pid)
        try:
            denial = _denial(await Attestor(proc_root).attest(conn))
        finally:
            conn.close()
    assert denial.reason == Reason.PROCESS_REPLACED
    assert f"start time {conn.start_time} when pinned, {conn.start_time + 250} now" in (
        denial.message
    )


async def test_attest_captured_proc_root(tmp_path: Path) -> None:
    sleep = copy_sleep(tmp_path, "captured")
    with start_sleeper(sleep) as proc:
        proc_root = _fake_proc(tmp_path, proc.pid, start_time_delta=0)
        evidence = _evidence(await Attestor(proc_root).attest_pid(proc.pid))
    assert evidence.exe_sha256 == sleep.sha256


async def test_attest_exited_connection(tmp_path: Path) -> None:
    sleep = copy_sleep(tmp_path, "exited")
    proc = start_sleeper(sleep)
    conn = _pinned_connection(proc.pid)
    proc.stop()
    try:
        denial = _denial(await Attestor().attest(conn))
    finally:
        conn.close()
    # Gone, or reused by another process with another start time: never evidence.
    assert denial.reason in (Reason.PROCESS_EXITED, Reason.PROCESS_REPLACED)


def test_start_time_parse_odd_comm(tmp_path: Path) -> None:
    script = tmp_path / "odd) (name"
    shutil.copyfile(shutil.which("sleep") or "/bin/sleep", script)
    script.chmod(0o755)
    proc = subprocess.Popen([str(script), "3600"])
    try:
        stat_text = Path(f"/proc/{proc.pid}/stat").read_text()
        assert "odd) (name" in stat_text
        expected = int(stat_text.rsplit(")", 1)[1].split()[19])
        assert read_start_time(proc.pid) == expected
    finally:
        proc.kill()
        proc.wait()
