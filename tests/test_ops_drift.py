"""Continuous verification and drift: a caller that execs another binary loses its stream.

A workload (a copied interpreter with a manifest) opens a FetchX509SVID stream from a
pod cgroup and then runs os.execv() of another copied interpreter, which keeps the
connection and goes on reading the stream (tests/support/ops_stream.py). With a short
reattest_interval the agent's periodic re-attestation ends the stream with
PERMISSION_DENIED and writes a "revoked" audit record. The same happens when the
process exits and leaves the connection to a forked child. With a long interval the
stream stays open, and ``attest-agent drift`` reports the caller as drifted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.agent_process import (
    REPO_ROOT,
    AgentFiles,
    AgentProcess,
    agent_files,
    sign_manifest,
    start_agent,
)
from tests.support.cgroups import TestCgroup, pod_cgroup
from tests.support.ops_agent import StreamClient, audit_lines, open_stream
from tests.support.processes import CopiedBinary, copy_python

NAMESPACE = "demo"

# Functional deadline for the revocation. The re-attestation runs every second, so the
# stream ends within a few seconds, and the rest is room for a loaded machine.
REVOKE_DEADLINE_SECONDS = 20.0


@pytest.fixture(scope="module")
def pythons(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CopiedBinary]:
    """The granted workload binary and the binary it execs into, with different digests."""
    directory = tmp_path_factory.mktemp("ops-drift")
    return {name: copy_python(directory, f"ops-{name}") for name in ("web", "swapped")}


def web_id(files: AgentFiles) -> str:
    return f"spiffe://{files.trust_domain}/ns/{NAMESPACE}/sa/web"


def grant_web(files: AgentFiles, agent: AgentProcess, pod: TestCgroup, web: CopiedBinary) -> None:
    sign_manifest(files, "web", {
        "spiffe_id": web_id(files),
        "exe_sha256": [web.sha256],
        "pod_uid": pod.pod_uid,
        "namespace": NAMESPACE,
        "service_account": "web",
    })
    agent.wait_for_log("manifest loaded", "web.json")


def run_drift(files: AgentFiles, *args: str) -> subprocess.CompletedProcess[str]:
    admin = files.state_dir / "admin" / "admin.sock"
    return subprocess.run(
        [sys.executable, "-m", "agent", "drift", "--admin-socket", str(admin), *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )


def callers_by_pid(result: subprocess.CompletedProcess[str]) -> dict[int, dict[str, object]]:
    report = json.loads(result.stdout)
    return {int(caller["pid"]): caller for caller in report["callers"]}


def audit_config(root: Path, interval: float) -> str:
    return f'reattest_interval = {interval}\naudit_log = "{root / "audit.jsonl"}"\n'


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(
    ("change", "reason"),
    [("exec", "exec_after_connect"), ("orphan", "process_exited")],
    ids=["exec-other-binary", "process-gone"],
)
def test_stream_revoked(change: str, reason: str, pythons: dict[str, CopiedBinary]) -> None:
    web, swapped = pythons["web"], pythons["swapped"]
    with ExitStack() as stack:
        files = stack.enter_context(agent_files())
        audit_path = files.root / "audit.jsonl"
        files.config.write_text(files.config.read_text() + audit_config(files.root, 1))
        agent = stack.enter_context(start_agent(files))
        pod = stack.enter_context(pod_cgroup())
        grant_web(files, agent, pod, web)

        client: StreamClient = open_stream(web, files, pod)
        stack.callback(client.child.stop)
        client.next_event("message")
        resumed = client.exec_into(swapped) if change == "exec" else client.orphan()
        stack.callback(kill_quietly, int(str(resumed["pid"])))
        ended = client.next_event("end", deadline=REVOKE_DEADLINE_SECONDS)
        revoked_line = agent.wait_for_log("identity revoked", f"pid={client.pid}")
        records = [r for r in audit_lines(audit_path) if r["pid"] == client.pid]

    if change == "exec":
        assert resumed["pid"] == client.pid
        assert resumed["exe"] == str(swapped.path)
    else:
        assert resumed["pid"] != client.pid
    # PERMISSION_DENIED is grpc status 7.
    assert ended["grpc_status"] == "7", ended
    assert "identity_revoked" in str(ended["grpc_message"]), ended
    assert f"reason={reason}" in revoked_line

    assert [r["decision"] for r in records] == ["issued", "revoked"]
    revoked = records[1]
    assert revoked["reason"] == reason
    assert revoked["spiffe_id"] == web_id(files)
    assert revoked["manifest_files"] == ["web.json"]
    # Attestation failed, so the record names the evidence the identity was issued on.
    assert revoked["exe_sha256"] == web.sha256
    assert revoked["pod_uid"] == pod.pod_uid


def test_drift_reports_exec(pythons: dict[str, CopiedBinary]) -> None:
    web, swapped = pythons["web"], pythons["swapped"]
    with ExitStack() as stack:
        # A long interval: the stream stays open after the exec, so drift must find it.
        files = stack.enter_context(agent_files(extra_config="reattest_interval = 3600\n"))
        agent = stack.enter_context(start_agent(files))
        pod = stack.enter_context(pod_cgroup())
        grant_web(files, agent, pod, web)

        drifting = open_stream(web, files, pod)
        stack.callback(drifting.child.stop)
        steady = open_stream(web, files, pod)
        stack.callback(steady.child.stop)
        drifting.next_event("message")
        steady.next_event("message")

        before = run_drift(files, "--json")
        issued_line = agent.wait_for_log("identity issued", f"pid={steady.pid}")
        drifting.exec_into(swapped)
        after = run_drift(files, "--json")
        table = run_drift(files)

    assert before.returncode == 0, before.stdout + before.stderr
    callers = callers_by_pid(before)
    assert callers[drifting.pid]["status"] == "match"
    assert callers[steady.pid]["status"] == "match"
    # The log and drift print the same serial, in lowercase hex.
    serial = callers[steady.pid]["identities"][0]["serial"]
    assert f"serial={serial} " in issued_line

    assert after.returncode == 1, after.stdout + after.stderr
    callers = callers_by_pid(after)
    drifted = callers[drifting.pid]
    assert drifted["status"] == "drifted"
    assert drifted["reason"] == "exec_after_connect"
    assert drifted["streams"] == {"workload_api": 1}
    assert [held["spiffe_id"] for held in drifted["identities"]] == [web_id(files)]
    assert drifted["evidence"]["exe_sha256"] == web.sha256
    assert drifted["evidence"]["pod_uid"] == pod.pod_uid
    assert callers[steady.pid]["status"] == "match"
    assert callers[steady.pid]["current_identities"] == [web_id(files)]

    assert table.returncode == 1
    drifted_rows = [line for line in table.stdout.splitlines() if " drifted " in line]
    assert len(drifted_rows) == 1
    assert str(drifting.pid) in drifted_rows[0]
    assert "exec_after_connect" in drifted_rows[0]


def test_drift_unreachable(tmp_path: Path) -> None:
    missing = tmp_path / "admin.sock"
    result = subprocess.run(
        [sys.executable, "-m", "agent", "drift", "--admin-socket", str(missing)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert f"agent admin socket {missing} is unreachable" in result.stderr
