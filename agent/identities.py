"""Caller identities: attestation, manifest matching and SVID minting for one connection.

Both the Workload API and the SDS servicers use an IdentityResolver. Callers must:

- map the gRPC peer to the accepted Connection with ``connection_for(context.peer())``
  and treat ``None`` as a caller the agent cannot pin (fail closed);
- call ``resolve(conn)`` once per unary call, which re-attests the pinned process, so a
  recycled PID or a replaced executable fails closed on every call;
- iterate ``watch(conn, api=...)`` in streams: it yields the full state at once and
  again after every change, and yields a Denial as its last item when the caller loses
  its identity. A caller that held an identity on the stream and then fails
  re-attestation (it ran execve(), exited, or passed its socket on) gets a Denial with
  reason IDENTITY_REVOKED, so services end the stream with PERMISSION_DENIED.

Each attestation is counted in the optional Metrics, each decision is logged and
audited once per connection (agent.decisions), and ``callers`` lists the connections
with their latest decision for ``attest-agent drift``, which re-checks them with
``recheck(conn)``.

``resolve`` and ``watch`` propagate the authority's CAError when minting fails, and
raise ResolverClosedError once ``close()`` was called at shutdown. The services return
UNAVAILABLE for both, so clients reconnect to the next agent.

The component interfaces and CallerState are defined in agent.identity_types and
re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from agent.admin.callers import CallerTable
from agent.attest.evidence import Evidence
from agent.attest.fairness import JoinableRuns
from agent.ca import JwtBundle, X509Bundle, X509Svid
from agent.decisions import DecisionRecorder
from agent.denial import Denial, Reason
from agent.errors import AgentError
from agent.identity_types import (
    Attestor,
    Authority,
    CallerIdentity,
    CallerState,
    ManifestMatcher,
    PeerRegistry,
)
from agent.manifests.identity import Identity
from agent.peer.connection import Connection
from agent.telemetry.audit import AuditLog
from agent.telemetry.metrics import Metrics, StreamApi

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

# The maximum time a stream sleeps, as a fraction of its SVID's remaining validity.
# The CA normally renews the SVID at half its lifetime and wakes the stream long before.
_EXPIRY_WAKE_FRACTION = 0.9

# Result of attestation and matching: the evidence (None when attestation failed)
# and the unexpired identities granted, or the denial.
Match = tuple[Evidence | None, tuple[Identity, ...] | Denial]


class ResolverClosedError(AgentError):
    """The agent is shutting down and issues no more identities; clients should reconnect."""

    def __init__(self) -> None:
        super().__init__("the agent is shutting down: reconnect to issue identities again")


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
        metrics: Metrics | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        if reattest_interval <= 0:
            raise ValueError(f"reattest_interval must be positive, got {reattest_interval}")
        self._registry = registry
        self._attestor = attestor
        self._store = store
        self._authority = authority
        self._reattest_interval = reattest_interval
        self._metrics = metrics
        self._recorder = DecisionRecorder(audit)
        self._closed = False
        self._closed_future: asyncio.Future[None] | None = None
        self._shared: JoinableRuns[str, Evidence | Denial] = JoinableRuns()
        self.callers = CallerTable()

    @property
    def authority(self) -> Authority:
        """The CA, for services that mint or validate JWT-SVIDs."""
        return self._authority

    @property
    def metrics(self) -> Metrics | None:
        """The agent's metrics, for services that count protocol events (SDS NACKs)."""
        return self._metrics

    def close(self) -> None:
        """Stop issuing: pending and later ``resolve``/``watch`` calls raise ResolverClosedError."""
        self._closed = True
        if self._closed_future is not None and not self._closed_future.done():
            self._closed_future.set_result(None)

    def connection_for(self, grpc_peer: str) -> Connection | None:
        """Return the connection behind a gRPC peer string, or None when it is unknown."""
        return self._registry.lookup(grpc_peer)

    async def resolve(self, conn: Connection) -> CallerState | Denial:
        """Attest the caller, match manifests and return its state or the denial; logs it."""
        evidence, outcome = await self._evaluate(conn)
        self._record(conn, evidence, outcome)
        return outcome

    async def watch(
        self, conn: Connection, *, api: StreamApi = "workload_api"
    ) -> AsyncIterator[CallerState | Denial]:
        """Yield the caller's state now and after each change; a Denial ends the watch.

        The watch wakes on manifest changes, CA changes, the SVID's refresh time, the
        earliest manifest expiry, as the SVID it sent nears expiry (should a CA notice
        be missed) and every ``reattest_interval`` seconds, and yields only
        when the state differs from the last one yielded. It ends without a Denial when
        the connection closes. ``api`` names the stream's API in the open-streams count.

        When a wake re-attests: the first pass attests on its own, like a unary call,
        so every stream start re-checks the pinned process. A later wake re-attests
        when the manifest store changed, when ``reattest_interval`` has passed since
        this stream's last attestation, or when another stream of the connection was
        denied since. Any other wake (a renewal of any SVID on the node bumps the CA's
        version) first computes the state from the last evidence and match. If that
        state equals the one last yielded, nothing is sent and nothing re-attests. If
        it differs (a renewed SVID, a new bundle), the stream re-attests before it
        sends anything, so every yield still follows a fresh attestation.

        Re-attestations after the first pass share one attestation per connection:
        a wake joins one still running for the connection if it started after the
        latest manifest and CA change that this wake has seen.
        """
        opened = self._metrics.open_stream(api) if self._metrics else contextlib.nullcontext()
        with self.callers.stream(conn, api), opened:
            previous: CallerState | None = None
            basis: _Basis | None = None
            while not conn.closed:
                if self._closed:
                    raise ResolverClosedError
                # Read the versions before resolving so a change during resolve is not lost.
                seen = self.versions
                if (
                    basis is not None
                    and previous is not None
                    and await self._nothing_to_send(conn, basis, previous)
                ):
                    await self._wait_for_change(*seen, self._wake_delay(previous, basis))
                    continue
                evidence, outcome = await self._evaluate(conn, None if basis is None else seen)
                if conn.closed:
                    return
                # Another stream of the same connection may have been granted already.
                revoking = previous is not None or bool(self.callers.record(conn).held)
                self._record(conn, evidence, outcome)
                if isinstance(outcome, Denial):
                    yield _revocation(outcome) if revoking else outcome
                    return
                basis = _Basis(outcome.evidence, outcome.matched, seen[0], time.monotonic())
                if previous is None or outcome.fingerprint() != previous.fingerprint():
                    previous = outcome
                    yield outcome
                await self._wait_for_change(*seen, self._wake_delay(outcome, basis))

    async def _nothing_to_send(
        self, conn: Connection, basis: _Basis, previous: CallerState
    ) -> bool:
        """Tell whether a wake may skip re-attestation because nothing would be sent.

        False when the store changed, ``reattest_interval`` has passed, another stream
        of the connection was denied since, or the state issued from ``basis`` differs
        from the state last yielded.
        """
        if self._store.notifier.version != basis.store_version:
            return False
        if time.monotonic() - basis.attested_at >= self._reattest_interval:
            return False
        if self.callers.record(conn).granted is None:
            return False
        current = _unexpired(basis.matched, datetime.now(UTC))
        if not current:
            return False
        state = await self._issue(basis.evidence, current)
        return state.fingerprint() == previous.fingerprint()

    async def recheck(self, conn: Connection) -> Match:
        """Attest and match ``conn`` now, without issuing, recording or counting anything."""
        if self._closed:
            raise ResolverClosedError
        attested = await self._attestor.attest(conn)
        if isinstance(attested, Denial):
            return None, attested
        return attested, self._match(attested)

    def _record(
        self, conn: Connection, evidence: Evidence | None, outcome: CallerState | Denial
    ) -> None:
        record = self.callers.record(conn)
        if isinstance(outcome, Denial):
            self._recorder.denied(record, outcome, evidence)
        else:
            self._recorder.granted(record, outcome)

    def _match(self, evidence: Evidence) -> tuple[Identity, ...] | Denial:
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
        return current

    async def _evaluate(
        self, conn: Connection, shared_since: tuple[int, int] | None = None
    ) -> tuple[Evidence | None, CallerState | Denial]:
        """Attest, match and issue; the attestation is counted once, minting excluded.

        With ``shared_since`` (store and CA versions) the attestation may be one that
        is running for the same connection and started at or after those versions.
        """
        if self._closed:
            raise ResolverClosedError
        started = time.perf_counter()
        if shared_since is None:
            attested = await self._attestor.attest(conn)
        else:
            attested = await self._shared.run(
                conn.conn_id, shared_since, self.versions, lambda: self._attestor.attest(conn)
            )
        matched = attested if isinstance(attested, Denial) else self._match(attested)
        if self._metrics is not None:
            denial = matched if isinstance(matched, Denial) else None
            self._metrics.observe_attestation(denial, time.perf_counter() - started)
        if isinstance(attested, Denial):
            return None, attested
        if isinstance(matched, Denial):
            return attested, matched
        return attested, await self._issue(attested, matched)

    async def _issue(self, evidence: Evidence, current: tuple[Identity, ...]) -> CallerState:
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

    @property
    def versions(self) -> tuple[int, int]:
        """The manifest store's and the CA's change counters; either grows on a change."""
        return self._store.notifier.version, self._authority.notifier.version

    def _wake_delay(self, state: CallerState, basis: _Basis) -> float:
        """Return seconds until the next re-check: re-attestation, SVID refresh or expiry."""
        now = datetime.now(UTC)
        reattest_at = basis.attested_at + self._reattest_interval
        deadlines: list[float] = [reattest_at - time.monotonic()]
        for held in state.identities:
            # The CA re-mints at about half of the lifetime; ask again just after that
            # point. Once it has passed, the CA's change notification reports the
            # renewal, and a 50 ms wake until then would only spin.
            lifetime = held.svid.not_after - held.svid.not_before
            refresh_at = held.svid.not_before + lifetime / 2
            refresh_in = (refresh_at - now).total_seconds() + 0.05
            if refresh_in > 0:
                deadlines.append(refresh_in)
            # A safety net for short lifetimes: ask again as the sent SVID nears expiry,
            # even if the CA's renewal notice never came (a late renewal loop, or a
            # dropped SVID). The CA renews an SVID requested after 75% of its lifetime.
            deadlines.append((held.svid.not_after - now).total_seconds() * _EXPIRY_WAKE_FRACTION)
            if held.identity.not_after is not None:
                deadlines.append((held.identity.not_after - now).total_seconds() + 0.05)
        return max(0.05, min(deadlines))

    async def _wait_for_change(self, seen_store: int, seen_ca: int, timeout: float) -> None:
        # Shared futures rather than a task per source: this runs after every yield.
        await _first_done(
            (
                self._store.notifier.next_change(seen_store),
                self._authority.notifier.next_change(seen_ca),
                self._closing(),
            ),
            timeout,
        )

    def _closing(self) -> asyncio.Future[None]:
        """Return a future, shared by all watches, that is done once ``close()`` ran."""
        if self._closed_future is None or self._closed_future.cancelled():
            self._closed_future = asyncio.get_running_loop().create_future()
            if self._closed:
                self._closed_future.set_result(None)
        return self._closed_future


@dataclass(frozen=True, slots=True)
class _Basis:
    """A stream's last attestation: its evidence, the identities it matched, the store
    version read before it, and its time.monotonic() time."""

    evidence: Evidence
    matched: tuple[Identity, ...]
    store_version: int
    attested_at: float


async def _first_done(futures: Sequence[asyncio.Future[None]], timeout: float) -> None:
    """Wait until one of ``futures`` is done or ``timeout`` seconds passed.

    A lighter asyncio.wait(FIRST_COMPLETED): one waiter and one timer, no sets. Like
    asyncio.wait, it never cancels the futures, which other watches share.
    """
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    for future in futures:
        future.add_done_callback(wake)
    timer = loop.call_later(timeout, wake)
    try:
        await waiter
    finally:
        timer.cancel()
        for future in futures:
            future.remove_done_callback(wake)


def _unexpired(identities: Sequence[Identity], now: datetime) -> tuple[Identity, ...]:
    # Fail closed even if the store has not yet noticed that a manifest expired.
    return tuple(
        identity
        for identity in identities
        if identity.not_after is None or identity.not_after > now
    )


def _revocation(denial: Denial) -> Denial:
    """Return the denial that ends a stream whose caller held an identity until now.

    A failed re-attestation after a grant means the process behind the connection is no
    longer the one that was granted (execve(), exit, socket passed on). Services map
    attestation failures to UNAVAILABLE, which invites a retry, so the stream ends with
    a revocation reason, which they map to PERMISSION_DENIED.
    """
    if not denial.is_attestation_failure:
        return denial
    return Denial(
        Reason.IDENTITY_REVOKED,
        f"identity revoked after re-attestation failed ({denial.reason}): {denial.message}",
        pid=denial.pid,
    )
