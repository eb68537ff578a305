"""Caller identities: attestation, manifest matching and SVID minting for one connection.

Both the Workload API and the SDS servicers use an IdentityResolver. Callers must:

- map the gRPC peer to the accepted Connection with ``connection_for(context.peer())``
  and treat ``None`` as a caller the agent cannot pin (fail closed);
- call ``resolve(conn)`` once per unary call, which re-attests the pinned process, so a
  recycled PID or a replaced executable fails closed on every call;
- iterate ``watch(conn)`` in streams: it yields the full state at once and again after
  every change, and yields a Denial as its last item when the caller loses its identity.

``resolve`` and ``watch`` propagate the authority's CAError when minting fails, and
raise ResolverClosedError once ``close()`` was called at shutdown. The services return
UNAVAILABLE for both, so clients reconnect to the next agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from agent.attest.evidence import Evidence
from agent.ca import JwtBundle, X509Bundle, X509Svid
from agent.denial import Denial, Reason
from agent.errors import AgentError
from agent.log import event
from agent.manifests.identity import Identity
from agent.notify import Notifier
from agent.peer.connection import Connection

__all__ = [
    "Attestor",
    "Authority",
    "CallerIdentity",
    "CallerState",
    "IdentityResolver",
    "JwtBundle",
    "ManifestMatcher",
    "PeerRegistry",
    "ResolverClosedError",
    "X509Bundle",
    "X509Svid",
]

logger = logging.getLogger(__name__)


class PeerRegistry(Protocol):
    def lookup(self, grpc_peer: str) -> Connection | None: ...


class Attestor(Protocol):
    def attest(self, conn: Connection) -> Awaitable[Evidence | Denial]: ...


class ManifestMatcher(Protocol):
    @property
    def notifier(self) -> Notifier: ...
    def match(self, evidence: Evidence) -> Sequence[Identity] | Denial: ...


class Authority(Protocol):
    @property
    def notifier(self) -> Notifier: ...
    def get_x509_svid(
        self,
        spiffe_id: str,
        *,
        dns_names: Sequence[str] = (),
        ttl: int | None = None,
        hint: str = "",
    ) -> Awaitable[X509Svid]: ...
    def x509_bundle(self) -> X509Bundle: ...
    def jwt_bundle(self) -> JwtBundle: ...
    def mint_jwt_svid(self, spiffe_id: str, audiences: Sequence[str]) -> Awaitable[str]: ...
    def validate_jwt_svid(self, token: str, audience: str) -> tuple[str, dict[str, Any]]: ...


class ResolverClosedError(AgentError):
    """The agent is shutting down and issues no more identities; clients should reconnect."""

    def __init__(self) -> None:
        super().__init__("the agent is shutting down: reconnect to issue identities again")


@dataclass(frozen=True)
class CallerIdentity:
    """One identity granted to the caller, with its current X.509-SVID."""

    identity: Identity
    svid: X509Svid


@dataclass(frozen=True)
class CallerState:
    """Everything the services send a caller: its identities (first is the default) and bundles."""

    evidence: Evidence
    identities: tuple[CallerIdentity, ...]
    bundle: X509Bundle
    jwt_bundle: JwtBundle

    @property
    def spiffe_ids(self) -> tuple[str, ...]:
        return tuple(held.identity.spiffe_id for held in self.identities)

    def fingerprint(self) -> tuple[object, ...]:
        """Return a value that changes whenever anything sent to the caller changes."""
        svids = tuple(
            (held.identity.spiffe_id, held.svid.serial, held.identity.hint)
            for held in self.identities
        )
        return (svids, self.bundle.version, self.jwt_bundle.version)


class IdentityResolver:
    """Turns an accepted connection into the caller's identities and SVIDs."""

    def __init__(
        self,
        registry: PeerRegistry,
        attestor: Attestor,
        store: ManifestMatcher,
        authority: Authority,
        *,
        reattest_interval: float = 30.0,
    ) -> None:
        if reattest_interval <= 0:
            raise ValueError(f"reattest_interval must be positive, got {reattest_interval}")
        self._registry = registry
        self._attestor = attestor
        self._store = store
        self._authority = authority
        self._reattest_interval = reattest_interval
        self._closed = asyncio.Event()

    @property
    def authority(self) -> Authority:
        """The CA, for services that mint or validate JWT-SVIDs."""
        return self._authority

    def close(self) -> None:
        """Stop issuing: pending and later ``resolve``/``watch`` calls raise ResolverClosedError."""
        self._closed.set()

    def connection_for(self, grpc_peer: str) -> Connection | None:
        """Return the connection behind a gRPC peer string, or None when it is unknown."""
        return self._registry.lookup(grpc_peer)

    async def resolve(self, conn: Connection) -> CallerState | Denial:
        """Attest the caller, match manifests and return its state or the denial; logs it."""
        outcome = await self._evaluate(conn)
        _log_decision(conn, outcome, previous=None)
        return outcome

    async def watch(self, conn: Connection) -> AsyncIterator[CallerState | Denial]:
        """Yield the caller's state now and after each change; a Denial ends the watch.

        The watch wakes on manifest changes, CA changes, the SVID's refresh time, the
        earliest manifest expiry and every ``reattest_interval`` seconds, and yields only
        when the state differs from the last one yielded. It ends without a Denial when
        the connection closes.
        """
        previous: CallerState | None = None
        while not conn.closed:
            # Read the versions before resolving so a change during resolve is not lost.
            seen_store = self._store.notifier.version
            seen_ca = self._authority.notifier.version
            outcome = await self._evaluate(conn)
            if conn.closed:
                return
            if isinstance(outcome, Denial):
                _log_decision(conn, outcome, previous=previous)
                yield outcome
                return
            if previous is None or outcome.fingerprint() != previous.fingerprint():
                _log_decision(conn, outcome, previous=previous)
                previous = outcome
                yield outcome
            await self._wait_for_change(seen_store, seen_ca, self._wake_delay(outcome))

    async def _evaluate(self, conn: Connection) -> CallerState | Denial:
        if self._closed.is_set():
            raise ResolverClosedError
        evidence = await self._attestor.attest(conn)
        if isinstance(evidence, Denial):
            return evidence
        matched = self._store.match(evidence)
        if isinstance(matched, Denial):
            return matched
        current = _unexpired(matched, datetime.now(UTC))
        if not current:
            return Denial(
                Reason.MANIFEST_EXPIRED,
                "every manifest that granted the caller an identity has expired",
                pid=evidence.pid,
            )
        held = []
        for identity in current:
            svid = await self._authority.get_x509_svid(
                identity.spiffe_id,
                dns_names=identity.dns_names,
                ttl=identity.x509_svid_ttl,
                hint=identity.hint,
            )
            held.append(CallerIdentity(identity=identity, svid=svid))
        return CallerState(
            evidence=evidence,
            identities=tuple(held),
            bundle=self._authority.x509_bundle(),
            jwt_bundle=self._authority.jwt_bundle(),
        )

    def _wake_delay(self, state: CallerState) -> float:
        """Return seconds until the next re-check: re-attestation, SVID refresh or expiry."""
        now = datetime.now(UTC)
        deadlines: list[float] = [self._reattest_interval]
        for held in state.identities:
            # The CA re-mints at half of the lifetime; ask again just after that point.
            lifetime = held.svid.not_after - held.svid.not_before
            refresh_at = held.svid.not_before + lifetime / 2
            deadlines.append((refresh_at - now).total_seconds() + 0.05)
            if held.identity.not_after is not None:
                deadlines.append((held.identity.not_after - now).total_seconds() + 0.05)
        return max(0.05, min(deadlines))

    async def _wait_for_change(self, seen_store: int, seen_ca: int, timeout: float) -> None:
        waiters = [
            asyncio.ensure_future(self._store.notifier.wait_for_change(seen_store)),
            asyncio.ensure_future(self._authority.notifier.wait_for_change(seen_ca)),
            asyncio.ensure_future(self._closed.wait()),
        ]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            for waiter in waiters:
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter


def _unexpired(identities: Sequence[Identity], now: datetime) -> tuple[Identity, ...]:
    # Fail closed even if the store has not yet noticed that a manifest expired.
    return tuple(
        identity
        for identity in identities
        if identity.not_after is None or identity.not_after > now
    )


def _log_decision(
    conn: Connection, outcome: CallerState | Denial, *, previous: CallerState | None
) -> None:
    if isinstance(outcome, Denial):
        if previous is not None:
            for spiffe_id in previous.spiffe_ids:
                event(
                    logger,
                    logging.WARNING,
                    "identity revoked",
                    pid=conn.pid,
                    conn_id=conn.conn_id,
                    spiffe_id=spiffe_id,
                    reason=outcome.reason,
                    detail=outcome.message,
                )
            return
        event(
            logger,
            logging.WARNING,
            "identity denied",
            pid=conn.pid,
            conn_id=conn.conn_id,
            reason=outcome.reason,
            detail=outcome.message,
        )
        return
    previous_serials = (
        {held.identity.spiffe_id: held.svid.serial for held in previous.identities}
        if previous is not None
        else {}
    )
    for held in outcome.identities:
        if previous_serials.get(held.identity.spiffe_id) == held.svid.serial:
            continue
        event(
            logger,
            logging.INFO,
            "identity issued",
            pid=conn.pid,
            conn_id=conn.conn_id,
            exe_sha256=outcome.evidence.exe_sha256,
            spiffe_id=held.identity.spiffe_id,
            serial=held.svid.serial,
            not_after=held.svid.not_after.isoformat(),
            reason="renewed" if held.identity.spiffe_id in previous_serials else "matched",
        )
    if previous is not None:
        for spiffe_id in previous_serials.keys() - set(outcome.spiffe_ids):
            event(
                logger,
                logging.WARNING,
                "identity revoked",
                pid=conn.pid,
                conn_id=conn.conn_id,
                spiffe_id=spiffe_id,
                reason="manifest_removed",
            )
