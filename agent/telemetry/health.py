"""HTTP health and metrics endpoint: /live, /ready and /metrics.

Build ``HealthServer(address, readiness, registry)``, ``await start()`` it after the
event loop is running, and ``await close()`` it at shutdown. ``address`` is
``HOST:PORT`` with an IP literal host (``[::1]:8081`` for IPv6); the default binds to
loopback because /metrics describes every workload on the node.

- /live returns 200 whenever the event loop runs, so a blocked loop fails the probe.
- /ready returns 200 when every readiness check is true, else 503 naming the failing ones.
- /metrics returns the registry in the Prometheus text format (or OpenMetrics when the
  Accept header asks for it).

Only GET and HEAD are served. Each connection carries one request. Request heads are
capped at MAX_REQUEST_HEAD_BYTES, the whole request must arrive within the request
timeout, and at most MAX_CONNECTIONS connections are served at once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from agent.log import event
from agent.telemetry.errors import HealthAddressError, HealthServerError
from agent.telemetry.readiness import ReadinessCheck, missing_checks

DEFAULT_HEALTH_ADDRESS = "127.0.0.1:8081"
MAX_REQUEST_HEAD_BYTES = 8 * 1024
MAX_CONNECTIONS = 32
DEFAULT_REQUEST_TIMEOUT_SECONDS = 5.0

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}

logger = logging.getLogger(__name__)


def parse_health_address(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` into an IP address string and a port (0 picks a free port)."""
    host, separator, port_text = address.rpartition(":")
    if not separator or not host:
        raise HealthAddressError(address, "expected HOST:PORT")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError as error:
        raise HealthAddressError(address, f"{host!r} is not an IP address") from error
    if ip.version == 6 and not bracketed:
        # "::1:8081" is itself an IPv6 address, so the port is ambiguous without brackets.
        raise HealthAddressError(address, "write an IPv6 address in brackets, as in [::1]:8081")
    if not port_text.isdigit() or int(port_text) > 65535:
        raise HealthAddressError(address, f"{port_text!r} is not a port number from 0 to 65535")
    return str(ip), int(port_text)


class _Response:
    __slots__ = ("body", "content_type", "extra_headers", "status")

    def __init__(
        self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
        extra_headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.extra_headers = extra_headers

    def encode(self, include_body: bool) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status} {_REASONS[self.status]}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Cache-Control: no-store",
            "Connection: close",
            *(f"{name}: {value}" for name, value in self.extra_headers),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head + self.body if include_body else head


def _text(status: int, text: str) -> _Response:
    return _Response(status, (text + "\n").encode("utf-8"))


class HealthServer:
    """Asyncio HTTP/1.1 server for /live, /ready and /metrics."""

    def __init__(
        self,
        address: str,
        readiness: ReadinessCheck,
        registry: CollectorRegistry,
        *,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT_SECONDS,
    ) -> None:
        self.address = address
        self._host, self._port = parse_health_address(address)
        self._readiness = readiness
        self._registry = registry
        self._request_timeout = request_timeout
        self._connections = asyncio.BoundedSemaphore(MAX_CONNECTIONS)
        self._server: asyncio.Server | None = None

    @property
    def bound_address(self) -> tuple[str, int]:
        """The host and port actually bound; call after start()."""
        if self._server is None or not self._server.sockets:
            raise HealthServerError(self.address, "the server is not started")
        sockname = self._server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    async def start(self) -> None:
        """Listen on the address; raise HealthServerError if that fails."""
        if self._server is not None:
            raise HealthServerError(self.address, "the server is already started")
        try:
            self._server = await asyncio.start_server(
                self._serve, self._host, self._port, limit=MAX_REQUEST_HEAD_BYTES,
            )
        except OSError as error:
            raise HealthServerError(self.address, error.strerror or str(error)) from error
        host, port = self.bound_address
        event(logger, logging.INFO, "health server listening", address=f"{host}:{port}")

    async def close(self) -> None:
        """Stop listening and wait for open connections to finish."""
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connections.locked():
            # Over the limit: close without reading, so slow clients cannot pile up.
            writer.close()
            return
        async with self._connections:
            try:
                await self._serve_one(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                pass  # The client closed or stopped reading, so no response can be sent.
            finally:
                writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method = "GET"
        try:
            async with asyncio.timeout(self._request_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
            method, target, headers = _parse_head(head)
            response = self._route(method, target, headers)
        except TimeoutError:
            response = _text(408, "request timed out")
        except asyncio.LimitOverrunError:
            response = _text(431, f"request head exceeds {MAX_REQUEST_HEAD_BYTES} bytes")
        except _BadRequest as error:
            response = _text(400, str(error))
        if response.status >= 400:
            # Debug level: probes and scrapers send valid requests, so these come from
            # misconfigured or hostile clients and must not flood the log.
            detail = response.body.decode().strip()
            event(logger, logging.DEBUG, "health request rejected",
                  method=method, error=f"{response.status} {detail}")
        writer.write(response.encode(include_body=method != "HEAD"))
        async with asyncio.timeout(self._request_timeout):
            await writer.drain()

    def _route(self, method: str, target: str, headers: dict[str, str]) -> _Response:
        path = target.split("?", 1)[0]
        if path not in ("/live", "/ready", "/metrics"):
            return _text(404, f"no such path {path!r}; use /live, /ready or /metrics")
        if method not in ("GET", "HEAD"):
            return _Response(
                405, b"only GET and HEAD are allowed\n", extra_headers=(("Allow", "GET, HEAD"),)
            )
        if path == "/live":
            return _text(200, "live")
        if path == "/ready":
            return self._ready()
        encoder, content_type = choose_encoder(headers.get("accept", ""))
        return _Response(200, encoder(self._registry), content_type)

    def _ready(self) -> _Response:
        checks = dict(self._readiness())
        missing = missing_checks(checks)
        body = json.dumps({"ready": not missing, "checks": checks, "missing": missing})
        return _Response(503 if missing else 200, (body + "\n").encode(), "application/json")


class _BadRequest(Exception):
    pass


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    text = head.decode("latin-1")  # HTTP/1.1 header bytes; latin-1 maps every byte.
    request_line, *header_lines = text.rstrip("\r\n").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(f"invalid request line {request_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, separator, value = line.partition(":")
        if not separator:
            raise _BadRequest(f"invalid header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], headers
