"""Trusted keys and detached manifest signatures.

Call ``load_trusted_keys`` once at start with the PEM files from the configuration; it
raises TrustedKeyError for any key that cannot be a trust anchor, so the agent never
starts with a weaker set than configured. ``verify_signature`` checks a detached
signature over the exact bytes of a manifest and raises SignatureError unless one
trusted key verifies it.

Accepted signatures are those the openssl command line (3.x) produces:
RSA PKCS#1 v1.5 with SHA-256 and ECDSA (P-256 or P-384) with SHA-256 in DER form, both
from ``openssl dgst -sha256 -sign``, and Ed25519 from ``openssl pkeyutl -sign -rawin``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from agent.manifests.errors import SignatureError, TrustedKeyError

MIN_RSA_BITS = 2048
MAX_KEY_FILE_BYTES = 64 * 1024
SUPPORTED_CURVES: tuple[type[ec.EllipticCurve], ...] = (ec.SECP256R1, ec.SECP384R1)

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A public key that may sign manifests.

    ``fingerprint`` is the SHA-256 of the key's SubjectPublicKeyInfo DER, in lowercase
    hex, and ``algorithm`` a label such as ``rsa-2048``, ``ecdsa-p256`` or ``ed25519``.
    """

    path: str
    public_key: PublicKey
    fingerprint: str
    algorithm: str


def load_trusted_keys(paths: Sequence[Path]) -> list[TrustedKey]:
    """Load PEM public keys (or certificates) and check each is a usable trust anchor."""
    if not paths:
        raise TrustedKeyError(
            "(none)", "no_trusted_keys",
            "no trusted key files are configured, so no manifest could ever verify; "
            "list at least one PEM public key",
        )
    return [_load_trusted_key(Path(path)) for path in paths]


def verify_signature(
    data: bytes, signature: bytes, keys: Sequence[TrustedKey], *, file: str = "(data)"
) -> None:
    """Raise SignatureError unless one of ``keys`` verifies ``signature`` over ``data``."""
    if not signature:
        raise SignatureError(file, "bad_signature", "the signature file is empty")
    for key in keys:
        if _verifies(key.public_key, data, signature):
            return
    raise SignatureError(
        file, "bad_signature",
        f"the signature does not verify with any of the {len(keys)} trusted keys; "
        "sign the exact file bytes with a trusted key",
    )


def key_fingerprint(public_key: PublicKey) -> str:
    """Return the lowercase hex SHA-256 of the key's SubjectPublicKeyInfo DER."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def check_key_strength(public_key: object, file: str) -> tuple[PublicKey, str]:
    """Return the key and its algorithm label, or raise TrustedKeyError for a weak type."""
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise TrustedKeyError(
                file, "rsa_key_too_small",
                f"the RSA key has {public_key.key_size} bits, the minimum is {MIN_RSA_BITS}; "
                "generate a key of 2048 bits or more",
            )
        return public_key, f"rsa-{public_key.key_size}"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, SUPPORTED_CURVES):
            raise TrustedKeyError(
                file, "unsupported_curve",
                f"the EC key uses curve {public_key.curve.name}; use P-256 or P-384",
            )
        return public_key, "ecdsa-p" + str(public_key.curve.key_size)
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return public_key, "ed25519"
    raise TrustedKeyError(
        file, "unsupported_key_type",
        f"keys of type {type(public_key).__name__} are not supported; "
        "use RSA (2048 bits or more), ECDSA P-256/P-384 or Ed25519",
    )


def _load_trusted_key(path: Path) -> TrustedKey:
    file = str(path)
    try:
        with path.open("rb") as stream:
            pem = stream.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as error:
        raise TrustedKeyError(
            file, "unreadable", f"cannot read the key file ({error.strerror}); check the path"
        ) from error
    if len(pem) > MAX_KEY_FILE_BYTES:
        raise TrustedKeyError(
            file, "invalid_pem", f"the file is larger than {MAX_KEY_FILE_BYTES} bytes"
        )
    public_key, algorithm = check_key_strength(_decode_pem(pem, file), file)
    return TrustedKey(file, public_key, key_fingerprint(public_key), algorithm)


def _decode_pem(pem: bytes, file: str) -> object:
    try:
        if b"-----BEGIN CERTIFICATE-----" in pem:
            return x509.load_pem_x509_certificate(pem).public_key()
        return serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as error:
        raise TrustedKeyError(
            file, "invalid_pem",
            f"the file is not a PEM public key or certificate ({error}); "
            "export the public key with 'openssl pkey -in key.pem -pubout'",
        ) from error


def _verifies(public_key: PublicKey, data: bytes, signature: bytes) -> bool:
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        else:
            public_key.verify(signature, data)
    except InvalidSignature:
        return False
    return True
