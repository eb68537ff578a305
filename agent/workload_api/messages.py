"""Workload API response messages built from a caller's state.

Pure functions: each takes a CallerState (or a bundle) and returns the protobuf message
the standard defines. Certificates and keys are DER, bundles are concatenated DER CA
certificates, JWT bundles are JWKS JSON bytes, and every bundle map is keyed by the
trust domain ID (``spiffe://example.org``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from agent._proto import workload_pb2
from agent.identities import CallerState, JwtBundle, X509Bundle
from agent.spiffeid import SCHEME_PREFIX, parse_trust_domain

__all__ = [
    "jwt_bundles_response",
    "jwt_svid_response",
    "trust_domain_id",
    "validate_jwt_svid_response",
    "x509_bundles_response",
    "x509_svid_response",
]


def trust_domain_id(trust_domain: object) -> str:
    """Return the bundle map key for a trust domain name or ID: ``spiffe://<name>``."""
    return SCHEME_PREFIX + parse_trust_domain(str(trust_domain))


def x509_svid_response(state: CallerState) -> Any:
    """Build an X509SVIDResponse holding every SVID of the caller, default first."""
    bundle_der = state.bundle.der
    svids = [
        workload_pb2.X509SVID(
            spiffe_id=held.identity.spiffe_id,
            x509_svid=held.svid.chain_der,
            x509_svid_key=held.svid.key_der,
            bundle=bundle_der,
            hint=held.identity.hint,
        )
        for held in state.identities
    ]
    # TODO: federated bundles and CRLs are not supported; both fields stay empty.
    return workload_pb2.X509SVIDResponse(svids=svids)


def x509_bundles_response(bundle: X509Bundle) -> Any:
    """Build an X509BundlesResponse with the agent's own trust domain bundle."""
    return workload_pb2.X509BundlesResponse(
        bundles={trust_domain_id(bundle.trust_domain): bundle.der}
    )


def jwt_bundles_response(bundle: JwtBundle) -> Any:
    """Build a JWTBundlesResponse with the agent's JWKS document."""
    return workload_pb2.JWTBundlesResponse(
        bundles={trust_domain_id(bundle.trust_domain): bundle.jwks}
    )


def jwt_svid_response(tokens: Iterable[tuple[str, str, str]]) -> Any:
    """Build a JWTSVIDResponse from (spiffe_id, token, hint) triples."""
    return workload_pb2.JWTSVIDResponse(
        svids=[
            workload_pb2.JWTSVID(spiffe_id=spiffe_id, svid=token, hint=hint)
            for spiffe_id, token, hint in tokens
        ]
    )


def validate_jwt_svid_response(spiffe_id: str, claims: Mapping[str, Any]) -> Any:
    """Build a ValidateJWTSVIDResponse; claim numbers become doubles, as in JSON."""
    response = workload_pb2.ValidateJWTSVIDResponse(spiffe_id=spiffe_id)
    response.claims.update(dict(claims))
    return response
