"""Signing material: the intermediate certificate, its key, its chain and the roots.

Call ``load_material`` to read and check the three files an operator configures, or
``check_material`` on certificates already in memory. Both raise CAFileError (or
IntermediateExpiredError) and never return material the CA must not sign with.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from agent.ca.errors import CAFileError, IntermediateExpiredError, UnsupportedKeyTypeError
from agent.ca.files import read_certificates, read_private_key
from agent.ca.keys import PrivateKey, key_type_of


@dataclass(frozen=True)
class CAMaterial:
    """Checked signing material.

    ``cert`` signs the SVIDs with ``key``. ``intermediates`` are further CA
    certificates between ``cert`` and a root, in chain order. ``roots`` are the trust
    anchors published as the X.509 bundle. No root appears in ``cert`` or
    ``intermediates``.
    """

    cert: x509.Certificate
    key: PrivateKey
    intermediates: tuple[x509.Certificate, ...]
    roots: tuple[x509.Certificate, ...]

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """CA certificates that follow a leaf in an SVID chain."""
        return (self.cert, *self.intermediates)

    @property
    def not_after(self) -> datetime:
        return self.cert.not_valid_after_utc


def load_material(
    cert_path: Path, key_path: Path, bundle_path: Path, trust_domain: str, now: datetime
) -> CAMaterial:
    """Read the intermediate chain, its key and the root bundle, and check them."""
    chain = read_certificates(cert_path)
    key = read_private_key(key_path)
    roots = read_certificates(bundle_path)
    return check_material(chain, key, roots, trust_domain, now=now, source=cert_path)


def check_material(
    chain: tuple[x509.Certificate, ...],
    key: PrivateKey,
    roots: tuple[x509.Certificate, ...],
    trust_domain: str,
    *,
    now: datetime,
    source: Path,
) -> CAMaterial:
    """Check that ``chain[0]`` with ``key`` may sign SVIDs for ``trust_domain``.

    The key must match the certificate and be a supported type. Every chain
    certificate must be a CA with keyCertSign, signed by the next one, and the last
    by a root. The signing certificate must be valid now and name no other trust
    domain.
    Errors are CAFileError naming ``source``, the certificate file, or
    IntermediateExpiredError.
    """
    # A chain file may repeat the root; the SVID chain must never include it.
    chain = tuple(cert for cert in chain if cert not in roots)
    try:
        if not chain:
            chain = _signing_root(roots, key)
        cert = chain[0]
        _check_key_matches(cert, key)
        key_type_of(key)
        for ca_cert in chain:
            _check_is_ca(ca_cert)
        _check_signatures(chain, roots)
        _check_trust_domain(cert, trust_domain)
    except _InvalidMaterial as error:
        raise CAFileError(source, str(error)) from None
    except UnsupportedKeyTypeError as error:
        raise CAFileError(source, f"the private key is not supported: {error}") from error
    if now >= cert.not_valid_after_utc:
        raise IntermediateExpiredError(cert.not_valid_after_utc)
    if now < cert.not_valid_before_utc:
        raise CAFileError(
            source,
            f"the intermediate CA certificate is not valid before "
            f"{cert.not_valid_before_utc.isoformat()}: check the node clock",
        )
    return CAMaterial(cert=cert, key=key, intermediates=chain[1:], roots=roots)


class _InvalidMaterial(Exception):
    """Internal: one check failed; check_material turns it into CAFileError."""


def _signing_root(
    roots: tuple[x509.Certificate, ...], key: PrivateKey
) -> tuple[x509.Certificate, ...]:
    # The operator pointed the CA at a root itself: it signs leaves directly.
    for root in roots:
        if _public_der(root.public_key()) == _public_der(key.public_key()):
            return (root,)
    raise _InvalidMaterial("the file contains no CA certificate besides the bundle's roots")


def _public_der(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check_key_matches(cert: x509.Certificate, key: PrivateKey) -> None:
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise _InvalidMaterial(
            "the private key does not belong to the intermediate certificate: "
            "install the key that was issued with it"
        )


def _check_is_ca(cert: x509.Certificate) -> None:
    subject = cert.subject.rfc4514_string()
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise _InvalidMaterial(
            f"certificate {subject!r} lacks BasicConstraints or KeyUsage, so it is no CA"
        ) from None
    if not constraints.ca or not usage.key_cert_sign:
        raise _InvalidMaterial(f"certificate {subject!r} is not a CA with keyCertSign")


def _check_signatures(
    chain: tuple[x509.Certificate, ...], roots: tuple[x509.Certificate, ...]
) -> None:
    for child, parent in itertools.pairwise(chain):
        if not _issued_by(child, parent):
            raise _InvalidMaterial(
                f"certificate {child.subject.rfc4514_string()!r} is not signed by the next "
                "certificate in the chain file: list the chain from the intermediate upwards"
            )
    top = chain[-1]
    if top in roots:
        return
    if not any(_issued_by(top, root) for root in roots):
        raise _InvalidMaterial(
            f"certificate {top.subject.rfc4514_string()!r} is not signed by any root in "
            "the bundle: install the bundle of the root that issued the intermediate"
        )


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _check_trust_domain(cert: x509.Certificate, trust_domain: str) -> None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return
    expected = f"spiffe://{trust_domain}"
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://") and uri != expected:
            raise _InvalidMaterial(
                f"the intermediate CA certificate names {uri!r} but the agent's trust "
                f"domain is {expected!r}: set trust_domain to match the CA"
            )
