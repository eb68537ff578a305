"""Which processes hold the client end of a connection, found in /proc/<pid>/fd.

Threat: a process connects, keeps a copy of the connection elsewhere (a forked child
inherits it, or SCM_RIGHTS hands it to another process), and then the pinned process
execs a binary that a manifest trusts. Any process with a copy reads the SVID that the
agent sends. ``HolderScanner.check`` therefore requires that the pinned process
holds the client end itself and that no other process in the caller's cgroup scope
does. It raises SocketHolderError (SOCKET_NOT_HELD or SOCKET_SHARED) or an
AttestationError when /proc or cgroupfs cannot be read, and returns what it scanned.
It blocks, so call it from a worker thread; one scanner serves all threads.
``check_small`` makes the same check with a private scan that never waits for other
threads, for the event loop, and declines (returns None) when the scope is large.

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
``MAX_SCAN_ROUNDS`` passes. In a scope of single cgroups (no pod), a first listing
that contains no process but the pinned one, whose table ``check_small`` read just before,
needs no second listing. In a pod it does, because a process could move from a cgroup
not yet read to one already read while the first listing runs.

A scan cannot see a descriptor that sits in flight in an SCM_RIGHTS message (queued
on a socket, not yet received), a holder outside the scope (another pod or service on
the node), or a process that copies the descriptor with pidfd_getfd or ptrace after
the scan, nor a process whose fd table it may not read (see ``_SKIPPED_ERRNOS``).
docs/security.md lists these limits.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.attest.errors import ProcUnreadableError, SocketHolderError
from agent.attest.procfs import translate_os_error
from agent.attest.scope import TooManyCgroupsError, all_pids, cgroup_scope, pids_in_cgroups
from agent.denial import Reason

MAX_SCAN_ROUNDS = 4
_LARGE_SCOPE_SECONDS = 5.0
_LARGE_SCOPES_KEPT = 1024
_MAX_PIDS_IN_MESSAGE = 10
_GONE_ERRNOS = frozenset({errno.ENOENT, errno.ESRCH})
# Other processes are skipped when they exited since they were listed, or when the
# agent may not read their fd table: a process of an ancestor user namespace, or an
# LSM denial. With CAP_SYS_PTRACE in the host user namespace no workload is skipped.
_SKIPPED_ERRNOS = _GONE_ERRNOS | {errno.EACCES, errno.EPERM}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_SOCKET_LINK_PREFIX = "socket:["
_LINK_PREFIX_LENGTH = len(_SOCKET_LINK_PREFIX)


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


class _ScopeTooLarge(Exception):
    """A bounded scan found more processes, descriptors or cgroups than its limits."""


@dataclass(slots=True)
class _FdBudget:
    """Descriptors a bounded check may still read; spending past zero stops it."""

    left: int

    def spend(self, count: int) -> None:
        self.left -= count
        if self.left < 0:
            raise _ScopeTooLarge


class HolderScanner:
    """Checks socket holders; concurrent checks of one scope share a fresh scan."""

    def __init__(self, proc_root: Path, cgroup_root: Path) -> None:
        self._proc_root = proc_root
        self._cgroup_root = cgroup_root
        self._lock = threading.Condition()
        self._scopes: dict[tuple[object, ...], _ScopeState] = {}
        # Cgroup texts whose scope check_small found too large, and until when it
        # declines them at once (see ``declines``).
        self._large_until: dict[str, float] = {}

    def check(self, pid: int, inode: int, cgroup_text: str) -> HolderScan:
        """Raise unless ``pid`` is the only process in its scope holding socket ``inode``."""
        self._check_pinned(pid, inode)
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

    def check_small(
        self,
        pid: int,
        inode: int,
        cgroup_text: str,
        *,
        max_pids: int,
        max_fds: int,
        max_dirs: int,
    ) -> HolderScan | None:
        """Check as ``check`` does with a private scan, if the scope is small.

        Returns None, having judged nothing, when the scope is not visible (a scan of
        the node) or has more than ``max_pids`` processes, ``max_fds`` descriptors in
        all, or ``max_dirs`` cgroup directories in one listing. Call ``check`` then,
        because it shares scans between concurrent callers. It never waits for other
        threads, so the event loop may call it. It costs a few /proc and cgroupfs reads
        per process and cgroup, and one readlink per descriptor.
        """
        if self.declines(cgroup_text):
            return None
        scope_dirs = cgroup_scope(cgroup_text, self._cgroup_root)
        if not scope_dirs:
            return None
        budget = _FdBudget(max_fds)
        try:
            self._check_pinned(pid, inode, budget)
            index = _scan(
                lambda: pids_in_cgroups(scope_dirs, max_dirs),
                self._proc_root,
                "cgroup",
                skip=pid,
                # Within a pod a process can move between cgroups while one listing
                # runs, so only a scope of single directories may end after one listing.
                alone_ends=not any(scope_dir.recursive for scope_dir in scope_dirs),
                max_pids=max_pids,
                budget=budget,
            )
        except (_ScopeTooLarge, TooManyCgroupsError):
            # Skip the bounded attempt for a while: it would only stop again.
            if len(self._large_until) >= _LARGE_SCOPES_KEPT:
                self._large_until.clear()
            self._large_until[cgroup_text] = time.monotonic() + _LARGE_SCOPE_SECONDS
            return None
        others = index.holders.get(inode, frozenset())
        if others:
            raise _shared(pid, inode, others)
        return HolderScan(scanned=index.scanned, scope="cgroup")

    def declines(self, cgroup_text: str) -> bool:
        """Tell whether ``check_small`` would decline at once: the scope of a caller with
        this /proc/<pid>/cgroup text was too large in the last few seconds."""
        return self._large_until.get(cgroup_text, 0.0) > time.monotonic()

    def _check_pinned(self, pid: int, inode: int, budget: _FdBudget | None = None) -> None:
        if not holds_socket(pid, inode, self._proc_root, budget=budget):
            raise SocketHolderError(
                Reason.SOCKET_NOT_HELD,
                f"process {pid} does not hold the client end of its connection (socket "
                f"inode {inode}): it closed it or handed it to another process",
                pid=pid,
            )

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


def _scan(
    list_pids: Callable[[], set[int]],
    proc_root: Path,
    scope: str,
    *,
    skip: int | None = None,
    alone_ends: bool = False,
    max_pids: int | None = None,
    budget: _FdBudget | None = None,
) -> _Index:
    """Return which processes of the scope hold each socket inode.

    Raises _ScopeTooLarge past ``max_pids`` processes or when ``budget`` runs out.
    The fd table of ``skip`` (the pinned process, already read) is not read again, nor
    the agent's own. The agent has the server end of every connection, never a client
    end, and where it shares the caller's cgroup (a test or development host) its table
    is by far the largest in the scope.
    """
    holders: dict[int, set[int]] = {}
    scanned: set[int] = set()
    for _ in range(MAX_SCAN_ROUNDS):
        new = list_pids() - scanned
        if max_pids is not None and len(scanned) + len(new) > max_pids:
            raise _ScopeTooLarge
        if not new:
            frozen = {inode: frozenset(pids) for inode, pids in holders.items()}
            return _Index(holders=frozen, scanned=len(scanned))
        to_read = new - {skip, os.getpid()}
        if alone_ends and not scanned and not to_read:
            # Only the pinned process, read before this listing, is in the scope. A process
            # that appears later was forked after the listing, as if after the check, so a
            # second listing would prove nothing more.
            return _Index(holders={}, scanned=len(new))
        for other in to_read:
            for inode in socket_inodes(other, proc_root, pinned=False, budget=budget):
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


def holds_socket(
    pid: int, inode: int, proc_root: Path, *, budget: _FdBudget | None = None
) -> bool:
    """Tell whether the pinned process ``pid`` has socket ``inode`` open; raise on errors.

    Reading stops at the first descriptor of the socket. With a ``budget``, all the
    descriptors are counted against it before any is read.
    """
    expected = f"{_SOCKET_LINK_PREFIX}{inode}]"
    fd_dir = f"{proc_root}/{pid}/fd"
    try:
        dir_fd = os.open(fd_dir, _DIR_FLAGS)
    except OSError as exc:
        raise translate_os_error(exc, pid, Path(fd_dir)) from exc
    try:
        return any(
            target == expected for target in _fd_targets(pid, dir_fd, fd_dir, True, budget)
        )
    finally:
        os.close(dir_fd)


def socket_inodes(
    pid: int, proc_root: Path, *, pinned: bool, budget: _FdBudget | None = None
) -> set[int]:
    """Return the inodes of the sockets in the fd table of ``pid``.

    For the pinned process every error is raised. Other processes count as holding
    nothing when they exited since they were listed or their fd table is unreadable.
    With a ``budget``, the descriptors are counted against it before any is read.
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
            for target in _fd_targets(pid, dir_fd, fd_dir, pinned, budget)
            if target.startswith(_SOCKET_LINK_PREFIX)
        }
    finally:
        os.close(dir_fd)


def _fd_targets(
    pid: int, dir_fd: int, fd_dir: str, pinned: bool, budget: _FdBudget | None
) -> Iterator[str]:
    try:
        names = os.listdir(dir_fd)
    except OSError as exc:
        if not pinned and exc.errno in _SKIPPED_ERRNOS:
            return
        raise translate_os_error(exc, pid, Path(fd_dir)) from exc
    if budget is not None:
        budget.spend(len(names))
    for name in names:
        try:
            yield os.readlink(name, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in _GONE_ERRNOS:
                continue  # the descriptor was closed between listdir and readlink
            if not pinned and exc.errno in _SKIPPED_ERRNOS:
                return
            raise translate_os_error(exc, pid, Path(fd_dir, name)) from exc
