"""Audit log: one JSON line per identity decision.

Build one AuditLog with ``AuditLog.open(path)`` (``"-"`` means stdout) and call
``write(record)`` for every decision: an identity issued, denied, revoked or rotated.
Build records with ``audit_record(...)``, which takes the kernel-sourced Evidence and the
granted Identity as they are, so callers cannot copy the wrong field by hand.

The record type has exactly the fields in AUDIT_FIELDS and none that could hold a key,
certificate or token, so key material cannot reach the log through it. Files are
opened for appending, created with mode 0600, and never followed through a final
symbolic link. Each record is one write(2) of the whole line without fsync. It is a
short blocking call, which the caller may make from the event loop.
"""

from __future__ import annotations

import enum
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

from agent.attest.evidence import Evidence
from agent.manifests.identity import Identity
from agent.telemetry.errors import AuditLogError, AuditRecordError

STDOUT = "-"
AUDIT_FILE_MODE = 0o600


class Decision(enum.StrEnum):
    """Outcome recorded for a caller's identity."""

    ISSUED = "issued"
    DENIED = "denied"
    REVOKED = "revoked"
    ROTATED = "rotated"


# Keys of every audit line, in output order.
AUDIT_FIELDS: tuple[str, ...] = (
    "time",
    "decision",
    "pid",
    "uid",
    "pod_uid",
    "container_id",
    "exe_sha256",
    "manifest_files",
    "spiffe_id",
    "reason",
)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One decision. ``time`` is timezone-aware; ``reason`` is a reason code or None."""

    time: datetime
    decision: Decision
    pid: int | None
    uid: int | None
    pod_uid: str | None
    container_id: str | None
    exe_sha256: str | None
    manifest_files: tuple[str, ...]
    spiffe_id: str | None
    reason: str | None

    def __post_init__(self) -> None:
        if self.time.tzinfo is None:
            raise AuditRecordError(
                f"audit time {self.time.isoformat()} has no time zone; pass an aware datetime"
            )

    def to_json(self) -> str:
        """Render the record as one JSON object with the keys of AUDIT_FIELDS."""
        document = {
            "time": _rfc3339_utc(self.time),
            "decision": str(self.decision),
            "pid": self.pid,
            "uid": self.uid,
            "pod_uid": self.pod_uid,
            "container_id": self.container_id,
            "exe_sha256": self.exe_sha256,
            "manifest_files": list(self.manifest_files),
            "spiffe_id": self.spiffe_id,
            "reason": self.reason,
        }
        return json.dumps(document, separators=(",", ":"))


def audit_record(
    decision: Decision,
    *,
    evidence: Evidence | None = None,
    identity: Identity | None = None,
    reason: str | None = None,
    pid: int | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> AuditRecord:
    """Build a record from the caller's evidence and identity.

    ``pid`` is used only when there is no Evidence (for example when attestation itself
    failed); otherwise the evidence's pid is recorded.
    """
    return AuditRecord(
        time=now(),
        decision=decision,
        pid=evidence.pid if evidence is not None else pid,
        uid=evidence.uid if evidence is not None else None,
        pod_uid=evidence.pod_uid if evidence is not None else None,
        container_id=evidence.container_id if evidence is not None else None,
        exe_sha256=evidence.exe_sha256 if evidence is not None else None,
        manifest_files=identity.manifest_files if identity is not None else (),
        spiffe_id=identity.spiffe_id if identity is not None else None,
        reason=reason,
    )


class AuditLog:
    """An append-only sink of audit lines: a file descriptor or a text stream."""

    def __init__(self, name: str, fd: int | None = None, stream: TextIO | None = None) -> None:
        self.name = name
        self._fd = fd
        self._stream = stream

    @classmethod
    def open(cls, path: str) -> AuditLog:
        """Open ``path`` for appending (created with mode 0600), or stdout for ``"-"``."""
        if path == STDOUT:
            return cls(STDOUT, stream=sys.stdout)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(path, flags, AUDIT_FILE_MODE)
        except OSError as error:
            raise AuditLogError(path, os.strerror(error.errno or 0)) from error
        return cls(path, fd=fd)

    def write(self, record: AuditRecord) -> None:
        """Append one record as a JSON line."""
        line = record.to_json() + "\n"
        if self._stream is not None:
            self._stream.write(line)
            self._stream.flush()
            return
        if self._fd is None:
            raise AuditLogError(self.name, "the audit log is closed")
        data = line.encode("utf-8")
        try:
            written = os.write(self._fd, data)
        except OSError as error:
            raise AuditLogError(self.name, os.strerror(error.errno or 0)) from error
        if written != len(data):
            raise AuditLogError(self.name, f"short write of {written} of {len(data)} bytes")

    def close(self) -> None:
        """Close the file; closing stdout's log does nothing."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _rfc3339_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
