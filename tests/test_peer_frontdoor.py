"""FrontDoor end to end: real clients, a real grpcio server behind the relay, real cgroups."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc import aio

from agent.attest.attestor import Attestor
from agent.attest.evidence import Evidence
from agent.peer.connection import Connection
from agent.peer.errors import SocketInUseError, SocketPathError
from agent.peer.frontdoor import HTTP2_PREFACE, FrontDoor
from agent.peer.process import read_start_time
from agent.peer.sockets import prepare_internal_socket, prepare_public_socket
from tests.support.cgroups import pod_cgroup
from tests.support.processes import (
    ChildProcess,
    CopiedBinary,
    copy_python,
    host_pid_of_child,
    run_python,
    start_process,
    start_socket_client,
)

# Functional deadline for state the front door reaches after a client acts.
DEADLINE_SECONDS = 10.0


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE_SECONDS
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 107 bytes, so keep them short.
    directory = Path(tempfile.mkdtemp(prefix="fd-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


@pytest.fixture
def paths(socket_dir: Path) -> tuple[Path, Path]:
    public = socket_dir / "public" / "agent.sock"
    internal = socket_dir / "internal" / "grpc.sock"
    prepare_public_socket(public)
    prepare_internal_socket(internal)
    return public, internal


def _attest_handler(door: FrontDoor, attestor: Attestor) -> grpc.GenericRpcHandler:
    async def attest(request: bytes, context: aio.ServicerContext) -> bytes:
        peer = context.peer()
        conn = door.registry.lookup(peer)
        body: dict[str, object] = {"peer": peer, "found": conn is not None}
        if conn is not None:
            result = await attestor.attest(conn)
            if isinstance(result, Evidence):
                body["evidence"] = result.as_json_dict()
            else:
                body["denial"] = result.reason.value
        return json.dumps(body).encode()

    handler = grpc.unary_unary_rpc_method_handler(attest)
    return grpc.method_handlers_generic_handler("Test", {"Attest": handler})


@pytest.fixture
async def grpc_door(paths: tuple[Path, Path]) -> AsyncIterator[FrontDoor]:
    public, internal = paths
    door = FrontDoor(public, internal)
    server = aio.server()
    server.add_generic_rpc_handlers((_attest_handler(door, Attestor()),))
    server.add_insecure_port(f"unix:{internal}")
    await server.start()
    await door.start()
    try:
        yield door
    finally:
        await door.close()
        await server.stop(None)


class HoldingServer:
    """A plain internal server that accepts relay connections and records their names."""

    def __init__(self, door_ref: list[FrontDoor]) -> None:
        self.door_ref = door_ref
        self.names: list[str] = []
        self.lookup_at_close: list[Connection | None] = []

    async def on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raw_name = writer.get_extra_info("peername")
        name = raw_name.decode() if isinstance(raw_name, bytes) else raw_name
        name = name.lstrip("\0")
        self.names.append(name)
        while await reader.read(65536):
            pass
        # The relay socket is closed now; its registry entry must already be gone.
        self.lookup_at_close.append(self.door_ref[0].registry.lookup(f"unix-abstract:{name}"))
        writer.close()


@pytest.fixture
async def plain_door(
    paths: tuple[Path, Path], request: pytest.FixtureRequest
) -> AsyncIterator[tuple[FrontDoor, HoldingServer]]:
    public, internal = paths
    options = getattr(request, "param", {})
    door = FrontDoor(public, internal, **options)
    holder = HoldingServer([door])
    server = await asyncio.start_unix_server(holder.on_connect, path=str(internal))
    await door.start()
    try:
        yield door, holder
    finally:
        await door.close()
        server.close()
        await server.wait_closed()


@pytest.fixture
def python(tmp_path: Path) -> CopiedBinary:
    return copy_python(tmp_path, "client")


GRPC_CLIENT = r"""
import sys, grpc
channel = grpc.insecure_channel("unix:" + sys.argv[1])
response = channel.unary_unary("/Test/Attest")(b"", timeout=20)
print("response " + response.decode(), flush=True)
"""


async def _read_line(child: ChildProcess, prefix: str) -> str:
    return await asyncio.to_thread(child.wait_for_line, prefix)


async def test_frontdoor_grpc_evidence(tmp_path: Path, grpc_door: FrontDoor) -> None:
    python = copy_python(tmp_path, "grpc-client", site_packages=True)
    with (
        pod_cgroup("pids", driver="cgroupfs") as v1,
        pod_cgroup(
            "unified",
            driver="systemd",
            pod_uid=v1.pod_uid,
            container_id=v1.container_id,
        ) as v2,
        run_python(
            python, GRPC_CLIENT, str(grpc_door.public_path), cgroup_dirs=[v1.path, v2.path]
        ) as client,
    ):
        line = await _read_line(client, "response ")
    body = json.loads(line.removeprefix("response "))
    assert body["peer"].startswith("unix-abstract:attest-agent-")
    assert body["found"] is True
    evidence = body["evidence"]
    assert evidence["pid"] == client.pid
    assert evidence["pod_uid"] == v1.pod_uid
    assert evidence["container_id"] == v1.container_id
    assert evidence["exe_sha256"] == python.sha256
    assert evidence["uid"] == 0
    assert evidence["systemd_unit"] is None


async def test_frontdoor_unregistered_peer(grpc_door: FrontDoor) -> None:
    # A channel straight to the internal socket (only the agent's user can reach it)
    # has no abstract name, so the registry finds nothing.
    async with aio.insecure_channel(f"unix:{grpc_door.internal_path}") as channel:
        response = await channel.unary_unary("/Test/Attest")(b"", timeout=20)
    body = json.loads(response)
    assert body["found"] is False
    assert not body["peer"].startswith("unix-abstract:")


@pytest.mark.parametrize("plain_door", [{}], indirect=True)
async def test_frontdoor_registry_lifecycle(
    plain_door: tuple[FrontDoor, HoldingServer], python: CopiedBinary
) -> None:
    door, holder = plain_door
    client = await asyncio.to_thread(start_socket_client, python, door.public_path)
    with client:
        await wait_until(lambda: len(door.registry) == 1, "the client's registry entry")
        conn = door.registry.connections()[0]
        assert conn.pid == client.pid
        assert conn.creds.uid == 0
        assert conn.start_time == read_start_time(client.pid)
        assert door.registry.lookup(f"unix-abstract:{holder.names[0]}") is conn
    await wait_until(lambda: len(door.registry) == 0, "removal of the entry")
    await wait_until(lambda: len(holder.lookup_at_close) == 1, "the relay to close")
    assert holder.lookup_at_close == [None]
    assert conn.closed


@pytest.mark.parametrize("plain_door", [{"preface_timeout": 0.3}], indirect=True)
async def test_frontdoor_preface_timeout(
    plain_door: tuple[FrontDoor, HoldingServer],
    python: CopiedBinary,
    caplog: pytest.LogCaptureFixture,
) -> None:
    door, holder = plain_door
    caplog.set_level(logging.INFO, logger="agent.peer.frontdoor")
    client = await asyncio.to_thread(
        start_socket_client, python, door.public_path, send_preface=False
    )
    with client:
        assert await _read_line(client, "closed") == "closed"
    assert len(door.registry) == 0
    assert holder.names == []
    assert "no HTTP/2 preface before the timeout" in caplog.text


async def _closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """Return whether the peer closes the connection (EOF or reset) before the deadline."""
    try:
        data = await asyncio.wait_for(reader.read(), DEADLINE_SECONDS)
    except ConnectionResetError:
        return True  # closed with our bytes unread
    return data == b""


@pytest.mark.parametrize("plain_door", [{}], indirect=True)
async def test_frontdoor_bad_preface(
    plain_door: tuple[FrontDoor, HoldingServer], caplog: pytest.LogCaptureFixture
) -> None:
    door, holder = plain_door
    caplog.set_level(logging.INFO, logger="agent.peer.frontdoor")
    reader, writer = await asyncio.open_unix_connection(str(door.public_path))
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    assert await _closed_by_peer(reader)
    writer.close()
    assert holder.names == []
    assert "did not send the HTTP/2 preface" in caplog.text


async def _open_held(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(HTTP2_PREFACE)
    await writer.drain()
    return reader, writer


@pytest.mark.parametrize("plain_door", [{"max_connections": 2}], indirect=True)
async def test_frontdoor_connection_limit(
    plain_door: tuple[FrontDoor, HoldingServer], caplog: pytest.LogCaptureFixture
) -> None:
    door, _ = plain_door
    caplog.set_level(logging.INFO, logger="agent.peer.frontdoor")
    held = [await _open_held(door.public_path) for _ in range(2)]
    await wait_until(lambda: len(door.registry) == 2, "two registered connections")

    extra_reader, extra_writer = await _open_held(door.public_path)
    assert await _closed_by_peer(extra_reader)
    extra_writer.close()
    assert "connection limit reached, closing new connections limit=2" in caplog.text

    held[0][1].close()
    await wait_until(lambda: len(door.registry) == 1, "the first connection to end")
    held.append(await _open_held(door.public_path))
    await wait_until(lambda: len(door.registry) == 2, "a new connection under the limit")
    assert "accepting connections again count=1 limit=2" in caplog.text
    for _, writer in held[1:]:
        writer.close()


@pytest.mark.parametrize("plain_door", [{}], indirect=True)
async def test_frontdoor_close_releases(plain_door: tuple[FrontDoor, HoldingServer]) -> None:
    door, holder = plain_door
    reader, writer = await _open_held(door.public_path)
    await wait_until(lambda: len(door.registry) == 1, "a registered connection")
    conn = door.registry.connections()[0]
    await door.close()
    assert await _closed_by_peer(reader)
    assert conn.closed
    assert len(door.registry) == 0
    assert not door.public_path.exists()
    writer.close()
    await wait_until(lambda: len(holder.lookup_at_close) == 1, "the relay to close")
    assert holder.lookup_at_close == [None]


@pytest.mark.parametrize("plain_door", [{}], indirect=True)
async def test_frontdoor_pid_namespace_client(
    plain_door: tuple[FrontDoor, HoldingServer], python: CopiedBinary
) -> None:
    door, _ = plain_door
    client = await asyncio.to_thread(
        start_socket_client,
        python,
        door.public_path,
        wrapper=["unshare", "--pid", "--fork"],
    )
    with client:
        assert client.lines[-1] == "connected 1"  # pid 1 inside its own namespace
        host_pid = host_pid_of_child(client.pid)
        await wait_until(lambda: len(door.registry) == 1, "the client's registry entry")
        conn = door.registry.connections()[0]
        assert conn.pid == host_pid
        result = await Attestor().attest(conn)
    assert isinstance(result, Evidence), result
    assert result.pid == host_pid
    assert result.exe_sha256 == python.sha256


@pytest.mark.parametrize("plain_door", [{}], indirect=True)
async def test_frontdoor_unprivileged_client(
    plain_door: tuple[FrontDoor, HoldingServer], socket_dir: Path
) -> None:
    # The copy must be reachable by uid 65534, so it lives in a world-readable directory.
    door, _ = plain_door
    socket_dir.chmod(0o755)
    python = copy_python(socket_dir / "bin", "nobody")
    wrapper = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    with pod_cgroup("pids", driver="cgroupfs", runtime="crio") as pod:
        client = await asyncio.to_thread(
            start_socket_client,
            python,
            door.public_path,
            wrapper=wrapper,
            cgroup_dirs=[pod.path],
        )
        with client:
            await wait_until(lambda: len(door.registry) == 1, "the client's registry entry")
            conn = door.registry.connections()[0]
            result = await Attestor().attest(conn)
    assert conn.creds.uid == 65534
    assert isinstance(result, Evidence), result
    assert result.pid == client.pid
    assert result.uid == 65534
    assert result.gid == 65534
    assert result.pod_uid == pod.pod_uid
    assert result.container_id == pod.container_id
    assert result.exe_sha256 == python.sha256


HIDDEN_PID_AGENT = r"""
import asyncio, logging, sys
from pathlib import Path
from agent.peer.frontdoor import FrontDoor
from agent.peer.sockets import prepare_internal_socket, prepare_public_socket

async def main():
    public, internal = Path(sys.argv[1]), Path(sys.argv[2])
    prepare_public_socket(public)
    prepare_internal_socket(internal)
    server = await asyncio.start_unix_server(lambda reader, writer: None, path=str(internal))
    door = FrontDoor(public, internal)
    await door.start()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    print("connections", len(door.registry), flush=True)
    await door.close()
    server.close()

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
asyncio.run(main())
"""


async def test_frontdoor_hidden_pid(socket_dir: Path) -> None:
    # The front door runs in a new PID namespace, so this test process (in the parent
    # namespace) is invisible to it and SO_PEERCRED reports pid 0.
    public = socket_dir / "ns" / "agent.sock"
    internal = socket_dir / "ns-internal" / "grpc.sock"
    argv = ["unshare", "--pid", "--fork", sys.executable, "-c", HIDDEN_PID_AGENT]
    with start_process([*argv, str(public), str(internal)]) as agent:
        await _read_line(agent, "ready")
        reader, writer = await _open_held(public)
        assert await _closed_by_peer(reader)
        writer.close()
        agent.send_line("")
        assert await _read_line(agent, "connections ") == "connections 0"
        agent.popen.wait(timeout=DEADLINE_SECONDS)
        assert agent.popen.stderr is not None
        log = agent.popen.stderr.read()
    assert "run the agent in the host PID namespace (hostPID: true)" in log
    assert "reason=pid_namespace_hidden" in log


def test_prepare_removes_stale(socket_dir: Path) -> None:
    path = socket_dir / "stale.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.close()  # the file stays, nobody accepts: a crashed agent's socket
    prepare_public_socket(path)
    assert not path.exists()


def test_prepare_rejects_live(socket_dir: Path) -> None:
    path = socket_dir / "live.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    try:
        with pytest.raises(SocketInUseError) as caught:
            prepare_public_socket(path)
    finally:
        listener.close()
    assert str(path) in str(caught.value)
    assert path.exists()


def test_prepare_rejects_regular_file(socket_dir: Path) -> None:
    path = socket_dir / "file.sock"
    path.write_text("not a socket")
    with pytest.raises(SocketPathError) as caught:
        prepare_public_socket(path)
    assert "is not a socket" in str(caught.value)
    assert path.read_text() == "not a socket"


def test_prepare_sets_modes(socket_dir: Path) -> None:
    public = socket_dir / "pub" / "agent.sock"
    internal = socket_dir / "priv" / "grpc.sock"
    prepare_public_socket(public)
    prepare_internal_socket(internal)
    assert public.parent.stat().st_mode & 0o777 == 0o755
    assert internal.parent.stat().st_mode & 0o777 == 0o700


async def test_start_rejects_open_internal_dir(socket_dir: Path) -> None:
    internal_dir = socket_dir / "open"
    internal_dir.mkdir(mode=0o755)
    internal_dir.chmod(0o755)
    door = FrontDoor(socket_dir / "agent.sock", internal_dir / "grpc.sock")
    with pytest.raises(SocketPathError) as caught:
        await door.start()
    assert "mode is 755, expected 700" in str(caught.value)
    assert not (socket_dir / "agent.sock").exists()


async def test_start_sets_socket_mode(paths: tuple[Path, Path]) -> None:
    public, internal = paths
    door = FrontDoor(public, internal)
    await door.start()
    try:
        assert public.stat().st_mode & 0o777 == 0o777
    finally:
        await door.close()
    assert not public.exists()
