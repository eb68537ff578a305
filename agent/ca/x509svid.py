"""X.509-SVIDs and the X.509 bundle.

``mint_x509_svid`` builds a leaf certificate by the SPIFFE X509-SVID standard and
returns it with its chain and fresh key. It is CPU-bound (key generation, signing):
async callers run it in a thread. Callers check the SPIFFE ID and DNS names first
(agent.ca.ids); this module trusts its inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.ca.certs import ORGANIZATION, authority_key_identifier
from agent.ca.keys import generate_private_key, private_key_der, private_key_pem, signature_hash
from agent.ca.material import CAMaterial


@dataclass(frozen=True)
class X509Svid:
    """A minted X.509-SVID.

    ``chain`` is the leaf followed by the intermediate(s) and never contains the root.
    ``chain_der`` concatenates their DER encodings and ``chain_pem`` their PEM blocks;
    ``key_der`` and ``key_pem`` are the unencrypted PKCS#8 private key.
    """

    spiffe_id: str
    chain: tuple[x509.Certificate, ...]
    chain_der: bytes
    chain_pem: bytes
    key_der: bytes
    key_pem: bytes
    not_before: datetime
    not_after: datetime
    serial: int
    hint: str

    def __repr__(self) -> str:
        # The default repr would print the private key.
        return (
            f"X509Svid(spiffe_id={self.spiffe_id!r}, serial={self.serial:#x}, "
            f"not_after={self.not_after.isoformat()})"
        )


@dataclass(frozen=True)
class X509Bundle:
    """The trust domain's root CA certificates and a version that grows on change."""

    trust_domain: str
    certificates: tuple[x509.Certificate, ...]
    der: bytes
    pem: bytes
    version: int


def make_x509_bundle(
    trust_domain: str, roots: tuple[x509.Certificate, ...], version: int
) -> X509Bundle:
    """Build an X509Bundle with the DER and PEM encodings of ``roots``."""
    return X509Bundle(
        trust_domain=trust_domain,
        certificates=roots,
        der=b"".join(cert.public_bytes(serialization.Encoding.DER) for cert in roots),
        pem=b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in roots),
        version=version,
    )


def _leaf_key_usage(is_rsa: bool) -> x509.KeyUsage:
    # The X509-SVID standard requires digitalSignature and forbids keyCertSign and
    # cRLSign on leaves; RSA keys may also encipher keys (TLS 1.2 RSA key exchange).
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=is_rsa,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def mint_x509_svid(
    material: CAMaterial,
    spiffe_id: str,
    *,
    dns_names: Sequence[str],
    key_type: str,
    not_before: datetime,
    not_after: datetime,
    hint: str = "",
) -> X509Svid:
    """Generate a key and sign a leaf certificate for ``spiffe_id`` with ``material``.

    The caller computes the validity window (backdating and the cap at the
    intermediate's NotAfter). The serial is random with more than 64 bits of entropy.
    """
    key = generate_private_key(key_type)
    public = key.public_key()
    san = x509.SubjectAlternativeName(
        [x509.UniformResourceIdentifier(spiffe_id), *(x509.DNSName(n) for n in dns_names)]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)]))
        .issuer_name(material.cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(isinstance(key, rsa.RSAPrivateKey)), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        # RFC 5280 section 4.2.1.1 requires the AKI in every certificate a CA issues.
        .add_extension(authority_key_identifier(material.cert, material.key), critical=False)
    )
    leaf = builder.sign(material.key, signature_hash(material.key))
    chain = (leaf, *material.chain)
    return X509Svid(
        spiffe_id=spiffe_id,
        chain=chain,
        chain_der=b"".join(cert.public_bytes(serialization.Encoding.DER) for cert in chain),
        chain_pem=b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in chain),
        key_der=private_key_der(key),
        key_pem=private_key_pem(key),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        serial=leaf.serial_number,
        hint=hint,
    )


def validity_window(
    material: CAMaterial, now: datetime, ttl: int, backdate: int
) -> tuple[datetime, datetime, bool]:
    """Return (not_before, not_after, capped) for a leaf issued at ``now``.

    NotBefore is backdated by ``backdate`` seconds for clock skew, but not before the
    intermediate's own NotBefore; NotAfter is ``now + ttl`` capped at the intermediate's
    NotAfter, in which case ``capped`` is True.
    """
    requested = now + timedelta(seconds=ttl)
    not_after = min(requested, material.not_after)
    not_before = max(now - timedelta(seconds=backdate), material.cert.not_valid_before_utc)
    return not_before, not_after, not_after < requested
