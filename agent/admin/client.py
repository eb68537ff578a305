"""Client of the admin socket, for commands such as ``attest-agent drift``.

Call ``admin_request(path, "drift", timeout)``: it sends one request line and returns
the decoded JSON response, raising AdminUnreachableError when the socket cannot be
reached or the agent sends nothing in time, and AdminProtocolError for a response
that is not a JSON object.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from agent.admin.errors import AdminProtocolError, AdminUnreachableError

__all__ = ["MAX_RESPONSE_BYTES", "admin_request"]

# A drift report lists every caller; 64 MiB is room for the 4096 connections the agent
# accepts by default, each with several identities.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


def admin_request(path: Path, request: str, timeout: float) -> dict[str, Any]:
    """Send ``{"request": request}`` to the admin socket and return the response object."""
    data = json.dumps({"request": request}).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            sock.sendall(data)
            response = _read_line(sock, path)
        except TimeoutError as error:
            raise AdminUnreachableError(path, f"no response within {timeout} s") from error
        except OSError as error:
            raise AdminUnreachableError(path, error.strerror or str(error)) from error
    try:
        document = json.loads(response)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AdminProtocolError(path, f"not JSON ({error})") from error
    if not isinstance(document, dict):
        raise AdminProtocolError(path, f"expected a JSON object, got {type(document).__name__}")
    return document


def _read_line(sock: socket.socket, path: Path) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if chunk.endswith(b"\n"):
            break
        if size > MAX_RESPONSE_BYTES:
            raise AdminProtocolError(path, f"response longer than {MAX_RESPONSE_BYTES} bytes")
    if not chunks:
        raise AdminUnreachableError(path, "the agent closed the connection without a response")
    return b"".join(chunks)
