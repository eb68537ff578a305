"""The admin socket of the running agent: permissions, peer check and request errors."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.agent_process import REPO_ROOT, AgentFiles, agent_files, start_agent

NOBODY = 65534


def admin_path(files: AgentFiles) -> Path:
    return files.state_dir / "admin" / "admin.sock"


def send_line(path: Path, line: bytes) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        sock.sendall(line)
        response = b""
        while not response.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
    decoded: dict[str, object] = json.loads(response)
    return decoded


def test_admin_socket_modes() -> None:
    with agent_files() as files, start_agent(files):
        path = admin_path(files)
        socket_info = path.stat()
        directory_info = path.parent.stat()

    assert stat.S_ISSOCK(socket_info.st_mode)
    assert stat.S_IMODE(socket_info.st_mode) == 0o600
    assert stat.S_IMODE(directory_info.st_mode) == 0o700
    assert socket_info.st_uid == 0
    assert directory_info.st_uid == 0


def test_admin_socket_removed_on_stop() -> None:
    with agent_files() as files:
        with start_agent(files) as agent:
            path = admin_path(files)
            assert path.exists()
            assert agent.stop() == 0
        assert not path.exists()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"request": "restart"}\n', "unknown request 'restart': send one of drift"),
        (b"drift\n", "unknown request None: send one of drift"),
        (b'["drift"]\n', "unknown request None: send one of drift"),
    ],
    ids=["unknown-name", "not-json", "not-an-object"],
)
def test_admin_request_errors(line: bytes, expected: str) -> None:
    with agent_files() as files, start_agent(files):
        response = send_line(admin_path(files), line)
    assert response == {"error": expected}


def test_admin_rejects_other_uid() -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to connect as another uid")
    with agent_files() as files, start_agent(files) as agent:
        path = admin_path(files)
        # Open the modes so that only the agent's SO_PEERCRED check is in the way.
        for directory in (files.root, files.state_dir, path.parent):
            os.chmod(directory, 0o711)
        os.chmod(path, 0o666)
        result = subprocess.run(
            [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             sys.executable, "-m", "agent", "drift", "--admin-socket", str(path)],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
        )
        rejected = agent.wait_for_log("admin request rejected", f"uid={NOBODY}")

    assert result.returncode == 2, result.stdout + result.stderr
    # The agent closes the connection unread, so the client sees a reset or an EOF.
    assert f"agent admin socket {path} is unreachable" in result.stderr
    assert '"callers"' not in result.stdout
    assert "reason=not_root" in rejected
