"""One client process of the warm-fetch benchmark; the parent drives it over JSON lines.

Run ``python -m bench.fetch_worker KIND AGENT_SOCKET FLOOR_SOCKET`` with KIND ``pyspiffe``
(py-spiffe's one-shot ``fetch_x509_svid``, which parses the certificate chain and key)
or ``raw`` (grpcio's generic stub: open the FetchX509SVID stream, read one message as
bytes, cancel). Both read the first message of a new stream on a channel that stays
connected, so every fetch is warm. This module never imports ``agent._proto``.

Protocol: after warming both channels the worker prints ``{"ready": true}``. Each
``{"target": "agent"|"floor", "start_at": T, "seconds": S}`` line makes it wait until
POSIX time T, fetch in a loop for S seconds and print the count, elapsed time and the
latency of every fetch in microseconds. End of stdin ends the worker.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

import grpc

WARMUP_FETCHES = 5
# Bounds one hung fetch; it measures nothing.
FETCH_TIMEOUT_SECONDS = 20.0
METHOD = "/SpiffeWorkloadAPI/FetchX509SVID"
HEADER = (("workload.spiffe.io", "true"),)

Fetch = Callable[[], int]


def raw_fetcher(socket_path: str) -> Fetch:
    channel = grpc.insecure_channel(f"unix:{socket_path}")
    call = channel.unary_stream(METHOD)

    def fetch() -> int:
        stream = call(b"", metadata=HEADER, timeout=FETCH_TIMEOUT_SECONDS)
        try:
            message: bytes = next(stream)
        finally:
            stream.cancel()
        return len(message)

    return fetch


def pyspiffe_fetcher(socket_path: str) -> Fetch:
    from spiffe import WorkloadApiClient

    client = WorkloadApiClient(socket_path=f"unix:{socket_path}")

    def fetch() -> int:
        svid = client.fetch_x509_svid(timeout=FETCH_TIMEOUT_SECONDS)
        return len(svid.cert_chain)

    return fetch


def run(fetch: Fetch, start_at: float, seconds: float) -> dict[str, object]:
    time.sleep(max(0.0, start_at - time.time()))
    latencies: list[int] = []
    errors = 0
    first_error = ""
    begin = time.perf_counter()
    end = begin + seconds
    while True:
        started = time.perf_counter_ns()
        if started / 1e9 >= end:
            break
        try:
            fetch()
        except Exception as error:  # counted and reported; the run goes on
            errors += 1
            first_error = first_error or f"{type(error).__name__}: {error}"
            continue
        latencies.append((time.perf_counter_ns() - started) // 1000)
    elapsed = time.perf_counter() - begin
    return {
        "count": len(latencies),
        "elapsed": elapsed,
        "latencies_us": latencies,
        "errors": errors,
        "first_error": first_error,
    }


def main() -> int:
    kind, agent_socket, floor_socket = sys.argv[1:4]
    make = pyspiffe_fetcher if kind == "pyspiffe" else raw_fetcher
    fetchers = {"agent": make(agent_socket), "floor": make(floor_socket)}
    sizes = {}
    for target, fetch in fetchers.items():
        for _ in range(WARMUP_FETCHES):
            sizes[target] = fetch()
    print(json.dumps({"ready": True, "sizes": sizes}), flush=True)
    for line in sys.stdin:
        order = json.loads(line)
        result = run(fetchers[order["target"]], order["start_at"], order["seconds"])
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
