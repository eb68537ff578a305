"""The admin socket: a root-only Unix socket that serves operator requests as JSON lines.

The server builds ``AdminServer(path, callers, recheck)``, ``await start()`` after the
resolver exists and ``await close()`` at shutdown. The socket lives in its own
directory of mode 0700 and is itself mode 0600, and every client's SO_PEERCRED uid
must be 0 or the agent's own uid, so only root (or the agent's user) can ask. It is
not relayed through the public socket's front door, and no workload can reach it.

Protocol: the client sends one JSON object on one line, such as ``{"request":
"drift"}``, and reads one JSON object on one line; then the server closes the
connection. Requests:

- ``drift``: the drift report of agent.admin.drift.

Any other request, or a line that is not a JSON object, gets ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agent.admin.callers import CallerTable
from agent.admin.drift import Recheck, drift_report
from agent.admin.errors import AdminSocketError
from agent.errors import AgentError
from agent.log import event
from agent.peer.errors import PeerError
from agent.peer.sockets import prepare_internal_socket

__all__ = ["ADMIN_SOCKET_MODE", "MAX_REQUEST_BYTES", "AdminServer"]

logger = logging.getLogger(__name__)

ADMIN_SOCKET_MODE = 0o600
MAX_REQUEST_BYTES = 4096
REQUEST_TIMEOUT_SECONDS = 5.0
# A drift report attests every caller, so only a few may run at once.
MAX_CONNECTIONS = 4

_PEERCRED = struct.Struct("3i")


class AdminServer:
    """Serves admin requests on a root-only Unix socket."""

    def __init__(self, path: Path, callers: CallerTable, recheck: Recheck) -> None:
        self.path = path
        self._callers = callers
        self._recheck = recheck
        self._server: asyncio.Server | None = None
        self._connections = asyncio.BoundedSemaphore(MAX_CONNECTIONS)
        self._handlers: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
            "drift": self._drift,
        }

    async def start(self) -> None:
        """Create the 0700 directory, bind the 0600 socket and accept; raise AdminSocketError."""
        try:
            # Creates the directory with mode 0700, requires it to be 0700 and ours, and
            # removes a stale socket left by a crashed agent.
            prepare_internal_socket(self.path)
        except PeerError as error:
            raise AdminSocketError(self.path, str(error)) from error
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_REQUEST_BYTES
            )
            os.chmod(self.path, ADMIN_SOCKET_MODE)
        except OSError as error:
            raise AdminSocketError(self.path, error.strerror or str(error)) from error
        event(logger, logging.INFO, "admin socket listening", socket=self.path)

    async def close(self) -> None:
        """Stop accepting, wait for running requests and remove the socket file."""
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self._connections.locked() or not _peer_allowed(writer):
                return
            async with self._connections:
                response = await self._respond(reader)
                writer.write(json.dumps(response, separators=(",", ":")).encode() + b"\n")
                async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
                    await writer.drain()
        except (ConnectionError, TimeoutError):
            pass  # The client disconnected, so no response can be sent.
        finally:
            writer.close()

    async def _respond(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
                line = await reader.readline()
        except TimeoutError:
            return {"error": f"no request line within {REQUEST_TIMEOUT_SECONDS} s"}
        except ValueError:
            return {"error": f"request longer than {MAX_REQUEST_BYTES} bytes"}
        name = _request_name(line)
        handler = self._handlers.get(name or "")
        if handler is None:
            known = ", ".join(sorted(self._handlers))
            return {"error": f"unknown request {name!r}: send one of {known}"}
        try:
            return await handler()
        except AgentError as error:
            event(logger, logging.ERROR, "admin request failed", method=name, error=error)
            return {"error": str(error)}

    async def _drift(self) -> dict[str, Any]:
        report = await drift_report(self._callers, self._recheck)
        event(logger, logging.INFO, "drift report served",
              count=len(report["callers"]), detail=f"{report['drifted']} drifted")
        return report


def _request_name(line: bytes) -> str | None:
    try:
        document = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(document, dict) or not isinstance(document.get("request"), str):
        return None
    name: str = document["request"]
    return name


def _peer_allowed(writer: asyncio.StreamWriter) -> bool:
    """Allow root and the agent's own uid; the socket mode already keeps others out."""
    sock: socket.socket | None = writer.get_extra_info("socket")
    if sock is None:
        return False
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError as error:
        event(logger, logging.WARNING, "admin request rejected", reason="no_peer_credentials",
              error=error)
        return False
    pid, uid, _gid = _PEERCRED.unpack(raw)
    if uid in (0, os.geteuid()):
        return True
    event(logger, logging.WARNING, "admin request rejected", pid=pid, uid=uid,
          reason="not_root")
    return False
