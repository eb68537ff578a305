"""The agent as a real subprocess, with its files in a short temporary directory.

``agent_files()`` creates the directory (under /tmp, because a Unix socket path must
fit in 107 bytes), an EC P-256 manifest signing key made by the openssl command line,
and a TOML config. ``start_agent(files)`` runs ``python -m agent run --config ...`` and
returns once the agent logged that it started; the ``with`` block always stops it::

    with agent_files(x509_svid_ttl=3600) as files, start_agent(files) as agent:
        sign_manifest(files, "web", {...})
        ...  # agent.log_text() returns everything the agent logged

``agent_files(root=...)`` puts the files into a directory that the caller made, such
as one from pytest's ``tmp_path_factory``, and leaves it in place on exit.

Stopping sends SIGTERM and, if the agent is still running after 10 s, SIGKILL.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[2]

# Functional deadlines for a 2-core machine shared with other test runs.
START_DEADLINE_SECONDS = 30.0
LOG_DEADLINE_SECONDS = 20.0

Result = TypeVar("Result")


@dataclass(frozen=True)
class AgentFiles:
    """Paths of one test agent: config, sockets, state, manifests and the signing key."""

    root: Path
    config: Path
    socket_path: Path
    state_dir: Path
    manifests_dir: Path
    signing_key: Path
    public_key: Path
    trust_domain: str

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket_path}"


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def agent_files(
    *,
    trust_domain: str = "cluster.local",
    x509_svid_ttl: int = 3600,
    extra_config: str = "",
    root: Path | None = None,
) -> Iterator[AgentFiles]:
    """Create the agent's directory, key pair and config, and remove them all on exit.

    With ``root``, write into that existing directory instead and leave it on exit.
    Its socket path, ``root/public/api.sock``, must fit in 107 bytes.
    """
    owns_root = root is None
    if root is None:
        # Under /tmp, not pytest's tmp_path: the socket path must fit in 107 bytes.
        root = Path(tempfile.mkdtemp(prefix="aa-", dir="/tmp"))
    try:
        keys = root / "keys"
        keys.mkdir()
        signing_key = keys / "manifest.key"
        public_key = keys / "manifest.pub"
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-out", str(signing_key))
        openssl("pkey", "-in", str(signing_key), "-pubout", "-out", str(public_key))
        manifests_dir = root / "manifests"
        manifests_dir.mkdir(mode=0o700)
        files = AgentFiles(
            root=root,
            config=root / "agent.toml",
            socket_path=root / "public" / "api.sock",
            state_dir=root / "state",
            manifests_dir=manifests_dir,
            signing_key=signing_key,
            public_key=public_key,
            trust_domain=trust_domain,
        )
        files.config.write_text(
            f'socket_path = "{files.socket_path}"\n'
            f'state_dir = "{files.state_dir}"\n'
            f'manifests_dir = "{files.manifests_dir}"\n'
            f'manifest_keys = ["{files.public_key}"]\n'
            f'trust_domain = "{trust_domain}"\n'
            f"x509_svid_ttl = {x509_svid_ttl}\n"
            'log_level = "DEBUG"\n'
            # Port 0: agents of parallel tests must not compete for the default 8081.
            + ("" if "health_address" in extra_config else 'health_address = "127.0.0.1:0"\n')
            + extra_config
        )
        yield files
    finally:
        if owns_root:
            shutil.rmtree(root, ignore_errors=True)


def sign_manifest(files: AgentFiles, name: str, document: dict[str, Any]) -> Path:
    """Write ``<name>.json`` and its detached signature (openssl dgst -sha256 -sign).

    The signature is written first, into a temporary name, so that the agent never
    reads a manifest without its matching signature.
    """
    manifest = files.manifests_dir / f"{name}.json"
    staging = files.root / f"{name}.json"
    staging.write_text(json.dumps(document, indent=2) + "\n")
    signature = files.root / f"{name}.json.sig"
    openssl("dgst", "-sha256", "-sign", str(files.signing_key), "-out", str(signature),
            str(staging))
    os.replace(signature, files.manifests_dir / f"{name}.json.sig")
    os.replace(staging, manifest)
    return manifest


class AgentProcess:
    """A running agent; ``stop()`` ends it with SIGTERM and returns the exit status."""

    def __init__(self, files: AgentFiles, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.files = files
        self.popen = popen
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, *fragments: str, deadline: float = LOG_DEADLINE_SECONDS) -> str:
        """Wait until one log line contains every fragment and return that line."""

        def find(text: str) -> str | None:
            for line in text.splitlines():
                if all(fragment in line for fragment in fragments):
                    return line
            return None

        line = self._poll_log(find, deadline, interval=0.1)
        if line is None:
            raise AssertionError(
                f"no agent log line with {fragments} within {deadline} s; log:\n{self.log_text()}"
            )
        return line

    def wait_for_match(
        self, pattern: str, deadline: float = LOG_DEADLINE_SECONDS, start: int = 0
    ) -> re.Match[str]:
        """Wait until the log, from character ``start`` on, matches ``pattern``.

        The pattern is compiled with re.MULTILINE. The log is read every 20 ms because
        callers take the time of the match as the time of the logged event.
        """
        compiled = re.compile(pattern, re.MULTILINE)
        found = self._poll_log(lambda text: compiled.search(text, start), deadline, interval=0.02)
        if found is None:
            raise AssertionError(
                f"no match for {pattern!r} in the agent log within {deadline} s "
                f"(agent exit status: {self.popen.poll()}); log tail:\n{self.log_text()[-3000:]}"
            )
        return found

    def _poll_log(
        self, find: Callable[[str], Result | None], deadline: float, interval: float
    ) -> Result | None:
        """Read the log until ``find`` returns a result, the deadline passes or the agent exits."""
        end = time.monotonic() + deadline
        while True:
            # Checked before the read, so the last read contains all that an exited agent wrote.
            exited = self.popen.poll() is not None
            found = find(self.log_text())
            if found is not None:
                return found
            if exited or time.monotonic() >= end:
                return None
            time.sleep(interval)

    def signal(self, signum: signal.Signals) -> None:
        self.popen.send_signal(signum)

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.popen.wait(timeout=10)


@contextmanager
def start_agent(files: AgentFiles, *extra_args: str) -> Iterator[AgentProcess]:
    """Start the agent on ``files``; the agent is stopped when the block ends."""
    log_path = files.root / "agent.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(files.config), *extra_args],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    agent = AgentProcess(files, popen, log_path)
    try:
        agent.wait_for_log("agent started", deadline=START_DEADLINE_SECONDS)
        yield agent
    finally:
        agent.stop()
