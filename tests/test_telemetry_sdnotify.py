"""sd_notify: READY=1 and STOPPING=1 reach a NOTIFY_SOCKET that the test listens on."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.telemetry.errors import NotifySocketError
from agent.telemetry.sdnotify import notify, notify_ready, notify_stopping


@pytest.fixture
def path_listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(10)
        yield path, sock


def test_ready_to_path_socket(path_listener: tuple[str, socket.socket]) -> None:
    path, sock = path_listener

    sent = notify_ready({"NOTIFY_SOCKET": path})

    assert sent is True
    assert sock.recv(4096) == b"READY=1"


def test_stopping_to_path_socket(path_listener: tuple[str, socket.socket]) -> None:
    path, sock = path_listener

    assert notify_stopping({"NOTIFY_SOCKET": path}) is True
    assert sock.recv(4096) == b"STOPPING=1"


def test_ready_to_abstract_socket() -> None:
    name = f"attest-agent-test-{os.getpid()}-notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(10)

        assert notify_ready({"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(4096) == b"READY=1"


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}], ids=["unset", "empty"])
def test_no_socket_is_noop(environ: dict[str, str]) -> None:
    assert notify("READY=1", environ) is False


@pytest.mark.parametrize(
    "address",
    ["relative/notify.sock", "@", "vsock:2:1234"],
    ids=["relative-path", "empty-abstract-name", "vsock"],
)
def test_unsupported_address(address: str) -> None:
    with pytest.raises(NotifySocketError) as caught:
        notify_ready({"NOTIFY_SOCKET": address})

    assert caught.value.address == address
    assert repr(address) in str(caught.value)


def test_missing_listener(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.sock")

    with pytest.raises(NotifySocketError) as caught:
        notify_ready({"NOTIFY_SOCKET": path})

    assert "No such file or directory" in str(caught.value)


def test_child_process_sends_ready(path_listener: tuple[str, socket.socket]) -> None:
    # systemd accepts READY=1 under NotifyAccess=main only from the main PID, which it
    # learns from the sender credentials; check the child sends them as itself.
    path, sock = path_listener
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    env = {**os.environ, "NOTIFY_SOCKET": path}
    code = "from agent.telemetry.sdnotify import notify_ready; notify_ready()"

    child = subprocess.Popen([sys.executable, "-c", code], env=env)
    message, ancillary, _flags, _address = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    child.wait(timeout=30)

    assert child.returncode == 0
    assert message == b"READY=1"
    credentials = [data for level, kind, data in ancillary if kind == socket.SCM_CREDENTIALS]
    assert len(credentials) == 1
    pid, _uid, _gid = struct.unpack("iII", credentials[0])
    assert pid == child.pid
