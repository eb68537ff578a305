"""Drift report: re-attest every current caller and tell whether it still gets its identities.

The admin socket calls ``await drift_report(callers, recheck)`` with the resolver's
CallerTable and its ``recheck`` method. Each caller is attested again now, without
issuing anything, and gets a status:

- ``match``: it has identities and would still be granted every one of them;
- ``drifted``: it has identities and attestation now fails (its process ran
  execve(), exited or passed its socket on) or a held identity is no longer granted;
- ``no_identity``: it has no identity (its last decision was a denial), so there is
  nothing to drift from.

The report is a JSON-ready dict. It carries evidence, SPIFFE IDs, serial numbers and
reason codes, never key material.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from agent.admin.callers import CallerRecord, CallerTable, GrantedState
from agent.attest.evidence import Evidence
from agent.denial import Denial
from agent.manifests.identity import Identity
from agent.peer.connection import Connection

__all__ = ["DRIFTED", "MATCH", "NOT_GRANTED", "NO_IDENTITY", "drift_report"]

MATCH = "match"
DRIFTED = "drifted"
NO_IDENTITY = "no_identity"

# Reason of a drift when attestation passes but a held SPIFFE ID is no longer granted.
NOT_GRANTED = "identity_not_granted"

Recheck = Callable[[Connection], Awaitable[tuple[Evidence | None, tuple[Identity, ...] | Denial]]]


async def drift_report(callers: CallerTable, recheck: Recheck) -> dict[str, Any]:
    """Re-attest every current caller and return ``{"callers": [...], "drifted": N}``."""
    entries = [await _check(record, recheck) for record in callers.current()]
    return {
        "time": _timestamp(datetime.now(UTC)),
        "callers": entries,
        "drifted": sum(1 for entry in entries if entry["status"] == DRIFTED),
    }


async def _check(record: CallerRecord, recheck: Recheck) -> dict[str, Any]:
    conn = record.conn
    granted = record.granted
    held = sorted(record.held)
    evidence, now = await recheck(conn)
    entry: dict[str, Any] = {
        "conn_id": conn.conn_id,
        "pid": conn.pid,
        "uid": conn.creds.uid,
        "streams": dict(sorted(record.streams.items())),
        "decided_at": _timestamp(record.decided_at) if record.decided_at else None,
        "evidence": _evidence(granted.evidence) if granted is not None else None,
        "identities": [_held(granted, spiffe_id, record.held[spiffe_id]) for spiffe_id in held],
        "last_denial": str(record.denial.reason) if record.denial is not None else None,
        "current_evidence": _evidence(evidence) if evidence is not None else None,
    }
    if isinstance(now, Denial):
        entry["current_identities"] = []
        entry["reason"], entry["detail"] = str(now.reason), now.message
        entry["status"] = DRIFTED if held else NO_IDENTITY
        return entry
    granted_now = sorted(identity.spiffe_id for identity in now)
    entry["current_identities"] = granted_now
    missing = [spiffe_id for spiffe_id in held if spiffe_id not in granted_now]
    if not held:
        entry["status"], entry["reason"] = NO_IDENTITY, None
    elif missing:
        entry["status"], entry["reason"] = DRIFTED, NOT_GRANTED
        entry["detail"] = "no manifest grants " + ", ".join(missing) + " any more"
    else:
        entry["status"], entry["reason"] = MATCH, None
    return entry


def _held(granted: GrantedState | None, spiffe_id: str, serial: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"spiffe_id": spiffe_id, "serial": f"{serial:x}"}
    for held in granted.identities if granted is not None else ():
        if held.identity.spiffe_id == spiffe_id:
            entry["manifest_files"] = list(held.identity.manifest_files)
            entry["not_after"] = _timestamp(held.svid.not_after)
    return entry


def _evidence(evidence: Evidence) -> dict[str, object]:
    return {**evidence.as_json_dict(), "exe_path": evidence.exe_path}


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
