"""The executable digest under attack: a file bind-mounted over the path, /proc/<pid>/exe
unreadable. Replacing the file on disk while it runs is covered by
tests/test_attest_evidence.py::test_attest_deleted_replaced_binary.

The digest must describe the file the process runs, never whatever the path shows
now, and an unreadable executable must give a clear denial.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.attest.attestor import Attestor
from agent.attest.evidence import Evidence
from agent.denial import Denial, Reason
from tests.support.processes import copy_binary, copy_sleep, start_sleeper


@contextmanager
def bind_mount(source: Path, target: Path) -> Iterator[None]:
    result = subprocess.run(
        ["mount", "--bind", str(source), str(target)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.skip(f"bind mounts are not permitted here: {result.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(target)], check=True, capture_output=True)


async def test_bind_mount_over_exe(tmp_path: Path) -> None:
    original = copy_sleep(tmp_path, "original")
    other = copy_binary(Path(shutil.which("sleep") or "/bin/sleep"), tmp_path, "mounted")
    with start_sleeper(original) as running, bind_mount(other.path, original.path):
        attestor = Attestor()
        before = await attestor.attest_pid(running.pid)
        # A process started from the path now runs the mounted file.
        with start_sleeper(other) as control:
            newcomer = subprocess.Popen([str(original.path), "3600"])
            try:
                after_mount = await attestor.attest_pid(newcomer.pid)
                control_result = await attestor.attest_pid(control.pid)
            finally:
                newcomer.kill()
                newcomer.wait()
    assert isinstance(before, Evidence)
    assert before.exe_sha256 == original.sha256
    assert isinstance(after_mount, Evidence)
    assert after_mount.exe_sha256 == other.sha256
    assert isinstance(control_result, Evidence)
    assert control_result.exe_sha256 == other.sha256


def fake_proc(tmp_path: Path, pid: int, exe_target: Path) -> Path:
    """Capture /proc/<pid> with its exe link pointing at ``exe_target``."""
    real = Path(f"/proc/{pid}")
    fake = tmp_path / "proc" / str(pid)
    fake.mkdir(parents=True)
    for name in ("stat", "status", "cgroup"):
        (fake / name).write_text((real / name).read_text())
    (fake / "exe").symlink_to(exe_target)
    return tmp_path / "proc"


@pytest.mark.parametrize(
    ("target", "reason", "fragment"),
    [
        pytest.param("directory", Reason.EXE_UNREADABLE, "is not a regular file", id="directory"),
        pytest.param("missing", Reason.EXE_UNREADABLE, "no executable", id="dangling"),
    ],
)
async def test_exe_unusable_denied(
    tmp_path: Path, target: str, reason: Reason, fragment: str
) -> None:
    # A captured /proc stands in for an exe link the kernel would not let the agent use.
    exe_target = tmp_path / "target"
    if target == "directory":
        exe_target.mkdir()
    sleep = copy_sleep(tmp_path, "fake")
    with start_sleeper(sleep) as proc:
        proc_root = fake_proc(tmp_path, proc.pid, exe_target)
        result = await Attestor(proc_root).attest_pid(proc.pid)
    assert isinstance(result, Denial)
    assert result.reason is reason
    assert fragment in result.message


def unreadable_exe_pid() -> int | None:
    """Return a live process whose /proc/<pid>/exe the test cannot read, if there is one."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            os.readlink(f"/proc/{name}/exe")
        except PermissionError:
            return int(name)
        except OSError:
            continue
    return None


async def test_exe_permission_denied() -> None:
    pid = unreadable_exe_pid()
    if pid is None:
        pytest.skip("every process's /proc/<pid>/exe is readable here (no ancestor namespace)")
    result = await Attestor().attest_pid(pid)
    assert isinstance(result, Denial)
    assert result.reason in (Reason.EXE_UNREADABLE, Reason.PROC_UNREADABLE)
    assert "Permission denied" in result.message
