"""Matching attestation evidence against parsed manifests.

``match_manifests`` returns the identities the evidence may hold, or a Denial whose
reason shows how close the nearest manifest came. ``explain_manifests`` returns one
verdict per manifest for operators. Both are pure functions of the manifests, the
evidence and the time, so the store can call them on its current snapshot.

A manifest is checked in this order, and the first failing step is its verdict:

1. placement: every placement selector it names (pod_uid, systemd_unit, uid) equals
   the evidence, else ``no_manifest_for_workload``;
2. container_id, when named, equals the evidence, else ``selector_mismatch``;
3. the evidence's executable digest is in ``exe_sha256``, else ``exe_hash_mismatch``;
4. ``not_after`` has not passed, else ``manifest_expired``.

When nothing matches, the denial carries the reason of the step that got furthest
across all manifests: manifest_expired, then exe_hash_mismatch, then
selector_mismatch, then no_manifest_for_workload.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from agent.attest.evidence import Evidence
from agent.denial import Denial, Reason
from agent.manifests.identity import Identity
from agent.manifests.schema import Manifest

# Order of closeness: a later reason means the manifest passed more checks.
_CLOSENESS = (
    Reason.NO_MANIFEST_FOR_WORKLOAD,
    Reason.SELECTOR_MISMATCH,
    Reason.EXE_HASH_MISMATCH,
    Reason.MANIFEST_EXPIRED,
)


@dataclass(frozen=True, slots=True)
class ManifestVerdict:
    """Whether one manifest grants its SPIFFE ID to the evidence, and why not if not.

    ``reason`` is None when ``matched`` is true; ``detail`` is an operator sentence.
    """

    file: str
    spiffe_id: str
    matched: bool
    reason: Reason | None
    detail: str


def evaluate(manifest: Manifest, evidence: Evidence, now: datetime) -> ManifestVerdict:
    """Check one manifest against the evidence, in the order given in the module doc.

    The ``uid`` selector is compared with the evidence's real uid (``Evidence.uid``),
    not the effective uid, because the real uid identifies the user who started the process.
    """
    failure = (
        _placement_mismatch(manifest, evidence)
        or _container_mismatch(manifest, evidence)
        or _digest_mismatch(manifest, evidence)
        or _expiry(manifest, now)
    )
    if failure is None:
        return ManifestVerdict(manifest.file, manifest.spiffe_id, True, None, "matches")
    reason, detail = failure
    return ManifestVerdict(manifest.file, manifest.spiffe_id, False, reason, detail)


def explain_manifests(
    manifests: Sequence[Manifest], evidence: Evidence, now: datetime | None = None
) -> list[ManifestVerdict]:
    """Return one verdict per manifest, in the order of ``manifests``."""
    moment = now or datetime.now(UTC)
    return [evaluate(manifest, evidence, moment) for manifest in manifests]


def match_manifests(
    manifests: Sequence[Manifest], evidence: Evidence, now: datetime | None = None
) -> tuple[Identity, ...] | Denial:
    """Return the granted identities, or a Denial listing what was observed.

    Manifests with the same SPIFFE ID merge into one Identity. Different SPIFFE IDs
    come out ordered by the smallest file name among their manifests (``manifests`` is
    sorted by file name first), so the first identity, the caller's default, is stable.
    """
    moment = now or datetime.now(UTC)
    # Every call and stream wake runs this on the event loop, against every manifest on
    # the node: grant without building the verdict texts, which only a denial needs.
    granting = sorted(
        (manifest for manifest in manifests if _grants(manifest, evidence, moment)),
        key=lambda manifest: manifest.file,
    )
    if granting:
        return _merge(granting)
    ordered = sorted(manifests, key=lambda manifest: manifest.file)
    return _deny(explain_manifests(ordered, evidence, moment), evidence)


def _grants(manifest: Manifest, evidence: Evidence, now: datetime) -> bool:
    """Tell whether ``evaluate`` would match: the same checks, without the detail text."""
    return (
        (manifest.pod_uid is None or manifest.pod_uid == evidence.pod_uid)
        and (manifest.systemd_unit is None or manifest.systemd_unit == evidence.systemd_unit)
        and (manifest.uid is None or manifest.uid == evidence.uid)
        and (manifest.container_id is None or manifest.container_id == evidence.container_id)
        and evidence.exe_sha256.lower() in manifest.exe_sha256
        and not manifest.is_expired(now)
    )


def _placement_mismatch(manifest: Manifest, evidence: Evidence) -> tuple[Reason, str] | None:
    checks = (
        ("pod_uid", manifest.pod_uid, evidence.pod_uid),
        ("systemd_unit", manifest.systemd_unit, evidence.systemd_unit),
        ("uid", manifest.uid, evidence.uid),
    )
    for name, wanted, observed in checks:
        if wanted is not None and wanted != observed:
            return (
                Reason.NO_MANIFEST_FOR_WORKLOAD,
                f"{name} is {wanted!r} in the manifest but {observed!r} for the caller",
            )
    return None


def _container_mismatch(manifest: Manifest, evidence: Evidence) -> tuple[Reason, str] | None:
    if manifest.container_id is not None and manifest.container_id != evidence.container_id:
        return (
            Reason.SELECTOR_MISMATCH,
            f"container_id is {manifest.container_id!r} in the manifest "
            f"but {evidence.container_id!r} for the caller",
        )
    return None


def _digest_mismatch(manifest: Manifest, evidence: Evidence) -> tuple[Reason, str] | None:
    if evidence.exe_sha256.lower() not in manifest.exe_sha256:
        return (
            Reason.EXE_HASH_MISMATCH,
            f"the caller's executable sha256:{evidence.exe_sha256} is not among the "
            f"{len(manifest.exe_sha256)} digests of the manifest",
        )
    return None


def _expiry(manifest: Manifest, now: datetime) -> tuple[Reason, str] | None:
    if manifest.not_after is not None and manifest.is_expired(now):
        return (
            Reason.MANIFEST_EXPIRED,
            f"the manifest expired at {manifest.not_after.isoformat()}",
        )
    return None


def _merge(granting: list[Manifest]) -> tuple[Identity, ...]:
    groups: dict[str, list[Manifest]] = {}
    for manifest in granting:
        groups.setdefault(manifest.spiffe_id, []).append(manifest)
    return tuple(_merge_group(spiffe_id, group) for spiffe_id, group in groups.items())


def _merge_group(spiffe_id: str, group: list[Manifest]) -> Identity:
    """Merge manifests granting one SPIFFE ID, keeping the most restrictive limits.

    The TTL and not_after are the minimum over the group; DNS names are the union in
    file order; hint and image digest come from the first file that sets them.
    """
    ttls = [m.x509_svid_ttl for m in group if m.x509_svid_ttl is not None]
    expiries = [m.not_after for m in group if m.not_after is not None]
    dns_names: list[str] = []
    for manifest in group:
        dns_names.extend(name for name in manifest.dns_names if name not in dns_names)
    return Identity(
        spiffe_id=spiffe_id,
        hint=next((m.hint for m in group if m.hint), ""),
        dns_names=tuple(dns_names),
        x509_svid_ttl=min(ttls) if ttls else None,
        not_after=min(expiries) if expiries else None,
        manifest_files=tuple(m.file for m in group),
        image_digest=next((m.image_digest for m in group if m.image_digest), None),
    )


def _deny(verdicts: list[ManifestVerdict], evidence: Evidence) -> Denial:
    failed = [v for v in verdicts if v.reason is not None]
    closest = max((_CLOSENESS.index(v.reason) for v in failed if v.reason), default=0)
    reason = _CLOSENESS[closest]
    near = [f"{v.file} ({v.detail})" for v in failed if v.reason == reason]
    if reason is Reason.NO_MANIFEST_FOR_WORKLOAD:
        summary = f"none of the {len(verdicts)} manifests names this placement"
    else:
        summary = "nearest manifests: " + "; ".join(near)
    message = f"no manifest grants an identity: {summary}; observed {_observed(evidence)}"
    return Denial(reason, message, evidence.pid)


def _observed(evidence: Evidence) -> str:
    parts = [
        f"pid={evidence.pid}",
        f"uid={evidence.uid}",
        f"exe_sha256={evidence.exe_sha256}",
        f"pod_uid={evidence.pod_uid}",
        f"container_id={evidence.container_id}",
        f"systemd_unit={evidence.systemd_unit}",
    ]
    return " ".join(parts)
