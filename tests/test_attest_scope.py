"""pids_in_cgroups over directory trees: nested containers, leaves that are not listed.

The trees are plain directories with cgroup.procs files, because ext4 and tmpfs count
links as cgroupfs does. The holder tests in test_adv_exec.py cover the real cgroupfs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.attest import scope
from agent.attest.scope import ScopeDir, pids_in_cgroups


def make_cgroup(path: Path, *pids: int) -> Path:
    path.mkdir(parents=True)
    (path / "cgroup.procs").write_text("".join(f"{pid}\n" for pid in pids))
    return path


@pytest.fixture
def pod(tmp_path: Path) -> Path:
    pod = make_cgroup(tmp_path / "kubepods" / "podX", 10)
    make_cgroup(pod / "container-a", 11, 12)
    make_cgroup(pod / "container-b", 13)
    make_cgroup(pod / "container-b" / "nested", 14)
    return pod


def test_recursive_scope_finds_every_container(pod: Path) -> None:
    assert pids_in_cgroups([ScopeDir(str(pod), recursive=True)]) == {10, 11, 12, 13, 14}
    assert pids_in_cgroups([ScopeDir(str(pod), recursive=False)]) == {10}


def test_leaves_are_not_listed(pod: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    listed: list[str] = []
    real_scandir = os.scandir

    def counting_scandir(path: str) -> object:
        listed.append(path)
        return real_scandir(path)

    monkeypatch.setattr(scope.os, "scandir", counting_scandir)
    assert pids_in_cgroups([ScopeDir(str(pod), recursive=True)]) == {10, 11, 12, 13, 14}
    # Only the directories with subdirectories: the pod and container-b.
    assert sorted(listed) == [str(pod), str(pod / "container-b")]


def test_vanished_directory_is_skipped(pod: Path) -> None:
    gone = pod / "container-a"
    (gone / "cgroup.procs").unlink()
    gone.rmdir()
    assert pids_in_cgroups([ScopeDir(str(pod), recursive=True)]) == {10, 13, 14}
