"""Transport attacks on the real agent: idle floods, silent and malformed clients, load.

Every connection goes to the agent socket that the test created, from this process or
from children it started. Each test checks that a control client in a granted pod
still fetches its X.509-SVID within 1 s, and prints the agent's resident memory.
"""

from __future__ import annotations

import json
import select
import socket
import statistics
import time
from collections.abc import Iterator
from contextlib import ExitStack

import grpc
import pytest

from tests.support.processes import CopiedBinary, copy_python
from tests.test_adv_support import (
    CONTROL_FETCH_LIMIT_MS,
    EMPTY_SETTINGS_FRAME,
    HTTP2_PREFACE,
    GrpcClient,
    ServedPod,
    agent_rss_mib,
    closed_by_peer,
    log_count,
    raise_own_file_limit,
    raw_connection,
    served_pod,
    start_grpc_client,
)

IDLE_CONNECTIONS = 2000
MAX_CONNECTIONS = 2100
LOAD_PROCESSES = 5
LOAD_CHANNELS = 100
LOAD_DEADLINE_SECONDS = 120.0
# The front door's default preface timeout is 10 s; allow for a loaded machine.
PREFACE_CLOSE_DEADLINE = 20.0
# Sanity bound on memory growth, far above what was measured (see the printed numbers).
MAX_RSS_GROWTH_MIB = 400.0


@pytest.fixture(scope="module")
def python(tmp_path_factory: pytest.TempPathFactory) -> CopiedBinary:
    return copy_python(tmp_path_factory.mktemp("adv-transport"), "load", site_packages=True)


@pytest.fixture(scope="module")
def served(python: CopiedBinary) -> Iterator[ServedPod]:
    raise_own_file_limit(IDLE_CONNECTIONS + 500)
    with served_pod(python, extra_config=f"max_connections = {MAX_CONNECTIONS}\n") as pod:
        yield pod


@pytest.fixture(scope="module")
def control(served: ServedPod) -> Iterator[GrpcClient]:
    with start_grpc_client(served) as client:
        first = client.fetch()  # warms the digest cache and the SVID cache
        assert first["ok"] is True, first
        yield client


def assert_control_fast(control: GrpcClient, rounds: int = 3) -> list[float]:
    timings = []
    for _ in range(rounds):
        result = control.fetch()
        assert result["ok"] is True, result
        timings.append(float(str(result["ms"])))
    assert max(timings) < CONTROL_FETCH_LIMIT_MS, timings
    return timings


def wait_until_admitted(served: ServedPod, deadline: float) -> None:
    end = time.monotonic() + deadline
    while True:
        with raw_connection(served.files.socket_path) as sock:
            try:
                if received_settings(sock):
                    return
            except ConnectionResetError:
                pass  # closed over the limit: the agent has not yet ended the old tasks
        assert time.monotonic() < end, "the agent admitted no new connection"
        time.sleep(0.2)


def received_settings(sock: socket.socket) -> bool:
    sock.settimeout(30)
    header = sock.recv(9, socket.MSG_WAITALL)
    return len(header) == 9 and header[3] == 4  # frame type 4 is SETTINGS


def report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n{text}")


@pytest.mark.slow
def test_idle_flood_bounded(
    served: ServedPod, control: GrpcClient, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline = agent_rss_mib(served.agent)
    with ExitStack() as stack:
        idle = [
            stack.enter_context(raw_connection(served.files.socket_path))
            for _ in range(IDLE_CONNECTIONS)
        ]
        # Each idle client is fully set up once gRPC's SETTINGS frame has come back.
        assert all(received_settings(sock) for sock in idle)
        loaded = agent_rss_mib(served.agent)
        timings = assert_control_fast(control)
        assert all(sock.fileno() >= 0 for sock in idle)

        # Past max_connections the agent closes new connections and logs it once.
        extra = [
            stack.enter_context(raw_connection(served.files.socket_path))
            for _ in range(MAX_CONNECTIONS - IDLE_CONNECTIONS + 50)
        ]
        served.agent.wait_for_log("connection limit reached", f"limit={MAX_CONNECTIONS}")
        assert closed_by_peer(extra[-1], deadline=10.0)
        assert log_count(served.agent, "connection limit reached") == 1
    # The agent ends the closed connections' tasks, then admits new connections again.
    wait_until_admitted(served, deadline=20.0)
    assert_control_fast(control)
    served.agent.wait_for_log("accepting connections again")
    report(
        capsys,
        f"idle flood: agent RSS {baseline:.0f} MiB before, {loaded:.0f} MiB with "
        f"{IDLE_CONNECTIONS} idle connections; control fetch ms {timings}",
    )
    assert loaded - baseline < MAX_RSS_GROWTH_MIB


@pytest.mark.slow
def test_silent_client_closed(served: ServedPod, control: GrpcClient) -> None:
    silent = raw_connection(served.files.socket_path, b"")
    half = raw_connection(served.files.socket_path, HTTP2_PREFACE[:10])
    with silent, half:
        assert_control_fast(control, rounds=1)
        assert closed_by_peer(silent, PREFACE_CLOSE_DEADLINE)
        assert closed_by_peer(half, PREFACE_CLOSE_DEADLINE)
    served.agent.wait_for_log("no HTTP/2 preface before the timeout")


MALFORMED = {
    "garbage-after-preface": HTTP2_PREFACE + b"\xde\xad\xbe\xef" * 64,
    "huge-frame-length": HTTP2_PREFACE + bytes([0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 0, 1]),
    "headers-on-stream-0": HTTP2_PREFACE + EMPTY_SETTINGS_FRAME
    + bytes([0, 0, 4, 1, 4, 0, 0, 0, 0]) + b"\x82\x86\x84\x41",
    "bad-hpack": HTTP2_PREFACE + EMPTY_SETTINGS_FRAME
    + bytes([0, 0, 4, 1, 5, 0, 0, 0, 1]) + b"\xff\xff\xff\xff",
    "settings-bad-length": HTTP2_PREFACE + bytes([0, 0, 5, 4, 0, 0, 0, 0, 0]) + b"\x00" * 5,
    "wrong-preface": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\x00" * 8,
}


@pytest.mark.parametrize("payload", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_frames(served: ServedPod, control: GrpcClient, payload: bytes) -> None:
    with raw_connection(served.files.socket_path, payload) as sock:
        assert closed_by_peer(sock, deadline=10.0)
    assert served.agent.popen.poll() is None
    assert_control_fast(control, rounds=1)


def test_malformed_protobuf(served: ServedPod, control: GrpcClient) -> None:
    # This process is no granted workload; undecodable bytes must fail before that matters.
    with grpc.insecure_channel(f"unix:{served.files.socket_path}") as channel:
        call = channel.unary_unary("/SpiffeWorkloadAPI/FetchJWTSVID")
        with pytest.raises(grpc.RpcError) as raised:
            call(b"\x0a\xff\xff\xff\xff\x0f", metadata=(("workload.spiffe.io", "true"),),
                 timeout=10)
    # The agent's own deserializer turns undecodable bytes into INVALID_ARGUMENT, with one
    # log line and no traceback (grpcio's default is UNKNOWN plus a traceback per call).
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    log = served.agent.log_text()
    assert "malformed request rejected" in log
    assert "Traceback" not in log
    assert served.agent.popen.poll() is None
    assert_control_fast(control, rounds=1)


def test_disconnect_mid_stream(served: ServedPod, control: GrpcClient) -> None:
    log_start = len(served.agent.log_text())
    with start_grpc_client(served) as holder:
        held = holder.command("hold")
        assert int(str(held["held"])) > 0
        holder.child.send_line("drop")
        assert holder.child.popen.wait(timeout=10) == 0
    # A raw client that stops inside a frame header.
    with raw_connection(served.files.socket_path, HTTP2_PREFACE + b"\x00\x00\x10\x01") as sock:
        sock.shutdown(socket.SHUT_RDWR)
    assert_control_fast(control, rounds=2)
    log = served.agent.log_text()[log_start:]
    assert "Traceback" not in log
    assert "connection handler failed" not in log


@pytest.mark.slow
def test_many_clients_at_once(
    served: ServedPod, control: GrpcClient, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline = agent_rss_mib(served.agent)
    with ExitStack() as stack:
        loaders = [stack.enter_context(start_grpc_client(served)) for _ in range(LOAD_PROCESSES)]
        for loader in loaders:
            loader.child.send_line(f"load {LOAD_CHANNELS}")
        # The control client fetches again and again for as long as the load runs.
        timings: list[float] = []
        end = time.monotonic() + LOAD_DEADLINE_SECONDS
        while not all(has_output(loader) for loader in loaders) and time.monotonic() < end:
            timings.extend(assert_control_fast(control, rounds=1))
        peak = agent_rss_mib(served.agent)
        decoded = [json.loads(loader.child.read_line(deadline=1.0)) for loader in loaders]
    assert [result["errors"] for result in decoded] == [[]] * LOAD_PROCESSES
    assert sum(result["ok"] for result in decoded) == LOAD_PROCESSES * LOAD_CHANNELS
    assert len(timings) >= 3, "the load ended before the control client measured it"
    report(
        capsys,
        f"{LOAD_PROCESSES * LOAD_CHANNELS} clients at once: load took "
        f"{max(r['seconds'] for r in decoded):.2f} s; {len(timings)} control fetches during "
        f"it, max {max(timings):.0f} ms, median {statistics.median(timings):.0f} ms; "
        f"agent RSS {baseline:.0f} -> {peak:.0f} MiB",
    )
    assert peak - baseline < MAX_RSS_GROWTH_MIB


def has_output(client: GrpcClient) -> bool:
    stdout = client.child.popen.stdout
    assert stdout is not None
    return bool(select.select([stdout], [], [], 0)[0])
