"""Peer pinning helpers and the registry, on real sockets and processes where possible."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent.peer.connection import Connection, PeerCredentials
from agent.peer.errors import PeerError, PinError
from agent.peer.process import (
    parse_start_time,
    peer_credentials,
    peer_pidfd,
    pidfd_exited,
    pin_peer,
    read_start_time,
)
from agent.peer.registry import PeerRegistry, abstract_name

STAT_TAIL = " ".join(str(n) for n in range(3, 53))  # fields 3..52: field 22 holds "22"

START_TIME_CASES = {
    "plain": (f"123 (sleep) {STAT_TAIL}", 22),
    "spaces-in-name": (f"123 (my worker) {STAT_TAIL}", 22),
    "parens-in-name": (f"123 (a) (b) c)) {STAT_TAIL}", 22),
}


@pytest.mark.parametrize(("text", "expected"), START_TIME_CASES.values(), ids=START_TIME_CASES)
def test_start_time_parse(text: str, expected: int) -> None:
    assert parse_start_time(text) == expected


@pytest.mark.parametrize(
    "text", ["", "123 sleep 1 2 3", "123 (x) 1 2 3"], ids=["empty", "no-paren", "short"]
)
def test_start_time_parse_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        parse_start_time(text)


def test_peer_credentials_socketpair() -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        creds = peer_credentials(left)
    assert creds == PeerCredentials(os.getpid(), os.geteuid(), os.getegid())


def test_pin_peer_socketpair() -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        pidfd, start_time = pin_peer(left, os.getpid())
    try:
        assert start_time == read_start_time(os.getpid())
        assert not pidfd_exited(pidfd)
    finally:
        os.close(pidfd)


class _OldKernelSocket:
    """Stands in for a socket on Linux < 6.5, where SO_PEERPIDFD does not exist; this
    kernel has the option, so the old behaviour can only be simulated."""

    def getsockopt(self, level: int, optname: int, buflen: int = 0, /) -> int | bytes:
        raise OSError(errno.ENOPROTOOPT, "Protocol not available")


def test_peer_pidfd_fallback() -> None:
    pidfd = peer_pidfd(_OldKernelSocket(), os.getpid())
    try:
        assert not pidfd_exited(pidfd)
    finally:
        os.close(pidfd)


def test_pin_peer_exited(tmp_path: Path) -> None:
    # A child connects and exits before the agent pins it: pinning must fail.
    path = tmp_path / "pin.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import socket; socket.socket(socket.AF_UNIX).connect({str(path)!r})",
        ]
    )
    child.wait()
    accepted, _ = listener.accept()
    with listener, accepted:
        assert peer_credentials(accepted).pid == child.pid
        with pytest.raises(PinError) as caught:
            pin_peer(accepted, child.pid)
    assert caught.value.pid == child.pid


def _connection(conn_id: str) -> Connection:
    creds = PeerCredentials(os.getpid(), 0, 0)
    return Connection(conn_id, creds, os.pidfd_open(os.getpid()), read_start_time(os.getpid()))


def test_registry_lookup() -> None:
    registry = PeerRegistry()
    conn = _connection("abc123")
    registry.add(conn)
    try:
        assert registry.lookup(f"unix-abstract:{abstract_name('abc123')}") is conn
        assert registry.lookup(f"unix:{abstract_name('abc123')}") is None
        assert registry.lookup("unix-abstract:attest-agent-other") is None
        assert registry.lookup("ipv4:127.0.0.1:5000") is None
        assert len(registry) == 1
        assert registry.connections() == [conn]
    finally:
        conn.close()
    assert registry.lookup(f"unix-abstract:{abstract_name('abc123')}") is None


def test_registry_duplicate_id() -> None:
    registry = PeerRegistry()
    first, second = _connection("same"), _connection("same")
    try:
        registry.add(first)
        with pytest.raises(PeerError):
            registry.add(second)
        registry.remove(second)  # not the registered object: no effect
        assert registry.connections() == [first]
        registry.remove(first)
        assert len(registry) == 0
    finally:
        first.close()
        second.close()
