"""Shared pieces of the adversarial tests: a served pod, gRPC clients, raw connections.

``served_pod()`` starts the real agent (tests.support.agent_process) and a pod cgroup
with a signed manifest that grants ``CLIENT_ID`` to a copied Python interpreter.
``start_grpc_client`` runs that interpreter inside the pod with ``GRPC_CLIENT``, a
raw-bytes gRPC client (no generated code, so it never clashes with py-spiffe or
agent._proto), driven by lines on stdin:

- ``fetch``: one FetchX509SVID on the client's one long-lived channel (reconnecting
  when the agent closed it); prints ``{"ms": ..., "ok": ..., "error": ...}``;
- ``load N``: N channels, each its own connection, fetch at the same moment; prints
  ``{"ok": ..., "errors": [...], "seconds": ...}``;
- ``hold``: opens a FetchX509SVID stream, prints ``{"held": ...}`` after the first
  message, and on the next ``drop`` line exits at once, mid-stream.

This module holds no tests.
"""

from __future__ import annotations

import json
import resource
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.support.agent_process import (
    AgentFiles,
    AgentProcess,
    agent_files,
    sign_manifest,
    start_agent,
)
from tests.support.cgroups import TestCgroup, pod_cgroup
from tests.support.processes import ChildProcess, CopiedBinary, start_process

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS_FRAME = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
NAMESPACE = "adv"
SERVICE_ACCOUNT = "load"
# The acceptance criterion for a control client's fetch while the agent is under load.
CONTROL_FETCH_LIMIT_MS = 1000.0

GRPC_CLIENT = r"""
import asyncio, json, os, sys, time
import grpc

TARGET = "unix:" + sys.argv[1]
METHOD = "/SpiffeWorkloadAPI/FetchX509SVID"
HEADER = (("workload.spiffe.io", "true"),)


def channel():
    # A local subchannel pool gives every channel its own connection to the agent.
    return grpc.aio.insecure_channel(TARGET, options=[("grpc.use_local_subchannel_pool", 1)])


async def fetch_once(chan, timeout):
    call = chan.unary_stream(METHOD)(b"", metadata=HEADER, timeout=timeout)
    async for message in call:
        call.cancel()
        return len(message) > 0
    return False


async def fetch_line(chan):
    start = time.perf_counter()
    try:
        ok = await fetch_once(chan, 30)
        error = None
    except grpc.aio.AioRpcError as exc:
        ok, error = False, f"{exc.code().name}: {exc.details()}"
    return {"ms": (time.perf_counter() - start) * 1000, "ok": ok, "error": error}


async def load(count):
    channels = [channel() for _ in range(count)]
    start = time.perf_counter()
    results = await asyncio.gather(*(fetch_once(c, 60) for c in channels), return_exceptions=True)
    seconds = time.perf_counter() - start
    for chan in channels:
        await chan.close()
    errors = [repr(r) for r in results if r is not True]
    return {"ok": sum(1 for r in results if r is True), "errors": errors[:5], "seconds": seconds}


async def hold():
    chan = channel()
    call = chan.unary_stream(METHOD)(b"", metadata=HEADER)
    async for message in call:
        print(json.dumps({"held": len(message)}), flush=True)
        break
    await asyncio.to_thread(sys.stdin.readline)
    os._exit(0)  # leave mid-stream: no RST_STREAM, no GOAWAY, just a closed socket


async def main():
    # Fetches reuse one channel, as a workload's SDK keeps its connection to the agent.
    control = channel()
    while line := await asyncio.to_thread(sys.stdin.readline):
        command = line.split()
        if command[0] == "fetch":
            print(json.dumps(await fetch_line(control)), flush=True)
        elif command[0] == "load":
            print(json.dumps(await load(int(command[1]))), flush=True)
        elif command[0] == "hold":
            await hold()


asyncio.run(main())
"""


@dataclass
class ServedPod:
    """A running agent and a pod whose copied Python is granted ``spiffe_id``."""

    files: AgentFiles
    agent: AgentProcess
    pod: TestCgroup
    python: CopiedBinary
    spiffe_id: str


@contextmanager
def served_pod(python: CopiedBinary, extra_config: str = "") -> Iterator[ServedPod]:
    """Start an agent and a pod with a manifest for ``python``; stop both on exit."""
    with agent_files(extra_config=extra_config) as files:
        # Load tests run at the production log level: DEBUG logs several lines per call.
        config = files.config.read_text().replace('log_level = "DEBUG"', 'log_level = "INFO"')
        files.config.write_text(config)
        with start_agent(files) as agent, pod_cgroup("unified") as pod:
            yield serve_pod(files, agent, pod, python)


def serve_pod(
    files: AgentFiles, agent: AgentProcess, pod: TestCgroup, python: CopiedBinary
) -> ServedPod:
    """Sign a manifest granting the pod's ``python`` its ID and wait until it is loaded."""
    spiffe_id = f"spiffe://{files.trust_domain}/ns/{NAMESPACE}/sa/{SERVICE_ACCOUNT}"
    sign_manifest(
        files,
        "load",
        {
            "spiffe_id": spiffe_id,
            "exe_sha256": [python.sha256],
            "pod_uid": pod.pod_uid,
            "namespace": NAMESPACE,
            "service_account": SERVICE_ACCOUNT,
        },
    )
    agent.wait_for_log("manifest loaded", "file=load.json")
    return ServedPod(files, agent, pod, python, spiffe_id)


class GrpcClient:
    """GRPC_CLIENT running in the pod; each method sends one command and reads the reply."""

    def __init__(self, child: ChildProcess) -> None:
        self.child = child

    def command(self, line: str, deadline: float = 60.0) -> dict[str, object]:
        self.child.send_line(line)
        decoded: dict[str, object] = json.loads(self.child.read_line(deadline))
        return decoded

    def fetch(self) -> dict[str, object]:
        return self.command("fetch")


@contextmanager
def start_grpc_client(served: ServedPod) -> Iterator[GrpcClient]:
    argv = [str(served.python.path), "-c", GRPC_CLIENT, str(served.files.socket_path)]
    with start_process(argv, env=served.python.env, cgroup_dirs=[served.pod.path]) as child:
        yield GrpcClient(child)


def agent_rss_mib(agent: AgentProcess) -> float:
    """Return the agent's resident memory in MiB."""
    return float(psutil.Process(agent.pid).memory_info().rss) / (1 << 20)


def raise_own_file_limit(needed: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE to at least ``needed`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


IDLE_CLIENT_PAYLOAD = HTTP2_PREFACE + EMPTY_SETTINGS_FRAME
CONNECT_DEADLINE_SECONDS = 30.0


def raw_connection(path: Path, payload: bytes = IDLE_CLIENT_PAYLOAD) -> socket.socket:
    """Connect to the agent socket and send ``payload`` (by default an idle HTTP/2 client).

    A Unix socket with a timeout fails connect() with EAGAIN while the listen backlog
    is full, so this retries until the agent has accepted enough connections.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_DEADLINE_SECONDS)
    end = time.monotonic() + CONNECT_DEADLINE_SECONDS
    while True:
        try:
            sock.connect(str(path))
            break
        except BlockingIOError:
            if time.monotonic() > end:
                sock.close()
                raise
            time.sleep(0.005)
    if payload:
        sock.sendall(payload)
    return sock


def closed_by_peer(sock: socket.socket, deadline: float) -> bool:
    """Read and discard until EOF; return whether the agent closed within ``deadline`` s."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        sock.settimeout(max(0.05, end - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
    return False


def log_count(agent: AgentProcess, fragment: str) -> int:
    return sum(1 for line in agent.log_text().splitlines() if fragment in line)
