"""The floor: a bare grpc.aio server on a Unix socket that sends a pre-built response.

Run ``python -m bench.floor SOCKET RESPONSE_FILE``. It serves the server-streaming
method ``/SpiffeWorkloadAPI/FetchX509SVID`` with no attestation, no header check and no
protobuf work: it sends the bytes of RESPONSE_FILE (an X509SVIDResponse captured from
the agent, so clients parse the same message) and then holds the stream open until the
client cancels, as the agent does. It prints ``{"ready": true}`` once it listens and
stops on SIGTERM or when stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

SERVICE = "SpiffeWorkloadAPI"
METHOD = "FetchX509SVID"


async def serve(socket_path: str, payload: bytes) -> None:
    async def fetch(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield payload
        await asyncio.Event().wait()  # held open until the client cancels

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {METHOD: grpc.unary_stream_rpc_method_handler(fetch)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: None if sys.stdin.readline() else stop.set())
    print(json.dumps({"ready": True}), flush=True)
    await stop.wait()
    await server.stop(0.5)


def main() -> int:
    socket_path, response_file = sys.argv[1], sys.argv[2]
    asyncio.run(serve(socket_path, Path(response_file).read_bytes()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
