"""The ``attest-agent explain --pid PID`` command: why a process gets an identity or not.

It attests the process as the agent would (no running agent needed), loads every
manifest in the manifest directory with the agent's checks (path, signature, schema),
and prints the evidence, one verdict per manifest file, and the final decision.
Manifests that fail to load are listed with the reason, because the agent skips them.

Settings come from ``--config FILE`` (the agent's TOML file: manifests_dir,
manifest_keys, trust_domain, state_dir, spiffe_id_template) with flags taking
precedence. Without ``--config`` the defaults apply, as for ``attest-agent run`` with
no arguments. When no manifest key is configured, the agent trusts the development key
``<state_dir>/dev-manifest.pub``, and this command uses that key too if the file
exists. Otherwise it fails with an error that names the path it looked for.

Exit status: 0 when the process would get at least one identity, 1 when it would not
(attestation failed or no manifest grants one), 2 for usage or configuration errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import log
from agent.attest.attestor import Attestor
from agent.attest.evidence import Evidence
from agent.config import Settings, load_settings
from agent.denial import Denial
from agent.errors import ConfigError
from agent.manifests import (
    DEFAULT_SPIFFE_ID_TEMPLATE,
    Identity,
    Manifest,
    ManifestError,
    ManifestVerdict,
    TrustedKey,
    explain_manifests,
    load_trusted_keys,
    match_manifests,
)
from agent.manifests.files import ManifestFiles, scan_directory
from agent.manifests.loading import load_manifest_file_sync
from agent.spiffeid import InvalidSpiffeIdError

EXIT_GRANTED = 0
EXIT_DENIED = 1
EXIT_USAGE = 2

_CONFIG_ERRORS = (ConfigError, ManifestError, InvalidSpiffeIdError)


@dataclass(frozen=True, slots=True)
class ExplainSetup:
    """Inputs of the check: manifest directory, trusted keys and parse settings.

    ``development_key`` is true when the keys are the agent's generated development key.
    """

    manifests_dir: Path
    keys: tuple[TrustedKey, ...]
    trust_domain: str
    spiffe_id_template: str
    development_key: bool


@dataclass(frozen=True, slots=True)
class ManifestRow:
    """One manifest file's outcome.

    ``status`` is "match", "no_match", "not_loaded" (the agent skips the file) or
    "not_evaluated" (loaded, but the process could not be attested). ``reason`` is a
    denial reason code for "no_match" and a manifest error code for "not_loaded".
    """

    file: str
    status: str
    spiffe_id: str | None
    reason: str | None
    detail: str

    def as_json_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "status": self.status,
            "spiffe_id": self.spiffe_id,
            "reason": self.reason,
            "detail": self.detail,
        }


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``explain`` parser."""
    parser = subparsers.add_parser(
        "explain",
        help="show why a process gets an identity or not, manifest by manifest",
        description=(
            "Attest a running process as the agent would, check it against every manifest "
            "file, and print the evidence, each manifest's verdict and the decision. Run "
            "it as root in the agent's PID namespace. Flags override the config file, "
            "and without --config the defaults of 'attest-agent run' apply. "
            "Exit status: 0 if the process would get an identity, 1 if not, 2 for usage "
            "or configuration errors."
        ),
    )
    parser.add_argument("--pid", type=_pid, required=True, help="process id to explain")
    parser.add_argument("--config", type=Path, help="the agent's TOML config file")
    parser.add_argument("--manifests-dir", type=Path, help="directory of signed manifests")
    parser.add_argument(
        "--manifest-key", dest="manifest_keys", type=Path, action="append",
        help="PEM public key trusted to sign manifests; repeat for several keys",
    )
    parser.add_argument("--trust-domain", help="trust domain (default: cluster.local)")
    parser.add_argument(
        "--state-dir", type=Path,
        help="the agent's state_dir, where it keeps dev-manifest.pub "
        "(default: /tmp/attest-agent/state)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run_explain)


def _pid(text: str) -> int:
    try:
        pid = int(text)
    except ValueError:
        pid = 0
    if pid <= 0:
        raise argparse.ArgumentTypeError(f"invalid pid {text!r}: use a positive process id")
    return pid


def run_explain(args: argparse.Namespace) -> int:
    """Explain the decision for ``args.pid`` and return 0 (granted), 1 (denied) or 2."""
    # The report contains any denial, so the attestor's own warning would repeat it.
    log.configure("ERROR")
    try:
        setup = load_setup(args)
        rows, manifests = load_manifests(setup)
    except _CONFIG_ERRORS as error:
        print(f"attest-agent explain: {error}", file=sys.stderr)
        return EXIT_USAGE
    result = asyncio.run(Attestor().attest_pid(args.pid))
    decision: tuple[Identity, ...] | Denial
    if isinstance(result, Evidence):
        rows += [_row(verdict) for verdict in explain_manifests(manifests, result)]
        decision = match_manifests(manifests, result)
    else:
        rows += _unchecked_rows(manifests)
        decision = result
    rows.sort(key=lambda row: row.file)
    if args.json:
        print(json.dumps(_report(args.pid, setup, result, rows, decision), indent=2))
    else:
        print(render_text(args.pid, setup, result, rows, decision))
    return EXIT_DENIED if isinstance(decision, Denial) else EXIT_GRANTED


def load_setup(args: argparse.Namespace) -> ExplainSetup:
    """Read the settings and load the trusted keys.

    Raises ConfigError, TrustedKeyError or InvalidSpiffeIdError for bad settings.
    """
    overrides = {
        "manifests_dir": _absolute(args.manifests_dir),
        "manifest_keys": [_absolute(path) for path in args.manifest_keys or ()] or None,
        "trust_domain": args.trust_domain,
        "state_dir": _absolute(args.state_dir),
    }
    settings = load_settings(args.config, overrides)
    key_paths, development = _key_paths(settings, args.config)
    return ExplainSetup(
        manifests_dir=settings.manifests_dir,
        keys=tuple(load_trusted_keys(key_paths)),
        trust_domain=settings.trust_domain,
        spiffe_id_template=settings.spiffe_id_template or DEFAULT_SPIFFE_ID_TEMPLATE,
        development_key=development,
    )


def _absolute(path: Path | None) -> Path | None:
    # The settings require absolute paths; a relative flag means the working directory.
    return path.absolute() if path is not None else None


def _key_paths(settings: Settings, config: Path | None) -> tuple[tuple[Path, ...], bool]:
    if settings.manifest_keys:
        return settings.manifest_keys, False
    # Imported here because agent.server loads grpc, which the other paths do not need.
    from agent.server import DEV_MANIFEST_PUBLIC_KEY_NAME  # noqa: PLC0415

    development = settings.state_dir / DEV_MANIFEST_PUBLIC_KEY_NAME
    if development.is_file():
        return (development,), True
    if config is not None:
        raise ConfigError(
            f"{config} sets no manifest_keys and the agent's development key {development} "
            "does not exist: pass --manifest-key PUB"
        )
    raise ConfigError(
        f"no manifest key to check signatures with: the agent's development key "
        f"{development} does not exist. Pass --manifest-key PUB, --config with the "
        "agent's config file, or --state-dir with the agent's state_dir"
    )


def load_manifests(setup: ExplainSetup) -> tuple[list[ManifestRow], list[Manifest]]:
    """Load every manifest as the agent's store does.

    Returns a "not_loaded" row for each file the agent would skip, and the manifests
    that loaded. Raises ManifestFileError when the directory cannot be listed.
    """
    failures: list[ManifestRow] = []
    manifests: list[Manifest] = []
    for files in scan_directory(setup.manifests_dir).values():
        try:
            manifests.append(_load_file(setup, files))
        except ManifestError as error:
            failures.append(ManifestRow(files.name, "not_loaded", None, error.reason, str(error)))
    return failures, manifests


def _load_file(setup: ExplainSetup, files: ManifestFiles) -> Manifest:
    # The same loading steps as the agent's manifest store, so the rows agree with it.
    return load_manifest_file_sync(
        setup.manifests_dir,
        files,
        setup.keys,
        trust_domain=setup.trust_domain,
        spiffe_id_template=setup.spiffe_id_template,
    )


def _unchecked_rows(manifests: Sequence[Manifest]) -> list[ManifestRow]:
    detail = "not checked: the process could not be attested"
    return [ManifestRow(m.file, "not_evaluated", m.spiffe_id, None, detail) for m in manifests]


def _row(verdict: ManifestVerdict) -> ManifestRow:
    status = "match" if verdict.matched else "no_match"
    reason = verdict.reason.value if verdict.reason is not None else None
    return ManifestRow(verdict.file, status, verdict.spiffe_id, reason, verdict.detail)


def _report(
    pid: int,
    setup: ExplainSetup,
    result: Evidence | Denial,
    rows: Sequence[ManifestRow],
    decision: tuple[Identity, ...] | Denial,
) -> dict[str, object]:
    evidence: dict[str, object] | None = None
    if isinstance(result, Evidence):
        evidence = {**result.as_json_dict(), "exe_path": result.exe_path}
    return {
        "pid": pid,
        "evidence": evidence,
        "manifests_dir": str(setup.manifests_dir),
        "trusted_keys": [_key_json(key) for key in setup.keys],
        "development_key": setup.development_key,
        "manifests": [row.as_json_dict() for row in rows],
        "decision": _decision_json(decision),
    }


def _key_json(key: TrustedKey) -> dict[str, str]:
    return {"path": key.path, "algorithm": key.algorithm, "fingerprint": key.fingerprint}


def _decision_json(decision: tuple[Identity, ...] | Denial) -> dict[str, object]:
    if isinstance(decision, Denial):
        return {
            "granted": False,
            "identities": [],
            "reason": decision.reason.value,
            "message": decision.message,
        }
    identities = [
        {"spiffe_id": identity.spiffe_id, "manifest_files": list(identity.manifest_files)}
        for identity in decision
    ]
    return {"granted": True, "identities": identities, "reason": None, "message": None}


def render_text(
    pid: int,
    setup: ExplainSetup,
    result: Evidence | Denial,
    rows: Sequence[ManifestRow],
    decision: tuple[Identity, ...] | Denial,
) -> str:
    """Return the human-readable report: evidence, one line per manifest, decision."""
    lines = _evidence_lines(pid, result)
    files = "file" if len(rows) == 1 else "files"
    lines.append(f"manifests in {setup.manifests_dir} ({len(rows)} {files})")
    lines.append("trusted keys: " + ", ".join(_key_text(setup, key) for key in setup.keys))
    lines.extend(_row_text(row) for row in rows)
    lines.append(_decision_text(decision))
    return "\n".join(lines)


def _evidence_lines(pid: int, result: Evidence | Denial) -> list[str]:
    if isinstance(result, Denial):
        return [f"process {pid}: no evidence ({result.reason.value}): {result.message}"]
    values = [
        ("exe_sha256", f"sha256:{result.exe_sha256}"),
        ("exe_path", result.exe_path),
        ("uid", f"{result.uid} (euid {result.euid})"),
        ("gid", f"{result.gid} (egid {result.egid})"),
        ("pod_uid", result.pod_uid),
        ("container_id", result.container_id),
        ("systemd_unit", result.systemd_unit),
        ("start_time", result.start_time),
    ]
    lines = [f"process {pid}: evidence"]
    lines.extend(f"  {name:<13} {'-' if value is None else value}" for name, value in values)
    return lines


def _key_text(setup: ExplainSetup, key: TrustedKey) -> str:
    development = ", the agent's development key" if setup.development_key else ""
    return f"{key.path} ({key.algorithm}, sha256:{key.fingerprint[:16]}...{development})"


def _row_text(row: ManifestRow) -> str:
    if row.status == "match":
        return f"  {row.file}: match, grants {row.spiffe_id}"
    if row.status == "not_loaded":
        return f"  {row.file}: not loaded ({row.reason}): {row.detail}"
    if row.status == "not_evaluated":
        return f"  {row.file}: {row.detail} (grants {row.spiffe_id})"
    return f"  {row.file}: no match ({row.reason}) for {row.spiffe_id}: {row.detail}"


def _decision_text(decision: tuple[Identity, ...] | Denial) -> str:
    if isinstance(decision, Denial):
        return f"decision: denied ({decision.reason.value}): {decision.message}"
    granted = ", ".join(identity.spiffe_id for identity in decision)
    return f"decision: granted {granted} (the first is the default)"
