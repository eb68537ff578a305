"""The client commands: endpoint parsing, ``api fetch/validate/watch`` and ``healthcheck``."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.commands.endpoint import socket_target
from agent.errors import ConfigError
from tests.support.agent_process import (
    REPO_ROOT,
    AgentFiles,
    agent_files,
    sign_manifest,
    start_agent,
)

SPIFFE_ID = "spiffe://cluster.local/host/cli"


@pytest.mark.parametrize(
    ("flag", "variable", "expected"),
    [
        pytest.param(None, "unix:///run/a.sock", "unix:/run/a.sock", id="env-three-slashes"),
        pytest.param(None, "unix:/run/a.sock", "unix:/run/a.sock", id="env-one-slash"),
        pytest.param("/run/b.sock", "unix:///run/a.sock", "unix:/run/b.sock", id="flag-wins"),
        pytest.param("unix:///run/b.sock", None, "unix:/run/b.sock", id="flag-uri"),
        pytest.param(None, None, "unix:/tmp/attest-agent/public/api.sock", id="default"),
    ],
)
def test_endpoint_target(flag: str | None, variable: str | None, expected: str) -> None:
    environ = {"SPIFFE_ENDPOINT_SOCKET": variable} if variable else {}
    assert socket_target(flag, environ) == expected


@pytest.mark.parametrize(
    "address",
    [
        pytest.param("unix://host/run/a.sock", id="host"),
        pytest.param("unix:run/a.sock", id="relative"),
        pytest.param("tcp://127.0.0.1:8081", id="tcp"),
        pytest.param("run/a.sock", id="bare-relative"),
    ],
)
def test_endpoint_rejected(address: str) -> None:
    with pytest.raises(ConfigError) as caught:
        socket_target(None, {"SPIFFE_ENDPOINT_SOCKET": address})
    assert repr(address) in str(caught.value)
    assert "SPIFFE_ENDPOINT_SOCKET" in str(caught.value)


def cli(args: list[str], files: AgentFiles | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("SPIFFE_ENDPOINT_SOCKET", None)
    if files is not None:
        env["SPIFFE_ENDPOINT_SOCKET"] = files.endpoint
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.fixture
def granted() -> Iterator[AgentFiles]:
    """A running agent whose manifest grants SPIFFE_ID to root running this interpreter."""
    if os.geteuid() != 0:
        pytest.skip("the agent must run as root to read the CLI's /proc entries")
    digest = hashlib.sha256(Path(os.path.realpath(sys.executable)).read_bytes()).hexdigest()
    with agent_files() as files, start_agent(files) as agent:
        sign_manifest(files, "cli", {"spiffe_id": SPIFFE_ID, "exe_sha256": [digest], "uid": 0})
        agent.wait_for_log("manifest loaded", "cli.json")
        yield files


def test_api_fetch_x509_writes_files(granted: AgentFiles, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli(["api", "fetch", "x509", "--write", str(out)], granted)
    assert result.returncode == 0, result.stderr
    assert f"svid 0: {SPIFFE_ID}" in result.stdout
    assert (out / "svid.0.key").stat().st_mode & 0o777 == 0o600
    assert (out / "svid.0.pem").read_text().count("BEGIN CERTIFICATE") >= 2
    assert "BEGIN PRIVATE KEY" in (out / "svid.0.key").read_text()
    assert (out / "bundle.0.pem").read_text().count("BEGIN CERTIFICATE") >= 1
    assert not list(out.glob(".*.tmp"))


def test_api_jwt_fetch_and_validate(granted: AgentFiles) -> None:
    fetched = cli(["api", "fetch", "jwt", "--audience", "svc"], granted)
    assert fetched.returncode == 0, fetched.stderr
    token = fetched.stdout.strip()
    assert token.count(".") == 2

    valid = cli(["api", "validate", "jwt", "--audience", "svc", "--svid", token], granted)
    assert valid.returncode == 0, valid.stderr
    assert valid.stdout.splitlines()[0] == SPIFFE_ID
    assert '"sub": "spiffe://cluster.local/host/cli"' in valid.stdout

    wrong = cli(["api", "validate", "jwt", "--audience", "other", "--svid", token], granted)
    assert wrong.returncode == 1
    assert "INVALID_ARGUMENT" in wrong.stderr
    assert "audience_mismatch" in wrong.stderr

    not_held = cli(["api", "fetch", "jwt", "--audience", "svc", "--spiffe-id",
                    "spiffe://cluster.local/host/other"], granted)
    assert not_held.returncode == 1
    assert "PERMISSION_DENIED" in not_held.stderr


def test_api_watch_prints_update(granted: AgentFiles) -> None:
    env = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": granted.endpoint}
    watch = subprocess.Popen(
        [sys.executable, "-m", "agent", "api", "watch"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []

    def read_two_lines() -> None:
        assert watch.stdout is not None
        lines.extend(watch.stdout.readline() for _ in range(2))

    reader = threading.Thread(target=read_two_lines, daemon=True)
    try:
        reader.start()
        reader.join(timeout=30)
    finally:
        watch.kill()
        watch.communicate(timeout=30)
    assert len(lines) == 2, lines
    assert lines[0].startswith("update at ")
    assert lines[1].startswith(f"svid 0: {SPIFFE_ID} ")


def test_api_denied_caller() -> None:
    with agent_files() as files, start_agent(files):
        result = cli(["api", "fetch", "x509"], files)
    assert result.returncode == 1
    assert "PERMISSION_DENIED" in result.stderr
    assert "(no_manifest_for_workload)" in result.stderr


def test_api_bad_endpoint() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "api", "fetch", "x509"],
        cwd=REPO_ROOT, env={**os.environ, "SPIFFE_ENDPOINT_SOCKET": "tcp://127.0.0.1:1"},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert "is not a Unix socket" in result.stderr


def test_healthcheck_up_and_down() -> None:
    with agent_files() as files:
        with start_agent(files):
            up = cli(["healthcheck", "--socket", str(files.socket_path)])
            assert up.returncode == 0, up.stderr
        down = cli(["healthcheck", "--socket", str(files.socket_path), "--timeout", "2"])
    assert down.returncode == 1
    assert down.stderr.startswith(
        f"attest-agent healthcheck: cannot reach the agent at unix://{files.socket_path}: "
        "is it running?"
    )
    assert "(grpc: UNAVAILABLE, connect: " in down.stderr
    assert down.stderr.count("\n") == 1


def stale_socket(path: Path) -> Path:
    """Leave a socket file that nothing listens on, as a crashed agent does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:
        bound.bind(str(path))
    return path


@pytest.mark.parametrize(
    ("case", "connect_error"),
    [("missing", "No such file or directory"), ("stale", "Connection refused")],
)
@pytest.mark.parametrize("command", [["api", "fetch", "x509"], ["healthcheck"]],
                         ids=["api", "healthcheck"])
def test_agent_unreachable(
    case: str, connect_error: str, command: list[str], tmp_path: Path
) -> None:
    path = tmp_path / "api.sock"
    if case == "stale":
        stale_socket(path)
    result = cli([command[0], "--socket", str(path), *command[1:]])

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(
        f"attest-agent {command[0]}: cannot reach the agent at unix://{path}: is it running?"
    )
    assert f"(grpc: UNAVAILABLE, connect: {connect_error})" in result.stderr
    assert "failed to connect to all addresses" not in result.stderr
    assert result.stderr.count("\n") == 1


def help_text(args: list[str]) -> str:
    """Return the --help output, wide enough that argparse does not wrap a line."""
    result = subprocess.run(
        [sys.executable, "-m", "agent", *args, "--help"],
        cwd=REPO_ROOT, env={**os.environ, "COLUMNS": "400"},
        capture_output=True, text=True, timeout=60, check=True,
    )
    return result.stdout


def test_api_help_names_defaults() -> None:
    top = help_text(["api"])
    fetch_jwt = help_text(["api", "fetch", "jwt"])
    validate_jwt = help_text(["api", "validate", "jwt"])
    health = help_text(["healthcheck"])

    assert "(default: $SPIFFE_ENDPOINT_SOCKET, else /tmp/attest-agent/public/api.sock)" in top
    assert "(default: 10)" in top
    assert "audience (aud claim) of the JWT-SVID; repeat" in fetch_jwt
    assert "audience the token must carry in its aud claim" in validate_jwt
    assert "else /tmp/attest-agent/public/api.sock)" in health
    assert "(default: 3)" in health
