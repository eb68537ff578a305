"""Errors of the peer layer: the public socket, the relay and process pinning.

PeerError
├── SocketInUseError        a live agent already serves the public socket path
├── SocketPathError         the socket path or its directory is unusable
└── PinError                the caller's process could not be pinned at accept time
"""

from __future__ import annotations

from agent.errors import AgentError


class PeerError(AgentError):
    """Base class of errors from agent.peer."""


class SocketInUseError(PeerError):
    """Another process accepts connections on the socket path."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"socket {path} is in use by a running process (another agent?): "
            "stop it or choose another socket path"
        )
        self.path = path


class SocketPathError(PeerError):
    """The socket path exists as something else, or its directory has unsafe permissions."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"cannot use socket path {path}: {problem}")
        self.path = path
        self.problem = problem


class PinError(PeerError):
    """The connecting process could not be pinned (it exited, or /proc was unreadable)."""

    def __init__(self, pid: int, problem: str) -> None:
        super().__init__(f"cannot pin process {pid}: {problem}")
        self.pid = pid
        self.problem = problem
