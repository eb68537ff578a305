"""The agent process: socket setup, SIGTERM draining, SIGHUP, refusing a second agent."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.agent_process import REPO_ROOT, agent_files, sign_manifest, start_agent
from tests.support.cgroups import pod_cgroup
from tests.support.processes import copy_python, start_process

SOURCE_SCRIPT = Path(__file__).resolve().parent / "support" / "client_source.py"

# The acceptance limit for SIGTERM: exit within 5 s.
SIGTERM_DEADLINE_SECONDS = 5.0


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_server_socket_modes() -> None:
    with agent_files() as files, start_agent(files):
        assert stat.S_ISSOCK(files.socket_path.stat().st_mode)
        assert mode_of(files.socket_path) == 0o777
        assert mode_of(files.socket_path.parent) == 0o755
        assert mode_of(files.state_dir) == 0o700
        assert mode_of(files.state_dir / "internal") == 0o700


def test_server_sigterm_drains_streams(tmp_path: Path) -> None:
    python = copy_python(tmp_path, "sigterm", site_packages=True)
    with agent_files() as files, start_agent(files) as agent, pod_cgroup() as pod:
        sign_manifest(
            files,
            "web",
            {
                "spiffe_id": f"spiffe://{files.trust_domain}/ns/demo/sa/web",
                "exe_sha256": [python.sha256],
                "pod_uid": pod.pod_uid,
                "namespace": "demo",
                "service_account": "web",
            },
        )
        agent.wait_for_log("manifest loaded", "web.json")
        with start_process(
            [str(python.path), str(SOURCE_SCRIPT)],
            env={**python.env, "SPIFFE_ENDPOINT_SOCKET": files.endpoint},
            cgroup_dirs=[pod.path],
        ) as source:
            first = json.loads(source.wait_for_line('{"event": "update"'))
            assert first["spiffe_id"].endswith("/ns/demo/sa/web")
            source.wait_for_line('{"event": "watching"')

            started = time.monotonic()
            agent.signal(signal.SIGTERM)
            status = agent.popen.wait(timeout=30)
            elapsed = time.monotonic() - started

            assert status == 0, agent.log_text()
            assert elapsed < SIGTERM_DEADLINE_SECONDS, f"exit took {elapsed:.1f} s"
            assert not files.socket_path.exists()
            assert not (files.state_dir / "internal" / "grpc.sock").exists()
            ended = json.loads(source.wait_for_line('{"event": "stream_error"'))
            # The stream ends with a status that makes clients reconnect, never with OK.
            assert "UNAVAILABLE" in ended["error"], (ended, agent.log_text())
        assert "agent stopped" in agent.log_text()


def test_server_removes_stale_socket() -> None:
    with agent_files() as files:
        files.socket_path.parent.mkdir(mode=0o755)
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(files.socket_path))
        stale.close()  # the file stays, but no process listens on it
        with start_agent(files):
            assert stat.S_ISSOCK(files.socket_path.stat().st_mode)
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.connect(str(files.socket_path))
            probe.close()


def test_server_refuses_second_agent() -> None:
    with agent_files() as files, start_agent(files) as first:
        second = subprocess.run(
            [sys.executable, "-m", "agent", "run", "--config", str(files.config),
             "--state-dir", str(files.root / "state-2")],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
        )
        assert second.returncode == 1, second.stderr
        assert "cannot start" in second.stderr
        assert str(files.socket_path) in second.stderr
        assert first.popen.poll() is None
        assert files.socket_path.exists()


def test_server_sighup_reloads() -> None:
    with agent_files() as files, start_agent(files) as agent:
        agent.signal(signal.SIGHUP)
        agent.wait_for_log("reload requested", "signal=SIGHUP")
        assert agent.popen.poll() is None
        assert files.socket_path.exists()


def test_server_bad_config_exit_status(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('trust_domian = "example.org"\n')
    result = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert "unknown key 'trust_domian'" in result.stderr


def test_server_first_run_walkthrough(tmp_path: Path) -> None:
    """Follow docs/first-run.md with flags instead of the /tmp/attest-agent defaults."""
    if os.geteuid() != 0:
        pytest.skip("the walkthrough grants an identity to uid 0 and must run as root")
    with agent_files() as files:
        state_dir = files.root / "dev-state"
        manifests_dir = files.root / "dev-manifests"
        log_path = files.root / "dev-agent.log"
        with log_path.open("wb") as log:
            agent = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--socket", str(files.socket_path),
                 "--state-dir", str(state_dir), "--manifests-dir", str(manifests_dir),
                 "--health-address", "127.0.0.1:0"],
                cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
            )
        try:
            _walk_through(tmp_path, files.socket_path, state_dir, manifests_dir, log_path)
        finally:
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(timeout=30) == 0


def _walk_through(
    tmp_path: Path, socket_path: Path, state_dir: Path, manifests_dir: Path, log_path: Path
) -> None:
    deadline = time.monotonic() + 30
    while "agent started" not in log_path.read_text():
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.1)
    log_text = log_path.read_text()
    assert "development CA in use" in log_text
    # --health-address overrides the default port 8081; port 0 takes a free one.
    assert re.search(r"health server listening address=127\.0\.0\.1:[1-9]\d*", log_text)
    assert "127.0.0.1:8081" not in log_text
    dev_key = state_dir / "dev-manifest.key"
    assert f"key={dev_key}" in log_text
    assert mode_of(dev_key) == 0o600

    digest = subprocess.run(
        ["sha256sum", os.path.realpath(sys.executable)],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split()[0]
    manifest = tmp_path / "demo.json"
    manifest.write_text(json.dumps({
        "spiffe_id": "spiffe://cluster.local/host/demo",
        "exe_sha256": [digest],
        "uid": 0,
    }))
    subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", str(dev_key), "-out", f"{manifest}.sig",
         str(manifest)],
        check=True, timeout=60,
    )
    os.replace(f"{manifest}.sig", manifests_dir / "demo.json.sig")
    os.replace(manifest, manifests_dir / "demo.json")

    out_dir = tmp_path / "svid"
    env = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": f"unix://{socket_path}"}
    fetch = _run_cli(["api", "fetch", "x509", "--write", str(out_dir)], env, until_ok=True)
    assert "spiffe://cluster.local/host/demo" in fetch.stdout
    assert mode_of(out_dir / "svid.0.key") == 0o600
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(out_dir / "bundle.0.pem"),
         "-untrusted", str(out_dir / "svid.0.pem"), str(out_dir / "svid.0.pem")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    san = subprocess.run(
        ["openssl", "x509", "-in", str(out_dir / "svid.0.pem"), "-noout", "-ext",
         "subjectAltName"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert "URI:spiffe://cluster.local/host/demo" in san.stdout


def _run_cli(
    args: list[str], env: dict[str, str], *, until_ok: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m agent ARGS``; with until_ok, retry while the manifest loads."""
    deadline = time.monotonic() + 20
    while True:
        result = subprocess.run(
            [sys.executable, "-m", "agent", *args],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
        )
        if result.returncode == 0 or not until_ok or time.monotonic() > deadline:
            assert result.returncode == 0, result.stderr
            return result
        time.sleep(0.3)
