"""Denials: why a caller gets no identity.

A Denial carries a machine-readable reason code, which is safe to send to the caller
and to use as a metric label, and a sentence for the operator's log. The sentence lists
what was observed (pid, digest, pod UID, ...) and never key material.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Reason(enum.StrEnum):
    """Reason codes for denials, shared by attestation and manifest matching."""

    # Attestation: the agent could not collect trustworthy evidence.
    PID_NAMESPACE_HIDDEN = "pid_namespace_hidden"
    PROCESS_EXITED = "process_exited"
    PROCESS_REPLACED = "process_replaced"
    PROC_UNREADABLE = "proc_unreadable"
    EXE_UNREADABLE = "exe_unreadable"
    EXE_TOO_LARGE = "exe_too_large"
    AMBIGUOUS_CGROUPS = "ambiguous_cgroups"
    INVALID_CGROUP = "invalid_cgroup"
    SOCKET_NOT_HELD = "socket_not_held"
    SOCKET_SHARED = "socket_shared"
    EXEC_AFTER_CONNECT = "exec_after_connect"
    # Manifest matching: the evidence is fine but no manifest grants an identity.
    NO_MANIFEST_FOR_WORKLOAD = "no_manifest_for_workload"
    EXE_HASH_MISMATCH = "exe_hash_mismatch"
    SELECTOR_MISMATCH = "selector_mismatch"
    MANIFEST_EXPIRED = "manifest_expired"
    # Re-attestation of a caller that held an identity on an open stream failed.
    IDENTITY_REVOKED = "identity_revoked"


# Reasons that mean the agent could not attest the caller at all; the Workload API maps
# these to UNAVAILABLE, every other reason to PERMISSION_DENIED.
ATTESTATION_FAILURES: frozenset[Reason] = frozenset(
    {
        Reason.PID_NAMESPACE_HIDDEN,
        Reason.PROCESS_EXITED,
        Reason.PROCESS_REPLACED,
        Reason.PROC_UNREADABLE,
        Reason.EXE_UNREADABLE,
        Reason.EXE_TOO_LARGE,
        Reason.AMBIGUOUS_CGROUPS,
        Reason.INVALID_CGROUP,
        Reason.SOCKET_NOT_HELD,
        Reason.SOCKET_SHARED,
        Reason.EXEC_AFTER_CONNECT,
    }
)


@dataclass(frozen=True, slots=True)
class Denial:
    """A decision to give no identity, with its reason code and an operator sentence."""

    reason: Reason
    message: str
    pid: int | None = None

    @property
    def is_attestation_failure(self) -> bool:
        return self.reason in ATTESTATION_FAILURES
