"""Errors raised by the certificate authority (agent.ca).

Callers catch CAError for every deliberate CA failure. The leaf classes carry the
offending value in a typed field and name it in the message together with the fix.
cryptography and OS errors are translated where the CA reads files or parses keys.

    CAError
    ├── UnsupportedKeyTypeError     key type setting not in the allowed list
    ├── UnsupportedAlgorithmError   JWT algorithm setting not in the allowed list
    ├── InvalidSettingError         another CA setting is out of range
    ├── CAFileError                 a CA file is missing, unreadable or invalid
    ├── CANotReadyError             Authority used before start(), after close()
    ├── IntermediateExpiredError    the signing certificate has expired
    ├── SvidRequestError            invalid SPIFFE ID, DNS name, TTL or audience
    └── JwtSvidError                a JWT-SVID failed validation (``reason`` code)
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from agent.errors import AgentError


class CAError(AgentError):
    """Base class of the certificate authority's errors."""


class UnsupportedKeyTypeError(CAError):
    """The key type setting names a key the CA does not generate."""

    def __init__(self, key_type: str, allowed: tuple[str, ...]) -> None:
        self.key_type = key_type
        self.allowed = allowed
        super().__init__(
            f"unsupported key type {key_type!r}: use one of {', '.join(allowed)} "
            "(RSA keys shorter than 2048 bits are rejected)"
        )


class UnsupportedAlgorithmError(CAError):
    """The JWT algorithm setting names an algorithm the CA does not sign with."""

    def __init__(self, algorithm: str, allowed: tuple[str, ...]) -> None:
        self.algorithm = algorithm
        self.allowed = allowed
        super().__init__(
            f"unsupported JWT signing algorithm {algorithm!r}: use one of {', '.join(allowed)}"
        )


class InvalidSettingError(CAError):
    """A CA setting has a value the CA cannot work with."""

    def __init__(self, setting: str, value: object, fix: str) -> None:
        self.setting = setting
        self.value = value
        super().__init__(f"invalid CA setting {setting}={value!r}: {fix}")


class CAFileError(CAError):
    """A CA certificate, key or bundle file is missing, unreadable or invalid."""

    def __init__(self, path: Path, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(f"CA file {path}: {detail}")


class CANotReadyError(CAError):
    """The Authority was used before start() finished, after close(), or started twice."""

    def __init__(self, operation: str, fix: str = "call start() first") -> None:
        self.operation = operation
        super().__init__(f"certificate authority is not running for {operation}: {fix}")


class IntermediateExpiredError(CAError):
    """The signing (intermediate) certificate is no longer valid."""

    def __init__(self, not_after: datetime) -> None:
        self.not_after = not_after
        super().__init__(
            f"the intermediate CA certificate expired at {not_after.isoformat()}: "
            "install a new intermediate (attest-agent ca issue-intermediate) and reload"
        )


class SvidRequestError(CAError):
    """An SVID request names an invalid SPIFFE ID, DNS name, TTL or audience."""

    def __init__(self, field: str, value: object, detail: str, *, message: str = "") -> None:
        # ``message`` replaces the composed text when ``detail`` comes from an error
        # that already names the field and value, such as InvalidSpiffeIdError.
        self.field = field
        self.value = value
        self.detail = detail
        super().__init__(message or f"invalid {field} {value!r}: {detail}")


class JwtSvidError(CAError):
    """A JWT-SVID failed validation.

    ``reason`` is a short machine-readable code: malformed, unsupported_algorithm,
    unknown_kid, bad_signature, expired, not_yet_valid, audience_mismatch,
    missing_audience or invalid_subject. The message never contains the token.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"JWT-SVID rejected ({reason}): {detail}")
