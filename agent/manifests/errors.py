"""Errors of the manifest layer.

Every error has ``file`` (the manifest, signature or key file concerned), ``reason`` (a
short fixed code, safe as a log field or metric label) and, where one key of a manifest
is at fault, ``key``. The message names the file, the key and the fix.
"""

from __future__ import annotations

from agent.errors import AgentError


class ManifestError(AgentError):
    """Base of all manifest, signature and trusted-key errors."""

    def __init__(self, file: str, reason: str, message: str, key: str | None = None) -> None:
        self.file = file
        self.reason = reason
        self.key = key
        super().__init__(message)


class ManifestSchemaError(ManifestError):
    """A manifest whose bytes or JSON break the manifest schema.

    Reasons: too_large, invalid_utf8, invalid_json, too_deep, duplicate_key,
    unknown_key, not_an_object, missing_key, unexpected_key, invalid_value,
    invalid_spiffe_id, wrong_trust_domain, missing_selector, conflicting_selectors,
    spiffe_id_template_mismatch.
    """

    def __init__(self, file: str, reason: str, detail: str, key: str | None = None) -> None:
        where = f"{file}: key {key!r}" if key is not None else file
        super().__init__(file, reason, f"invalid manifest {where}: {detail}", key)


class SignatureError(ManifestError):
    """A manifest whose detached signature is missing or does not verify.

    Reasons: missing_signature, bad_signature.
    """

    def __init__(self, file: str, reason: str, detail: str) -> None:
        super().__init__(file, reason, f"manifest signature rejected for {file}: {detail}")


class ManifestFileError(ManifestError):
    """A manifest file that cannot be read safely.

    Reasons: symlink_outside_directory, not_regular_file, unreadable, too_large,
    directory_not_found.
    """

    def __init__(self, file: str, reason: str, detail: str) -> None:
        super().__init__(file, reason, f"manifest file {file} rejected: {detail}")


class TrustedKeyError(ManifestError):
    """A trusted public key file that cannot serve as a trust anchor.

    Reasons: no_trusted_keys, unreadable, invalid_pem, rsa_key_too_small,
    unsupported_curve, unsupported_key_type.
    """

    def __init__(self, file: str, reason: str, detail: str) -> None:
        self.detail = detail
        super().__init__(file, reason, f"trusted key {file} rejected: {detail}")
