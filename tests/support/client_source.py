"""A long-running py-spiffe workload that watches its X.509-SVID; tests run it as a child.

Usage: ``python client_source.py``, with SPIFFE_ENDPOINT_SOCKET set. Prints JSON lines:

- ``{"event": "update", "serial": ..., "spiffe_id": ...}`` from an X509Source (default
  retry policy) at start and on every update it receives;
- ``{"event": "watching"}`` when a second watcher, started with ``retry_connect=False``,
  received its first update, and ``{"event": "stream_error", "error": ...}`` with the
  first status that ends its stream;
- ``{"event": "fetch", ...}`` after each ``fetch`` line on stdin: a fresh one-shot fetch,
  ``{"serial": ...}`` or ``{"error": ...}``.

Closing stdin ends the program.
"""

from __future__ import annotations

import json
import sys
import threading

from spiffe import WorkloadApiClient, X509Source
from spiffe.errors import PySpiffeError

TIMEOUT_SECONDS = 20.0
_print_lock = threading.Lock()


def emit(**fields: object) -> None:
    with _print_lock:
        print(json.dumps(fields), flush=True)


def main() -> int:
    source = X509Source(timeout_in_seconds=TIMEOUT_SECONDS)

    def on_update() -> None:
        svid = source.get_x509_context().default_svid
        emit(event="update", serial=svid.leaf.serial_number, spiffe_id=str(svid.spiffe_id))

    on_update()
    source.subscribe_for_updates(on_update)

    watcher = WorkloadApiClient()
    watching = threading.Event()

    def on_watch_update(context: object) -> None:
        if not watching.is_set():
            watching.set()
            emit(event="watching")

    watcher.stream_x509_contexts(
        on_watch_update,
        lambda error: emit(event="stream_error", error=str(error)),
        retry_connect=False,
    )

    for line in sys.stdin:
        if line.strip() != "fetch":
            continue
        client = WorkloadApiClient()
        try:
            svid = client.fetch_x509_svid(timeout=TIMEOUT_SECONDS)
            emit(event="fetch", serial=svid.leaf.serial_number, spiffe_id=str(svid.spiffe_id))
        except PySpiffeError as error:
            emit(event="fetch", error=str(error))
        finally:
            client.close()
    source.close()
    watcher.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
