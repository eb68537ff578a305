"""Errors of the telemetry package.

Each error names the setting or path at fault and what to change. OS errors are chained
with ``raise ... from`` where they are translated.
"""

from __future__ import annotations

from agent.errors import AgentError


class TelemetryError(AgentError):
    """Base of every error raised by agent.telemetry."""


class HealthAddressError(TelemetryError):
    """A health_address setting that is not ``HOST:PORT`` with an IP literal host."""

    def __init__(self, address: str, detail: str) -> None:
        self.address = address
        super().__init__(
            f"invalid health_address {address!r}: {detail}; "
            "use an IP address and port such as 127.0.0.1:8081 or [::1]:8081"
        )


class HealthServerError(TelemetryError):
    """The health server could not listen on its address."""

    def __init__(self, address: str, detail: str) -> None:
        self.address = address
        super().__init__(
            f"cannot listen on health_address {address!r}: {detail}; "
            "free the port, or set health_address in the --config file or with "
            '--health-address ("" turns the endpoint off)'
        )


class AuditLogError(TelemetryError):
    """The audit log file cannot be opened or written."""

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        super().__init__(
            f"cannot write audit log {path!r}: {detail}; "
            "check that the directory exists and is writable by the agent, "
            "and that the path is not a symbolic link"
        )


class NotifySocketError(TelemetryError):
    """NOTIFY_SOCKET names an address the agent cannot send to."""

    def __init__(self, address: str, detail: str) -> None:
        self.address = address
        super().__init__(
            f"cannot notify systemd through NOTIFY_SOCKET={address!r}: {detail}; "
            "unset NOTIFY_SOCKET when not running under systemd Type=notify"
        )


class AuditRecordError(TelemetryError):
    """An audit record built with an invalid value, such as a naive datetime."""
