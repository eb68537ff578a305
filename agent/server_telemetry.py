"""Telemetry of the running agent: health endpoints, metrics sources, readiness and sd_notify.

The server builds one ``AgentTelemetry(settings)`` before anything else and then:

- passes ``telemetry.metrics`` and ``telemetry.audit`` to the IdentityResolver, and
  wraps the CA in ``CountingAuthority`` so minted and renewed SVIDs are counted;
- registers ``telemetry.add_grpc_health`` as a service hook, which serves
  grpc.health.v1 on the agent socket;
- calls ``await start(authority, store, callers)`` once the CA and the manifests are
  loaded, which starts the HTTP health server and the periodic refresh of readiness
  and of the metrics that are read from other components;
- calls ``serving()`` once the public socket accepts connections, which marks the
  agent ready and sends READY=1 to systemd;
- calls ``await stopping()`` when shutdown begins and ``await close()`` at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from agent.ca import Authority, JwtBundle, X509Bundle, X509Svid
from agent.config import Settings
from agent.log import event
from agent.notify import Notifier
from agent.telemetry import grpc_health, sdnotify
from agent.telemetry.audit import AuditLog
from agent.telemetry.errors import NotifySocketError
from agent.telemetry.health import HealthServer
from agent.telemetry.metrics import Metrics, Validity
from agent.telemetry.readiness import ReadinessState

__all__ = ["REFRESH_INTERVAL_SECONDS", "AgentTelemetry", "CountingAuthority"]

logger = logging.getLogger(__name__)

# How often readiness, the grpc.health.v1 statuses and the bridged counters are
# refreshed. The manifest store polls its directory at the same rate.
REFRESH_INTERVAL_SECONDS = 1.0

# At most this many (SPIFFE ID, DNS names, TTL) keys are remembered to tell a renewal
# from a first mint. Past it the memory is cleared, so the next SVID of each key is
# counted as minted but not as a rotation.
_MAX_TRACKED_SVID_KEYS = 100_000


class ManifestSource(Protocol):
    """The part of the manifest store that readiness and metrics read."""

    @property
    def loaded(self) -> bool: ...
    @property
    def load_errors(self) -> int: ...


class CallerSource(Protocol):
    def served_validities(self) -> Sequence[Validity]: ...


class AgentTelemetry:
    """Metrics, readiness, audit log, health servers and systemd notification of one agent."""

    def __init__(self, settings: Settings) -> None:
        self.metrics = Metrics()
        self.readiness = ReadinessState()
        self.audit: AuditLog | None = None
        if settings.audit_log is not None:
            self.audit = AuditLog.open(settings.audit_log)
        self.health: HealthServer | None = None
        if settings.health_address is not None:
            self.health = HealthServer(
                settings.health_address, self.readiness, self.metrics.registry
            )
        self._grpc_health: grpc_health.GrpcHealth | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._counted_load_errors = 0

    def add_grpc_health(self, server: Any, resolver: object) -> None:
        """Service hook: register grpc.health.v1, driven by the readiness checks."""
        self._grpc_health = grpc_health.add_to_server(server, self.readiness)

    async def start(
        self, authority: Authority, store: ManifestSource, callers: CallerSource
    ) -> None:
        """Start the HTTP health server and the periodic refresh; raise TelemetryError."""
        self.metrics.set_served_svids_source(callers.served_validities)
        self._refresh(authority, store)
        if self.health is not None:
            await self.health.start()
        self._refresher = asyncio.create_task(
            self._refresh_periodically(authority, store), name="telemetry-refresh"
        )
        self._refresher.add_done_callback(_log_refresh_stop)

    async def serving(self) -> None:
        """Mark the socket as serving and tell systemd the agent is ready."""
        self.readiness.socket_serving = True
        if self._grpc_health is not None:
            await self._grpc_health.refresh()
        # NotifySocketError propagates: under Type=notify a lost READY=1 would leave the
        # unit starting until its timeout, so failing the start is clearer.
        if sdnotify.notify_ready():
            event(logger, logging.INFO, "readiness sent to systemd", socket="NOTIFY_SOCKET")

    async def stopping(self) -> None:
        """Report NOT_SERVING everywhere and send STOPPING=1; errors are only logged."""
        self.readiness.socket_serving = False
        if self._grpc_health is not None:
            await self._grpc_health.shutdown()
        try:
            sdnotify.notify_stopping()
        except NotifySocketError as error:
            event(logger, logging.WARNING, "STOPPING=1 not sent to systemd", error=error)

    async def close(self) -> None:
        """Stop the refresh and the health server and close the audit log."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self.health is not None:
            await self.health.close()
        if self.audit is not None:
            self.audit.close()

    async def _refresh_periodically(self, authority: Authority, store: ManifestSource) -> None:
        while True:
            await asyncio.sleep(REFRESH_INTERVAL_SECONDS)
            self._refresh(authority, store)
            if self._grpc_health is not None:
                await self._grpc_health.refresh()

    def _refresh(self, authority: Authority, store: ManifestSource) -> None:
        # authority.ready turns False when the intermediate expires or rotation stops.
        self.readiness.ca_loaded = authority.ready
        self.readiness.manifests_loaded = store.loaded
        if authority.ready:
            self.metrics.set_intermediate_ca_not_after(authority.intermediate_not_after)
        # The store counts rejected files itself; add what it counted since last time.
        for _ in range(store.load_errors - self._counted_load_errors):
            self.metrics.manifest_load_error()
        self._counted_load_errors = store.load_errors


def _log_refresh_stop(task: asyncio.Task[None]) -> None:
    # The refresh only ends by cancellation. Anything else is a bug that freezes
    # readiness and the bridged metrics, so it is logged here.
    if task.cancelled() or task.exception() is None:
        return
    event(logger, logging.CRITICAL, "telemetry refresh stopped", error=repr(task.exception()))


class CountingAuthority:
    """The CA as the resolver sees it, counting minted X.509 and JWT SVIDs and renewals.

    An X.509-SVID counts as minted when ``get_x509_svid`` returns a serial not seen
    before for its (SPIFFE ID, DNS names, TTL) key, and also as a rotation when that key
    had an older serial. A renewal is therefore counted when a caller first receives it.
    """

    # TODO: count in agent.ca itself, so renewals that no caller fetches are counted.

    def __init__(self, authority: Authority, metrics: Metrics) -> None:
        self._authority = authority
        self._metrics = metrics
        self._serials: dict[tuple[str, tuple[str, ...], int | None], int] = {}

    @property
    def notifier(self) -> Notifier:
        return self._authority.notifier

    async def get_x509_svid(
        self,
        spiffe_id: str,
        *,
        dns_names: Sequence[str] = (),
        ttl: int | None = None,
        hint: str = "",
    ) -> X509Svid:
        svid = await self._authority.get_x509_svid(
            spiffe_id, dns_names=dns_names, ttl=ttl, hint=hint
        )
        key = (spiffe_id, tuple(sorted(dns_names)), ttl)
        previous = self._serials.get(key)
        if previous != svid.serial:
            if len(self._serials) >= _MAX_TRACKED_SVID_KEYS:
                self._serials.clear()
            self._serials[key] = svid.serial
            self._metrics.svid_minted("x509")
            if previous is not None:
                self._metrics.svid_rotated()
        return svid

    def x509_bundle(self) -> X509Bundle:
        return self._authority.x509_bundle()

    def jwt_bundle(self) -> JwtBundle:
        return self._authority.jwt_bundle()

    async def mint_jwt_svid(self, spiffe_id: str, audiences: Sequence[str]) -> str:
        token = await self._authority.mint_jwt_svid(spiffe_id, audiences)
        self._metrics.svid_minted("jwt")
        return token

    def validate_jwt_svid(self, token: str, audience: str) -> tuple[str, dict[str, Any]]:
        return self._authority.validate_jwt_svid(token, audience)
