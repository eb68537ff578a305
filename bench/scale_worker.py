"""One client process of the scale benchmark: many FetchX509SVID watch streams at once.

Run ``COPY -m bench.scale_worker AGENT_SOCKET STREAMS CHANNELS``. The worker opens
CHANNELS connections (each its own HTTP/2 connection to the agent) and spreads STREAMS
streams over them; all streams share this process's identity. It prints ``{"ready":
...}`` once every stream has its first SVID (or the deadline passed) and records, per
stream, the POSIX time at which each new leaf serial number arrived. The line
``{"stop": true}`` (or end of stdin) cancels every stream and prints the records and
how each stream ended ("open" if it was still open at the stop).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from cryptography import x509

from agent._proto import workload_pb2

METHOD = "/SpiffeWorkloadAPI/FetchX509SVID"
HEADER = (("workload.spiffe.io", "true"),)
# Bounds the wait for the first SVID of every stream; it measures nothing.
READY_DEADLINE_SECONDS = 120.0


@dataclass
class StreamRecord:
    arrivals: list[tuple[int, float]] = field(default_factory=list)
    ended: str = ""


_serials: dict[bytes, int] = {}


def leaf_serial(message: bytes) -> int:
    """Return the serial number of the default SVID's leaf (cached per message bytes)."""
    serial = _serials.get(message)
    if serial is None:
        response = workload_pb2.X509SVIDResponse.FromString(message)
        chain = response.svids[0].x509_svid
        # DER SEQUENCE header: 0x30, then a short or long-form length.
        length_bytes = chain[1] & 0x7F if chain[1] & 0x80 else 0
        length = int.from_bytes(chain[2 : 2 + length_bytes]) if length_bytes else chain[1]
        leaf = x509.load_der_x509_certificate(chain[: 2 + length_bytes + length])
        serial = leaf.serial_number
        _serials[message] = serial
    return serial


async def watch(
    channel: grpc.aio.Channel, record: StreamRecord, first: asyncio.Event
) -> None:
    call = channel.unary_stream(METHOD)(b"", metadata=HEADER)
    try:
        async for message in call:
            serial = leaf_serial(message)
            record.arrivals.append((serial, time.time()))
            first.set()
        record.ended = f"ended: {await call.code()}"
    except asyncio.CancelledError:
        record.ended = record.ended or "open"
        raise
    except grpc.aio.AioRpcError as error:
        record.ended = f"error: {error.code()} {error.details()}"


async def main_async(socket_path: str, streams: int, channels: int) -> dict[str, Any]:
    # A local subchannel pool gives each channel its own connection.
    options = (("grpc.use_local_subchannel_pool", 1),)
    opened = [grpc.aio.insecure_channel(f"unix:{socket_path}", options=options)
              for _ in range(channels)]
    records = [StreamRecord() for _ in range(streams)]
    firsts = [asyncio.Event() for _ in range(streams)]
    tasks = [
        asyncio.create_task(watch(opened[index % channels], records[index], firsts[index]))
        for index in range(streams)
    ]
    waiting = [asyncio.create_task(event.wait()) for event in firsts]
    done, pending = await asyncio.wait(waiting, timeout=READY_DEADLINE_SECONDS)
    for waiter in pending:
        waiter.cancel()
    print(json.dumps({"ready": len(done), "streams": streams}), flush=True)

    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in opened:
        await channel.close()
    return {"records": [[record.arrivals, record.ended] for record in records]}


def main() -> int:
    socket_path, streams, channels = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    result = asyncio.run(main_async(socket_path, streams, channels))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
