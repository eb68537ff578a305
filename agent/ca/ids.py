"""SPIFFE ID and DNS name checks for what the CA puts into SVIDs.

Call ``check_trust_domain`` on configured trust domains, ``check_workload_id`` before
minting for a SPIFFE ID and ``check_dns_name`` for every DNS SAN. Each raises
SvidRequestError naming the value; nothing here touches the network.
"""

from __future__ import annotations

import re

from agent.ca.errors import SvidRequestError

# TODO: switch to agent.spiffeid once it exists, so that one parser decides validity.
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_SCHEME = "spiffe://"
_MAX_ID_BYTES = 2048
_MAX_TRUST_DOMAIN_BYTES = 255
_MAX_DNS_NAME_BYTES = 253


def check_trust_domain(trust_domain: str) -> str:
    """Return the trust domain name if it follows the SPIFFE ID standard's rules."""
    if not trust_domain or len(trust_domain.encode()) > _MAX_TRUST_DOMAIN_BYTES:
        raise SvidRequestError("trust domain", trust_domain, "must be 1 to 255 bytes long")
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise SvidRequestError(
            "trust domain",
            trust_domain,
            "use only lowercase letters, digits, '.', '-' and '_' (no scheme, port or path)",
        )
    return trust_domain


def split_spiffe_id(spiffe_id: str) -> tuple[str, str]:
    """Split a SPIFFE ID into (trust domain, path) after checking its syntax.

    The path is "" for a trust domain ID and otherwise starts with "/".
    """
    if len(spiffe_id.encode()) > _MAX_ID_BYTES:
        raise SvidRequestError("SPIFFE ID", spiffe_id, "is longer than 2048 bytes")
    if not spiffe_id.startswith(_SCHEME):
        raise SvidRequestError("SPIFFE ID", spiffe_id, "must start with spiffe://")
    rest = spiffe_id[len(_SCHEME) :]
    trust_domain, slash, path = rest.partition("/")
    check_trust_domain(trust_domain)
    if not slash:
        return trust_domain, ""
    for segment in path.split("/"):
        if segment in ("", ".", "..") or not _PATH_SEGMENT.fullmatch(segment):
            raise SvidRequestError(
                "SPIFFE ID",
                spiffe_id,
                "path segments must be non-empty, not '.' or '..', and use only "
                "letters, digits, '.', '-' and '_'",
            )
    return trust_domain, "/" + path


def check_workload_id(spiffe_id: str, trust_domain: str) -> str:
    """Return the SPIFFE ID if it is a workload ID in ``trust_domain``.

    A workload ID needs a non-empty path; the X509-SVID standard forbids a bare trust
    domain ID in a leaf certificate.
    """
    id_domain, path = split_spiffe_id(spiffe_id)
    if id_domain != trust_domain:
        raise SvidRequestError(
            "SPIFFE ID",
            spiffe_id,
            f"belongs to trust domain {id_domain!r}, but this CA signs only for {trust_domain!r}",
        )
    if not path:
        raise SvidRequestError("SPIFFE ID", spiffe_id, "a workload SPIFFE ID needs a path")
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
