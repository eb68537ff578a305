"""Identity: a SPIFFE ID that a signed manifest grants to matching evidence."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Identity:
    """One identity the caller may hold, merged from every manifest that grants it.

    ``x509_svid_ttl`` is the manifest's requested TTL in seconds (None means the agent
    default); the CA caps it. ``not_after`` is the earliest expiry of the granting
    manifests; ``manifest_files`` names them for audit records.
    """

    spiffe_id: str
    hint: str = ""
    dns_names: tuple[str, ...] = ()
    x509_svid_ttl: int | None = None
    not_after: datetime | None = None
    manifest_files: tuple[str, ...] = ()
    image_digest: str | None = None
