"""kill -9 of the agent while 50 py-spiffe X509Source clients watch, then a restart.

The clients run py-spiffe (its default retry policy) in ten workload processes of one
pod, five X509Source objects each. After SIGKILL the stale socket file stays behind;
the new agent must start on the same paths, and every source must receive a new
X.509-SVID within 5 s of the new agent logging that it started.
"""

from __future__ import annotations

import json
import os
import select
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.agent_process import agent_files, start_agent
from tests.support.cgroups import pod_cgroup
from tests.support.processes import ChildProcess, CopiedBinary, copy_python, start_process
from tests.test_adv_support import serve_pod

PROCESSES = 10
SOURCES_PER_PROCESS = 5
# The acceptance criterion: identities are back within 5 s of the restart.
RECOVERY_LIMIT_SECONDS = 5.0
STARTUP_DEADLINE_SECONDS = 120.0

SOURCES = r"""
import json, sys, threading, time
from spiffe import X509Source

lock = threading.Lock()


def emit(index, source):
    svid = source.get_x509_context().default_svid
    with lock:
        print(json.dumps({"source": index, "serial": svid.leaf.serial_number,
                          "at": time.time()}), flush=True)


sources = []
for index in range(int(sys.argv[1])):
    source = X509Source(timeout_in_seconds=60)
    source.subscribe_for_updates(lambda index=index, source=source: emit(index, source))
    emit(index, source)
    sources.append(source)
sys.stdin.readline()
for source in sources:
    source.close()
"""


class LineReader:
    """Reads whole stdout lines from many children without blocking on any of them."""

    def __init__(self, children: list[ChildProcess]) -> None:
        self._buffers = {child.popen.stdout.fileno(): b"" for child in children}  # type: ignore[union-attr]
        self._owner = {child.popen.stdout.fileno(): child for child in children}  # type: ignore[union-attr]

    def lines(self, timeout: float) -> Iterator[tuple[ChildProcess, str]]:
        ready, _, _ = select.select(list(self._buffers), [], [], timeout)
        for fd in ready:
            data = os.read(fd, 65536)
            if not data:
                raise AssertionError(f"client {self._owner[fd].pid} exited")
            *complete, self._buffers[fd] = (self._buffers[fd] + data).split(b"\n")
            for line in complete:
                yield self._owner[fd], line.decode()


def collect_updates(
    reader: LineReader, expected: int, deadline: float, after: float = 0.0
) -> dict[tuple[int, int], dict[str, float]]:
    """Return the first update after ``after`` of each (pid, source) once all arrived."""
    updates: dict[tuple[int, int], dict[str, float]] = {}
    end = time.monotonic() + deadline
    while len(updates) < expected and time.monotonic() < end:
        for child, line in reader.lines(timeout=0.5):
            if not line.startswith("{"):
                continue
            update = json.loads(line)
            key = (child.pid, int(update["source"]))
            if update["at"] > after and key not in updates:
                updates[key] = update
    return updates


@pytest.fixture(scope="module")
def python(tmp_path_factory: pytest.TempPathFactory) -> CopiedBinary:
    return copy_python(tmp_path_factory.mktemp("adv-restart"), "watcher", site_packages=True)


@pytest.mark.slow
def test_restart_restores_identities(
    python: CopiedBinary, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = PROCESSES * SOURCES_PER_PROCESS
    with agent_files() as files, pod_cgroup("unified") as pod, ExitStack() as stack:
        first = stack.enter_context(start_agent(files))
        serve_pod(files, first, pod, python)
        env = {**python.env, "SPIFFE_ENDPOINT_SOCKET": files.endpoint}
        argv = [str(python.path), "-c", SOURCES, str(SOURCES_PER_PROCESS)]
        clients = [
            stack.enter_context(start_process(argv, env=env, cgroup_dirs=[pod.path]))
            for _ in range(PROCESSES)
        ]
        reader = LineReader(clients)
        initial = collect_updates(reader, expected, STARTUP_DEADLINE_SECONDS)
        assert len(initial) == expected

        first.popen.kill()
        first.popen.wait(timeout=10)
        assert Path(files.socket_path).is_socket(), "SIGKILL should leave the socket file"

        with start_agent(files) as second:
            started = time.time()
            updates = collect_updates(reader, expected, 30.0, after=started - 1.0)
            log = second.log_text()
        for client in clients:
            client.send_line("")

    delays = sorted(update["at"] - started for update in updates.values())
    renewed = [key for key, update in updates.items() if update["serial"] != initial[key]["serial"]]
    with capsys.disabled():
        print(
            f"\nrestart: {len(updates)}/{expected} sources updated; seconds after the new "
            f"agent started: min {delays[0]:.2f}, max {delays[-1]:.2f}"
            if delays
            else "\nrestart: no source updated"
        )
    assert len(updates) == expected
    assert len(renewed) == expected
    assert delays[-1] < RECOVERY_LIMIT_SECONDS
    # The stale socket file from the killed agent did not block the start.
    assert "agent started" in log
    assert "is in use by a running process" not in log
