"""Resolve SDS resource names to the Secrets a caller is entitled to.

Callers pass every requested name through ``build_secrets``. A name outside the forms
below raises UnknownResourceError, which the servicer turns into INVALID_ARGUMENT; a name
never falls back to another identity, so Envoy cannot end up presenting a certificate
that its configuration did not ask for.

- ``default``: the TlsCertificate of the caller's first identity;
- a SPIFFE ID that the caller holds: that identity's TlsCertificate;
- ``ROOTCA`` or the trust domain's ID ``spiffe://<trust domain>``: a validation context;
- ``ALL``: a validation context with every bundle the agent serves.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from agent.identities import CallerState
from agent.sds.encoding import EnvoyNode, tls_certificate_secret, validation_context_secret
from agent.sds.errors import InvalidRequestError, SdsError, UnknownResourceError
from agent.spiffeid import SCHEME_PREFIX, parse_trust_domain

__all__ = [
    "ALL_BUNDLES",
    "DEFAULT_CERTIFICATE",
    "ROOT_CA",
    "InvalidRequestError",
    "SdsError",
    "UnknownResourceError",
    "build_secrets",
]

DEFAULT_CERTIFICATE = "default"
ROOT_CA = "ROOTCA"
ALL_BUNDLES = "ALL"


def build_secrets(
    names: Iterable[str], state: CallerState, node: EnvoyNode
) -> dict[str, secret_pb2.Secret]:
    """Return one Secret per distinct name, in request order, or raise UnknownResourceError."""
    secrets: dict[str, secret_pb2.Secret] = {}
    for name in names:
        if name not in secrets:
            secrets[name] = _build_secret(name, state, node)
    return secrets


def _build_secret(name: str, state: CallerState, node: EnvoyNode) -> secret_pb2.Secret:
    if name == DEFAULT_CERTIFICATE:
        return tls_certificate_secret(name, state.identities[0].svid)
    trust_domain_id = SCHEME_PREFIX + parse_trust_domain(str(state.bundle.trust_domain))
    if name in (ROOT_CA, trust_domain_id):
        return validation_context_secret(name, [state.bundle], node)
    if name == ALL_BUNDLES:
        # TODO: add federated bundles here once CallerState carries them.
        return validation_context_secret(name, [state.bundle], node)
    # Exact match only: the held IDs were validated when their manifests were loaded.
    for held in state.identities:
        if held.identity.spiffe_id == name:
            return tls_certificate_secret(name, held.svid)
    raise UnknownResourceError(name)
