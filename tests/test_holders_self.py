"""Holder check edge cases on a fake cgroup root with real processes.

The cgroup root is plain directories whose cgroup.procs files list real processes. A
child has one end of a socket pair open. This test process stands in for the agent,
which has server ends open and, on test hosts, shares the caller's cgroup. Some cases
add a second child with the same end open. The fd tables read are the real ones under
/proc. Covered: the agent's own table is skipped, other holders are still found,
a pod with many cgroups is left to the thread path, and a holder that moves between
the pod's cgroups during the first listing is still found.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.attest import scope
from agent.attest.errors import SocketHolderError
from agent.attest.holders import HolderScanner
from agent.denial import Reason

CONTAINER_ID = "c" * 64
LIMITS = {"max_pids": 32, "max_fds": 512, "max_dirs": 64}
WAIT = "import sys\nsys.stdin.readline()\n"


@pytest.fixture
def held_end() -> Iterator[tuple[socket.socket, int]]:
    ends = socket.socketpair()
    try:
        yield ends[0], os.fstat(ends[0].fileno()).st_ino
    finally:
        for end in ends:
            end.close()


def start_holder(end: socket.socket) -> subprocess.Popen[str]:
    """Start a child that inherits ``end`` and waits for its stdin to close."""
    return subprocess.Popen(
        [sys.executable, "-c", WAIT], stdin=subprocess.PIPE, text=True, pass_fds=[end.fileno()]
    )


def fake_pod(root: Path, pids: list[int]) -> str:
    """Create a v2 cgroup root with one pod listing ``pids``; return a cgroup file text."""
    root.mkdir()
    (root / "cgroup.controllers").write_text("")
    relative = f"kubepods/pod{uuid.uuid4()}/{CONTAINER_ID}"
    container = root / relative
    container.mkdir(parents=True)
    (container.parent / "cgroup.procs").write_text("")
    (container / "cgroup.procs").write_text("".join(f"{pid}\n" for pid in pids))
    return f"0::/{relative}\n"


def stop(children: list[subprocess.Popen[str]]) -> None:
    for child in children:
        child.kill()
        child.wait()


@pytest.mark.parametrize("path", ["check_small", "check"])
def test_own_fd_table_skipped(
    tmp_path: Path, held_end: tuple[socket.socket, int], path: str
) -> None:
    end, inode = held_end
    child = start_holder(end)
    try:
        text = fake_pod(tmp_path / "cgroupfs", [child.pid, os.getpid()])
        scanner = HolderScanner(Path("/proc"), tmp_path / "cgroupfs")
        if path == "check_small":
            result = scanner.check_small(child.pid, inode, text, **LIMITS)
        else:
            result = scanner.check(child.pid, inode, text)
    finally:
        stop([child])
    assert result is not None
    assert result.scope == "cgroup"


@pytest.mark.parametrize("path", ["check_small", "check"])
def test_other_holder_still_found(
    tmp_path: Path, held_end: tuple[socket.socket, int], path: str
) -> None:
    end, inode = held_end
    children = [start_holder(end), start_holder(end)]
    pinned, other = children[0].pid, children[1].pid
    try:
        text = fake_pod(tmp_path / "cgroupfs", [pinned, other, os.getpid()])
        scanner = HolderScanner(Path("/proc"), tmp_path / "cgroupfs")
        with pytest.raises(SocketHolderError) as caught:
            if path == "check_small":
                scanner.check_small(pinned, inode, text, **LIMITS)
            else:
                scanner.check(pinned, inode, text)
    finally:
        stop(children)
    assert caught.value.reason == Reason.SOCKET_SHARED
    assert str(other) in caught.value.message
    assert str(os.getpid()) not in caught.value.message


def test_many_cgroups_left_to_thread(
    tmp_path: Path, held_end: tuple[socket.socket, int]
) -> None:
    end, inode = held_end
    child = start_holder(end)
    try:
        text = fake_pod(tmp_path / "cgroupfs", [child.pid])
        pod = (tmp_path / "cgroupfs" / text.strip()[4:]).parent
        for index in range(LIMITS["max_dirs"] + 1):
            (pod / f"empty-{index}").mkdir()
        scanner = HolderScanner(Path("/proc"), tmp_path / "cgroupfs")
        declined = scanner.check_small(child.pid, inode, text, **LIMITS)
        remembered = scanner.declines(text)
        checked = scanner.check(child.pid, inode, text)
    finally:
        stop([child])
    assert declined is None
    assert remembered
    assert checked.scope == "cgroup"


def test_holder_moving_during_listing_found(
    tmp_path: Path, held_end: tuple[socket.socket, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The other holder sits in a second container of the pod. While the first listing
    # runs, after the pod's own cgroup.procs was read, it moves there from its container,
    # so the first listing misses it and only a second listing can see it.
    end, inode = held_end
    children = [start_holder(end), start_holder(end)]
    pinned, other = children[0].pid, children[1].pid
    try:
        text = fake_pod(tmp_path / "cgroupfs", [pinned])
        pod = (tmp_path / "cgroupfs" / text.strip()[4:]).parent
        sibling = pod / ("d" * 64)
        sibling.mkdir()
        (sibling / "cgroup.procs").write_text(f"{other}\n")
        real_read = scope._read_procs
        reads: list[str] = []

        def read_and_move(path: str) -> set[int]:
            pids = real_read(path)
            reads.append(path)
            if path == f"{pod}/cgroup.procs" and len(reads) == 1:
                (sibling / "cgroup.procs").write_text("")
                (pod / "cgroup.procs").write_text(f"{other}\n")
            return pids

        monkeypatch.setattr(scope, "_read_procs", read_and_move)
        scanner = HolderScanner(Path("/proc"), tmp_path / "cgroupfs")
        with pytest.raises(SocketHolderError) as caught:
            scanner.check_small(pinned, inode, text, **LIMITS)
    finally:
        stop(children)
    assert reads[0] == f"{pod}/cgroup.procs"
    assert caught.value.reason == Reason.SOCKET_SHARED
    assert str(other) in caught.value.message
