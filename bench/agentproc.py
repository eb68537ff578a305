"""The agent under test: a real ``python -m agent run`` subprocess with its own files.

``BenchAgent.create(work_dir, ...)`` makes an EC P-256 manifest signing key with the
openssl command line and a TOML config. ``start(children)`` runs the agent and returns
once it logged that it started, which includes creating the development CA.
``sign_manifest`` writes a manifest and its detached ``openssl dgst -sha256 -sign``
signature, and ``wait_for_log`` and ``log_lines`` read the agent's log file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from bench.pods import Pod
from bench.procs import Child, Children, wait_for_path

TRUST_DOMAIN = "bench.local"
NAMESPACE = "bench"
# Bounds a hung agent; it measures nothing.
START_DEADLINE_SECONDS = 60.0
_LOG_TIME = re.compile(r"^time=(\S+ \S+) ")


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@dataclass(frozen=True)
class Grant:
    """A manifest to sign: service account ``name`` for ``exe_sha256`` in ``pod``."""

    name: str
    exe_sha256: str
    pod: Pod | None
    extra: dict[str, object] = field(default_factory=dict)


@dataclass
class BenchAgent:
    """Paths and process of one agent; ``child`` is set while it runs."""

    root: Path
    config: Path
    socket_path: Path
    manifests_dir: Path
    signing_key: Path
    log_path: Path
    child: Child | None = None
    profile_path: Path | None = None

    @classmethod
    def create(cls, root: Path, *, log_level: str = "INFO") -> BenchAgent:
        root.mkdir(parents=True)
        keys = root / "keys"
        keys.mkdir()
        signing_key = keys / "manifest.key"
        public_key = keys / "manifest.pub"
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-out", str(signing_key))
        openssl("pkey", "-in", str(signing_key), "-pubout", "-out", str(public_key))
        manifests_dir = root / "manifests"
        manifests_dir.mkdir(mode=0o700)
        socket_path = root / "public" / "api.sock"
        config = root / "agent.toml"
        config.write_text(
            f'socket_path = "{socket_path}"\n'
            f'state_dir = "{root / "state"}"\n'
            f'manifests_dir = "{manifests_dir}"\n'
            f'manifest_keys = ["{public_key}"]\n'
            f'trust_domain = "{TRUST_DOMAIN}"\n'
            f'log_level = "{log_level}"\n'
            # Port 0: parallel agents (tests, other bench sections) never collide.
            'health_address = "127.0.0.1:0"\n'
        )
        return cls(root, config, socket_path, manifests_dir, signing_key, root / "agent.log")

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket_path}"

    def spiffe_id(self, name: str) -> str:
        return f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{name}"

    def start(self, children: Children, *, profile_path: Path | None = None) -> None:
        """Start the agent, under cProfile when ``profile_path`` is given."""
        argv = [sys.executable]
        if profile_path is not None:
            argv += ["-m", "cProfile", "-o", str(profile_path)]
            self.profile_path = profile_path
        argv += ["-m", "agent", "run", "--config", str(self.config)]
        self.child = children.start(argv, name="agent", stdout_to_file=True)
        self.log_path = self.child.stderr_path
        self.wait_for_log("agent started", deadline=START_DEADLINE_SECONDS)
        wait_for_path(self.socket_path, self.child)

    def stop(self, children: Children) -> None:
        """Stop with SIGTERM, so a profile is written; SIGKILL after 20 s."""
        if self.child is not None:
            children.stop(self.child, grace=20.0)
            self.child = None

    @property
    def process(self) -> psutil.Process:
        if self.child is None:
            raise RuntimeError("the agent is not running")
        return psutil.Process(self.child.pid)

    def sign_manifest(self, name: str, document: dict[str, Any]) -> None:
        """Write ``<name>.json`` with its signature; the signature is in place first."""
        staging = self.root / f"{name}.json"
        staging.write_text(json.dumps(document, indent=2) + "\n")
        signature = self.root / f"{name}.json.sig"
        openssl("dgst", "-sha256", "-sign", str(self.signing_key), "-out", str(signature),
                str(staging))
        os.replace(signature, self.manifests_dir / f"{name}.json.sig")
        os.replace(staging, self.manifests_dir / f"{name}.json")

    def grant(self, name: str, exe_sha256: str, pod: Pod | None, **extra: object) -> str:
        """Grant service account ``name`` to ``exe_sha256`` in ``pod``; return the SPIFFE ID.

        Without a pod the manifest selects this user's processes by uid instead.
        """
        return self.grant_many([Grant(name, exe_sha256, pod, extra)])[0]

    def grant_many(self, grants: list[Grant]) -> list[str]:
        """Sign every manifest, make the agent reload (SIGHUP) and wait until it loaded them."""
        for grant in grants:
            placement: dict[str, object] = (
                {"pod_uid": grant.pod.pod_uid, "namespace": NAMESPACE,
                 "service_account": grant.name}
                if grant.pod is not None
                else {"uid": os.getuid()}
            )
            self.sign_manifest(grant.name, {
                "spiffe_id": self.spiffe_id(grant.name),
                "exe_sha256": [grant.exe_sha256],
                **placement,
                **grant.extra,
            })
        if self.child is not None:
            # Without the signal the agent finds new manifests at its next 1 s poll.
            self.child.popen.send_signal(signal.SIGHUP)
        for grant in grants:
            self.wait_for_log("manifest loaded", f"{grant.name}.json")
        return [self.spiffe_id(grant.name) for grant in grants]

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def wait_for_log(self, *fragments: str, deadline: float = 30.0) -> str:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            for line in self.log_lines():
                if all(fragment in line for fragment in fragments):
                    return line
            if self.child is not None and self.child.popen.poll() is not None:
                break
            time.sleep(0.05)
        tail = "\n".join(self.log_lines()[-40:])
        raise RuntimeError(f"no agent log line with {fragments} within {deadline} s:\n{tail}")


def log_time(line: str) -> float | None:
    """Return the POSIX time of an agent log line (logging's asctime, local time, ms)."""
    found = _LOG_TIME.match(line)
    if found is None:
        return None
    return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def mint_times(lines: list[str]) -> dict[int, float]:
    """Return, per SVID serial, when the agent minted it (its DEBUG "X.509-SVID minted" line).

    The line is logged as soon as the signing thread returns, before any stream is
    woken, so it is the renewal time that push latencies are measured from.
    """
    times: dict[int, float] = {}
    for line in lines:
        if "msg=X.509-SVID minted" not in line:
            continue
        serial = re.search(r" serial=([0-9a-f]+)", line)
        when = log_time(line)
        if serial is not None and when is not None:
            times.setdefault(int(serial.group(1), 16), when)
    return times
