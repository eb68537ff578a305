"""HTTP health server: /live, /ready, /metrics and request limits, over real TCP."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.denial import Denial, Reason
from agent.telemetry.errors import HealthAddressError, HealthServerError
from agent.telemetry.health import (
    MAX_CONNECTIONS,
    MAX_REQUEST_HEAD_BYTES,
    HealthServer,
    parse_health_address,
)
from agent.telemetry.metrics import Metrics
from agent.telemetry.readiness import ReadinessState


class Served:
    def __init__(self, server: HealthServer, state: ReadinessState, metrics: Metrics) -> None:
        self.server = server
        self.state = state
        self.metrics = metrics
        self.port = server.bound_address[1]


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    state = ReadinessState()
    metrics = Metrics()
    server = HealthServer("127.0.0.1:0", state, metrics.registry, request_timeout=2.0)
    await server.start()
    try:
        yield Served(server, state, metrics)
    finally:
        await server.close()


def _request(
    port: int, method: str, path: str, headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


async def request(
    port: int, method: str, path: str, headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(_request, port, method, path, headers)


async def raw_exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    return response


async def test_live(served: Served) -> None:
    status, headers, body = await request(served.port, "GET", "/live")

    assert status == 200
    assert body == b"live\n"
    assert headers["Connection"] == "close"


async def test_ready_lists_missing(served: Served) -> None:
    served.state.ca_loaded = True

    status, headers, body = await request(served.port, "GET", "/ready")

    assert status == 503
    assert headers["Content-Type"] == "application/json"
    document = json.loads(body)
    assert document["ready"] is False
    assert document["missing"] == ["manifests_loaded", "socket_serving"]


async def test_ready_when_all_checks_pass(served: Served) -> None:
    served.state.ca_loaded = True
    served.state.manifests_loaded = True
    served.state.socket_serving = True

    status, _headers, body = await request(served.port, "GET", "/ready?verbose=1")

    assert status == 200
    assert json.loads(body) == {
        "ready": True,
        "checks": {"ca_loaded": True, "manifests_loaded": True, "socket_serving": True},
        "missing": [],
    }


async def test_metrics_exposition(served: Served) -> None:
    served.metrics.observe_attestation(Denial(Reason.EXE_HASH_MISMATCH, "digest differs"), 0.01)

    status, headers, body = await request(served.port, "GET", "/metrics")

    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }
    key = (
        "attest_agent_attestations_total",
        (("reason", "exe_hash_mismatch"), ("result", "denied")),
    )
    assert samples[key] == 1


async def test_metrics_openmetrics(served: Served) -> None:
    accept = {"Accept": "application/openmetrics-text; version=1.0.0"}

    status, headers, body = await request(served.port, "GET", "/metrics", accept)

    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


async def test_head_has_no_body(served: Served) -> None:
    response = await raw_exchange(served.port, b"HEAD /live HTTP/1.1\r\nHost: x\r\n\r\n")

    head, _separator, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Content-Length: 5" in head
    assert body == b""


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/live", 405),
        ("DELETE", "/metrics", 405),
        ("GET", "/", 404),
        ("GET", "/healthz", 404),
    ],
    ids=["post-live", "delete-metrics", "root", "unknown-path"],
)
async def test_rejected_requests(served: Served, method: str, path: str, status: int) -> None:
    got, headers, _body = await request(served.port, method, path)

    assert got == status
    if status == 405:
        assert headers["Allow"] == "GET, HEAD"


async def test_malformed_request_line(served: Served) -> None:
    response = await raw_exchange(served.port, b"GARBAGE\r\n\r\n")

    assert response.startswith(b"HTTP/1.1 400 Bad Request")


async def test_oversized_head(served: Served) -> None:
    filler = b"X-Filler: " + b"a" * MAX_REQUEST_HEAD_BYTES + b"\r\n"

    response = await raw_exchange(served.port, b"GET /live HTTP/1.1\r\n" + filler + b"\r\n")

    assert response.startswith(b"HTTP/1.1 431")


async def test_incomplete_request_times_out(served: Served) -> None:
    # The server's request timeout is 2 s; the client never finishes its head.
    response = await raw_exchange(served.port, b"GET /live HTTP/1.1\r\n")

    assert response.startswith(b"HTTP/1.1 408 Request Timeout")


async def exchange_or_empty(port: int, data: bytes) -> bytes:
    """Return the response, or b"" when the server closed the connection unanswered."""
    try:
        return await raw_exchange(port, data)
    except ConnectionResetError:
        # Closing a socket with unread request bytes sends a reset instead of a FIN.
        return b""


async def exchange_until(port: int, data: bytes, done: Callable[[bytes], bool]) -> bytes:
    deadline = asyncio.get_running_loop().time() + 10
    answer = await exchange_or_empty(port, data)
    while not done(answer) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
        answer = await exchange_or_empty(port, data)
    return answer


async def test_connection_limit(served: Served) -> None:
    idle = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(MAX_CONNECTIONS)]
    request_bytes = b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n"
    try:
        # The server accepts the idle connections asynchronously, so an extra request may
        # still be answered until all of them are held; then it must be closed unanswered.
        refused = await exchange_until(served.port, request_bytes, lambda answer: answer == b"")
    finally:
        for _reader, idle_writer in idle:
            idle_writer.close()
    served_after = await exchange_until(
        served.port, request_bytes, lambda answer: answer.startswith(b"HTTP/1.1 200"),
    )

    assert refused == b""
    assert served_after.startswith(b"HTTP/1.1 200 OK")


async def test_address_in_use(served: Served) -> None:
    second = HealthServer(f"127.0.0.1:{served.port}", ReadinessState(), Metrics().registry)

    with pytest.raises(HealthServerError) as caught:
        await second.start()

    assert str(served.port) in str(caught.value)
    assert 'set health_address in the --config file or with --health-address ("" turns' in str(
        caught.value
    )


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:8081", ("127.0.0.1", 8081)),
        ("0.0.0.0:8081", ("0.0.0.0", 8081)),
        ("[::1]:9000", ("::1", 9000)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
    ],
    ids=["loopback", "all-ipv4", "ipv6-loopback", "any-port"],
)
def test_parse_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_health_address(address) == expected


@pytest.mark.parametrize(
    ("address", "detail"),
    [
        ("localhost:8081", "is not an IP address"),
        ("127.0.0.1", "expected HOST:PORT"),
        (":8081", "expected HOST:PORT"),
        ("127.0.0.1:70000", "is not a port number"),
        ("127.0.0.1:http", "is not a port number"),
        ("::1:8081", "in brackets"),
    ],
    ids=["hostname", "no-port", "no-host", "port-too-big", "port-name", "ipv6-no-brackets"],
)
def test_parse_address_invalid(address: str, detail: str) -> None:
    with pytest.raises(HealthAddressError) as caught:
        parse_health_address(address)

    assert detail in str(caught.value)
    assert repr(address) in str(caught.value)


def test_loopback_only_by_default() -> None:
    from agent.telemetry.health import DEFAULT_HEALTH_ADDRESS

    host, _port = parse_health_address(DEFAULT_HEALTH_ADDRESS)

    assert host == "127.0.0.1"
    assert socket.inet_aton(host)[0] == 127
