"""The holder check skips the agent's own fd table and still finds other holders.

A fake cgroup root (plain directories) lists real processes: a child that holds one end
of a socket pair, this test process (standing in for the agent, which holds server
ends and, on test hosts, shares the caller's cgroup) and, in the control case, a second
child holding the same end. The fd tables read are the real ones under /proc.
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

from agent.attest.errors import SocketHolderError
from agent.attest.holders import HolderScanner
from agent.denial import Reason

CONTAINER_ID = "c" * 64
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
            result = scanner.check_small(child.pid, inode, text, max_pids=32, max_fds=512)
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
                scanner.check_small(pinned, inode, text, max_pids=32, max_fds=512)
            else:
                scanner.check(pinned, inode, text)
    finally:
        stop(children)
    assert caught.value.reason == Reason.SOCKET_SHARED
    assert str(other) in caught.value.message
    assert str(os.getpid()) not in caught.value.message
