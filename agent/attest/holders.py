"""Which processes hold the client end of a connection, found in /proc/<pid>/fd.

Threat: a process connects, keeps a copy of the connection elsewhere (a forked child
inherits it, or SCM_RIGHTS hands it to another process), and then the pinned process
execs a binary that a manifest trusts. Any process with a copy reads the SVID that the
agent sends. ``HolderScanner.check`` therefore requires that the pinned process
holds the client end itself and that no other process in the caller's cgroup scope
does. It raises SocketHolderError (SOCKET_NOT_HELD or SOCKET_SHARED) or an
AttestationError when /proc or cgroupfs cannot be read, and returns what it scanned.
It blocks, so call it from a worker thread; one scanner serves all threads.

Cost: a scan reads every fd table in the scope. Attestations that wait for the same
scope share one scan, which starts after all of them arrived, so a burst of callers
from one pod costs a few scans instead of one per caller. A shared scan is as fresh
as a private one would be: it starts after the request that uses it.

No scan result is reused for a later call on the same connection, even when the
pinned process still runs the file it ran at accept. The set of holders can change
while the pinned process stays the same: it can fork a child, pass the descriptor
with SCM_RIGHTS, or run a child that inherits it, and a descriptor that was in flight
during one scan can be received after it. Only a fresh scan sees those new holders.

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
import functools
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
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
# Errors for which pathlib's exists() returns False rather than raising, plus a name
# too long to exist.
_MISSING_ERRNOS = frozenset(
    {errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP, errno.ENAMETOOLONG}
)
_PROCS_READ_BYTES = 65536
_PARSED_SCOPES_CACHED = 1024
_MAX_CACHED_TEXT_CHARS = 4096
_SOCKET_LINK_PREFIX = "socket:["
_LINK_PREFIX_LENGTH = len(_SOCKET_LINK_PREFIX)


@dataclass(frozen=True, slots=True)
class ScopeDir:
    """A cgroup directory whose processes are scanned; ``recursive`` adds its descendants."""

    path: str
    recursive: bool


@dataclass(frozen=True, slots=True)
class HolderScan:
    """The outcome of a passing check: how many fd tables the scan read, and its scope."""

    scanned: int
    scope: str  # "cgroup" or "node"


@dataclass(frozen=True, slots=True)
class _Index:
    """Socket inode -> pids holding it, over every process of one scope."""

    holders: dict[int, frozenset[int]]
    scanned: int


@dataclass(slots=True)
class _ScopeState:
    """Scans of one scope: how many started and finished, and the last outcome."""

    users: int = 0
    started: int = 0
    finished: int = 0
    running: bool = False
    outcome: _Index | ProcUnreadableError | None = None


class HolderScanner:
    """Checks socket holders; concurrent checks of one scope share a fresh scan."""

    def __init__(self, proc_root: Path, cgroup_root: Path) -> None:
        self._proc_root = proc_root
        self._cgroup_root = cgroup_root
        self._lock = threading.Condition()
        self._scopes: dict[tuple[object, ...], _ScopeState] = {}

    def check(self, pid: int, inode: int, cgroup_text: str) -> HolderScan:
        """Raise unless ``pid`` is the only process in its scope holding socket ``inode``."""
        if inode not in socket_inodes(pid, self._proc_root, pinned=True):
            raise SocketHolderError(
                Reason.SOCKET_NOT_HELD,
                f"process {pid} does not hold the client end of its connection (socket "
                f"inode {inode}): it closed it or handed it to another process",
                pid=pid,
            )
        scope_dirs = cgroup_scope(cgroup_text, self._cgroup_root)
        if scope_dirs:
            key: tuple[object, ...] = tuple(scope_dirs)
            index = self._fresh_index(key, lambda: pids_in_cgroups(scope_dirs), "cgroup")
        else:
            key = ("node",)
            index = self._fresh_index(key, lambda: all_pids(self._proc_root), "node")
        others = index.holders.get(inode, frozenset()) - {pid}
        if others:
            raise _shared(pid, inode, others)
        return HolderScan(scanned=index.scanned, scope="cgroup" if scope_dirs else "node")

    def _fresh_index(
        self, key: tuple[object, ...], list_pids: Callable[[], set[int]], scope: str
    ) -> _Index:
        """Return the index of a scan of ``key`` that started after this call began."""
        with self._lock:
            state = self._scopes.setdefault(key, _ScopeState())
            state.users += 1
            try:
                needed = state.started + 1
                while state.finished < needed:
                    if state.running:
                        self._lock.wait()
                    else:
                        self._run_scan(state, list_pids, scope)
                outcome = state.outcome
            finally:
                state.users -= 1
                if state.users == 0:
                    del self._scopes[key]  # drop the index once no check waits for it
        if isinstance(outcome, _Index):
            return outcome
        message = outcome.message if outcome is not None else "the scan ended without a result"
        raise ProcUnreadableError(message, pid=None, path=str(self._proc_root))

    def _run_scan(
        self, state: _ScopeState, list_pids: Callable[[], set[int]], scope: str
    ) -> None:
        # Called with the lock held; the scan itself runs without it.
        state.running = True
        state.started += 1
        number = state.started
        outcome: _Index | ProcUnreadableError
        self._lock.release()
        try:
            outcome = _scan(list_pids, self._proc_root, scope)
        except ProcUnreadableError as exc:
            outcome = exc
        finally:
            self._lock.acquire()
            state.running = False
            self._lock.notify_all()
        state.outcome = outcome
        state.finished = number


def _scan(list_pids: Callable[[], set[int]], proc_root: Path, scope: str) -> _Index:
    holders: dict[int, set[int]] = {}
    scanned: set[int] = set()
    for _ in range(MAX_SCAN_ROUNDS):
        new = list_pids() - scanned
        if not new:
            frozen = {inode: frozenset(pids) for inode, pids in holders.items()}
            return _Index(holders=frozen, scanned=len(scanned))
        for other in new:
            for inode in socket_inodes(other, proc_root, pinned=False):
                holders.setdefault(inode, set()).add(other)
        scanned |= new
    raise ProcUnreadableError(
        f"processes in the {scope} scope kept appearing during {MAX_SCAN_ROUNDS} "
        "descriptor scans; cannot prove that a caller holds its connection alone",
        pid=None,
        path=str(proc_root),
    )


def _shared(pid: int, inode: int, others: frozenset[int]) -> SocketHolderError:
    shown = ", ".join(str(other) for other in sorted(others)[:_MAX_PIDS_IN_MESSAGE])
    return SocketHolderError(
        Reason.SOCKET_SHARED,
        f"the client end of the connection of process {pid} (socket:[{inode}]) is also "
        f"held by process {shown}",
        pid=pid,
        holders=others,
    )


def socket_inodes(pid: int, proc_root: Path, *, pinned: bool) -> set[int]:
    """Return the inodes of the sockets in the fd table of ``pid``.

    For the pinned process every error is raised. Other processes count as holding
    nothing when they exited since they were listed or their fd table is unreadable.
    """
    # Plain strings instead of pathlib: this runs once per process per scan pass.
    fd_dir = f"{proc_root}/{pid}/fd"
    try:
        dir_fd = os.open(fd_dir, _DIR_FLAGS)
    except OSError as exc:
        if not pinned and exc.errno in _SKIPPED_ERRNOS:
            return set()
        raise translate_os_error(exc, pid, Path(fd_dir)) from exc
    try:
        return {
            int(target[_LINK_PREFIX_LENGTH:-1])
            for target in _fd_targets(pid, dir_fd, fd_dir, pinned)
            if target.startswith(_SOCKET_LINK_PREFIX)
        }
    finally:
        os.close(dir_fd)


def _fd_targets(pid: int, dir_fd: int, fd_dir: str, pinned: bool) -> Iterator[str]:
    try:
        names = os.listdir(dir_fd)
    except OSError as exc:
        if not pinned and exc.errno in _SKIPPED_ERRNOS:
            return
        raise translate_os_error(exc, pid, Path(fd_dir)) from exc
    for name in names:
        try:
            yield os.readlink(name, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in _GONE_ERRNOS:
                continue  # the descriptor was closed between listdir and readlink
            if not pinned and exc.errno in _SKIPPED_ERRNOS:
                return
            raise translate_os_error(exc, pid, Path(fd_dir, name)) from exc


def cgroup_scope(cgroup_text: str, cgroup_root: Path) -> list[ScopeDir]:
    """Return the cgroup directories to scan for a process with this /proc/<pid>/cgroup."""
    root = str(cgroup_root)
    found: dict[tuple[int, int], ScopeDir] = {}
    for hierarchy, controllers, relative, recursive in _scope_lines(cgroup_text):
        mount = _mount_dir(hierarchy, controllers, root)
        if mount is None:
            continue
        path = os.path.join(mount, relative)
        info = _stat(path)
        if info is not None and stat.S_ISDIR(info.st_mode):
            # Two hierarchies may be one directory (cpu and cpuacct mounted together).
            found.setdefault((info.st_dev, info.st_ino), ScopeDir(path, recursive))
    return list(found.values())


def _scope_lines(cgroup_text: str) -> tuple[tuple[str, str, str, bool], ...]:
    """Parse /proc/<pid>/cgroup into (hierarchy, controllers, relative path, recursive).

    The parse is a pure function of the text, so it is cached: callers of one pod send
    the same text on every call. Whether the directories exist is checked on every
    call. Texts longer than any real cgroup file are parsed without the cache, so the
    cache stays small.
    """
    if len(cgroup_text) > _MAX_CACHED_TEXT_CHARS:
        return _parse_scope_lines(cgroup_text)
    return _cached_scope_lines(cgroup_text)


def _parse_scope_lines(cgroup_text: str) -> tuple[tuple[str, str, str, bool], ...]:
    lines = []
    for line in cgroup_text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, separator, path = rest.partition(":")
        components = [part for part in path.split("/") if part]
        if not separator or not path.startswith("/") or {".", ".."} & set(components):
            continue  # outside the agent's cgroup namespace, or malformed
        if not components:
            continue  # the root cgroup of a hierarchy groups nothing, so it adds no scope
        pods = [index for index, part in enumerate(components) if is_pod_component(part)]
        if pods:
            relative, recursive = components[: pods[-1] + 1], True
        else:
            relative, recursive = components, False
        lines.append((hierarchy, controllers, os.path.join(*relative), recursive))
    return tuple(lines)


_cached_scope_lines = functools.lru_cache(maxsize=_PARSED_SCOPES_CACHED)(_parse_scope_lines)


def _mount_dir(hierarchy: str, controllers: str, cgroup_root: str) -> str | None:
    if hierarchy == "0" and controllers == "":
        candidates = [os.path.join(cgroup_root, "unified"), cgroup_root]
        return next((c for c in candidates if _exists(c, "cgroup.controllers")), None)
    names = [name.removeprefix("name=") for name in controllers.split(",") if name]
    candidates = [
        os.path.join(cgroup_root, ",".join(names)),
        *(os.path.join(cgroup_root, name) for name in names),
    ]
    return next(
        (
            c
            for c in candidates
            if _exists(c, "cgroup.procs") and not _exists(c, "cgroup.controllers")
        ),
        None,
    )


def _stat(path: str) -> os.stat_result | None:
    """Return os.stat of ``path``, or None where pathlib's exists() would return False."""
    try:
        return os.stat(path)
    except OSError as exc:
        if exc.errno in _MISSING_ERRNOS:
            return None
        raise ProcUnreadableError(f"cannot read {path}: {exc}", pid=None, path=path) from exc
    except ValueError:
        return None  # a NUL byte or an unencodable character: no such file


def _exists(directory: str, name: str) -> bool:
    return _stat(os.path.join(directory, name)) is not None


def pids_in_cgroups(scope_dirs: Iterable[ScopeDir]) -> set[int]:
    """Return the process ids listed in ``cgroup.procs`` of each directory (and below)."""
    pids: set[int] = set()
    for scope in scope_dirs:
        directories = _walk(scope.path) if scope.recursive else [scope.path]
        for directory in directories:
            pids |= _read_procs(directory + "/cgroup.procs")
    return pids


def _walk(top: str) -> list[str]:
    """Return ``top`` and every directory below it, skipping any that vanish meanwhile.

    Like os.walk without onerror: a directory that cannot be listed (removed while it
    is walked) is skipped, and symbolic links are not followed.
    """
    found = [top]
    pending = [top]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as entries:
                below = [entry.path for entry in entries if _is_dir(entry)]
        except OSError:
            continue
        found.extend(below)
        pending.extend(below)
    return found


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _read_procs(path: str) -> set[int]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return set()  # the cgroup was removed while it was walked
    except OSError as exc:
        raise ProcUnreadableError(f"cannot read {path}: {exc}", pid=None, path=path) from exc
    try:
        chunks = []
        # cgroupfs generates the list on read; it may arrive in several reads.
        while chunk := os.read(fd, _PROCS_READ_BYTES):
            chunks.append(chunk)
    except FileNotFoundError:
        return set()  # removed between open and read
    except OSError as exc:
        raise ProcUnreadableError(f"cannot read {path}: {exc}", pid=None, path=path) from exc
    finally:
        os.close(fd)
    return {int(field) for field in b"".join(chunks).split()}


def all_pids(proc_root: Path) -> set[int]:
    """Return every process id visible in ``proc_root``."""
    try:
        names = os.listdir(proc_root)
    except OSError as exc:
        raise ProcUnreadableError(
            f"cannot list {proc_root}: {exc}", pid=None, path=str(proc_root)
        ) from exc
    return {int(name) for name in names if name.isdigit()}
