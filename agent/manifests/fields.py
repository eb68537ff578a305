"""Validators for single manifest keys.

Each validator takes the decoded JSON object, the file name and the key, and returns a
normalised value or raises ManifestSchemaError(reason "invalid_value" or
"missing_key") naming the file and the key. ``parse_optional_fields`` returns keyword
arguments for Manifest.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from agent.manifests.errors import ManifestSchemaError

_SHA256 = re.compile(r"(?:sha256:)?([0-9a-fA-F]{64})")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_CONTAINER_ID = re.compile(r"[0-9a-fA-F]{64}")
# systemd.unit(5): name characters [A-Za-z0-9:_.\@-], then a dot and the unit type.
_SYSTEMD_UNIT = re.compile(
    r"[A-Za-z0-9:_.\\@-]+\."
    r"(?:service|socket|device|mount|automount|swap|target|path|timer|slice|scope)"
)
# Kubernetes names: namespace is a DNS-1123 label, service account a DNS-1123 subdomain.
_DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?")
_DNS_NAME_LABEL = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9]{0,61}[A-Za-z0-9])?")
# OCI image-spec digest grammar: algorithm ":" encoded.
_IMAGE_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})"
)
MAX_UID = 2**32 - 2  # (uid_t)-1 is "no uid" in the kernel, never a real user.
MAX_TTL_SECONDS = 366 * 24 * 3600
MAX_HINT_CHARS = 256
MAX_DNS_NAMES = 100


def _invalid(file: str, key: str, detail: str) -> ManifestSchemaError:
    return ManifestSchemaError(file, "invalid_value", detail, key)


def required_string(document: dict[str, Any], key: str, file: str) -> str:
    """Return the string under ``key``, raising if it is missing or not a string."""
    if key not in document:
        raise ManifestSchemaError(file, "missing_key", f"{key} is required; add it", key)
    value = document[key]
    if not isinstance(value, str):
        raise _invalid(file, key, f"expected a string, got {_json_type(value)}")
    return value


def parse_exe_digests(document: dict[str, Any], file: str) -> frozenset[str]:
    """Return the lowercase hex digests listed under ``exe_sha256``."""
    key = "exe_sha256"
    if key not in document:
        raise ManifestSchemaError(
            file, "missing_key", f"{key} is required; add the executable's SHA-256", key
        )
    value = document[key]
    if not isinstance(value, list) or not value:
        raise _invalid(file, key, "expected a non-empty list of SHA-256 digests")
    digests = set()
    for item in value:
        match = _SHA256.fullmatch(item) if isinstance(item, str) else None
        if match is None:
            raise _invalid(
                file, key,
                f"{_show(item)} is not a SHA-256 digest; write 64 hex characters, "
                "optionally prefixed with 'sha256:'",
            )
        digests.add(match.group(1).lower())
    return frozenset(digests)


def parse_optional_fields(document: dict[str, Any], file: str) -> dict[str, Any]:
    """Validate every optional key present in ``document`` and return normalised values."""
    return {
        key: parser(document[key], file, key)
        for key, parser in _OPTIONAL_PARSERS.items()
        if key in document
    }


def _parse_pod_uid(value: Any, file: str, key: str) -> str:
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        raise _invalid(file, key, f"{_show(value)} is not a UUID such as 'xxxxxxxx-xxxx-...'")
    return value.lower()


def _parse_systemd_unit(value: Any, file: str, key: str) -> str:
    if not isinstance(value, str) or len(value) > 255 or not _SYSTEMD_UNIT.fullmatch(value):
        raise _invalid(
            file, key, f"{_show(value)} is not a systemd unit name such as 'web.service'"
        )
    return value


def _parse_uid(value: Any, file: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_UID:
        raise _invalid(file, key, f"{_show(value)} is not a uid; write an integer 0-{MAX_UID}")
    return value


def _parse_namespace(value: Any, file: str, key: str) -> str:
    if not isinstance(value, str) or not _DNS_LABEL.fullmatch(value):
        raise _invalid(file, key, f"{_show(value)} is not a Kubernetes namespace name")
    return value


def _parse_service_account(value: Any, file: str, key: str) -> str:
    if not isinstance(value, str) or not _DNS_SUBDOMAIN.fullmatch(value):
        raise _invalid(file, key, f"{_show(value)} is not a Kubernetes service account name")
    return value


def _parse_container_id(value: Any, file: str, key: str) -> str:
    if not isinstance(value, str) or not _CONTAINER_ID.fullmatch(value):
        raise _invalid(file, key, f"{_show(value)} is not a container ID of 64 hex characters")
    return value.lower()


def _parse_not_after(value: Any, file: str, key: str) -> datetime:
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise _invalid(
            file, key, f"{_show(value)} is not an RFC 3339 time such as '2030-01-31T12:00:00Z'"
        )
    try:
        parsed = datetime.fromisoformat(value.upper())
    except ValueError as error:
        raise _invalid(file, key, f"{_show(value)} is not a valid date or time") from error
    return parsed.astimezone(UTC)


def _parse_ttl(value: Any, file: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TTL_SECONDS:
        raise _invalid(
            file, key, f"{_show(value)} is not a TTL; write whole seconds, 1-{MAX_TTL_SECONDS}"
        )
    return value


def _parse_dns_names(value: Any, file: str, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_DNS_NAMES:
        raise _invalid(file, key, f"expected a list of at most {MAX_DNS_NAMES} DNS names")
    names: list[str] = []
    for item in value:
        if not isinstance(item, str) or not _is_dns_name(item):
            raise _invalid(file, key, f"{_show(item)} is not a DNS name such as 'web.example.org'")
        if item.lower() not in names:
            names.append(item.lower())
    return tuple(names)


def _is_dns_name(name: str) -> bool:
    labels = name.split(".")
    if labels[0] == "*" and len(labels) > 1:
        labels = labels[1:]
    return len(name) <= 253 and all(_DNS_NAME_LABEL.fullmatch(label) for label in labels)


def _parse_hint(value: Any, file: str, key: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_HINT_CHARS or not value.isprintable():
        raise _invalid(
            file, key, f"expected printable text of at most {MAX_HINT_CHARS} characters"
        )
    return value


def _parse_image_digest(value: Any, file: str, key: str) -> str:
    if not isinstance(value, str) or len(value) > 255 or not _IMAGE_DIGEST.fullmatch(value):
        raise _invalid(file, key, f"{_show(value)} is not an image digest such as 'sha256:<hex>'")
    return value


_OPTIONAL_PARSERS: dict[str, Callable[[Any, str, str], Any]] = {
    "pod_uid": _parse_pod_uid,
    "systemd_unit": _parse_systemd_unit,
    "uid": _parse_uid,
    "namespace": _parse_namespace,
    "service_account": _parse_service_account,
    "container_id": _parse_container_id,
    "not_after": _parse_not_after,
    "x509_svid_ttl": _parse_ttl,
    "dns_names": _parse_dns_names,
    "hint": _parse_hint,
    "image_digest": _parse_image_digest,
}


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string",
             list: "a list", dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."
