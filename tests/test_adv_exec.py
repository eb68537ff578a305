"""Exec after connect and descriptor passing: the holder of a copied socket gets no identity.

Each case starts an untrusted client (a copied Python) in a pod cgroup. It connects to
a real FrontDoor, is pinned, and then attacks: it execs a "trusted" binary (a copied
``sleep``, standing in for any binary a manifest trusts), after forking a child that
keeps the connection or after passing the connection to a receiver in another
container of the same pod with SCM_RIGHTS. The real Attestor then attests the pinned
connection. Rows that disable a defense (by replacing its check with a no-op) show
that the same attack yields Evidence for the trusted binary without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from agent.attest import attestor as attestor_module
from agent.attest.attestor import Attestor
from agent.attest.evidence import Evidence
from agent.attest.hashing import RACY_WINDOW_NS
from agent.attest.holders import HolderScan, HolderScanner
from agent.denial import Denial
from agent.peer.connection import Connection
from agent.peer.frontdoor import FrontDoor
from agent.peer.sockets import prepare_internal_socket, prepare_public_socket
from tests.support.cgroups import TestCgroup, pod_cgroup, remove_cgroup
from tests.support.processes import (
    ChildProcess,
    CopiedBinary,
    copy_python,
    copy_sleep,
    run_python,
    start_sleeper,
)

DEADLINE_SECONDS = 10.0

ATTACKER = r"""
import array, os, socket, sys, time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
path, mode, trusted, receiver = sys.argv[1:5]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(path)
sock.sendall(PREFACE)
holder = 0
if mode in ("fork-exec", "fork-keep"):
    holder = os.fork()
    if holder == 0:
        time.sleep(3600)  # the forked child keeps its inherited copy of the connection
        os._exit(0)
if mode in ("pass-exec", "pass-close-exec"):
    courier = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    courier.connect(receiver)
    fds = array.array("i", [sock.fileno()])
    courier.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
    courier.recv(1)  # the receiver acknowledges that it holds the descriptor
# One line only: the test reads stdout with select, which misses a second buffered line.
print("connected", os.getpid(), holder, flush=True)
sys.stdin.readline()
if mode in ("plain", "fork-keep"):
    sys.stdin.readline()
    sys.exit(0)
if mode == "pass-close-exec":
    sock.close()
else:
    os.set_inheritable(sock.fileno(), True)
os.execv(trusted, [trusted, "3600"])
"""

RECEIVER = r"""
import array, os, socket, sys

listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sys.argv[1])
listener.listen(1)
print("ready", flush=True)
courier, _ = listener.accept()
fds = array.array("i")
_, ancillary, _, _ = courier.recvmsg(1, socket.CMSG_LEN(fds.itemsize))
fds.frombytes(ancillary[0][2])
courier.sendall(b"k")
print("received", os.getpid(), fds[0], flush=True)
sys.stdin.readline()
"""

# mode, disabled defenses, expected outcome ("evidence:<binary>" or a denial reason).
CASES = [
    pytest.param("exec", (), "exec_after_connect", id="exec"),
    pytest.param("exec", ("exec",), "evidence:trusted", id="exec-undefended"),
    pytest.param("fork-exec", (), "exec_after_connect", id="fork-exec"),
    pytest.param("fork-exec", ("exec",), "socket_shared", id="fork-exec-holders"),
    pytest.param("fork-exec", ("exec", "holders"), "evidence:trusted", id="fork-exec-undefended"),
    pytest.param("pass-exec", ("exec",), "socket_shared", id="scm-rights-holders"),
    pytest.param("pass-exec", ("exec", "holders"), "evidence:trusted", id="scm-rights-undefended"),
    pytest.param("pass-close-exec", ("exec",), "socket_not_held", id="passed-away"),
    pytest.param("fork-keep", (), "socket_shared", id="fork-keep"),
    pytest.param("fork-keep", ("holders",), "evidence:attacker", id="fork-keep-undefended"),
    pytest.param("plain", (), "evidence:attacker", id="plain-client"),
]


@pytest.fixture
def work_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 107 bytes, so keep them short.
    directory = Path(tempfile.mkdtemp(prefix="adv-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


@pytest.fixture
async def door(work_dir: Path) -> AsyncIterator[FrontDoor]:
    public = work_dir / "public" / "agent.sock"
    internal = work_dir / "internal" / "grpc.sock"
    prepare_public_socket(public)
    prepare_internal_socket(internal)
    # The attestor is called directly, so the internal server only accepts the relay.
    server = await asyncio.start_unix_server(lambda reader, writer: None, path=str(internal))
    front_door = FrontDoor(public, internal)
    await front_door.start()
    try:
        yield front_door
    finally:
        await front_door.close()
        server.close()


@pytest.fixture(scope="module")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CopiedBinary]:
    directory = tmp_path_factory.mktemp("adv-bin")
    copies = {
        "attacker": copy_python(directory, "attacker"),
        "trusted": copy_sleep(directory, "trusted"),
    }
    # The digest cache skips files changed in the last RACY_WINDOW_NS; the warm paths
    # below need both digests cached.
    newest = max(copy.path.stat().st_ctime_ns for copy in copies.values())
    time.sleep(max(0.0, (newest + RACY_WINDOW_NS - time.time_ns()) / 1e9 + 0.1))
    return copies


# How the attestation runs. cold: the digests are not cached, so it runs in a worker
# thread with the shared holder scan. warm: both digests are cached, so it runs on the
# event loop with a private bounded scan (check_small). warm-large: cached, but the
# scan limits are 1 descriptor, so check_small declines and the thread path takes over.
PATHS = ["cold", "warm", "warm-large"]


class CountingExecutor(ThreadPoolExecutor):
    """The event loop's default executor, counting the jobs submitted to it."""

    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.jobs = 0

    def submit(self, *args: Any, **kwargs: Any) -> Future[Any]:
        self.jobs += 1
        return super().submit(*args, **kwargs)


async def attestor_for(
    path: str, binaries: dict[str, CopiedBinary], monkeypatch: pytest.MonkeyPatch
) -> Attestor:
    """Return an Attestor set up for ``path``: cold, or with both digests cached."""
    attestor = Attestor()
    if path == "cold":
        return attestor
    with start_sleeper(binaries["trusted"]) as trusted, run_python(
        binaries["attacker"], "import sys\nsys.stdin.readline()\n"
    ) as idle:
        for pid in (trusted.pid, idle.pid):
            assert isinstance(await attestor.attest_pid(pid), Evidence)
    assert attestor.hash_cache_stats.entries == 2
    if path == "warm-large":
        monkeypatch.setattr(attestor_module, "INLINE_SCAN_MAX_FDS", 1)
    return attestor


async def wait_for_connection(door: FrontDoor, pid: int) -> Connection:
    end = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < end:
        for conn in door.registry.connections():
            if conn.pid == pid:
                return conn
        await asyncio.sleep(0.02)
    raise AssertionError(f"no registered connection from pid {pid}")


def sibling_container(pod: TestCgroup) -> TestCgroup:
    """Create a second container cgroup in the same pod; remove it with remove_cgroup."""
    path = pod.path.parent / secrets.token_hex(32)
    path.mkdir()
    return TestCgroup(hierarchy=pod.hierarchy, root=pod.root, path=path, created=[path])


def disable(monkeypatch: pytest.MonkeyPatch, defenses: tuple[str, ...]) -> None:
    if "exec" in defenses:
        monkeypatch.setattr(attestor_module, "check_same_exe", lambda pin, exe: None)
    if "holders" in defenses:
        monkeypatch.setattr(HolderScanner, "check", lambda *args: None)
        unchecked = HolderScan(scanned=0, scope="cgroup")
        monkeypatch.setattr(HolderScanner, "check_small", lambda *args, **kwargs: unchecked)


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


async def run_attack(
    door: FrontDoor,
    work_dir: Path,
    binaries: dict[str, CopiedBinary],
    mode: str,
    pod: TestCgroup,
    attestor: Attestor,
) -> tuple[Evidence | Denial, list[int]]:
    """Run one attack and return the attestation result and the pids of other holders."""
    receiver_path = work_dir / "receiver.sock"
    extra_holders: list[int] = []
    receiver: ChildProcess | None = None
    sibling: TestCgroup | None = None
    attacker: ChildProcess | None = None
    try:
        if mode.startswith("pass"):
            sibling = sibling_container(pod)
            receiver = run_python(
                binaries["attacker"], RECEIVER, str(receiver_path), cgroup_dirs=[sibling.path]
            )
            receiver.wait_for_line("ready")
        argv = [str(door.public_path), mode, str(binaries["trusted"].path), str(receiver_path)]
        attacker = run_python(binaries["attacker"], ATTACKER, *argv, cgroup_dirs=[pod.path])
        holder = int(attacker.wait_for_line("connected ").split()[2])
        if holder:
            extra_holders.append(holder)
        if receiver is not None:
            extra_holders.append(int(receiver.wait_for_line("received ").split()[1]))
        conn = await wait_for_connection(door, attacker.pid)
        assert attacker.popen.stdin is not None
        attacker.popen.stdin.write("go\n")
        attacker.popen.stdin.flush()
        if mode.endswith("exec"):
            attacker.wait_exe(binaries["trusted"].path)
        return await attestor.attest(conn), extra_holders
    finally:
        for pid in extra_holders:
            kill_quietly(pid)
        for child in (attacker, receiver):
            if child is not None:
                child.stop()
        if sibling is not None:
            remove_cgroup(sibling)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("mode", "disabled", "expected"), CASES)
async def test_socket_copy_attack(
    mode: str,
    disabled: tuple[str, ...],
    expected: str,
    path: str,
    door: FrontDoor,
    work_dir: Path,
    binaries: dict[str, CopiedBinary],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attestor = await attestor_for(path, binaries, monkeypatch)
    disable(monkeypatch, disabled)
    executor = CountingExecutor()
    asyncio.get_running_loop().set_default_executor(executor)
    with pod_cgroup("unified") as pod:
        result, extra_holders = await run_attack(door, work_dir, binaries, mode, pod, attestor)
    # Check where each path ran. A warm attestation submits nothing to a thread, and in
    # warm-large every attestation that reaches the holder scan does.
    reaches_scan = "holders" not in disabled and expected != "exec_after_connect"
    if path == "warm":
        assert executor.jobs == 0
    elif path == "cold" or reaches_scan:
        assert executor.jobs >= 1
    if expected.startswith("evidence:"):
        assert isinstance(result, Evidence), f"expected evidence, got {result}"
        assert result.exe_sha256 == binaries[expected.split(":")[1]].sha256
        assert result.pod_uid == pod.pod_uid
        return
    assert isinstance(result, Denial), f"expected a denial, got {result}"
    assert result.reason.value == expected
    if expected == "socket_shared":
        assert str(extra_holders[0]) in result.message
    if expected == "exec_after_connect":
        assert "ran execve() after connecting" in result.message


def time_per_call(function: Callable[[], object], rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


async def mean_attest_ms(attestor: Attestor, conn: Connection) -> float:
    start = time.perf_counter()
    for _ in range(20):
        await attestor.attest(conn)
    return (time.perf_counter() - start) / 20 * 1000


async def test_holder_scan_cost(
    door: FrontDoor,
    work_dir: Path,
    binaries: dict[str, CopiedBinary],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Measure the scan per attestation (printed, not asserted) and check both scopes pass."""
    argv = [str(door.public_path), "plain", str(binaries["trusted"].path), "-"]
    with pod_cgroup("unified") as pod, run_python(
        binaries["attacker"], ATTACKER, *argv, cgroup_dirs=[pod.path]
    ) as client:
        client.wait_for_line("connected ")
        conn = await wait_for_connection(door, client.pid)
        assert conn.client_inode is not None
        inode = conn.client_inode
        cgroup_text = Path(f"/proc/{client.pid}/cgroup").read_text()
        no_cgroupfs = work_dir / "no-cgroupfs"
        no_cgroupfs.mkdir()

        cgroup_scanner = HolderScanner(Path("/proc"), Path("/sys/fs/cgroup"))
        node_scanner = HolderScanner(Path("/proc"), no_cgroupfs)

        def cgroup_scope() -> HolderScan:
            return cgroup_scanner.check(client.pid, inode, cgroup_text)

        def node_scope() -> HolderScan:
            return node_scanner.check(client.pid, inode, cgroup_text)

        cgroup_result = cgroup_scope()
        node_result = node_scope()
        cgroup_ms = time_per_call(cgroup_scope, 50)
        node_ms = time_per_call(node_scope, 50)
        attestor = Attestor()
        await attestor.attest(conn)  # fills the digest cache

        attest_ms = await mean_attest_ms(attestor, conn)
        disable(monkeypatch, ("holders",))
        unchecked_ms = await mean_attest_ms(attestor, conn)
        outcome = await attestor.attest(conn)
    assert cgroup_result.scope == "cgroup"
    assert node_result.scope == "node"
    assert isinstance(outcome, Evidence)
    with capsys.disabled():
        print(
            f"\nholder scan: cgroup scope {cgroup_ms:.2f} ms "
            f"({cgroup_result.scanned} processes), "
            f"node scope {node_ms:.2f} ms ({node_result.scanned} processes), "
            f"whole attestation {attest_ms:.2f} ms, {unchecked_ms:.2f} ms without the "
            "scan (medians of the scans, means of 20 attestations, on this machine)"
        )
