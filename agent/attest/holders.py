"""Which processes hold the client end of a connection, found in /proc/<pid>/fd.

Threat: a process connects, keeps a copy of the connection elsewhere (a forked child
inherits it, or SCM_RIGHTS hands it to another process), and then the pinned process
execs a binary that a manifest trusts. Whoever holds a copy reads the SVID that the
agent sends. ``check_socket_holders`` therefore requires that the pinned process
holds the client end itself and that no other process in the caller's cgroup scope
does. It raises SocketHolderError (SOCKET_NOT_HELD or SOCKET_SHARED) or an
AttestationError when /proc or cgroupfs cannot be read, and returns what it scanned.

Scope: for a caller in a Kubernetes pod, every process below the pod's cgroup (all its
containers); otherwise the processes of the caller's own cgroup. The directories are
found under ``cgroup_root`` (normally /sys/fs/cgroup) in every hierarchy where the
caller's /proc/<pid>/cgroup names a cgroup other than the root. When none of them is
visible, every process in /proc is scanned instead. The list of processes is read
again after each pass until no new process appears, so a holder that forks and exits
while the scan runs is still seen, and a scope that keeps changing fails closed after
``MAX_SCAN_ROUNDS`` passes.

A scan cannot see a descriptor that sits in flight in an SCM_RIGHTS message (queued
on a socket, not yet received), a holder outside the scope (another pod or service on
the node), or a process that copies the descriptor with pidfd_getfd or ptrace after
the scan, nor a process whose fd table it may not read (see ``_SKIPPED_ERRNOS``).
docs/security.md lists these limits.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.attest.cgroups import is_pod_component
from agent.attest.errors import ProcUnreadableError, SocketHolderError
from agent.attest.procfs import translate_os_error
from agent.denial import Reason

MAX_SCAN_ROUNDS = 4
_MAX_PIDS_IN_MESSAGE = 10
_GONE_ERRNOS = frozenset({errno.ENOENT, errno.ESRCH})
# Other processes are skipped when they exited since they were listed, or when the
# agent may not read their fd table: a process of an ancestor user namespace, or an
# LSM denial. With CAP_SYS_PTRACE in the host user namespace no workload is skipped.
_SKIPPED_ERRNOS = _GONE_ERRNOS | {errno.EACCES, errno.EPERM}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class ScopeDir:
    """A cgroup directory whose processes are scanned; ``recursive`` adds its descendants."""

    path: Path
    recursive: bool


@dataclass(frozen=True, slots=True)
class HolderScan:
    """The outcome of a passing scan: how many fd tables were read, and in which scope."""

    scanned: int
    scope: str  # "cgroup" or "node"


def check_socket_holders(
    pid: int, inode: int, cgroup_text: str, proc_root: Path, cgroup_root: Path
) -> HolderScan:
    """Raise unless ``pid`` is the only process in its scope holding socket ``inode``."""
    link = f"socket:[{inode}]"
    if not _holds(pid, link, proc_root, pinned=True):
        raise SocketHolderError(
            Reason.SOCKET_NOT_HELD,
            f"process {pid} does not hold the client end of its connection (socket "
            f"inode {inode}): it closed it or handed it to another process",
            pid=pid,
        )
    scope_dirs = cgroup_scope(cgroup_text, cgroup_root)
    if scope_dirs:
        return _scan(pid, link, lambda: pids_in_cgroups(scope_dirs), proc_root, "cgroup")
    return _scan(pid, link, lambda: all_pids(proc_root), proc_root, "node")


def _scan(
    pid: int, link: str, list_pids: Callable[[], set[int]], proc_root: Path, scope: str
) -> HolderScan:
    scanned = {pid}
    for _ in range(MAX_SCAN_ROUNDS):
        new = list_pids() - scanned
        if not new:
            return HolderScan(scanned=len(scanned), scope=scope)
        others = {other for other in new if _holds(other, link, proc_root, pinned=False)}
        if others:
            raise _shared(pid, link, others)
        scanned |= new
    raise ProcUnreadableError(
        f"processes in the {scope} scope of process {pid} kept appearing during "
        f"{MAX_SCAN_ROUNDS} descriptor scans; cannot prove it holds its connection alone",
        pid=pid,
        path=str(proc_root),
    )


def _shared(pid: int, link: str, others: set[int]) -> SocketHolderError:
    shown = ", ".join(str(other) for other in sorted(others)[:_MAX_PIDS_IN_MESSAGE])
    return SocketHolderError(
        Reason.SOCKET_SHARED,
        f"the client end of the connection of process {pid} ({link}) is also held by "
        f"process {shown}",
        pid=pid,
        holders=frozenset(others),
    )


def _holds(pid: int, link: str, proc_root: Path, *, pinned: bool) -> bool:
    fd_dir = proc_root / str(pid) / "fd"
    try:
        dir_fd = os.open(fd_dir, _DIR_FLAGS)
    except OSError as exc:
        if not pinned and exc.errno in _SKIPPED_ERRNOS:
            return False
        raise translate_os_error(exc, pid, fd_dir) from exc
    try:
        return any(target == link for target in _fd_targets(pid, dir_fd, fd_dir, pinned))
    finally:
        os.close(dir_fd)


def _fd_targets(pid: int, dir_fd: int, fd_dir: Path, pinned: bool) -> Iterable[str]:
    try:
        names = os.listdir(dir_fd)
    except OSError as exc:
        if not pinned and exc.errno in _SKIPPED_ERRNOS:
            return
        raise translate_os_error(exc, pid, fd_dir) from exc
    for name in names:
        try:
            yield os.readlink(name, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in _GONE_ERRNOS:
                continue  # the descriptor was closed between listdir and readlink
            if not pinned and exc.errno in _SKIPPED_ERRNOS:
                return
            raise translate_os_error(exc, pid, fd_dir / name) from exc


def cgroup_scope(cgroup_text: str, cgroup_root: Path) -> list[ScopeDir]:
    """Return the cgroup directories to scan for a process with this /proc/<pid>/cgroup."""
    found: dict[str, ScopeDir] = {}
    for line in cgroup_text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, separator, path = rest.partition(":")
        components = [part for part in path.split("/") if part]
        if not separator or not path.startswith("/") or {".", ".."} & set(components):
            continue  # outside the agent's cgroup namespace, or malformed
        if not components:
            continue  # the root cgroup of a hierarchy groups nothing, so it adds no scope
        mount = _mount_dir(hierarchy, controllers, cgroup_root)
        if mount is None:
            continue
        pods = [index for index, part in enumerate(components) if is_pod_component(part)]
        if pods:
            scope = ScopeDir(mount.joinpath(*components[: pods[-1] + 1]), recursive=True)
        else:
            scope = ScopeDir(mount.joinpath(*components), recursive=False)
        if scope.path.is_dir():
            found.setdefault(os.path.realpath(scope.path), scope)
    return list(found.values())


def _mount_dir(hierarchy: str, controllers: str, cgroup_root: Path) -> Path | None:
    if hierarchy == "0" and controllers == "":
        candidates = [cgroup_root / "unified", cgroup_root]
        return next((c for c in candidates if (c / "cgroup.controllers").exists()), None)
    names = [name.removeprefix("name=") for name in controllers.split(",") if name]
    candidates = [cgroup_root / ",".join(names), *(cgroup_root / name for name in names)]
    return next(
        (
            c
            for c in candidates
            if (c / "cgroup.procs").exists() and not (c / "cgroup.controllers").exists()
        ),
        None,
    )


def pids_in_cgroups(scope_dirs: Iterable[ScopeDir]) -> set[int]:
    """Return the process ids listed in ``cgroup.procs`` of each directory (and below)."""
    pids: set[int] = set()
    for scope in scope_dirs:
        directories = [scope.path]
        if scope.recursive:
            directories = [Path(top) for top, _, _ in os.walk(scope.path)]
        for directory in directories:
            pids |= _read_procs(directory / "cgroup.procs")
    return pids


def _read_procs(path: Path) -> set[int]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return set()  # the cgroup was removed while it was walked
    except OSError as exc:
        raise ProcUnreadableError(f"cannot read {path}: {exc}", pid=None, path=str(path)) from exc
    return {int(field) for field in text.split()}


def all_pids(proc_root: Path) -> set[int]:
    """Return every process id visible in ``proc_root``."""
    try:
        names = os.listdir(proc_root)
    except OSError as exc:
        raise ProcUnreadableError(
            f"cannot list {proc_root}: {exc}", pid=None, path=str(proc_root)
        ) from exc
    return {int(name) for name in names if name.isdigit()}
