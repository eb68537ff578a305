"""A caller's pid reused by another process must yield a denial, never the newcomer's evidence.

The whole scenario runs in a fresh PID namespace (``unshare --pid --fork --mount-proc``)
so that the test controls pid allocation there through /proc/sys/kernel/ns_last_pid:

1. the front door and attestor start inside the namespace;
2. a victim connects, forks a holder that inherits the connection, and exits;
3. a copied ``sleep`` is started with exactly the victim's pid;
4. the connection, still open through the holder, is attested.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import copy_sleep, start_process

SCENARIO = r"""
import asyncio, json, os, subprocess, sys
from pathlib import Path
from agent.attest.attestor import Attestor
from agent.attest.evidence import Evidence
from agent.peer.frontdoor import HTTP2_PREFACE, FrontDoor
from agent.peer.sockets import prepare_internal_socket, prepare_public_socket

VICTIM = '''
import os, socket, sys, time
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
sock.sendall(bytes.fromhex(sys.argv[2]))
holder = os.fork()
if holder == 0:
    time.sleep(3600)  # keeps the connection open after the victim exits
    os._exit(0)
print(holder, flush=True)
sys.stdin.readline()  # exit only once the front door has pinned this process
'''


async def wait_for_connection(door, pid):
    for _ in range(500):
        for conn in door.registry.connections():
            if conn.pid == pid:
                return conn
        await asyncio.sleep(0.02)
    raise RuntimeError(f"no connection from pid {pid}")


def start_with_pid(argv, pid):
    # The next fork in this namespace gets ns_last_pid + 1.
    Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
    return subprocess.Popen(argv)


async def main():
    work, sleep_copy = Path(sys.argv[1]), sys.argv[2]
    public, internal = work / "public" / "agent.sock", work / "internal" / "grpc.sock"
    prepare_public_socket(public)
    prepare_internal_socket(internal)
    server = await asyncio.start_unix_server(lambda reader, writer: None, path=str(internal))
    door = FrontDoor(public, internal)
    await door.start()

    victim = subprocess.Popen(
        [sys.executable, "-c", VICTIM, str(public), HTTP2_PREFACE.hex()],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    holder_pid = int(await asyncio.to_thread(victim.stdout.readline))
    conn = await wait_for_connection(door, victim.pid)
    victim.stdin.close()
    victim.wait()  # reaped: its pid is free now

    newcomer = start_with_pid([sleep_copy, "3600"], victim.pid)
    await asyncio.sleep(0)
    for _ in range(500):  # wait until the newcomer has exec'd the copied sleep
        if os.readlink(f"/proc/{newcomer.pid}/exe") == sleep_copy:
            break
        await asyncio.sleep(0.01)
    attestor = Attestor()
    result = await attestor.attest(conn)
    direct = await attestor.attest_pid(newcomer.pid)
    report = {
        "victim_pid": victim.pid,
        "newcomer_pid": newcomer.pid,
        "connection_open": not conn.closed,
        "result": result.as_json_dict() if isinstance(result, Evidence) else result.reason.value,
        "message": getattr(result, "message", None),
        "newcomer_sha256": direct.exe_sha256 if isinstance(direct, Evidence) else None,
    }
    print(json.dumps(report), flush=True)
    for pid in (holder_pid, newcomer.pid):
        os.kill(pid, 9)
    newcomer.wait()
    await door.close()
    server.close()


asyncio.run(main())
"""


@pytest.fixture
def work_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="reuse-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def test_reused_pid_denied(work_dir: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is needed to create a PID namespace")
    sleep = copy_sleep(work_dir, "newcomer")
    argv = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", SCENARIO]
    with start_process([*argv, str(work_dir), str(sleep.path)]) as scenario:
        line = scenario.read_line(deadline=60)
        scenario.popen.wait(timeout=60)
    report = json.loads(line)
    assert report["newcomer_pid"] == report["victim_pid"], "the pid was not reused"
    assert report["connection_open"] is True
    assert report["newcomer_sha256"] == sleep.sha256
    assert report["result"] == "process_exited"
    assert f"process {report['victim_pid']} exited" in report["message"]
