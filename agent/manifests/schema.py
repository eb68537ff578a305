"""The manifest schema: one signed JSON object granting a SPIFFE ID to a workload.

Call ``parse_manifest`` on the exact bytes whose signature was verified. It returns a
Manifest with normalised values (lowercase digests and UUIDs, UTC times) or raises
ManifestSchemaError naming the file, the key and the fix. Unknown keys are rejected so
that a typo such as ``podUID`` cannot silently drop a selector and widen a grant.

Keys: ``spiffe_id`` and ``exe_sha256`` are required, with at least one placement
selector (``pod_uid``, ``systemd_unit``, ``uid``). ``namespace`` and ``service_account``
are required with ``pod_uid``, and the SPIFFE ID must then equal the agent's
``spiffe_id_template`` filled with them. Optional: ``not_after``, ``x509_svid_ttl``,
``dns_names``, ``hint``, ``container_id``, ``image_digest``.
"""

from __future__ import annotations

import difflib
import hashlib
import string
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent.errors import ConfigError
from agent.manifests import fields
from agent.manifests.errors import ManifestSchemaError
from agent.manifests.jsondecode import decode_object
from agent.spiffeid import InvalidSpiffeIdError, SpiffeId, parse_trust_domain

DEFAULT_SPIFFE_ID_TEMPLATE = "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
TEMPLATE_FIELDS = frozenset({"trust_domain", "namespace", "service_account"})

KNOWN_KEYS = frozenset(
    {
        "spiffe_id", "exe_sha256", "pod_uid", "systemd_unit", "uid", "namespace",
        "service_account", "not_after", "x509_svid_ttl", "dns_names", "hint",
        "container_id", "image_digest",
    }
)


@dataclass(frozen=True, slots=True)
class Manifest:
    """A parsed manifest.

    ``file`` is the manifest's file name and ``sha256`` the digest of its exact bytes,
    for audit records. ``exe_sha256`` holds lowercase hex digests without a prefix.
    ``not_after`` is timezone-aware UTC.
    """

    file: str
    sha256: str
    spiffe_id: str
    exe_sha256: frozenset[str]
    pod_uid: str | None = None
    systemd_unit: str | None = None
    uid: int | None = None
    namespace: str | None = None
    service_account: str | None = None
    container_id: str | None = None
    not_after: datetime | None = None
    x509_svid_ttl: int | None = None
    dns_names: tuple[str, ...] = ()
    hint: str = ""
    image_digest: str | None = None

    def is_expired(self, now: datetime) -> bool:
        """Tell whether ``now`` (timezone-aware) is at or past ``not_after``."""
        return self.not_after is not None and now >= self.not_after


def check_spiffe_id_template(template: str) -> str:
    """Return ``template`` if it is usable, else raise ConfigError.

    A usable template names both ``{namespace}`` and ``{service_account}``, so the
    namespace/service-account check always constrains the ID, and uses no other field.
    """
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        raise ConfigError(
            f"invalid spiffe_id_template {template!r}: {error}; "
            f"use the form {DEFAULT_SPIFFE_ID_TEMPLATE!r}"
        ) from error
    missing = {"namespace", "service_account"} - names
    unknown = names - TEMPLATE_FIELDS
    if missing or unknown:
        raise ConfigError(
            f"invalid spiffe_id_template {template!r}: it must contain {{namespace}} and "
            f"{{service_account}} and no fields other than {sorted(TEMPLATE_FIELDS)}; "
            f"missing {sorted(missing)}, unknown {sorted(unknown)}"
        )
    return template


def parse_manifest(
    data: bytes, *, file: str, trust_domain: str, spiffe_id_template: str
) -> Manifest:
    """Parse and validate one manifest's bytes, raising ManifestSchemaError on any defect.

    ``trust_domain`` may be given as ``example.org`` or ``spiffe://example.org``. A bad
    trust domain or template is the agent's configuration error, so it raises
    InvalidSpiffeIdError or ConfigError instead.
    """
    check_spiffe_id_template(spiffe_id_template)
    trust_domain = parse_trust_domain(trust_domain)
    document = decode_object(data, file)
    _reject_unknown_keys(document, file)
    spiffe_id = _parse_spiffe_id(document, file, trust_domain)
    values = fields.parse_optional_fields(document, file)
    _check_selectors(values, file)
    if values.get("pod_uid") is not None:
        _check_template(spiffe_id, values, file, trust_domain, spiffe_id_template)
    return Manifest(
        file=file,
        sha256=hashlib.sha256(data).hexdigest(),
        spiffe_id=str(spiffe_id),
        exe_sha256=fields.parse_exe_digests(document, file),
        **values,
    )


def _reject_unknown_keys(document: dict[str, Any], file: str) -> None:
    unknown = sorted(set(document) - KNOWN_KEYS)
    if not unknown:
        return
    key = unknown[0]
    guesses = difflib.get_close_matches(_snake_case(key), sorted(KNOWN_KEYS), n=1)
    hint = f"did you mean {guesses[0]!r}?" if guesses else f"known keys: {sorted(KNOWN_KEYS)}"
    others = f" (also unknown: {unknown[1:]})" if len(unknown) > 1 else ""
    raise ManifestSchemaError(file, "unknown_key", f"unknown key{others}; {hint}", key)


def _snake_case(key: str) -> str:
    spaced = "".join(f"_{char.lower()}" if char.isupper() else char for char in key)
    return spaced.lstrip("_").replace("-", "_")


def _parse_spiffe_id(document: dict[str, Any], file: str, trust_domain: str) -> SpiffeId:
    text = fields.required_string(document, "spiffe_id", file)
    try:
        spiffe_id = SpiffeId.parse(text)
    except InvalidSpiffeIdError as error:
        raise ManifestSchemaError(file, "invalid_spiffe_id", str(error), "spiffe_id") from error
    if spiffe_id.trust_domain != trust_domain:
        raise ManifestSchemaError(
            file, "wrong_trust_domain",
            f"the SPIFFE ID {text!r} is in trust domain {spiffe_id.trust_domain!r}, but this "
            f"agent serves {trust_domain!r}; use spiffe://{trust_domain}/...",
            "spiffe_id",
        )
    return spiffe_id


def _check_selectors(values: dict[str, Any], file: str) -> None:
    placement = [key for key in ("pod_uid", "systemd_unit", "uid") if values.get(key) is not None]
    if not placement:
        raise ManifestSchemaError(
            file, "missing_selector",
            "the manifest names no placement; add pod_uid, systemd_unit or uid",
        )
    if values.get("pod_uid") is not None and values.get("systemd_unit") is not None:
        raise ManifestSchemaError(
            file, "conflicting_selectors",
            "a process in a pod has no systemd unit, so pod_uid and systemd_unit never "
            "match together; keep one of them",
            "systemd_unit",
        )
    for key in ("namespace", "service_account"):
        has_pod = values.get("pod_uid") is not None
        if has_pod and values.get(key) is None:
            raise ManifestSchemaError(
                file, "missing_key", f"{key} is required with pod_uid; add it", key
            )
        if not has_pod and values.get(key) is not None:
            raise ManifestSchemaError(
                file, "unexpected_key", f"{key} is only valid with pod_uid; remove it", key
            )


def _check_template(
    spiffe_id: SpiffeId, values: dict[str, Any], file: str, trust_domain: str, template: str
) -> None:
    expected = template.format(
        trust_domain=trust_domain,
        namespace=values["namespace"],
        service_account=values["service_account"],
    )
    if str(spiffe_id) != expected:
        raise ManifestSchemaError(
            file, "spiffe_id_template_mismatch",
            f"the SPIFFE ID {str(spiffe_id)!r} does not match namespace "
            f"{values['namespace']!r} and service account {values['service_account']!r}; "
            f"expected {expected!r} (template {template!r})",
            "spiffe_id",
        )
