"""Readiness: whether the agent can issue identities yet.

The server owns one ReadinessState and sets its flags as start-up progresses (and
clears them if, say, the CA files become unusable). The HTTP /ready endpoint and the
gRPC health service both call it and treat the agent as ready only when every check
is true. Any other callable returning a name-to-bool mapping works in its place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

# Names of the checks, in the order /ready reports them.
CA_LOADED = "ca_loaded"
MANIFESTS_LOADED = "manifests_loaded"
SOCKET_SERVING = "socket_serving"

ReadinessCheck = Callable[[], Mapping[str, bool]]


@dataclass(slots=True)
class ReadinessState:
    """Start-up progress of the agent: CA loaded, manifests loaded, socket serving."""

    ca_loaded: bool = False
    manifests_loaded: bool = False
    socket_serving: bool = False

    def __call__(self) -> dict[str, bool]:
        return {
            CA_LOADED: self.ca_loaded,
            MANIFESTS_LOADED: self.manifests_loaded,
            SOCKET_SERVING: self.socket_serving,
        }


def missing_checks(checks: Mapping[str, bool]) -> list[str]:
    """Return the names of the checks that are false, in their given order."""
    return [name for name, passed in checks.items() if not passed]
