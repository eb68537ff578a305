"""The real agent as a subprocess, with manifests signed by the openssl command line.

``running_agent(work_dir, ...)`` writes a settings file and an ECDSA P-256 manifest
signing key (made with ``openssl``), starts ``python -m agent run --config FILE``, waits
for the public socket and stops the agent on exit. ``write_manifest`` writes
``<name>.json`` and its detached signature ``<name>.json.sig`` (``openssl dgst -sha256
-sign``). The agent's log goes to a file, which tests read with ``wait_for_log``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import REPO_ROOT

# Functional deadlines for a hung agent; they do not measure anything.
START_DEADLINE_SECONDS = 20.0
STOP_DEADLINE_SECONDS = 10.0


@dataclass
class RunningAgent:
    """An agent subprocess and the paths it uses."""

    process: subprocess.Popen[bytes]
    socket_path: Path
    manifests_dir: Path
    signing_key: Path
    log_path: Path
    trust_domain: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, deadline: float, start: int = 0) -> re.Match[str]:
        """Wait until the log, from character ``start`` on, matches ``pattern``."""
        end = time.monotonic() + deadline
        compiled = re.compile(pattern, re.MULTILINE)
        while True:
            found = compiled.search(self.log(), start)
            if found:
                return found
            if time.monotonic() > end:
                raise TimeoutError(
                    f"agent log has no {pattern!r} after {deadline} s:\n{self.log()[-3000:]}"
                )
            time.sleep(0.02)

    def write_manifest(self, name: str, **fields: object) -> Path:
        """Write a signed manifest ``<name>.json`` with ``fields``; the signature goes first."""
        data = json.dumps(fields, indent=2).encode()
        staging = self.manifests_dir.parent / f"{name}.json"
        staging.write_bytes(data)
        signature = self.manifests_dir / f"{name}.json.sig"
        openssl(
            "dgst", "-sha256", "-sign", str(self.signing_key), "-out", str(signature), str(staging)
        )
        # Rename into place so the store never reads a half-written manifest.
        target = self.manifests_dir / f"{name}.json"
        staging.rename(target)
        return target


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@contextmanager
def running_agent(
    work_dir: Path, *, trust_domain: str = "example.org", reattest_interval: float = 30.0
) -> Iterator[RunningAgent]:
    """Start an agent with its state under ``work_dir`` and stop it on exit."""
    key = work_dir / "manifest-signing.key"
    public = work_dir / "manifest-signing.pub"
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key))
    openssl("pkey", "-in", str(key), "-pubout", "-out", str(public))

    manifests = work_dir / "manifests"
    manifests.mkdir(mode=0o700)
    socket_path = work_dir / "public" / "api.sock"
    config = work_dir / "agent.toml"
    config.write_text(
        f'socket_path = "{socket_path}"\n'
        f'state_dir = "{work_dir / "state"}"\n'
        f'manifests_dir = "{manifests}"\n'
        f'manifest_keys = ["{public}"]\n'
        f'trust_domain = "{trust_domain}"\n'
        f"reattest_interval = {reattest_interval}\n"
        'log_level = "DEBUG"\n'
        # Port 0: agents of parallel tests must not compete for the default 8081.
        'health_address = "127.0.0.1:0"\n'
    )

    log_path = work_dir / "agent.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    agent = RunningAgent(process, socket_path, manifests, key, log_path, trust_domain)
    try:
        agent.wait_for_log(r"msg=agent started", START_DEADLINE_SECONDS)
        yield agent
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_DEADLINE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
