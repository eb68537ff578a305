"""Errors of the admin socket, on the server side and in the ``drift`` client."""

from __future__ import annotations

from pathlib import Path

from agent.errors import AgentError


class AdminError(AgentError):
    """Base of every error raised by agent.admin."""


class AdminSocketError(AdminError):
    """The admin socket cannot be created where the settings put it."""

    def __init__(self, path: Path, detail: str) -> None:
        self.path = path
        super().__init__(
            f"cannot serve the admin socket {path}: {detail}; "
            "fix the directory or set admin_socket to another path"
        )


class AdminUnreachableError(AdminError):
    """The client cannot connect to the admin socket or gets no response."""

    def __init__(self, path: Path, detail: str) -> None:
        self.path = path
        super().__init__(
            f"agent admin socket {path} is unreachable: {detail}; check that the agent "
            "runs, that --admin-socket (or admin_socket in --config) names its socket, "
            "and that you run as root"
        )


class AdminProtocolError(AdminError):
    """The admin socket sent a response that is not the expected JSON object."""

    def __init__(self, path: Path, detail: str) -> None:
        self.path = path
        super().__init__(f"invalid response from the admin socket {path}: {detail}")
