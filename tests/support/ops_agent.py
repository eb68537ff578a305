"""Helpers for the operations tests: the agent's health port, metrics scrapes and streams.

``health_port(agent)`` reads the port the agent bound for ``health_address =
"127.0.0.1:0"`` from its log. ``scrape(port)`` fetches /metrics over loopback and
returns the samples. ``open_stream(python, files, pod)`` starts ops_stream.py in a
copied interpreter inside a pod cgroup, holding one FetchX509SVID stream.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.agent_process import AgentFiles, AgentProcess
from tests.support.cgroups import TestCgroup
from tests.support.processes import ChildProcess, CopiedBinary, start_process

STREAM_SCRIPT = Path(__file__).resolve().parent / "ops_stream.py"

# Functional deadline for an event a test waits for; not a measurement.
EVENT_DEADLINE_SECONDS = 20.0

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def health_port(agent: AgentProcess) -> int:
    line = agent.wait_for_log("health server listening")
    found = re.search(r"address=127\.0\.0\.1:(\d+)", line)
    if found is None:
        raise AssertionError(f"no loopback port in {line!r}")
    return int(found.group(1))


def http_get(port: int, path: str) -> tuple[int, str]:
    """GET http://127.0.0.1:PORT/PATH and return the status and body, also for 4xx/5xx."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(port: int) -> Samples:
    """Return every sample of /metrics keyed by (name, sorted labels)."""
    status, text = http_get(port, "/metrics")
    if status != 200:
        raise AssertionError(f"/metrics returned {status}: {text}")
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(samples: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    if key not in samples:
        raise AssertionError(f"no sample {name}{labels} in /metrics")
    return samples[key]


def wait_for_sample(
    port: int, name: str, predicate: object, deadline: float = EVENT_DEADLINE_SECONDS,
    **labels: str,
) -> float:
    """Scrape until the sample satisfies ``predicate`` and return its value."""
    end = time.monotonic() + deadline
    value = float("nan")
    while time.monotonic() < end:
        value = sample(scrape(port), name, **labels)
        if predicate(value):  # type: ignore[operator]
            return value
        time.sleep(0.2)
    raise AssertionError(f"{name}{labels} is {value} after {deadline} s")


@dataclass
class StreamClient:
    """ops_stream.py running in a workload; JSON events on stdout."""

    child: ChildProcess

    @property
    def pid(self) -> int:
        return self.child.pid

    def next_event(self, kind: str, deadline: float = EVENT_DEADLINE_SECONDS) -> dict[str, object]:
        end = time.monotonic() + deadline
        while True:
            line = self.child.read_line(max(0.1, end - time.monotonic()))
            decoded: dict[str, object] = json.loads(line)
            if decoded.get("event") == kind:
                return decoded

    def orphan(self) -> dict[str, object]:
        """Make the client fork and exit, leaving the connection to its child; return "resumed"."""
        self.child.send_line("orphan")
        return self.next_event("resumed")

    def exec_into(self, binary: CopiedBinary) -> dict[str, object]:
        """Make the client execve() ``binary`` on the same connection; return "resumed"."""
        self.child.send_line(f"exec {binary.path}")
        return self.next_event("resumed")


def open_stream(python: CopiedBinary, files: AgentFiles, pod: TestCgroup) -> StreamClient:
    """Start ops_stream.py in ``python`` inside ``pod``; the caller stops ``child``."""
    child = start_process(
        [str(python.path), str(STREAM_SCRIPT), str(files.socket_path)],
        env=python.env,
        cgroup_dirs=[pod.path],
    )
    client = StreamClient(child)
    try:
        client.next_event("connected")
    except BaseException:
        child.stop()
        raise
    return client


def audit_lines(path: Path) -> list[dict[str, object]]:
    """Return the audit file's records, one per line."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]
