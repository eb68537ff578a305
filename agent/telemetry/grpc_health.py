"""grpc.health.v1 on the agent socket, driven by the agent's readiness checks.

The server calls ``add_to_server(server, readiness)`` before starting its grpc.aio
server and keeps the returned GrpcHealth. Every Check and the start of every Watch
recompute readiness. Open Watch streams see a change when ``refresh()`` runs, so the
server calls it after changing its ReadinessState, or runs ``refresh_periodically()``
as a task. ``shutdown()`` turns
every service to NOT_SERVING for good when the agent starts draining.

The services reported are the overall server (the empty name), the Workload API and SDS.
This is the only telemetry module that imports grpc.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

# grpcio-health-checking ships no type information.
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from grpc_health.v1.health import aio as health_aio  # type: ignore[import-untyped]

from agent.telemetry.readiness import ReadinessCheck, missing_checks

SERVICE_NAMES: tuple[str, ...] = (
    "",
    "SpiffeWorkloadAPI",
    "envoy.service.secret.v3.SecretDiscoveryService",
)

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _ReadinessHealthServicer(health_aio.HealthServicer):  # type: ignore[misc]
    """The reference asyncio servicer, recomputing readiness at the start of every call.

    The reference servicer starts with the server reported SERVING, so without the
    refresh a call arriving before the first refresh() would see a wrong status.
    """

    def __init__(self, owner: GrpcHealth) -> None:
        super().__init__()
        self._owner = owner

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Any,
    ) -> health_pb2.HealthCheckResponse:
        await self._owner.refresh()
        return await super().Check(request, context)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: Any,
    ) -> None:
        await self._owner.refresh()
        await super().Watch(request, context)


class GrpcHealth:
    """Keeps the grpc.health.v1 statuses equal to the readiness checks."""

    def __init__(self, readiness: ReadinessCheck) -> None:
        self._readiness = readiness
        self.servicer = _ReadinessHealthServicer(self)

    async def refresh(self) -> bool:
        """Set every service to SERVING or NOT_SERVING from readiness; return readiness."""
        ready = not missing_checks(self._readiness())
        status = _SERVING if ready else _NOT_SERVING
        for name in SERVICE_NAMES:
            await self.servicer.set(name, status)
        return ready

    async def refresh_periodically(self, interval_seconds: float = 1.0) -> None:
        """Call refresh() every ``interval_seconds`` until cancelled."""
        while True:
            await self.refresh()
            await asyncio.sleep(interval_seconds)

    async def shutdown(self) -> None:
        """Report NOT_SERVING for every service from now on."""
        await self.servicer.enter_graceful_shutdown()


def add_to_server(server: grpc.aio.Server, readiness: ReadinessCheck) -> GrpcHealth:
    """Register grpc.health.v1.Health on ``server`` and return its controller."""
    health = GrpcHealth(readiness)
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    return health
