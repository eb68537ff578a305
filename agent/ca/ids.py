"""SPIFFE ID and DNS name checks for what the CA puts into SVIDs.

Call ``check_trust_domain`` on configured trust domains, ``check_workload_id`` before
minting for a SPIFFE ID and ``check_dns_name`` for every DNS SAN. SPIFFE ID syntax is
decided by agent.spiffeid; its errors become SvidRequestError here, so callers of the
CA catch CAError only.
"""

from __future__ import annotations

import re

from agent.ca.errors import SvidRequestError
from agent.spiffeid import InvalidSpiffeIdError, SpiffeId, parse_trust_domain

_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_MAX_DNS_NAME_BYTES = 253


def check_trust_domain(trust_domain: str) -> str:
    """Return the trust domain name (``example.org``) if it follows the SPIFFE rules.

    A bare name is required: ``spiffe://example.org`` is rejected, so that each trust
    domain has one spelling in settings.
    """
    try:
        name = parse_trust_domain(trust_domain)
    except InvalidSpiffeIdError as error:
        raise SvidRequestError(
            "trust domain", trust_domain, str(error), message=str(error)
        ) from None
    if name != trust_domain:
        raise SvidRequestError("trust domain", trust_domain, f"use the bare name {name!r}")
    return name


def parse_workload_id(spiffe_id: str) -> SpiffeId:
    """Parse a workload SPIFFE ID (non-empty path) or raise SvidRequestError."""
    try:
        return SpiffeId.parse(spiffe_id)
    except InvalidSpiffeIdError as error:
        raise SvidRequestError("SPIFFE ID", spiffe_id, str(error), message=str(error)) from None


def check_workload_id(spiffe_id: str, trust_domain: str) -> str:
    """Return the SPIFFE ID if it is a workload ID in ``trust_domain``.

    A workload ID needs a non-empty path; the X509-SVID standard forbids a bare trust
    domain ID in a leaf certificate.
    """
    parsed = parse_workload_id(spiffe_id)
    if parsed.trust_domain != trust_domain:
        raise SvidRequestError(
            "SPIFFE ID",
            spiffe_id,
            f"belongs to trust domain {parsed.trust_domain!r}, but this CA signs only for "
            f"{trust_domain!r}",
        )
    return spiffe_id


def check_dns_name(name: str) -> str:
    """Return the DNS name if it is a valid ASCII host name (a leading "*." is allowed)."""
    labels = name.split(".")
    if labels and labels[0] == "*":
        labels = labels[1:]
    valid = (
        0 < len(name) <= _MAX_DNS_NAME_BYTES
        and name.isascii()
        and bool(labels)
        and all(_DNS_LABEL.fullmatch(label) for label in labels)
    )
    if not valid:
        raise SvidRequestError(
            "DNS name",
            name,
            "use an ASCII host name such as api.example.org (IDNs in A-label form)",
        )
    return name
