"""End to end: the agent as a subprocess, workloads in real pod cgroups, py-spiffe clients.

Each workload is a copy of the Python interpreter with distinct bytes appended (its own
SHA-256), started inside a pod cgroup under /sys/fs/cgroup/unified, running a py-spiffe
script from tests/support that reaches the agent through SPIFFE_ENDPOINT_SOCKET.
py-spiffe runs only in those children: it registers the same protobuf message names as
agent._proto, which this process imports for the raw gRPC checks.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from agent._proto import workload_pb2, workload_pb2_grpc
from tests.support.agent_process import AgentFiles, agent_files, sign_manifest, start_agent
from tests.support.cgroups import TestCgroup, pod_cgroup
from tests.support.processes import (
    ChildProcess,
    CopiedBinary,
    copy_python,
    start_process,
)

SUPPORT = Path(__file__).resolve().parent / "support"
FETCH_SCRIPT = SUPPORT / "client_fetch.py"
SOURCE_SCRIPT = SUPPORT / "client_source.py"
NAMESPACE = "demo"

# Functional deadlines. Rotation happens at half of a 10 s TTL, so an update is due
# within about 5 s. The rest is room for a loaded machine.
ROTATION_DEADLINE_SECONDS = 25.0
EVENT_DEADLINE_SECONDS = 20.0


@pytest.fixture(scope="module")
def pythons(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CopiedBinary]:
    """Two interpreter copies with different digests that can import py-spiffe."""
    directory = tmp_path_factory.mktemp("pythons")
    return {
        name: copy_python(directory, f"e2e-{name}", site_packages=True)
        for name in ("web", "other")
    }


def spiffe_id(files: AgentFiles, service_account: str) -> str:
    return f"spiffe://{files.trust_domain}/ns/{NAMESPACE}/sa/{service_account}"


def pod_manifest(
    files: AgentFiles,
    pod: TestCgroup,
    binary: CopiedBinary,
    service_account: str,
    **extra: object,
) -> dict[str, object]:
    return {
        "spiffe_id": spiffe_id(files, service_account),
        "exe_sha256": [binary.sha256],
        "pod_uid": pod.pod_uid,
        "namespace": NAMESPACE,
        "service_account": service_account,
        **extra,
    }


def run_fetch(
    files: AgentFiles, binary: CopiedBinary, pod: TestCgroup | None, *args: str
) -> dict[str, object]:
    """Run client_fetch.py in ``binary`` (inside ``pod`` if given) and return its JSON."""
    with start_process(
        [str(binary.path), str(FETCH_SCRIPT), *args],
        env={**binary.env, "SPIFFE_ENDPOINT_SOCKET": files.endpoint},
        cgroup_dirs=[pod.path] if pod is not None else [],
    ) as child:
        line = child.read_line(deadline=60)
    result: dict[str, object] = json.loads(line)
    return result


@contextmanager
def watching_source(
    files: AgentFiles, binary: CopiedBinary, pod: TestCgroup
) -> Iterator[SourceClient]:
    with start_process(
        [str(binary.path), str(SOURCE_SCRIPT)],
        env={**binary.env, "SPIFFE_ENDPOINT_SOCKET": files.endpoint},
        cgroup_dirs=[pod.path],
    ) as child:
        yield SourceClient(child)


@dataclass
class SourceClient:
    """client_source.py running in a workload: JSON events on stdout, commands on stdin."""

    child: ChildProcess

    def next_event(self, kind: str, deadline: float = EVENT_DEADLINE_SECONDS) -> dict[str, object]:
        end = time.monotonic() + deadline
        while True:
            line = self.child.read_line(max(0.1, end - time.monotonic()))
            decoded: dict[str, object] = json.loads(line)
            if decoded.get("event") == kind:
                return decoded

    def fetch(self) -> dict[str, object]:
        self.child.send_line("fetch")
        return self.next_event("fetch")


def write_pem(path: Path, pems: list[str]) -> Path:
    path.write_text("".join(pems))
    return path


def test_e2e_x509_svid_verifies(
    pythons: dict[str, CopiedBinary], tmp_path: Path
) -> None:
    web = pythons["web"]
    with agent_files() as files, start_agent(files) as agent, pod_cgroup() as pod:
        sign_manifest(files, "web", pod_manifest(files, pod, web, "web"))
        agent.wait_for_log("manifest loaded", "web.json")
        result = run_fetch(files, web, pod, "x509")

    assert "error" not in result, result
    assert result["spiffe_id"] == spiffe_id(files, "web")
    assert result["svid_count"] == 1
    chain = result["chain"]
    assert isinstance(chain, list)
    assert len(chain) >= 2, "the chain holds the leaf and the signing intermediate"
    bundles = result["bundles"]
    assert isinstance(bundles, dict)
    assert list(bundles) == ["cluster.local"]

    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    uris = leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == [spiffe_id(files, "web")]
    root_pems = bundles["cluster.local"]
    roots = [x509.load_pem_x509_certificate(pem.encode()) for pem in root_pems]
    assert leaf not in roots

    leaf_file = write_pem(tmp_path / "leaf.pem", chain[:1])
    untrusted = write_pem(tmp_path / "intermediates.pem", chain[1:])
    bundle_file = write_pem(tmp_path / "bundle.pem", root_pems)
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(bundle_file), "-untrusted", str(untrusted),
         str(leaf_file)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"{leaf_file}: OK" in verify.stdout


def test_e2e_denials_keep_serving(pythons: dict[str, CopiedBinary]) -> None:
    web, other = pythons["web"], pythons["other"]
    with ExitStack() as stack:
        files = stack.enter_context(agent_files())
        agent = stack.enter_context(start_agent(files))
        good_pod = stack.enter_context(pod_cgroup())
        tampered_pod = stack.enter_context(pod_cgroup())
        expired_pod = stack.enter_context(pod_cgroup())

        sign_manifest(files, "good", pod_manifest(files, good_pod, web, "web"))
        tampered = sign_manifest(
            files, "tampered", pod_manifest(files, tampered_pod, web, "tampered")
        )
        # Change one byte of the signed content: the signature no longer verifies.
        tampered.write_text(tampered.read_text().replace(NAMESPACE, "demp"))
        past = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        sign_manifest(
            files, "expired", pod_manifest(files, expired_pod, web, "expired", not_after=past)
        )
        agent.wait_for_log("manifest rejected", "tampered.json")

        source = stack.enter_context(watching_source(files, web, good_pod))
        first = source.next_event("update")
        assert first["spiffe_id"] == spiffe_id(files, "web")

        cases = [
            ("outside-pod", web, None, "no_manifest_for_workload"),
            ("other-binary", other, good_pod, "exe_hash_mismatch"),
            ("tampered-manifest", web, tampered_pod, "no_manifest_for_workload"),
            ("expired-manifest", web, expired_pod, "manifest_expired"),
        ]
        for case, binary, pod, reason in cases:
            result = run_fetch(files, binary, pod, "x509")
            error = str(result.get("error", ""))
            assert "PERMISSION_DENIED" in error, f"{case}: {result}"
            assert f"({reason})" in error, f"{case}: {result}"

        assert "tampered.json" in agent.wait_for_log("manifest rejected", "tampered.json")
        # The good workload is still served, both on its stream and on a new call.
        fetched = source.fetch()
        assert fetched.get("spiffe_id") == spiffe_id(files, "web"), fetched
        assert fetched["serial"] == first["serial"]
        assert run_fetch(files, web, good_pod, "x509")["spiffe_id"] == spiffe_id(files, "web")


def test_e2e_source_rotation_and_loss(pythons: dict[str, CopiedBinary]) -> None:
    web = pythons["web"]
    with ExitStack() as stack:
        files = stack.enter_context(agent_files(x509_svid_ttl=10))
        agent = stack.enter_context(start_agent(files))
        pod = stack.enter_context(pod_cgroup())
        manifest = sign_manifest(files, "web", pod_manifest(files, pod, web, "web"))
        agent.wait_for_log("manifest loaded", "web.json")

        source = stack.enter_context(watching_source(files, web, pod))
        first = source.next_event("update")
        source.next_event("watching")
        rotated = source.next_event("update", deadline=ROTATION_DEADLINE_SECONDS)
        assert rotated["spiffe_id"] == first["spiffe_id"] == spiffe_id(files, "web")
        assert rotated["serial"] != first["serial"]

        manifest.unlink()
        manifest.with_name("web.json.sig").unlink()
        ended = source.next_event("stream_error")
        assert "PERMISSION_DENIED" in str(ended["error"]), ended
        denied = source.fetch()
        assert "PERMISSION_DENIED" in str(denied.get("error")), denied
        assert "(no_manifest_for_workload)" in str(denied.get("error")), denied
        revoked = agent.wait_for_log("identity revoked", spiffe_id(files, "web"))
        assert "reason=no_manifest_for_workload" in revoked


def test_e2e_jwt_fetch_and_validate(pythons: dict[str, CopiedBinary]) -> None:
    web = pythons["web"]
    with agent_files() as files, start_agent(files) as agent, pod_cgroup() as pod:
        sign_manifest(files, "web", pod_manifest(files, pod, web, "web"))
        agent.wait_for_log("manifest loaded", "web.json")
        result = run_fetch(files, web, pod, "jwt", "audience-a", "audience-b")
        log_text = agent.log_text()

    assert "error" not in result, result
    assert result["spiffe_id"] == spiffe_id(files, "web")
    assert result["validated_spiffe_id"] == spiffe_id(files, "web")
    assert result["audience"] == ["audience-a"]
    assert "INVALID_ARGUMENT" in str(result["wrong_audience"]), result
    assert "audience_mismatch" in str(result["wrong_audience"]), result
    assert result["jwt_bundle_trust_domains"] == ["cluster.local"]
    token = str(result["token"])
    header_part, claims_part, _ = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(header_part + "=" * (-len(header_part) % 4)))
    claims = json.loads(base64.urlsafe_b64decode(claims_part + "=" * (-len(claims_part) % 4)))
    assert header["kid"]
    assert claims["sub"] == spiffe_id(files, "web")
    assert claims["aud"] in ("audience-a", ["audience-a"])
    assert token not in log_text, "tokens must never be logged"


def test_e2e_missing_header_invalid_argument() -> None:
    with agent_files() as files, start_agent(files), grpc.insecure_channel(
        f"unix:{files.socket_path}"
    ) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        calls = {
            "FetchX509SVID": lambda: next(stub.FetchX509SVID(workload_pb2.X509SVIDRequest())),
            "FetchJWTSVID": lambda: stub.FetchJWTSVID(
                workload_pb2.JWTSVIDRequest(audience=["a"])
            ),
            "ValidateJWTSVID": lambda: stub.ValidateJWTSVID(
                workload_pb2.ValidateJWTSVIDRequest(audience="a", svid="x")
            ),
        }
        for method, call in calls.items():
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert "security header" in caught.value.details(), method

        wit = channel.unary_unary("/SpiffeWorkloadAPI/FetchWITSVID")
        with pytest.raises(grpc.RpcError) as caught:
            wit(b"", metadata=(("workload.spiffe.io", "true"),), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
