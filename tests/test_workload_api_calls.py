"""Workload API status codes and messages, called with raw grpc from this test process.

The agent runs as a subprocess; this pytest process is the workload. Manifests grant
identities to its interpreter's digest with the ``uid`` selector (the test runs as
root), so the agent attests this very process on every call.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent._proto import workload_pb2, workload_pb2_grpc
from tests.support.agent_process import (
    AgentFiles,
    AgentProcess,
    agent_files,
    sign_manifest,
    start_agent,
)

HEADER = (("workload.spiffe.io", "true"),)
CALL_TIMEOUT = 20.0
MAIN_ID = "spiffe://cluster.local/host/main"
SECOND_ID = "spiffe://cluster.local/host/second"


def interpreter_digest() -> str:
    return hashlib.sha256(Path(os.path.realpath(sys.executable)).read_bytes()).hexdigest()


def host_manifest(spiffe_id: str, **extra: object) -> dict[str, object]:
    return {"spiffe_id": spiffe_id, "exe_sha256": [interpreter_digest()], "uid": os.getuid(),
            **extra}


@pytest.fixture
def running() -> Iterator[tuple[AgentFiles, AgentProcess, Any]]:
    if os.geteuid() != 0:
        pytest.skip("the agent must run as root to read this process's /proc entries")
    with agent_files() as files, start_agent(files) as agent:
        sign_manifest(files, "10-main", host_manifest(MAIN_ID, hint="main"))
        agent.wait_for_log("manifest loaded", "10-main.json")
        with grpc.insecure_channel(f"unix:{files.socket_path}") as channel:
            yield files, agent, workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)


def status_of(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def split_der(data: bytes) -> list[x509.Certificate]:
    certificates = []
    while data:
        length_byte = data[1]
        if length_byte < 0x80:
            end = 2 + length_byte
        else:
            count = length_byte & 0x7F
            end = 2 + count + int.from_bytes(data[2 : 2 + count], "big")
        certificates.append(x509.load_der_x509_certificate(data[:end]))
        data = data[end:]
    return certificates


def test_x509_svid_encoding(running: tuple[AgentFiles, AgentProcess, Any]) -> None:
    _, _, stub = running
    stream = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER,
                                timeout=CALL_TIMEOUT)
    response = next(stream)
    stream.cancel()

    assert [svid.spiffe_id for svid in response.svids] == [MAIN_ID]
    svid = response.svids[0]
    assert svid.hint == "main"
    chain = split_der(svid.x509_svid)
    assert len(chain) >= 2
    key = serialization.load_der_private_key(svid.x509_svid_key, password=None)
    leaf_public = chain[0].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == leaf_public
    roots = split_der(svid.bundle)
    assert roots
    assert all(root.subject == root.issuer for root in roots)
    assert list(response.federated_bundles) == []


def test_bundles_keyed_by_trust_domain_id(running: tuple[AgentFiles, AgentProcess, Any]) -> None:
    _, _, stub = running
    x509_stream = stub.FetchX509Bundles(workload_pb2.X509BundlesRequest(), metadata=HEADER,
                                        timeout=CALL_TIMEOUT)
    x509_bundles = next(x509_stream)
    x509_stream.cancel()
    jwt_stream = stub.FetchJWTBundles(workload_pb2.JWTBundlesRequest(), metadata=HEADER,
                                      timeout=CALL_TIMEOUT)
    jwt_bundles = next(jwt_stream)
    jwt_stream.cancel()

    assert list(x509_bundles.bundles) == ["spiffe://cluster.local"]
    assert split_der(x509_bundles.bundles["spiffe://cluster.local"])
    assert list(jwt_bundles.bundles) == ["spiffe://cluster.local"]
    jwks = json.loads(jwt_bundles.bundles["spiffe://cluster.local"])
    assert jwks["keys"]
    assert all(key.get("kid") for key in jwks["keys"])


def test_jwt_svid_rules(running: tuple[AgentFiles, AgentProcess, Any]) -> None:
    _, _, stub = running
    cases = {
        "no-audience": (workload_pb2.JWTSVIDRequest(), grpc.StatusCode.INVALID_ARGUMENT,
                        "audience must be specified"),
        "empty-audience": (workload_pb2.JWTSVIDRequest(audience=[""]),
                           grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified"),
        "invalid-id": (workload_pb2.JWTSVIDRequest(audience=["a"], spiffe_id="spiffe://X/y"),
                       grpc.StatusCode.INVALID_ARGUMENT, "invalid spiffe_id"),
        "not-held": (workload_pb2.JWTSVIDRequest(audience=["a"], spiffe_id=SECOND_ID),
                     grpc.StatusCode.PERMISSION_DENIED, "(spiffe_id_not_held)"),
    }
    for case, (request, code, text) in cases.items():
        error = status_of(lambda request=request: stub.FetchJWTSVID(
            request, metadata=HEADER, timeout=CALL_TIMEOUT))
        assert error.code() == code, case
        assert text in error.details(), case

    held = stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["a", "b"], spiffe_id=MAIN_ID),
                             metadata=HEADER, timeout=CALL_TIMEOUT)
    assert [svid.spiffe_id for svid in held.svids] == [MAIN_ID]
    assert held.svids[0].hint == "main"


def test_validate_jwt_svid(running: tuple[AgentFiles, AgentProcess, Any]) -> None:
    _, _, stub = running
    token = stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["api"]), metadata=HEADER,
                              timeout=CALL_TIMEOUT).svids[0].svid
    valid = stub.ValidateJWTSVID(workload_pb2.ValidateJWTSVIDRequest(audience="api", svid=token),
                                 metadata=HEADER, timeout=CALL_TIMEOUT)
    assert valid.spiffe_id == MAIN_ID
    assert valid.claims["sub"] == MAIN_ID
    assert "exp" in valid.claims

    cases = {
        "no-audience": (workload_pb2.ValidateJWTSVIDRequest(svid=token),
                        "audience must be specified"),
        "no-svid": (workload_pb2.ValidateJWTSVIDRequest(audience="api"),
                    "svid must be specified"),
        "wrong-audience": (workload_pb2.ValidateJWTSVIDRequest(audience="other", svid=token),
                           "(audience_mismatch)"),
        "malformed": (workload_pb2.ValidateJWTSVIDRequest(audience="api", svid="a.b.c"),
                      "invalid JWT-SVID"),
    }
    for case, (request, text) in cases.items():
        error = status_of(lambda request=request: stub.ValidateJWTSVID(
            request, metadata=HEADER, timeout=CALL_TIMEOUT))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, case
        assert text in error.details(), case
        assert token not in error.details(), case


def test_stream_skips_identical_and_revokes(
    running: tuple[AgentFiles, AgentProcess, Any],
) -> None:
    files, agent, stub = running
    stream = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER,
                                timeout=60)
    first = next(stream)
    assert [svid.spiffe_id for svid in first.svids] == [MAIN_ID]

    # A manifest for another workload changes the manifest set but not this caller's
    # state, so the stream must send nothing for it: the next message is the one that
    # adds the second identity.
    sign_manifest(files, "05-unrelated", {
        "spiffe_id": "spiffe://cluster.local/host/unrelated",
        "exe_sha256": ["0" * 64],
        "uid": os.getuid(),
    })
    agent.wait_for_log("manifest loaded", "05-unrelated.json")
    sign_manifest(files, "20-second", host_manifest(SECOND_ID))
    second = next(stream)
    assert [svid.spiffe_id for svid in second.svids] == [MAIN_ID, SECOND_ID]
    assert second.svids[0].x509_svid == first.svids[0].x509_svid

    for name in ("10-main", "20-second"):
        (files.manifests_dir / f"{name}.json").unlink()
    error = status_of(lambda: next(stream))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    # The unrelated manifest still names this placement, so it is the nearest miss.
    assert "(exe_hash_mismatch)" in error.details()
    agent.wait_for_log("identity revoked", f"spiffe_id={MAIN_ID}")


def test_expired_identity_revoked(running: tuple[AgentFiles, AgentProcess, Any]) -> None:
    """A manifest whose not_after passes while a stream is open ends that stream."""
    files, agent, stub = running
    (files.manifests_dir / "10-main.json").unlink()
    soon = (datetime.now(UTC) + timedelta(seconds=6)).strftime("%Y-%m-%dT%H:%M:%SZ")
    sign_manifest(files, "30-short", host_manifest(MAIN_ID, not_after=soon))
    agent.wait_for_log("manifest loaded", "30-short.json")
    stream = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=60)
    responses = []
    error = status_of(lambda: responses.extend(stream))
    assert responses, "the identity was issued before it expired"
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "(manifest_expired)" in error.details()
