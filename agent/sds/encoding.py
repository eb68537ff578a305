"""Encode SVIDs and trust bundles as Envoy SDS v3 Secrets.

Pure functions over the generated xds-protos types; no grpc and no I/O. Callers pass an
EnvoyNode, built once per stream from the first request's ``node``, so that the
validation context uses only what that Envoy build supports.

Encoding rules that Envoy relies on (checked against Envoy 1.40.0):

- certificate chain and private key are inline PEM; the chain starts with the leaf,
  because Envoy pairs the first certificate with the key, and contains no root;
- the private key is PKCS#8 PEM;
- a validation context uses the SPIFFE certificate validator with one PEM bundle per
  trust domain, unless the node opts out or is older than Envoy 1.18, which has no
  such validator; then it gets a plain ``trusted_ca``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import (
    secret_pb2,
    tls_spiffe_validator_config_pb2,
)

from agent.identities import X509Bundle, X509Svid
from agent.sds.errors import SecretEncodingError
from agent.spiffeid import parse_trust_domain

__all__ = [
    "SECRET_TYPE_URL",
    "SPIFFE_VALIDATOR_MIN_VERSION",
    "SPIFFE_VALIDATOR_NAME",
    "EnvoyNode",
    "secret_version",
    "tls_certificate_secret",
    "validation_context_secret",
]

SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"  # noqa: S105
SPIFFE_VALIDATOR_NAME = "envoy.tls.cert_validator.spiffe"
# The SPIFFE certificate validator extension first shipped in Envoy 1.18.0.
SPIFFE_VALIDATOR_MIN_VERSION = (1, 18, 0)
# Node metadata key (the one SPIRE's agent reads) with which an Envoy requests trusted_ca.
DISABLE_SPIFFE_VALIDATION_KEY = "disable_spiffe_cert_validation"


@dataclass(frozen=True, slots=True)
class EnvoyNode:
    """Facts about the Envoy on one stream, taken from the first request's ``node``.

    ``build_version`` is None when the node does not report user_agent_build_version;
    such a node is treated as new enough for the SPIFFE validator.
    """

    node_id: str = ""
    build_version: tuple[int, int, int] | None = None
    disable_spiffe_validation: bool = False

    @classmethod
    def from_proto(cls, node: base_pb2.Node) -> EnvoyNode:
        """Read the node id, build version and the opt-out flag from a request's node."""
        version: tuple[int, int, int] | None = None
        if node.HasField("user_agent_build_version"):
            semantic = node.user_agent_build_version.version
            version = (semantic.major_number, semantic.minor_number, semantic.patch)
        disable = False
        field = node.metadata.fields.get(DISABLE_SPIFFE_VALIDATION_KEY)
        # Only a boolean true opts out; a string such as "true" is not a boolean value.
        if field is not None and field.WhichOneof("kind") == "bool_value":
            disable = field.bool_value
        return cls(node_id=node.id, build_version=version, disable_spiffe_validation=disable)

    @property
    def uses_spiffe_validator(self) -> bool:
        if self.disable_spiffe_validation:
            return False
        return self.build_version is None or self.build_version >= SPIFFE_VALIDATOR_MIN_VERSION


def tls_certificate_secret(name: str, svid: X509Svid) -> secret_pb2.Secret:
    """Build a Secret named ``name`` holding the SVID's chain (leaf first, no root) and key."""
    secret = secret_pb2.Secret(name=name)
    secret.tls_certificate.certificate_chain.inline_bytes = _chain_without_roots(
        name, svid.chain_pem
    )
    secret.tls_certificate.private_key.inline_bytes = svid.key_pem
    return secret


def validation_context_secret(
    name: str, bundles: Sequence[X509Bundle], node: EnvoyNode
) -> secret_pb2.Secret:
    """Build a Secret named ``name`` that trusts every CA in ``bundles``.

    Raises SecretEncodingError for an empty bundle list or a bundle without
    certificates, because Envoy would then reject every peer.
    """
    if not bundles:
        raise SecretEncodingError(name, "there is no bundle to trust")
    for bundle in bundles:
        if not bundle.pem.strip():
            raise SecretEncodingError(
                name, f"the bundle of trust domain {bundle.trust_domain} is empty"
            )
    secret = secret_pb2.Secret(name=name)
    context = secret.validation_context
    if node.uses_spiffe_validator:
        config = tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig()
        for bundle in bundles:
            domain = config.trust_domains.add()
            domain.name = parse_trust_domain(str(bundle.trust_domain))
            domain.trust_bundle.inline_bytes = bundle.pem
        context.custom_validator_config.name = SPIFFE_VALIDATOR_NAME
        context.custom_validator_config.typed_config.Pack(config)
    else:
        context.trusted_ca.inline_bytes = b"".join(_with_newline(b.pem) for b in bundles)
    return secret


def secret_version(secret: secret_pb2.Secret) -> str:
    """Return a short content digest of the Secret, used as its xDS version.

    The private key is left out of the digest: the key changes only together with its
    certificate, and a digest of key bytes has no business on the wire.
    """
    public = secret_pb2.Secret()
    public.CopyFrom(secret)
    if public.HasField("tls_certificate"):
        public.tls_certificate.ClearField("private_key")
    return hashlib.sha256(public.SerializeToString(deterministic=True)).hexdigest()[:16]


def _chain_without_roots(name: str, chain_pem: bytes) -> bytes:
    try:
        certificates = x509.load_pem_x509_certificates(chain_pem)
    except ValueError as err:
        raise SecretEncodingError(name, f"the SVID chain is not valid PEM ({err})") from err
    # Keep the leaf even if it is self-issued, but drop self-issued CAs after it. Peers
    # must anchor trust in their own bundle, never in a root that the chain brings along.
    kept = [certificates[0]] + [c for c in certificates[1:] if c.subject != c.issuer]
    return b"".join(c.public_bytes(Encoding.PEM) for c in kept)


def _with_newline(pem: bytes) -> bytes:
    return pem if pem.endswith(b"\n") else pem + b"\n"
