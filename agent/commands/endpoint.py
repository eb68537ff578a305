"""The agent socket address for client commands, and the message when it is unreachable.

``socket_target(flag, environ)`` picks ``--socket`` first, then SPIFFE_ENDPOINT_SOCKET,
then the default path, and returns a grpc target such as ``unix:/path/api.sock``. It
raises ConfigError for an address that is not an absolute Unix socket path.

``unreachable_message(target, status)`` distinguishes a connection failure from an
UNAVAILABLE status that the agent itself returned (attestation failed, shutting down).
It connects to the socket once and returns a one-line message only when that fails.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping

from agent.config import Settings
from agent.errors import ConfigError

ENDPOINT_VARIABLE = "SPIFFE_ENDPOINT_SOCKET"
PROBE_TIMEOUT_SECONDS = 1.0
DEFAULT_SOCKET_PATH = Settings().socket_path
SOCKET_HELP = (
    f"agent socket path or unix:///path (default: ${ENDPOINT_VARIABLE}, "
    f"else {DEFAULT_SOCKET_PATH})"
)


def socket_target(flag: str | None, environ: Mapping[str, str]) -> str:
    """Return the grpc target for the agent socket named by the flag, env or default."""
    if flag:
        return _target_from(flag, "--socket")
    address = environ.get(ENDPOINT_VARIABLE)
    if address:
        return _target_from(address, ENDPOINT_VARIABLE)
    return f"unix:{DEFAULT_SOCKET_PATH}"


def _target_from(address: str, source: str) -> str:
    # go-spiffe accepts both unix:///abs/path and unix:/abs/path; a bare path is a
    # convenience for --socket.
    if address.startswith("unix://"):
        path = address[len("unix://") :]
        if not path.startswith("/"):
            raise ConfigError(
                f"{source} {address!r} names a host: use unix:///absolute/path/api.sock"
            )
    elif address.startswith("unix:"):
        path = address[len("unix:") :]
    elif "://" in address or address.startswith("tcp:"):
        raise ConfigError(
            f"{source} {address!r} is not a Unix socket: use unix:///absolute/path/api.sock"
        )
    else:
        path = address
    if not path.startswith("/") or path.startswith("//"):
        raise ConfigError(
            f"{source} {address!r} must name an absolute path, such as "
            "unix:///tmp/attest-agent/public/api.sock"
        )
    return f"unix:{path}"


def unreachable_message(target: str, status: str) -> str | None:
    """Return "cannot reach the agent ..." if nothing accepts connections on ``target``.

    ``target`` is a ``unix:/path`` value from socket_target and ``status`` the gRPC
    status name the call failed with. Returns None when the socket accepts a connection,
    because then the agent is up and the status came from the agent.
    """
    path = target[len("unix:") :]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        # A full listen backlog blocks connect(); a live but busy agent is not unreachable.
        probe.settimeout(PROBE_TIMEOUT_SECONDS)
        try:
            probe.connect(path)
        except TimeoutError:
            return None
        except OSError as error:
            return (
                f"cannot reach the agent at unix://{path}: is it running? Start it with "
                "'attest-agent run' or pass --socket with its socket path "
                f"(grpc: {status}, connect: {error.strerror or error})"
            )
    return None
