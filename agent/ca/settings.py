"""Settings of the certificate authority.

Build a CASettings and pass it to Authority, which calls ``check_settings`` before
anything else. A bad value raises a CAError that names the setting and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.ca.errors import InvalidSettingError
from agent.ca.ids import check_trust_domain
from agent.ca.keys import check_jwt_algorithm, check_key_type


@dataclass(frozen=True)
class CASettings:
    """What the CA signs with and how long its SVIDs live.

    ``cert_path``, ``key_path`` and ``bundle_path`` name the intermediate certificate
    (optionally followed by further intermediates), its private key and the root
    bundle. Set all three, or none: then a development CA is created (or reused) under
    ``state_dir`` and a warning is logged. Durations are in seconds.
    ``jwt_key_rotation`` is how long one JWT signing key signs before the next takes
    over; ``file_poll_interval`` is how often the CA files are checked for changes.
    """

    trust_domain: str
    state_dir: Path
    cert_path: Path | None = None
    key_path: Path | None = None
    bundle_path: Path | None = None
    x509_svid_ttl: int = 3600
    jwt_svid_ttl: int = 300
    svid_key_type: str = "ec-p256"
    jwt_algorithm: str = "ES256"
    backdate_seconds: int = 30
    jwt_key_rotation: int = 6 * 3600
    file_poll_interval: float = 5.0

    @property
    def uses_dev_ca(self) -> bool:
        """True when no CA files are configured and a development CA is used."""
        return self.cert_path is None and self.key_path is None and self.bundle_path is None


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise InvalidSettingError(name, value, "use a positive number of seconds")


def check_settings(settings: CASettings) -> None:
    """Raise a CAError for the first invalid setting.

    Unknown key types and JWT algorithms raise UnsupportedKeyTypeError and
    UnsupportedAlgorithmError, listing the allowed values; other values raise
    InvalidSettingError.
    """
    check_trust_domain(settings.trust_domain)
    check_key_type(settings.svid_key_type)
    check_jwt_algorithm(settings.jwt_algorithm)
    for name in ("x509_svid_ttl", "jwt_svid_ttl", "jwt_key_rotation", "file_poll_interval"):
        _check_positive(name, getattr(settings, name))
    if settings.backdate_seconds < 0:
        raise InvalidSettingError(
            "backdate_seconds", settings.backdate_seconds, "use 0 or more seconds"
        )
    paths = (settings.cert_path, settings.key_path, settings.bundle_path)
    if not settings.uses_dev_ca and None in paths:
        raise InvalidSettingError(
            "cert/key/bundle",
            tuple(str(path) if path else None for path in paths),
            "set all three CA files, or none for a development CA",
        )
