"""grpc.health.v1 driven by readiness, served on a Unix socket made by the test."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.telemetry.grpc_health import SERVICE_NAMES, GrpcHealth, add_to_server
from agent.telemetry.readiness import ReadinessState

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Running:
    def __init__(self, health: GrpcHealth, state: ReadinessState, stub: object) -> None:
        self.health = health
        self.state = state
        self.stub: health_pb2_grpc.HealthStub = stub  # type: ignore[assignment]


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    state = ReadinessState()
    server = grpc.aio.server()
    health = add_to_server(server, state)
    address = f"unix://{tmp_path / 'api.sock'}"
    server.add_insecure_port(address)
    await server.start()
    channel = grpc.aio.insecure_channel(address)
    try:
        yield Running(health, state, health_pb2_grpc.HealthStub(channel))
    finally:
        await channel.close()
        await server.stop(grace=None)


def make_ready(state: ReadinessState) -> None:
    state.ca_loaded = True
    state.manifests_loaded = True
    state.socket_serving = True


async def check(running: Running, service: str) -> int:
    response = await running.stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return int(response.status)


@pytest.mark.parametrize("service", SERVICE_NAMES, ids=["server", "workload-api", "sds"])
async def test_not_serving_until_ready(running: Running, service: str) -> None:
    running.state.ca_loaded = True

    assert await check(running, service) == NOT_SERVING
    make_ready(running.state)
    assert await check(running, service) == SERVING


async def test_unknown_service(running: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await check(running, "no.such.Service")

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_watch_sees_refresh(running: Running) -> None:
    call = running.stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
    first = await call.read()

    make_ready(running.state)
    await running.health.refresh()
    second = await call.read()
    call.cancel()

    assert first.status == NOT_SERVING
    assert second.status == SERVING


async def test_shutdown_is_final(running: Running) -> None:
    make_ready(running.state)
    assert await check(running, "") == SERVING

    await running.health.shutdown()

    assert await check(running, "") == NOT_SERVING
    assert await check(running, "SpiffeWorkloadAPI") == NOT_SERVING


async def test_refresh_periodically(running: Running) -> None:
    task = asyncio.create_task(running.health.refresh_periodically(0.01))
    call = running.stub.Watch(health_pb2.HealthCheckRequest(service="SpiffeWorkloadAPI"))
    try:
        first = await asyncio.wait_for(call.read(), timeout=10)
        make_ready(running.state)
        second = await asyncio.wait_for(call.read(), timeout=10)
    finally:
        call.cancel()
        task.cancel()

    assert first.status == NOT_SERVING
    assert second.status == SERVING


def test_lower_modules_avoid_grpc() -> None:
    # Only grpc_health may import grpc; the rest of telemetry is used by grpc-free layers.
    code = (
        "import sys\n"
        "import agent.telemetry.audit, agent.telemetry.health, agent.telemetry.metrics\n"
        "import agent.telemetry.readiness, agent.telemetry.sdnotify\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'grpc'))\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
    )

    assert result.stdout.strip() == "[]"
