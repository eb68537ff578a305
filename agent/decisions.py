"""Identity decisions about a caller: one log line and one audit record each.

The IdentityResolver owns one DecisionRecorder and calls ``granted`` or ``denied``
after every decision with the caller's CallerRecord. The recorder compares the decision
with the identities the record lists for the connection, so a decision repeated on the
same connection (the periodic re-attestation of a stream, a second stream, a repeated
unary call) writes nothing:

- an SVID serial not yet issued on the connection: ``issued``, or ``rotated`` when the
  connection held an older SVID for the same SPIFFE ID;
- a SPIFFE ID the connection held and no longer gets: ``revoked`` (reason
  ``manifest_removed``);
- a denial: ``revoked`` for every identity the connection held, else ``denied``
  (once per reason until the next grant).

Serials are logged in lowercase hex without a prefix, as the CA, ``api fetch x509``
and ``drift`` print them. Audit records carry the evidence, the SPIFFE ID, the manifest
files and the reason, and never key material (see agent.telemetry.audit). A failing
audit log is logged once per failure and does not stop the decision.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from agent.admin.callers import CallerRecord, GrantedState
from agent.attest.evidence import Evidence
from agent.denial import Denial
from agent.log import event
from agent.manifests.identity import Identity
from agent.telemetry.audit import AuditLog, Decision, audit_record
from agent.telemetry.errors import AuditLogError

__all__ = ["MANIFEST_REMOVED", "DecisionRecorder"]

logger = logging.getLogger(__name__)

# Reason of a revocation because no manifest grants the SPIFFE ID any more.
MANIFEST_REMOVED = "manifest_removed"


class DecisionRecorder:
    """Logs and audits each decision once per connection."""

    def __init__(self, audit: AuditLog | None = None) -> None:
        self._audit = audit

    def granted(self, record: CallerRecord, state: GrantedState) -> None:
        """Record that the caller of ``record`` now has exactly the identities in ``state``."""
        conn = record.conn
        current = {held.identity.spiffe_id for held in state.identities}
        before = _identities(record.granted)
        for spiffe_id in sorted(record.held.keys() - current):
            record.held.pop(spiffe_id)
            self._revoked(record, spiffe_id, state.evidence, before.get(spiffe_id),
                          MANIFEST_REMOVED)
        for held in state.identities:
            spiffe_id, serial = held.identity.spiffe_id, held.svid.serial
            previous_serial = record.held.get(spiffe_id)
            if previous_serial == serial:
                continue
            record.held[spiffe_id] = serial
            decision = Decision.ISSUED if previous_serial is None else Decision.ROTATED
            event(
                logger,
                logging.INFO,
                "identity issued",
                pid=conn.pid,
                conn_id=conn.conn_id,
                exe_sha256=state.evidence.exe_sha256,
                spiffe_id=spiffe_id,
                serial=f"{serial:x}",
                not_after=held.svid.not_after.isoformat(),
                reason="matched" if decision is Decision.ISSUED else "renewed",
            )
            self._write(decision, state.evidence, held.identity, None, conn.pid)
        record.granted = state
        record.denial = None
        record.decided_at = datetime.now(UTC)

    def denied(self, record: CallerRecord, denial: Denial, evidence: Evidence | None) -> None:
        """Record a denial: it revokes what the connection held, or is logged once per reason."""
        conn = record.conn
        record.decided_at = datetime.now(UTC)
        granted, record.granted = record.granted, None
        if record.held:
            before = _identities(granted)
            # Without fresh evidence (attestation failed), record the evidence the
            # identities were issued on.
            if evidence is None and granted is not None:
                evidence = granted.evidence
            for spiffe_id in sorted(record.held):
                self._revoked(record, spiffe_id, evidence, before.get(spiffe_id), denial)
            record.held.clear()
            record.denial = denial
            return
        if record.denial is not None and record.denial.reason == denial.reason:
            record.denial = denial
            return
        record.denial = denial
        event(
            logger,
            logging.WARNING,
            "identity denied",
            pid=conn.pid,
            conn_id=conn.conn_id,
            reason=denial.reason,
            detail=denial.message,
        )
        self._write(Decision.DENIED, evidence, None, str(denial.reason), denial.pid or conn.pid)

    def _revoked(
        self,
        record: CallerRecord,
        spiffe_id: str,
        evidence: Evidence | None,
        identity: Identity | None,
        cause: Denial | str,
    ) -> None:
        conn = record.conn
        reason = cause if isinstance(cause, str) else str(cause.reason)
        detail = None if isinstance(cause, str) else cause.message
        event(
            logger,
            logging.WARNING,
            "identity revoked",
            pid=conn.pid,
            conn_id=conn.conn_id,
            spiffe_id=spiffe_id,
            reason=reason,
            detail=detail,
        )
        held = identity if identity is not None else Identity(spiffe_id=spiffe_id)
        self._write(Decision.REVOKED, evidence, held, reason, conn.pid)

    def _write(
        self,
        decision: Decision,
        evidence: Evidence | None,
        identity: Identity | None,
        reason: str | None,
        pid: int,
    ) -> None:
        if self._audit is None:
            return
        record = audit_record(
            decision, evidence=evidence, identity=identity, reason=reason, pid=pid
        )
        try:
            self._audit.write(record)
        # AuditLog translates file errors, but writes to stdout raise OSError as they are.
        except (AuditLogError, OSError) as error:
            event(logger, logging.ERROR, "audit record not written", path=self._audit.name,
                  reason=str(decision), error=error)


def _identities(state: GrantedState | None) -> dict[str, Identity]:
    if state is None:
        return {}
    return {held.identity.spiffe_id: held.identity for held in state.identities}
