"""Errors raised while collecting evidence about a process.

Every class carries a ``reason`` code from agent.denial.Reason and the pid when known.
The attestor catches AttestationError at its boundary and turns it into a Denial with
``to_denial()``; callers of ``Attestor.attest`` never see these exceptions.

    AttestationError
    ├── CgroupParseError        /proc/<pid>/cgroup is malformed, too large or ambiguous
    ├── ProcessExitedError      the pinned process ended
    ├── ProcessReplacedError    the pid, start time or credentials no longer match the pin
    ├── ProcUnreadableError     a /proc file could not be read or parsed
    ├── ExeUnreadableError      /proc/<pid>/exe could not be opened or read
    ├── ExeTooLargeError        the executable exceeds the configured maximum size
    ├── ExecAfterConnectError   the caller ran execve() after the agent pinned it
    └── SocketHolderError       the caller does not hold its connection alone
"""

from __future__ import annotations

from agent.denial import Denial, Reason
from agent.errors import AgentError


class AttestationError(AgentError):
    """Base class: no trustworthy evidence about a process could be collected."""

    reason: Reason = Reason.PROC_UNREADABLE

    def __init__(self, message: str, *, pid: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.pid = pid

    def to_denial(self) -> Denial:
        """Return the Denial that callers see for this error."""
        return Denial(reason=self.reason, message=self.message, pid=self.pid)


class CgroupParseError(AttestationError):
    """The cgroup file is malformed (INVALID_CGROUP) or names two workloads (AMBIGUOUS_CGROUPS)."""

    def __init__(self, reason: Reason, message: str, *, pid: int | None = None) -> None:
        super().__init__(message, pid=pid)
        self.reason = reason


class ProcessExitedError(AttestationError):
    reason = Reason.PROCESS_EXITED


class ProcessReplacedError(AttestationError):
    """The process behind the pid is not the one pinned at connect time."""

    reason = Reason.PROCESS_REPLACED

    def __init__(
        self, message: str, *, pid: int | None, expected: object, observed: object
    ) -> None:
        super().__init__(message, pid=pid)
        self.expected = expected
        self.observed = observed


class ProcUnreadableError(AttestationError):
    reason = Reason.PROC_UNREADABLE

    def __init__(self, message: str, *, pid: int | None, path: str) -> None:
        super().__init__(message, pid=pid)
        self.path = path


class ExeUnreadableError(AttestationError):
    reason = Reason.EXE_UNREADABLE


class ExeTooLargeError(AttestationError):
    reason = Reason.EXE_TOO_LARGE

    def __init__(self, message: str, *, pid: int | None, size: int, limit: int) -> None:
        super().__init__(message, pid=pid)
        self.size = size
        self.limit = limit


class ExecAfterConnectError(AttestationError):
    """The pinned process runs another file than when its connection was accepted."""

    reason = Reason.EXEC_AFTER_CONNECT

    def __init__(
        self, message: str, *, pid: int, expected: tuple[int, int], observed: tuple[int, int]
    ) -> None:
        super().__init__(message, pid=pid)
        self.expected = expected
        self.observed = observed


class SocketHolderError(AttestationError):
    """The client end is not held by the caller (SOCKET_NOT_HELD) or also held by
    other processes (SOCKET_SHARED, their pids in ``holders``)."""

    def __init__(
        self, reason: Reason, message: str, *, pid: int, holders: frozenset[int] = frozenset()
    ) -> None:
        super().__init__(message, pid=pid)
        self.reason = reason
        self.holders = holders
