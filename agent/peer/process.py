"""Kernel facts about a connected peer: SO_PEERCRED, a pidfd, and the start time.

``pin_peer(sock)`` is called right after accept. It returns the peer's credentials,
a pidfd for that exact process and the process start time, or raises PinError. The
lower-level readers raise OSError or ValueError, and each package translates those at
its own boundary: agent.peer into PinError, agent.attest into AttestationError.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from pathlib import Path
from typing import Protocol

from agent.peer.connection import PeerCredentials
from agent.peer.errors import PinError

# Linux 6.5 added SO_PEERPIDFD; Python's socket module names it only in newer versions.
SO_PEERPIDFD: int = getattr(socket, "SO_PEERPIDFD", 77)

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class PeerSocket(Protocol):
    """The getsockopt part of socket.socket, also offered by asyncio's TransportSocket."""

    def getsockopt(self, level: int, optname: int, buflen: int = ..., /) -> int | bytes: ...


def peer_credentials(sock: PeerSocket) -> PeerCredentials:
    """Read SO_PEERCRED: the peer's pid, effective uid and gid at connect() time.

    The kernel translates the pid into the reader's PID namespace and reports 0 when
    the peer's process is not visible there.
    """
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    if not isinstance(raw, bytes):
        raise TypeError("getsockopt with a buffer length must return bytes")
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCredentials(pid=pid, uid=uid, gid=gid)


def peer_pidfd(sock: PeerSocket, pid: int) -> int:
    """Return a pidfd for the peer: SO_PEERPIDFD, or pidfd_open(pid) on older kernels.

    SO_PEERPIDFD refers to the process that called connect(), even if its pid was
    reused since. The fallback opens whatever process has the pid now.
    """
    try:
        fd = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError as exc:
        if exc.errno not in (errno.ENOPROTOOPT, errno.EINVAL):
            raise
        # NOTE: without SO_PEERPIDFD (Linux < 6.5) a peer that exits right after
        # connect() and whose pid is reused at once gets the newcomer pinned here.
        return os.pidfd_open(pid)
    if not isinstance(fd, int):
        raise TypeError("getsockopt without a buffer length must return an int")
    return fd


def pidfd_exited(pidfd: int) -> bool:
    """Return whether the process behind ``pidfd`` has exited (the pidfd is readable)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def parse_start_time(stat_text: str) -> int:
    """Return field 22 of /proc/<pid>/stat (start time in clock ticks after boot).

    Fields are counted after the last ')', because the command name in field 2 may
    contain spaces and parentheses. Raises ValueError on malformed text.
    """
    close = stat_text.rfind(")")
    if close < 0:
        raise ValueError("no ')' after the command name")
    # The text after ')' starts with field 3, so field 22 is its 20th field.
    fields = stat_text[close + 1 :].split()
    if len(fields) < 20:
        raise ValueError(f"only {len(fields) + 2} fields, expected at least 22")
    return int(fields[19])


def read_start_time(pid: int, proc_root: Path = Path("/proc")) -> int:
    """Read the start time of ``pid``; raises OSError if unreadable, ValueError if malformed."""
    with open(proc_root / str(pid) / "stat", encoding="utf-8", errors="replace") as handle:
        return parse_start_time(handle.read())


def read_exe_file(pid: int, pidfd: int, proc_root: Path = Path("/proc")) -> tuple[int, int]:
    """Return (st_dev, st_ino) of the file that ``pid`` runs, or raise PinError.

    Like the start time, the result is trusted only because the pidfd shows the process
    alive after the stat, so the pid was not reused in between.
    """
    try:
        info = os.stat(proc_root / str(pid) / "exe")
    except OSError as exc:
        raise PinError(pid, f"cannot stat its executable: {exc}") from exc
    if pidfd_exited(pidfd):
        raise PinError(pid, "the process exited right after connecting")
    return info.st_dev, info.st_ino


def pin_peer(sock: PeerSocket, pid: int, proc_root: Path = Path("/proc")) -> tuple[int, int]:
    """Pin the peer process of ``sock``: return (pidfd, start_time) or raise PinError.

    The start time is read by pid and only trusted because the pidfd shows the process
    still alive afterwards, so the pid cannot have been reused in between.
    """
    try:
        pidfd = peer_pidfd(sock, pid)
    except OSError as exc:
        raise PinError(pid, f"no pidfd: {exc}") from exc
    try:
        start_time = read_start_time(pid, proc_root)
        if pidfd_exited(pidfd):
            raise PinError(pid, "the process exited right after connecting")
    except (OSError, ValueError) as exc:
        os.close(pidfd)
        raise PinError(pid, f"cannot read its start time: {exc}") from exc
    except PinError:
        os.close(pidfd)
        raise
    return pidfd, start_time
