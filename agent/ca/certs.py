"""Build the CA certificates: a self-signed root and per-node intermediates.

``build_root`` and ``build_intermediate`` sign with keys from agent.ca.keys. Both are
CPU-bound: async callers run them in a thread. Leaf certificates live in
agent.ca.x509svid.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from cryptography import x509
from cryptography.x509.oid import NameOID

from agent.ca.errors import CAError
from agent.ca.ids import check_trust_domain
from agent.ca.keys import PrivateKey, PublicKey, signature_hash

ORGANIZATION = "attest-agent"
# CA certificates start this much before their creation time so that a node whose
# clock is slightly behind still accepts them.
CA_BACKDATE = timedelta(minutes=5)
_MAX_COMMON_NAME = 64

_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def _ca_name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            # NOTE: X.520 limits a common name to 64 characters, so long node names are
            # cut; certificates stay distinct through their serial and key identifier.
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:_MAX_COMMON_NAME]),
        ]
    )


def _trust_domain_san(trust_domain: str) -> x509.SubjectAlternativeName:
    # A CA certificate may carry the trust domain's SPIFFE ID, which has no path.
    return x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")])


def authority_key_identifier(
    issuer: x509.Certificate, issuer_key: PrivateKey
) -> x509.AuthorityKeyIdentifier:
    """Return the AKI for certificates signed by ``issuer``, matching its SKI if it has one."""
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def build_root(
    trust_domain: str, key: PrivateKey, lifetime: timedelta, now: datetime
) -> x509.Certificate:
    """Create a self-signed root CA certificate for ``trust_domain``.

    The root carries a critical name constraint that permits only URI SANs whose host
    is the trust domain, so certificates under it cannot claim another trust domain.
    DNS SANs are not constrained.
    """
    check_trust_domain(trust_domain)
    name = _ca_name(f"{trust_domain} root CA")
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CA_BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(_trust_domain_san(trust_domain), critical=False)
        .add_extension(
            x509.NameConstraints(
                permitted_subtrees=[x509.UniformResourceIdentifier(trust_domain)],
                excluded_subtrees=None,
            ),
            critical=True,
        )
    )
    return builder.sign(key, signature_hash(key))


def build_intermediate(
    trust_domain: str,
    node: str,
    *,
    public_key: PublicKey,
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    lifetime: timedelta,
    now: datetime,
) -> x509.Certificate:
    """Create a node intermediate CA certificate signed by ``issuer``.

    The intermediate may sign only leaves (path length 0). Its NotAfter is capped at the
    issuer's NotAfter; callers compare ``not_valid_after_utc`` to detect the cap.
    """
    check_trust_domain(trust_domain)
    if not node:
        raise CAError("node name is empty: pass the node's name, for example its hostname")
    not_after = min(now + lifetime, issuer.not_valid_after_utc)
    if not_after <= now:
        raise CAError(
            f"the root CA expired at {issuer.not_valid_after_utc.isoformat()}: "
            "create a new root with attest-agent ca init"
        )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_ca_name(f"{node} intermediate CA"))
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - CA_BACKDATE, issuer.not_valid_before_utc))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(authority_key_identifier(issuer, issuer_key), critical=False)
        .add_extension(_trust_domain_san(trust_domain), critical=False)
    )
    return builder.sign(issuer_key, signature_hash(issuer_key))
