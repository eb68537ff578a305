"""Audit log: one JSON line per decision, exactly the allowed keys, file mode 0600."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from agent.attest.evidence import Evidence
from agent.manifests.identity import Identity
from agent.telemetry.audit import (
    AUDIT_FIELDS,
    AuditLog,
    AuditRecord,
    Decision,
    audit_record,
)
from agent.telemetry.errors import AuditLogError, AuditRecordError

MOMENT = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)
DIGEST = "ab" * 32
EVIDENCE = Evidence(
    pid=4242, uid=1000, gid=1000, euid=1000, egid=1000, start_time=123456,
    exe_sha256=DIGEST, pod_uid="0b5f8a2e-4c1d-4e8a-9a57-5d1f3c2b7e10",
    container_id="cd" * 32, exe_path="/usr/local/bin/web",
)
IDENTITY = Identity(
    spiffe_id="spiffe://cluster.local/ns/default/sa/web",
    manifest_files=("/etc/attest-agent/manifests/web.json",),
)


def issued_record() -> AuditRecord:
    return audit_record(Decision.ISSUED, evidence=EVIDENCE, identity=IDENTITY, now=lambda: MOMENT)


def test_record_has_only_allowed_keys() -> None:
    document = json.loads(issued_record().to_json())

    assert list(document) == list(AUDIT_FIELDS)


def test_record_type_fields_are_allowed_keys() -> None:
    # Key material cannot reach the audit log because the record type has no field for it.
    names = [field.name for field in dataclasses.fields(AuditRecord)]

    assert names == list(AUDIT_FIELDS)


def test_issued_record_values() -> None:
    document = json.loads(issued_record().to_json())

    assert document == {
        "time": "2026-03-04T05:06:07.890Z",
        "decision": "issued",
        "pid": 4242,
        "uid": 1000,
        "pod_uid": "0b5f8a2e-4c1d-4e8a-9a57-5d1f3c2b7e10",
        "container_id": "cd" * 32,
        "exe_sha256": DIGEST,
        "manifest_files": ["/etc/attest-agent/manifests/web.json"],
        "spiffe_id": "spiffe://cluster.local/ns/default/sa/web",
        "reason": None,
    }


def test_denied_without_evidence() -> None:
    record = audit_record(
        Decision.DENIED, reason="process_exited", pid=99, now=lambda: MOMENT,
    )

    document = json.loads(record.to_json())

    assert document["decision"] == "denied"
    assert document["pid"] == 99
    assert document["reason"] == "process_exited"
    assert document["exe_sha256"] is None
    assert document["manifest_files"] == []


def test_time_converted_to_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    local = datetime(2026, 3, 4, 7, 6, 7, tzinfo=plus_two)

    record = audit_record(Decision.ROTATED, identity=IDENTITY, now=lambda: local)

    assert json.loads(record.to_json())["time"] == "2026-03-04T05:06:07.000Z"


def test_naive_time_rejected() -> None:
    with pytest.raises(AuditRecordError, match="has no time zone"):
        audit_record(Decision.REVOKED, now=lambda: datetime(2026, 1, 1))


def test_file_created_0600_and_appended(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    old_umask = os.umask(0)
    try:
        log = AuditLog.open(str(path))
    finally:
        os.umask(old_umask)

    log.write(issued_record())
    log.write(audit_record(Decision.REVOKED, evidence=EVIDENCE, reason="manifest_removed"))
    log.close()
    reopened = AuditLog.open(str(path))
    reopened.write(audit_record(Decision.DENIED, pid=1, reason="no_manifest_for_workload"))
    reopened.close()

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert [json.loads(line)["decision"] for line in lines] == ["issued", "revoked", "denied"]


def test_symlink_path_rejected(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.log"
    link = tmp_path / "audit.log"
    link.symlink_to(target)

    with pytest.raises(AuditLogError) as caught:
        AuditLog.open(str(link))

    assert caught.value.path == str(link)
    assert not target.exists()


def test_missing_directory_rejected(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "audit.log"

    with pytest.raises(AuditLogError, match="No such file or directory"):
        AuditLog.open(str(path))


def test_write_after_close_rejected(tmp_path: Path) -> None:
    log = AuditLog.open(str(tmp_path / "audit.log"))
    log.close()

    with pytest.raises(AuditLogError, match="closed"):
        log.write(issued_record())


def test_stdout_in_child_process() -> None:
    code = (
        "from agent.telemetry.audit import AuditLog, Decision, audit_record\n"
        "log = AuditLog.open('-')\n"
        "log.write(audit_record(Decision.DENIED, pid=5, reason='exe_hash_mismatch'))\n"
        "log.write(audit_record(Decision.DENIED, pid=6, reason='selector_mismatch'))\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
    )

    lines = result.stdout.splitlines()
    assert [json.loads(line)["pid"] for line in lines] == [5, 6]
    assert result.stderr == ""
