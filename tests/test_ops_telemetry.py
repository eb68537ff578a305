"""Operations of the running agent: sd_notify, health endpoints, metrics and the audit log.

Every test runs the agent as a subprocess (tests/support/agent_process.py) with its
health server on a free loopback port, and real workloads: copied interpreters in pod
cgroups holding FetchX509SVID streams (tests/support/ops_stream.py).
"""

from __future__ import annotations

import json
import math
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.telemetry.audit import AUDIT_FIELDS
from tests.support.agent_process import (
    REPO_ROOT,
    AgentFiles,
    AgentProcess,
    agent_files,
    sign_manifest,
    start_agent,
)
from tests.support.cgroups import TestCgroup, pod_cgroup
from tests.support.ops_agent import (
    StreamClient,
    audit_lines,
    health_port,
    http_get,
    open_stream,
    sample,
    scrape,
    wait_for_sample,
)
from tests.support.processes import CopiedBinary, copy_python

NAMESPACE = "demo"
PREFIX = "attest_agent"

# Functional deadline for a datagram from the agent; not a measurement.
NOTIFY_DEADLINE_SECONDS = 30.0
# A 10 s TTL renews at about 5 s; the rest is room for a loaded machine.
SHORT_TTL_SECONDS = 10
ROTATION_DEADLINE_SECONDS = 25.0


@pytest.fixture(scope="module")
def pythons(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CopiedBinary]:
    directory = tmp_path_factory.mktemp("ops-telemetry")
    return {name: copy_python(directory, f"ops-{name}") for name in ("web", "other")}


def web_id(files: AgentFiles) -> str:
    return f"spiffe://{files.trust_domain}/ns/{NAMESPACE}/sa/web"


def grant_web(files: AgentFiles, agent: AgentProcess, pod: TestCgroup, web: CopiedBinary) -> Path:
    manifest = sign_manifest(files, "web", {
        "spiffe_id": web_id(files),
        "exe_sha256": [web.sha256],
        "pod_uid": pod.pod_uid,
        "namespace": NAMESPACE,
        "service_account": "web",
    })
    agent.wait_for_log("manifest loaded", "web.json")
    return manifest


def with_config(files: AgentFiles, text: str) -> AgentFiles:
    files.config.write_text(files.config.read_text() + text)
    return files


@pytest.fixture
def notify_listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.settimeout(NOTIFY_DEADLINE_SECONDS)
    try:
        yield path, sock
    finally:
        sock.close()


def receive_state(sock: socket.socket) -> tuple[bytes, int]:
    """Return one sd_notify datagram and the pid from its SCM_CREDENTIALS."""
    message, ancillary, _flags, _address = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    credentials = [data for _level, kind, data in ancillary if kind == socket.SCM_CREDENTIALS]
    pid, _uid, _gid = struct.unpack("iII", credentials[0])
    return message, pid


def test_notify_ready_and_stopping(
    notify_listener: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, sock = notify_listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    with agent_files() as files, start_agent(files) as agent:
        ready, ready_pid = receive_state(sock)
        port = health_port(agent)
        status, _body = http_get(port, "/ready")
        stopped = agent.stop()
        stopping, stopping_pid = receive_state(sock)

    assert ready == b"READY=1"
    # Type=notify with NotifyAccess=main accepts only the main process's messages.
    assert ready_pid == agent.pid
    assert status == 200, "READY=1 is sent only once the agent is ready"
    assert stopped == 0
    assert stopping == b"STOPPING=1"
    assert stopping_pid == agent.pid


def test_health_live_and_ready() -> None:
    with agent_files() as files, start_agent(files) as agent:
        port = health_port(agent)
        live = http_get(port, "/live")
        ready = http_get(port, "/ready")
        missing = http_get(port, "/health")

    assert live == (200, "live\n")
    assert ready[0] == 200
    document = json.loads(ready[1])
    assert document["ready"] is True
    assert document["checks"] == {
        "ca_loaded": True, "manifests_loaded": True, "socket_serving": True,
    }
    assert missing[0] == 404


def test_health_disabled() -> None:
    with agent_files(extra_config='health_address = ""\n') as files, start_agent(files) as agent:
        log_text = agent.log_text()
    assert "agent started" in log_text
    assert "health server listening" not in log_text


def test_started_log_counts_keys() -> None:
    with agent_files() as files, start_agent(files) as agent:
        started = agent.wait_for_log("agent started")
    # The test config trusts one manifest signing key.
    assert " manifest_keys=1" in started
    assert " count=" not in started


@pytest.mark.parametrize(
    "service", ["", "SpiffeWorkloadAPI", "envoy.service.secret.v3.SecretDiscoveryService"],
    ids=["server", "workload-api", "sds"],
)
def test_grpc_health_on_socket(service: str) -> None:
    with agent_files() as files, start_agent(files), grpc.insecure_channel(
        f"unix:{files.socket_path}"
    ) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        command = subprocess.run(
            [sys.executable, "-m", "agent", "healthcheck", "--socket", str(files.socket_path)],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
        )

    assert response.status == health_pb2.HealthCheckResponse.SERVING
    assert command.returncode == 0, command.stderr
    assert command.stdout.strip() == "SERVING"


def test_metrics_after_attestations(pythons: dict[str, CopiedBinary]) -> None:
    web, other = pythons["web"], pythons["other"]
    with ExitStack() as stack:
        files = stack.enter_context(agent_files(x509_svid_ttl=SHORT_TTL_SECONDS))
        agent = stack.enter_context(start_agent(files))
        port = health_port(agent)
        pod = stack.enter_context(pod_cgroup())
        grant_web(files, agent, pod, web)
        tampered = sign_manifest(files, "tampered", {
            "spiffe_id": f"spiffe://{files.trust_domain}/ns/{NAMESPACE}/sa/tampered",
            "exe_sha256": [other.sha256],
        })
        tampered.write_text(tampered.read_text().replace("tampered", "tamperef"))
        agent.wait_for_log("manifest rejected", "tampered.json")

        held: StreamClient = open_stream(web, files, pod)
        stack.callback(held.child.stop)
        held.next_event("message")
        denied = open_stream(other, files, pod)
        stack.callback(denied.child.stop)
        denial_end = denied.next_event("end")

        # Rotation of the held SVID at about half of its 10 s lifetime.
        wait_for_sample(port, f"{PREFIX}_svid_rotations_total", lambda v: v >= 1,
                        deadline=ROTATION_DEADLINE_SECONDS)
        samples = scrape(port)
        held.child.stop()
        streams_after_close = wait_for_sample(
            port, f"{PREFIX}_open_streams", lambda v: v == 0, api="workload_api"
        )
        expiry_after_close = sample(scrape(port), f"{PREFIX}_earliest_svid_expiry_seconds")

    assert denial_end["grpc_status"] == "7", denial_end
    assert "exe_hash_mismatch" in str(denial_end["grpc_message"])

    def value(name: str, **labels: str) -> float:
        return sample(samples, f"{PREFIX}_{name}", **labels)

    successes = value("attestations_total", result="success", reason="none")
    assert successes >= 1
    assert value("attestations_total", result="denied", reason="exe_hash_mismatch") == 1
    assert value("attestations_total", result="denied", reason="no_manifest_for_workload") == 0
    attestations = sum(
        number for (name, _labels), number in samples.items()
        if name == f"{PREFIX}_attestations_total"
    )
    assert value("attestation_duration_seconds_count") == attestations
    assert value("svids_minted_total", type="x509") >= 2, "the first SVID and its renewal"
    assert value("svid_rotations_total") >= 1
    assert value("open_streams", api="workload_api") == 1
    assert value("open_streams", api="sds") == 0
    assert 0 < value("earliest_svid_expiry_seconds") <= SHORT_TTL_SECONDS
    # The development intermediate lives for days.
    assert value("intermediate_ca_expiry_seconds") > 24 * 3600
    assert value("manifest_load_errors_total") == 1
    assert value("sds_nacks_total") == 0
    assert streams_after_close == 0
    # No SVID is served once the only stream closed.
    assert math.isnan(expiry_after_close)


def test_audit_issued_denied_revoked(pythons: dict[str, CopiedBinary]) -> None:
    web, other = pythons["web"], pythons["other"]
    with ExitStack() as stack:
        files = stack.enter_context(agent_files())
        audit_path = files.root / "audit.jsonl"
        with_config(files, f'reattest_interval = 1\naudit_log = "{audit_path}"\n')
        agent = stack.enter_context(start_agent(files))
        port = health_port(agent)
        pod = stack.enter_context(pod_cgroup())
        manifest = grant_web(files, agent, pod, web)

        held = open_stream(web, files, pod)
        stack.callback(held.child.stop)
        held.next_event("message")
        denied = open_stream(other, files, pod)
        stack.callback(denied.child.stop)
        denied.next_event("end")
        # Several periodic re-attestations of the held stream decide the same again.
        wait_for_sample(port, f"{PREFIX}_attestations_total", lambda v: v >= 4,
                        result="success", reason="none")
        before_revocation = audit_lines(audit_path)

        manifest.unlink()
        manifest.with_name("web.json.sig").unlink()
        ended = held.next_event("end")
        agent.wait_for_log("identity revoked", f"pid={held.pid}")
        records = audit_lines(audit_path)
        raw = audit_path.read_text()

    assert ended["grpc_status"] == "7", ended
    assert [r["decision"] for r in before_revocation] == ["issued", "denied"]
    assert [r["decision"] for r in records] == ["issued", "denied", "revoked"]
    for record in records:
        assert list(record) == list(AUDIT_FIELDS)
    issued, denial, revoked = records

    assert issued["pid"] == held.pid
    assert issued["uid"] == 0
    assert issued["pod_uid"] == pod.pod_uid
    assert issued["container_id"] == pod.container_id
    assert issued["exe_sha256"] == web.sha256
    assert issued["manifest_files"] == ["web.json"]
    assert issued["spiffe_id"] == web_id(files)
    assert issued["reason"] is None

    assert denial["pid"] == denied.pid
    assert denial["exe_sha256"] == other.sha256
    assert denial["spiffe_id"] is None
    assert denial["reason"] == "exe_hash_mismatch"

    assert revoked["pid"] == held.pid
    assert revoked["spiffe_id"] == web_id(files)
    assert revoked["manifest_files"] == ["web.json"]
    assert revoked["reason"] == "no_manifest_for_workload"
    assert "PRIVATE KEY" not in raw
    assert "BEGIN" not in raw
