"""Types at the edges of the IdentityResolver (agent.identities).

The Protocol classes describe the components a resolver is built from: the peer
registry, the attestor, the manifest store and the CA. CallerState and CallerIdentity
are what ``resolve`` and ``watch`` hand to the services.

Callers import these names from agent.identities, which re-exports them. A
CallerState is frozen. To tell whether anything sent to the caller changed, compare
the ``fingerprint()`` of two states.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.attest.evidence import Evidence
from agent.ca import JwtBundle, X509Bundle, X509Svid
from agent.denial import Denial
from agent.manifests.identity import Identity
from agent.notify import Notifier
from agent.peer.connection import Connection

__all__ = [
    "Attestor",
    "Authority",
    "CallerIdentity",
    "CallerState",
    "ManifestMatcher",
    "PeerRegistry",
]


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
    def matched(self) -> tuple[Identity, ...]:
        return tuple(held.identity for held in self.identities)

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
