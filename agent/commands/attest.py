"""The ``attest-agent attest`` command: an init container's check of its pod's manifest.

    attest-agent attest --manifest FILE --pubkey PUB --exe PATH [--trust-domain TD]
                        [--sig FILE] [--spiffe-id-template T]

Run it in an init container so that a pod whose manifest does not fit stops before its
main container starts. It checks, in this order: the detached signature (FILE.sig by
default) against the trusted keys, the manifest schema (as strictly as the agent), the
manifest's ``not_after``, the SHA-256 of PATH against ``exe_sha256``, and the pod UID
against ``pod_uid``. It prints one summary line and exits 0, or prints one line naming
the failed check and the values, and exits with the code of that check (EXIT_CODES).

The pod UID comes from the POD_UID environment variable (set it with the Downward API,
``fieldRef: {fieldPath: metadata.uid}``) and from /proc/self/cgroup. When both name a
pod they must agree. With a cgroup namespace, /proc/self/cgroup shows no pod and only
POD_UID counts. A manifest without ``pod_uid`` always fails, because it is not bound to
one pod and so would pass in every pod that runs the binary.

This is a pre-flight check run by the workload's own pod, which controls POD_UID and
the files it names. It does not replace attestation: the agent still checks the
running process through the kernel before it issues an identity. ``container_id`` and
``uid`` selectors are left to the agent, since the init container is another container
and may run as another user.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import stat
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.attest.cgroups import MAX_CGROUP_FILE_CHARS, parse_cgroup_file
from agent.attest.errors import CgroupParseError
from agent.errors import AgentError, ConfigError
from agent.manifests import (
    DEFAULT_SPIFFE_ID_TEMPLATE,
    Manifest,
    ManifestSchemaError,
    SignatureError,
    TrustedKey,
    TrustedKeyError,
    load_trusted_keys,
    parse_manifest,
    verify_signature,
)
from agent.manifests.errors import ManifestFileError
from agent.manifests.files import MAX_SIGNATURE_BYTES, SIGNATURE_SUFFIX, read_bounded_sync
from agent.manifests.jsondecode import MAX_MANIFEST_BYTES
from agent.spiffeid import InvalidSpiffeIdError, parse_trust_domain

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_SIGNATURE = 3
EXIT_INVALID_MANIFEST = 4
EXIT_EXPIRED = 5
EXIT_DIGEST = 6
EXIT_POD_UID = 7

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "every check passed",
    EXIT_USAGE: "usage error, or an unreadable key, manifest or executable file",
    EXIT_SIGNATURE: "the signature file is missing or does not verify with the keys",
    EXIT_INVALID_MANIFEST: "the manifest is invalid (it breaks the manifest schema)",
    EXIT_EXPIRED: "the manifest's not_after has passed",
    EXIT_DIGEST: "the executable's SHA-256 is not in exe_sha256",
    EXIT_POD_UID: "the pod UID is missing, malformed or contradictory, or is not pod_uid",
}

POD_UID_VARIABLE = "POD_UID"
SELF_CGROUP = Path("/proc/self/cgroup")
DEFAULT_TRUST_DOMAIN = "cluster.local"

# Kubernetes pod UIDs are dashed UUIDs; static pods use 32 hex characters instead.
_POD_UID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}"
)


class InitCheckError(AgentError):
    """A failed init-container check; ``exit_code`` is one of EXIT_CODES."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class PodUid:
    """The pod UID the check uses and where it came from ("POD_UID", "cgroup" or both)."""

    value: str
    source: str


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``attest`` parser."""
    codes = "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES.items())
    parser = subparsers.add_parser(
        "attest",
        help="check a signed manifest, a binary and the pod UID (for init containers)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Verify the detached signature of FILE, parse FILE strictly, check that the\n"
            "SHA-256 of PATH is in exe_sha256 and that the pod UID equals pod_uid.\n"
            "The pod UID comes from POD_UID and from /proc/self/cgroup, which must agree\n"
            "when both name a pod. A manifest without pod_uid fails."
        ),
        epilog=f"exit status:\n{codes}",
    )
    parser.add_argument("--manifest", required=True, type=Path, metavar="FILE",
                        help="manifest JSON file")
    parser.add_argument("--pubkey", required=True, type=Path, action="append", metavar="PUB",
                        help="PEM public key or certificate to trust; repeat for several")
    parser.add_argument("--exe", required=True, type=Path, metavar="PATH",
                        help="executable the main container will run")
    parser.add_argument("--sig", type=Path, metavar="FILE",
                        help="detached signature file (default: the manifest path + .sig)")
    parser.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN,
                        help=f"trust domain of the agent (default: {DEFAULT_TRUST_DOMAIN})")
    parser.add_argument("--spiffe-id-template", default=DEFAULT_SPIFFE_ID_TEMPLATE,
                        help="the agent's SPIFFE ID template for pod manifests "
                        f"(default: {DEFAULT_SPIFFE_ID_TEMPLATE})")
    parser.set_defaults(handler=run_attest)


def run_attest(args: argparse.Namespace) -> int:
    """Run every check; print one line and return an exit code from EXIT_CODES."""
    signature: Path = args.sig or args.manifest.with_name(args.manifest.name + SIGNATURE_SUFFIX)
    try:
        summary = check_init(
            args.manifest, signature, args.pubkey, args.exe,
            trust_domain=args.trust_domain, spiffe_id_template=args.spiffe_id_template,
            environ=os.environ, cgroup_file=SELF_CGROUP,
        )
    except InitCheckError as error:
        print(f"attest-agent attest: {error}", file=sys.stderr)
        return error.exit_code
    print(summary)
    return EXIT_OK


def check_init(
    manifest_file: Path,
    signature_file: Path,
    pubkeys: Sequence[Path],
    exe: Path,
    *,
    trust_domain: str,
    spiffe_id_template: str,
    environ: Mapping[str, str],
    cgroup_file: Path,
) -> str:
    """Run the checks in the module's order; return the summary or raise InitCheckError."""
    keys = _load_keys(pubkeys)
    data = _read(manifest_file, MAX_MANIFEST_BYTES, EXIT_USAGE)
    signature = _read(signature_file, MAX_SIGNATURE_BYTES, EXIT_SIGNATURE)
    _verify(data, signature, keys, manifest_file, signature_file)
    manifest = _parse(data, manifest_file, trust_domain, spiffe_id_template)
    _check_expiry(manifest, datetime.now(UTC))
    digest = _check_digest(manifest, exe)
    pod = check_pod_uid(manifest, environ.get(POD_UID_VARIABLE), cgroup_file)
    return (
        f"{manifest_file}: OK: grants {manifest.spiffe_id} to {exe} (sha256:{digest}) "
        f"in pod {pod.value} (pod UID from {pod.source})"
    )


def _load_keys(pubkeys: Sequence[Path]) -> list[TrustedKey]:
    try:
        return load_trusted_keys(pubkeys)
    except TrustedKeyError as error:
        raise InitCheckError(EXIT_USAGE, str(error)) from error


def _read(path: Path, limit: int, exit_code: int) -> bytes:
    try:
        return read_bounded_sync(str(path), limit, str(path))
    except ManifestFileError as error:
        raise InitCheckError(exit_code, str(error)) from error


def _verify(
    data: bytes, signature: bytes, keys: Sequence[TrustedKey], file: Path, signature_file: Path
) -> None:
    try:
        verify_signature(data, signature, keys, file=str(file))
    except SignatureError as error:
        message = f"{error} (signature file {signature_file})"
        raise InitCheckError(EXIT_SIGNATURE, message) from error


def _parse(data: bytes, file: Path, trust_domain: str, template: str) -> Manifest:
    try:
        return parse_manifest(
            data, file=str(file), trust_domain=parse_trust_domain(trust_domain),
            spiffe_id_template=template,
        )
    except (InvalidSpiffeIdError, ConfigError) as error:
        raise InitCheckError(EXIT_USAGE, str(error)) from error
    except ManifestSchemaError as error:
        raise InitCheckError(EXIT_INVALID_MANIFEST, str(error)) from error


def _check_expiry(manifest: Manifest, now: datetime) -> None:
    if manifest.not_after is not None and manifest.is_expired(now):
        raise InitCheckError(
            EXIT_EXPIRED,
            f"manifest {manifest.file} expired at {manifest.not_after.isoformat()} "
            f"(now {now.isoformat(timespec='seconds')}); sign a renewed manifest",
        )


def _check_digest(manifest: Manifest, exe: Path) -> str:
    digest = sha256_executable(exe)
    if digest not in manifest.exe_sha256:
        listed = ", ".join(f"sha256:{value}" for value in sorted(manifest.exe_sha256))
        raise InitCheckError(
            EXIT_DIGEST,
            f"executable {exe} has sha256:{digest}, which is not in exe_sha256 of "
            f"{manifest.file} ({listed}); add the digest or ship the listed binary",
        )
    return digest


def sha256_executable(exe: Path) -> str:
    """Return the lowercase hex SHA-256 of a regular file, or raise InitCheckError."""
    try:
        with exe.open("rb") as stream:
            if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
                raise InitCheckError(EXIT_USAGE, f"executable {exe} is not a regular file")
            return hashlib.file_digest(stream, "sha256").hexdigest()
    except OSError as error:
        raise InitCheckError(
            EXIT_USAGE, f"cannot read executable {exe}: {error.strerror}; check --exe"
        ) from error


def check_pod_uid(manifest: Manifest, env_value: str | None, cgroup_file: Path) -> PodUid:
    """Return the pod UID if it equals the manifest's pod_uid, else raise InitCheckError."""
    if manifest.pod_uid is None:
        raise InitCheckError(
            EXIT_POD_UID,
            f"manifest {manifest.file} has no pod_uid, so it would pass in any pod; "
            "an init-container check needs a manifest bound to one pod",
        )
    pod = resolve_pod_uid(env_value, _read_cgroup(cgroup_file))
    if pod.value != manifest.pod_uid:
        raise InitCheckError(
            EXIT_POD_UID,
            f"pod UID mismatch: manifest {manifest.file} has pod_uid {manifest.pod_uid} "
            f"but this pod is {pod.value} (from {pod.source})",
        )
    return pod


def _read_cgroup(cgroup_file: Path) -> str:
    try:
        with cgroup_file.open(encoding="utf-8", errors="replace") as stream:
            return stream.read(MAX_CGROUP_FILE_CHARS + 1)
    except OSError as error:
        raise InitCheckError(
            EXIT_POD_UID, f"cannot read {cgroup_file} for the pod UID: {error.strerror}"
        ) from error


def resolve_pod_uid(env_value: str | None, cgroup_text: str) -> PodUid:
    """Combine POD_UID (None when unset) with the pod named in ``cgroup_text``.

    Raises InitCheckError when POD_UID is malformed, when the cgroup file is unusable,
    when both sources name different pods, and when neither names one.
    """
    from_env = _parse_env_pod_uid(env_value) if env_value is not None else None
    try:
        from_cgroup = parse_cgroup_file(cgroup_text).pod_uid
    except CgroupParseError as error:
        raise InitCheckError(
            EXIT_POD_UID, f"cannot read the pod UID from the cgroup file: {error.message}"
        ) from error
    if from_env is not None and from_cgroup is not None:
        if from_env != from_cgroup:
            raise InitCheckError(
                EXIT_POD_UID,
                f"pod UID mismatch: {POD_UID_VARIABLE} is {from_env} but the cgroup file "
                f"names pod {from_cgroup}; set {POD_UID_VARIABLE} from fieldPath metadata.uid",
            )
        return PodUid(from_env, f"{POD_UID_VARIABLE} and cgroup")
    if from_env is not None:
        return PodUid(from_env, POD_UID_VARIABLE)
    if from_cgroup is not None:
        return PodUid(from_cgroup, "cgroup")
    raise InitCheckError(
        EXIT_POD_UID,
        f"cannot determine the pod UID: {POD_UID_VARIABLE} is not set and the cgroup file "
        f"names no pod; set {POD_UID_VARIABLE} with the Downward API (fieldPath metadata.uid)",
    )


def _parse_env_pod_uid(value: str) -> str:
    normalised = value.lower()
    if not _POD_UID.fullmatch(normalised):
        raise InitCheckError(
            EXIT_POD_UID,
            f"{POD_UID_VARIABLE}={value!r} is not a pod UID; set it with the Downward API "
            "(fieldPath metadata.uid)",
        )
    return normalised
