"""The front door's relay: bytes arrive intact and in order both ways under back-pressure.

The client is this test process on a real Unix socket (the front door pins it like any
caller), and the internal side is an echo server that starts reading late, so the
relay's write buffers fill and reading from the other side has to pause and resume.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.peer.frontdoor import HTTP2_PREFACE, FrontDoor
from agent.peer.sockets import prepare_internal_socket, prepare_public_socket

PAYLOAD_BYTES = 8 * 1024 * 1024
# The echo server waits this long before its first read, so the relay's buffers fill.
ECHO_START_DELAY_SECONDS = 0.3
# Functional deadline for moving the payload both ways on a loaded machine.
DEADLINE_SECONDS = 60.0


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(ECHO_START_DELAY_SECONDS)
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass  # the relay closed the connection when the client left
    finally:
        writer.close()


@pytest.fixture
async def echo_door() -> AsyncIterator[FrontDoor]:
    # AF_UNIX paths are limited to 107 bytes, so keep them short.
    directory = Path(tempfile.mkdtemp(prefix="relay-", dir="/tmp"))
    public = directory / "public" / "agent.sock"
    internal = directory / "internal" / "echo.sock"
    prepare_public_socket(public)
    prepare_internal_socket(internal)
    server = await asyncio.start_unix_server(echo, path=str(internal))
    door = FrontDoor(public, internal)
    await door.start()
    try:
        yield door
    finally:
        await door.close()
        server.close()
        await server.wait_closed()
        shutil.rmtree(directory)


async def test_relay_large_payload_intact(echo_door: FrontDoor) -> None:
    payload = os.urandom(PAYLOAD_BYTES)
    reader, writer = await asyncio.open_unix_connection(str(echo_door.public_path))

    async def send() -> None:
        writer.write(HTTP2_PREFACE)
        for start in range(0, len(payload), 1 << 20):
            writer.write(payload[start : start + (1 << 20)])
            await writer.drain()

    sending = asyncio.ensure_future(send())
    echoed = await asyncio.wait_for(
        reader.readexactly(len(HTTP2_PREFACE) + len(payload)), DEADLINE_SECONDS
    )
    await sending
    writer.close()

    assert echoed[: len(HTTP2_PREFACE)] == HTTP2_PREFACE
    assert echoed[len(HTTP2_PREFACE) :] == payload


async def test_relay_ends_when_client_leaves(echo_door: FrontDoor) -> None:
    reader, writer = await asyncio.open_unix_connection(str(echo_door.public_path))
    writer.write(HTTP2_PREFACE + b"ping")
    echoed = await asyncio.wait_for(
        reader.readexactly(len(HTTP2_PREFACE) + 4), DEADLINE_SECONDS
    )
    assert echoed.endswith(b"ping")
    assert len(echo_door.registry) == 1

    writer.close()
    await writer.wait_closed()
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE_SECONDS
    while len(echo_door.registry) and loop.time() < end:
        await asyncio.sleep(0.02)

    assert len(echo_door.registry) == 0
