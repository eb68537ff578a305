"""The attestation entry point: Evidence about a pinned process, or a Denial.

Services call ``await attestor.attest(connection)`` for every request and get either
Evidence or a Denial; attestation errors never escape. ``attest_pid(pid)`` pins a pid
itself with pidfd_open and serves the CLI (``inspect``).

Where the work runs: a warm attestation (the executable's digest is cached and the
caller's cgroup scope has at most ``INLINE_SCAN_MAX_PIDS`` processes holding at most
``INLINE_SCAN_MAX_FDS`` descriptors in at most ``INLINE_SCAN_MAX_DIRS`` cgroups) runs on
the event loop. It is a few dozen reads of procfs and cgroupfs, which the kernel
generates in memory, and one stat of the executable (as at accept), so a hop to a worker
thread and back would cost more than the work itself. An
attestation that must hash a file or scan a large or node-wide scope stops before it
judges anything and runs again from the start in a worker thread, so the event loop
never blocks on file content.

For connections accepted by the front door the attestor also requires that the
process runs the same file as when it was pinned (an execve() since then fails with
EXEC_AFTER_CONNECT) and that it alone holds the client end of the connection
(agent.attest.holders), so no other process can read the identity sent on it.

Why the evidence can be trusted: every /proc file is read by pid, and a pid can be
reused once its process has exited and been reaped. Before the reads the attestor
compares the start time and effective ids with those taken at pin time, and after the
last read it checks that the pinned pidfd still shows the process alive. A live pinned
process means the pid was never reused, so every read described the pinned process.
Any mismatch fails closed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from agent.attest.cgroups import parse_cgroup_file
from agent.attest.errors import (
    AttestationError,
    CgroupParseError,
    ExecAfterConnectError,
    ProcessExitedError,
    ProcessReplacedError,
    ProcUnreadableError,
)
from agent.attest.evidence import Evidence
from agent.attest.fairness import PerKeyLimiter
from agent.attest.hashing import ExeDigest, ExeHasher, HashCacheStats
from agent.attest.holders import HolderScanner
from agent.attest.procfs import (
    ProcessIds,
    read_cgroup_text,
    read_process_ids,
    read_start_time,
)
from agent.denial import Denial, Reason
from agent.log import event
from agent.peer.connection import Connection
from agent.peer.process import pidfd_exited

logger = logging.getLogger(__name__)

# Attestations of one process that may run at once; more wait so other callers go first.
MAX_JOBS_PER_PROCESS = 4
# Largest holder scan done on the event loop, in processes and in descriptors (one
# readlink each). Larger scans go to a thread, where concurrent callers share them.
INLINE_SCAN_MAX_PIDS = 32
INLINE_SCAN_MAX_FDS = 512
# Cgroup directories one listing of the scope may find before the scan moves to a thread.
INLINE_SCAN_MAX_DIRS = 64


class _NeedsThread(Exception):
    """Inline collection stopped before judging: the work may block, use a thread."""


@dataclass(frozen=True, slots=True)
class _Pin:
    """The pinned process: pidfd, start time and the ids the evidence must still match.

    ``euid``/``egid`` are SO_PEERCRED's effective ids for connections, or the ids read
    at pin time for ``attest_pid``. ``client_inode`` and ``exe_file`` come from the
    Connection and are None for ``attest_pid``.
    """

    pid: int
    pidfd: int
    start_time: int
    euid: int
    egid: int
    client_inode: int | None = None
    exe_file: tuple[int, int] | None = None


class Attestor:
    """Collects Evidence about processes; one instance serves the whole agent."""

    def __init__(
        self,
        proc_root: Path = Path("/proc"),
        *,
        cache_size: int = 256,
        max_exe_size: int | None = None,
        cgroup_root: Path = Path("/sys/fs/cgroup"),
    ) -> None:
        self._proc_root = proc_root
        self._holders = HolderScanner(proc_root, cgroup_root)
        self._fairness = PerKeyLimiter(MAX_JOBS_PER_PROCESS)
        self._hasher = ExeHasher(proc_root, cache_size=cache_size, max_exe_size=max_exe_size)

    @property
    def hash_cache_stats(self) -> HashCacheStats:
        """Counters of the executable digest cache (hits, misses, bytes hashed)."""
        return self._hasher.stats

    async def attest(self, conn: Connection) -> Evidence | Denial:
        """Return Evidence about the process pinned to ``conn``, or a Denial."""
        if conn.pid == 0:
            return _deny(
                Denial(
                    Reason.PID_NAMESPACE_HIDDEN,
                    "the caller's PID namespace is not visible to the agent; "
                    "run the agent in the host PID namespace (hostPID: true)",
                    pid=0,
                )
            )
        if conn.closed:
            return _deny(
                Denial(Reason.SOCKET_NOT_HELD, f"connection {conn.conn_id} is closed", conn.pid)
            )
        # The worker thread gets its own copy of the pidfd, so a concurrent close of
        # the connection cannot make it poll an unrelated, reused descriptor number.
        try:
            pidfd = os.dup(conn.pidfd)
        except OSError as exc:
            return _deny(
                Denial(Reason.SOCKET_NOT_HELD, f"connection {conn.conn_id}: {exc}", conn.pid)
            )
        pin = _Pin(
            conn.pid,
            pidfd,
            conn.start_time,
            conn.creds.uid,
            conn.creds.gid,
            client_inode=conn.client_inode,
            exe_file=conn.exe_file,
        )
        return await self._run_collect(pin, pin_in_thread=False)

    async def attest_pid(self, pid: int) -> Evidence | Denial:
        """Pin ``pid`` with pidfd_open and return Evidence about it, or a Denial."""
        if pid <= 0:
            return _deny(Denial(Reason.PROC_UNREADABLE, f"invalid pid {pid}: use a positive pid"))
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return _deny(Denial(Reason.PROCESS_EXITED, f"no process with pid {pid}", pid))
        except OSError as exc:
            return _deny(Denial(Reason.PROC_UNREADABLE, f"cannot pin process {pid}: {exc}", pid))
        pin = _Pin(pid, pidfd, start_time=-1, euid=-1, egid=-1)
        return await self._run_collect(pin, pin_in_thread=True)

    async def _run_collect(self, pin: _Pin, *, pin_in_thread: bool) -> Evidence | Denial:
        try:
            result = self._collect_or_deny(pin, pin_in_thread, inline=True)
        except _NeedsThread:
            # The thread path closes the pidfd itself, once the thread is done with it.
            result = await self._collect_in_thread(pin, pin_in_thread)
        except BaseException:
            os.close(pin.pidfd)
            raise
        else:
            os.close(pin.pidfd)
        if isinstance(result, Denial):
            return _deny(result)
        event(
            logger,
            logging.DEBUG,
            "process attested",
            pid=result.pid,
            exe_sha256=result.exe_sha256,
            pod_uid=result.pod_uid,
            container_id=result.container_id,
            systemd_unit=result.systemd_unit,
        )
        return result

    async def _collect_in_thread(self, pin: _Pin, pin_in_thread: bool) -> Evidence | Denial:
        """Collect in a worker thread (hashing, large scopes); closes the pidfd."""
        submitted = False
        try:
            async with self._fairness.slot(pin.pid):
                loop = asyncio.get_running_loop()
                future = loop.run_in_executor(
                    None, self._collect_or_deny, pin, pin_in_thread, False
                )
                submitted = True
                # The pidfd is closed only when the thread is done with it. shield keeps
                # the thread's future alive if the caller is cancelled, so the close waits.
                future.add_done_callback(lambda _: os.close(pin.pidfd))
                return await asyncio.shield(future)
        finally:
            if not submitted:
                os.close(pin.pidfd)  # cancelled while waiting for a slot

    def _collect_or_deny(self, pin: _Pin, pin_in_thread: bool, inline: bool) -> Evidence | Denial:
        try:
            if pin_in_thread:
                pin = self._pin_now(pin)
            return self._collect(pin, inline)
        except AttestationError as exc:
            return self._refine(exc, pin).to_denial()

    def _pin_now(self, pin: _Pin) -> _Pin:
        start_time = read_start_time(pin.pid, self._proc_root)
        ids = read_process_ids(pin.pid, self._proc_root)
        return _Pin(pin.pid, pin.pidfd, start_time, ids.euid, ids.egid)

    def _collect(self, pin: _Pin, inline: bool) -> Evidence:
        _check_alive(pin)
        cgroup_text = read_cgroup_text(pin.pid, self._proc_root)
        if inline and pin.client_inode is not None and self._holders.declines(cgroup_text):
            raise _NeedsThread  # known to be a large scan: skip the other reads here
        self._check_start_time(pin)
        ids = read_process_ids(pin.pid, self._proc_root)
        _check_credentials(pin, ids)
        try:
            cgroups = parse_cgroup_file(cgroup_text)
        except CgroupParseError as exc:
            exc.pid = pin.pid
            raise
        exe = self._exe_digest(pin.pid, inline)
        check_same_exe(pin, exe)
        if pin.client_inode is not None:
            self._check_holders(pin.pid, pin.client_inode, cgroup_text, inline)
        self._recheck(pin)
        return Evidence(
            pid=pin.pid,
            uid=ids.uid,
            gid=ids.gid,
            euid=ids.euid,
            egid=ids.egid,
            start_time=pin.start_time,
            exe_sha256=exe.sha256,
            pod_uid=cgroups.pod_uid,
            container_id=cgroups.container_id,
            systemd_unit=cgroups.systemd_unit,
            exe_path=exe.exe_path,
        )

    def _exe_digest(self, pid: int, inline: bool) -> ExeDigest:
        if not inline:
            return self._hasher.digest(pid)
        cached = self._hasher.cached_digest(pid)
        if cached is None:
            raise _NeedsThread  # hashing reads the file: not on the event loop
        return cached

    def _check_holders(self, pid: int, inode: int, cgroup_text: str, inline: bool) -> None:
        if not inline:
            self._holders.check(pid, inode, cgroup_text)
            return
        small = self._holders.check_small(
            pid,
            inode,
            cgroup_text,
            max_pids=INLINE_SCAN_MAX_PIDS,
            max_fds=INLINE_SCAN_MAX_FDS,
            max_dirs=INLINE_SCAN_MAX_DIRS,
        )
        if small is None:
            raise _NeedsThread  # a node-wide or large scan: share it in a thread

    def _check_start_time(self, pin: _Pin) -> None:
        observed = read_start_time(pin.pid, self._proc_root)
        if observed != pin.start_time:
            raise ProcessReplacedError(
                f"pid {pin.pid} now belongs to another process: start time "
                f"{pin.start_time} when pinned, {observed} now",
                pid=pin.pid,
                expected=pin.start_time,
                observed=observed,
            )

    def _recheck(self, pin: _Pin) -> None:
        # Closes the race where the pinned process exits during collection and its pid
        # goes to a newcomer, whose files the reads above may have seen: a pid is reused
        # only after its process exited, so a live pidfd now means every read above
        # described the pinned process. Reading stat and status again would add nothing.
        _check_alive(pin)

    def _refine(self, exc: AttestationError, pin: _Pin) -> AttestationError:
        # Read failures of an exited process are reported as the exit itself.
        if isinstance(exc, ProcessExitedError | ProcessReplacedError):
            return exc
        try:
            exited = pidfd_exited(pin.pidfd)
        except OSError as poll_error:
            return ProcUnreadableError(
                f"cannot poll the pidfd of process {pin.pid}: {poll_error}",
                pid=pin.pid,
                path="pidfd",
            )
        if exited:
            return ProcessExitedError(f"process {pin.pid} exited ({exc.message})", pid=pin.pid)
        return exc


def _check_alive(pin: _Pin) -> None:
    if pidfd_exited(pin.pidfd):
        raise ProcessExitedError(f"process {pin.pid} exited after it was pinned", pid=pin.pid)


def check_same_exe(pin: _Pin, exe: ExeDigest) -> None:
    """Raise ExecAfterConnectError if the process runs another file than when pinned.

    Threat: a process connects, then execs a binary that a manifest trusts, so the
    identity of that binary would go to a connection set up by other code.
    """
    if pin.exe_file is None or exe.file_id == pin.exe_file:
        return
    raise ExecAfterConnectError(
        f"process {pin.pid} ran execve() after connecting: executable (dev, inode) "
        f"{pin.exe_file} when pinned, {exe.file_id} now ({exe.exe_path})",
        pid=pin.pid,
        expected=pin.exe_file,
        observed=exe.file_id or (-1, -1),
    )


def _check_credentials(pin: _Pin, ids: ProcessIds) -> None:
    # SO_PEERCRED records the effective ids at connect(); a caller that changed them
    # since then is no longer the caller that connected.
    if (ids.euid, ids.egid) != (pin.euid, pin.egid):
        raise ProcessReplacedError(
            f"effective uid/gid of process {pin.pid} changed: {pin.euid}/{pin.egid} at "
            f"connect, {ids.euid}/{ids.egid} now",
            pid=pin.pid,
            expected=(pin.euid, pin.egid),
            observed=(ids.euid, ids.egid),
        )


def _deny(denial: Denial) -> Denial:
    event(
        logger,
        logging.WARNING,
        "attestation denied",
        pid=denial.pid,
        reason=denial.reason.value,
        detail=denial.message,
    )
    return denial
