"""Checks of the shared test helpers in tests/support (cgroups and processes)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.support.cgroups import pod_cgroup, service_cgroup
from tests.support.processes import (
    copy_python,
    copy_sleep,
    start_sleeper,
    start_socket_client,
)


def test_copies_have_distinct_digests(tmp_path: Path) -> None:
    first = copy_sleep(tmp_path, "one")
    second = copy_sleep(tmp_path, "two")
    assert first.sha256 != second.sha256
    assert not first.path.is_symlink()


def test_copied_python_runs(tmp_path: Path) -> None:
    python = copy_python(tmp_path, "runs")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = tmp_path / "s.sock"
    listener.bind(str(path))
    listener.listen()
    with start_socket_client(python, path, send_preface=False) as client:
        assert client.lines[-1] == f"connected {client.pid}"
        conn, _ = listener.accept()
        conn.close()
        assert client.wait_for_line("closed") == "closed"
    listener.close()


@pytest.mark.parametrize(
    ("hierarchy", "driver", "runtime"),
    [
        ("pids", "cgroupfs", "containerd"),
        ("unified", "systemd", "containerd"),
        ("unified", "systemd", "docker"),
        ("systemd", "systemd", "crio"),
    ],
    ids=["v1-pids-cgroupfs", "v2-systemd-containerd", "v2-systemd-docker", "v1-name-systemd"],
)
def test_pod_cgroup_holds_process(
    tmp_path: Path, hierarchy: str, driver: str, runtime: str
) -> None:
    sleep = copy_sleep(tmp_path, "pod")
    with pod_cgroup(hierarchy, driver=driver, runtime=runtime) as pod:
        created = list(pod.created)
        with start_sleeper(sleep, cgroup_dirs=[pod.path]) as proc:
            text = Path(f"/proc/{proc.pid}/cgroup").read_text()
            assert pod.relative in text
            assert pod.container_id is not None
            assert pod.container_id in pod.relative
    for directory in created:
        assert not directory.exists()


def test_service_cgroup_removed(tmp_path: Path) -> None:
    sleep = copy_sleep(tmp_path, "svc")
    with service_cgroup("unified") as group:
        top = group.created[0]
        proc = start_sleeper(sleep)
        group.add(proc.pid)
        assert group.relative in Path(f"/proc/{proc.pid}/cgroup").read_text()
        # Leave the process running: the helper moves it out before removing the group.
    try:
        assert not top.exists()
        assert "attest-test-" not in Path(f"/proc/{proc.pid}/cgroup").read_text()
    finally:
        proc.stop()
