"""Unit tests for SDS Secret encoding and resource name resolution.

The SVIDs and bundles are fakes from tests/support/sds_fakes.py that carry real
certificates, because these tests check only the encoding. The Envoy tests in
test_sds_envoy.py check that Envoy accepts it.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_spiffe_validator_config_pb2

from agent.sds.encoding import (
    SPIFFE_VALIDATOR_NAME,
    EnvoyNode,
    secret_version,
    tls_certificate_secret,
    validation_context_secret,
)
from agent.sds.errors import SecretEncodingError
from agent.sds.resources import UnknownResourceError, build_secrets
from tests.support.sds_fakes import FakeBundle, MiniCA

WEB = "spiffe://example.org/ns/default/sa/web"
DB = "spiffe://example.org/ns/default/sa/db"


@pytest.fixture(scope="module")
def ca() -> MiniCA:
    return MiniCA()


def node_of(version: tuple[int, int, int] | None = None, disable: object = None) -> base_pb2.Node:
    node = base_pb2.Node(id="sidecar")
    if version is not None:
        semantic = node.user_agent_build_version.version
        semantic.major_number, semantic.minor_number, semantic.patch = version
    if disable is not None:
        node.metadata.update({"disable_spiffe_cert_validation": disable})
    return node


def test_certificate_chain_leaf_first_no_root(ca: MiniCA) -> None:
    svid = ca.svid(WEB, with_root=True)
    secret = tls_certificate_secret("default", svid)
    chain = x509.load_pem_x509_certificates(secret.tls_certificate.certificate_chain.inline_bytes)
    assert secret.name == "default"
    assert [c.subject for c in chain] == [x509.Name([]), ca.inter.subject]
    san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [WEB]


def test_certificate_key_is_pkcs8_pem_of_leaf(ca: MiniCA) -> None:
    svid = ca.svid(WEB)
    secret = tls_certificate_secret("default", svid)
    key_pem = secret.tls_certificate.private_key.inline_bytes
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(key_pem, password=None)
    leaf = x509.load_pem_x509_certificates(secret.tls_certificate.certificate_chain.inline_bytes)[0]
    public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(*public) == leaf.public_key().public_bytes(*public)


def test_validation_context_spiffe_validator(ca: MiniCA) -> None:
    secret = validation_context_secret("ROOTCA", [ca.bundle()], EnvoyNode())
    custom = secret.validation_context.custom_validator_config
    assert custom.name == SPIFFE_VALIDATOR_NAME
    config = tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig()
    assert custom.typed_config.Unpack(config)
    assert [d.name for d in config.trust_domains] == ["example.org"]
    assert config.trust_domains[0].trust_bundle.inline_bytes == ca.bundle().pem
    assert not secret.validation_context.HasField("trusted_ca")


@pytest.mark.parametrize(
    ("version", "disable", "spiffe"),
    [
        pytest.param(None, None, True, id="no-version"),
        pytest.param((1, 40, 0), None, True, id="envoy-1.40"),
        pytest.param((1, 18, 0), None, True, id="envoy-1.18"),
        pytest.param((1, 17, 4), None, False, id="envoy-1.17"),
        pytest.param((1, 40, 0), True, False, id="disabled"),
        pytest.param((1, 40, 0), False, True, id="disable-false"),
        pytest.param((1, 40, 0), "true", True, id="disable-string-ignored"),
    ],
)
def test_validator_choice(
    ca: MiniCA, version: tuple[int, int, int] | None, disable: object, spiffe: bool
) -> None:
    node = EnvoyNode.from_proto(node_of(version, disable))
    secret = validation_context_secret("ROOTCA", [ca.bundle()], node)
    context = secret.validation_context
    assert node.uses_spiffe_validator is spiffe
    assert context.HasField("custom_validator_config") is spiffe
    assert context.HasField("trusted_ca") is not spiffe
    if not spiffe:
        assert context.trusted_ca.inline_bytes == ca.bundle().pem


def test_validation_context_rejects_empty(ca: MiniCA) -> None:
    empty = FakeBundle("example.org", b"", b"")
    with pytest.raises(SecretEncodingError, match="there is no bundle to trust"):
        validation_context_secret("ROOTCA", [], EnvoyNode())
    with pytest.raises(SecretEncodingError, match=r"trust domain example\.org is empty"):
        validation_context_secret("ALL", [empty], EnvoyNode())


def test_certificate_rejects_bad_chain(ca: MiniCA) -> None:
    broken = replace(ca.svid(WEB), chain_pem=b"not a certificate")
    with pytest.raises(SecretEncodingError, match=r"'default'.*not valid PEM"):
        tls_certificate_secret("default", broken)


def test_version_changes_with_cert(ca: MiniCA) -> None:
    first = tls_certificate_secret("default", ca.svid(WEB))
    again = tls_certificate_secret("default", ca.svid(WEB))
    assert secret_version(first) == secret_version(first)
    assert secret_version(first) != secret_version(again)


@pytest.mark.parametrize(
    ("name", "kind", "spiffe_id"),
    [
        pytest.param("default", "tls_certificate", WEB, id="default"),
        pytest.param(WEB, "tls_certificate", WEB, id="first-id"),
        pytest.param(DB, "tls_certificate", DB, id="second-id"),
        pytest.param("ROOTCA", "validation_context", None, id="rootca"),
        pytest.param("spiffe://example.org", "validation_context", None, id="trust-domain-id"),
        pytest.param("ALL", "validation_context", None, id="all"),
    ],
)
def test_resource_names(ca: MiniCA, name: str, kind: str, spiffe_id: str | None) -> None:
    state = ca.state(WEB, DB)
    secrets = build_secrets([name], state, EnvoyNode())
    secret = secrets[name]
    assert list(secrets) == [name]
    assert secret.name == name
    assert secret.WhichOneof("type") == kind
    if spiffe_id is not None:
        leaf = x509.load_pem_x509_certificates(
            secret.tls_certificate.certificate_chain.inline_bytes
        )[0]
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe_id]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("file-cert:/a~/b", id="file-cert"),
        pytest.param("file-root:/c", id="file-root"),
        pytest.param("spiffe://example.org/ns/default/sa/other", id="id-not-held"),
        pytest.param("spiffe://other.org", id="foreign-trust-domain"),
        pytest.param("spiffe://example.org/ns/default/sa/web/", id="trailing-slash"),
        pytest.param("SPIFFE://example.org/ns/default/sa/web", id="upper-scheme"),
        pytest.param("Default", id="default-upper"),
        pytest.param("", id="empty"),
        pytest.param("*", id="wildcard"),
    ],
)
def test_resource_name_rejected(ca: MiniCA, name: str) -> None:
    state = ca.state(WEB)
    with pytest.raises(UnknownResourceError) as caught:
        build_secrets(["default", name], state, EnvoyNode())
    assert caught.value.resource == name
    assert repr(name) in str(caught.value)


def test_resource_names_deduplicated(ca: MiniCA) -> None:
    secrets = build_secrets(["ROOTCA", "default", "ROOTCA"], ca.state(WEB), EnvoyNode())
    assert list(secrets) == ["ROOTCA", "default"]


def test_encoding_imports_no_grpc() -> None:
    # A fresh interpreter, because this pytest process has loaded grpc already.
    script = (
        "import sys, agent.sds.encoding, agent.sds.resources, agent.sds.protocol; "
        "print(sorted(m for m in sys.modules if m == 'grpc' or m.startswith('grpc.')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
