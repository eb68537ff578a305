"""The agent socket address for client commands, and the gRPC channel to it.

``socket_target(flag, environ)`` picks ``--socket`` first, then SPIFFE_ENDPOINT_SOCKET,
then the default path, and returns a grpc target such as ``unix:/path/api.sock``. It
raises ConfigError for an address that is not an absolute Unix socket path.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.config import Settings
from agent.errors import ConfigError

ENDPOINT_VARIABLE = "SPIFFE_ENDPOINT_SOCKET"


def socket_target(flag: str | None, environ: Mapping[str, str]) -> str:
    """Return the grpc target for the agent socket named by the flag, env or default."""
    if flag:
        return _target_from(flag, "--socket")
    address = environ.get(ENDPOINT_VARIABLE)
    if address:
        return _target_from(address, ENDPOINT_VARIABLE)
    return f"unix:{Settings().socket_path}"


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
