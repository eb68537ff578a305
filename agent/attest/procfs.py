"""Readers for /proc/<pid> files used as evidence, with OS errors translated.

Every reader takes ``proc_root`` (normally /proc) so tests can point it at captured
files, and raises AttestationError subclasses: ProcessExitedError when the entry is
gone, ProcUnreadableError when it cannot be read or parsed. The readers go by pid, so
their results are trustworthy only after the caller re-checks the process's pidfd.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from agent.attest.cgroups import MAX_CGROUP_FILE_CHARS
from agent.attest.errors import (
    AttestationError,
    CgroupParseError,
    ProcessExitedError,
    ProcUnreadableError,
)
from agent.denial import Reason
from agent.peer.process import parse_start_time

# Errors that mean the /proc entry no longer exists (the process is gone).
_GONE_ERRNOS = frozenset({errno.ENOENT, errno.ESRCH})


@dataclass(frozen=True, slots=True)
class ProcessIds:
    """Real and effective user and group ids from /proc/<pid>/status."""

    uid: int
    euid: int
    gid: int
    egid: int


def translate_os_error(exc: OSError, pid: int, path: Path | str) -> AttestationError:
    """Map an OSError on a /proc file to ProcessExitedError or ProcUnreadableError."""
    if exc.errno in _GONE_ERRNOS:
        return ProcessExitedError(f"process {pid} exited ({path}: {exc.strerror})", pid=pid)
    return ProcUnreadableError(f"cannot read {path}: {exc}", pid=pid, path=str(path))


def _read_bounded(path: str, limit: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks: list[bytes] = []
        size = 0
        # /proc files are generated on read and may arrive in several short reads.
        while size <= limit:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_proc_bytes(pid: int, name: str, proc_root: Path, limit: int = 65536) -> bytes:
    """Read /proc/<pid>/<name>; reading stops once more than ``limit`` bytes arrived."""
    # A plain string: pathlib's joins cost more than the read itself on this hot path.
    path = f"{proc_root}/{pid}/{name}"
    try:
        return _read_bounded(path, limit)
    except OSError as exc:
        raise translate_os_error(exc, pid, path) from exc


def read_proc_text(pid: int, name: str, proc_root: Path, limit: int = 65536) -> str:
    """Read /proc/<pid>/<name> as text; invalid UTF-8 becomes U+FFFD, which matches no ID."""
    return read_proc_bytes(pid, name, proc_root, limit).decode("utf-8", errors="replace")


def read_start_time(pid: int, proc_root: Path) -> int:
    """Return field 22 of /proc/<pid>/stat."""
    text = read_proc_text(pid, "stat", proc_root)
    try:
        return parse_start_time(text)
    except ValueError as exc:
        path = f"{proc_root}/{pid}/stat"
        raise ProcUnreadableError(f"cannot parse {path}: {exc}", pid=pid, path=path) from exc


def _status_pair(text: str, key: str, path: str, pid: int) -> tuple[int, int]:
    line = _status_line(text, key)
    fields = line.partition(":")[2].split() if line is not None else []
    if len(fields) >= 2 and fields[0].isdigit() and fields[1].isdigit():
        return int(fields[0]), int(fields[1])
    raise ProcUnreadableError(f"{path} has no valid {key}: line", pid=pid, path=path)


def _status_line(text: str, key: str) -> str | None:
    """Return the first line of ``text`` that starts with ``key:``, or None."""
    prefix = f"{key}:"
    if text.startswith(prefix):
        start = 0
    else:
        start = text.find(f"\n{prefix}") + 1
        if start == 0:
            return None
    end = text.find("\n", start)
    return text[start:] if end < 0 else text[start:end]


def read_process_ids(pid: int, proc_root: Path) -> ProcessIds:
    """Return the real and effective uid and gid of ``pid``."""
    text = read_proc_text(pid, "status", proc_root)
    path = f"{proc_root}/{pid}/status"
    uid, euid = _status_pair(text, "Uid", path, pid)
    gid, egid = _status_pair(text, "Gid", path, pid)
    return ProcessIds(uid=uid, euid=euid, gid=gid, egid=egid)


def read_cgroup_text(pid: int, proc_root: Path) -> str:
    """Read /proc/<pid>/cgroup; raise CgroupParseError (INVALID_CGROUP) when it is too large."""
    data = read_proc_bytes(pid, "cgroup", proc_root, limit=MAX_CGROUP_FILE_CHARS)
    if len(data) > MAX_CGROUP_FILE_CHARS:
        raise CgroupParseError(
            Reason.INVALID_CGROUP,
            f"/proc/{pid}/cgroup is larger than the limit of {MAX_CGROUP_FILE_CHARS} bytes",
            pid=pid,
        )
    return data.decode("utf-8", errors="replace")
