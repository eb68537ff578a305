"""A new workload process asking for its first X.509-SVID; run by a padded interpreter copy.

Run ``COPY -m bench.cold_worker AGENT_SOCKET [SAVE_FILE]``. After importing grpc it times one
FetchX509SVID call on a new channel, from before the connection is made until the
first message arrives (connection, the agent's attestation with the hash of this
process's executable, and the response), and prints ``{"first_svid_ms": ..., "bytes":
..., "error": ...}``. With SAVE_FILE it also writes the response message there (mode
0600: it contains the SVID's private key). It never imports ``agent._proto``.
"""

from __future__ import annotations

import json
import os
import sys
import time

import grpc

METHOD = "/SpiffeWorkloadAPI/FetchX509SVID"
# Bounds a hung call; it measures nothing.
TIMEOUT_SECONDS = 60.0


def main() -> int:
    target = f"unix:{sys.argv[1]}"
    started = time.perf_counter()
    channel = grpc.insecure_channel(target)
    stream = channel.unary_stream(METHOD)(
        b"", metadata=(("workload.spiffe.io", "true"),), timeout=TIMEOUT_SECONDS
    )
    result: dict[str, object]
    try:
        message: bytes = next(stream)
        elapsed = time.perf_counter() - started
        result = {"first_svid_ms": elapsed * 1000, "bytes": len(message)}
        if len(sys.argv) > 2:
            fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(message)
    except grpc.RpcError as error:
        result = {"error": f"{error.code()}: {error.details()}"}
    finally:
        stream.cancel()
        channel.close()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
