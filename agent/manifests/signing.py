"""Signing manifests, for ``attest-agent manifest sign``.

``sign_manifest`` produces the same detached signature as the openssl command line
(see agent.manifests.signature), so a manifest signed here verifies with openssl and a
manifest signed by openssl verifies in the agent. ``write_signature`` stores it
atomically beside the manifest.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from agent.manifests.errors import ManifestError, TrustedKeyError
from agent.manifests.signature import MAX_KEY_FILE_BYTES, check_key_strength

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
_SIGNING_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)


class SigningKeyError(ManifestError):
    """A private key file that cannot sign manifests.

    Reasons: unreadable, invalid_pem, encrypted_key, rsa_key_too_small,
    unsupported_curve, unsupported_key_type.
    """

    def __init__(self, file: str, reason: str, detail: str) -> None:
        super().__init__(file, reason, f"signing key {file} rejected: {detail}")


def load_signing_key(path: Path) -> SigningKey:
    """Load an unencrypted PEM private key of a type the agent accepts as trust anchor."""
    file = str(path)
    try:
        with path.open("rb") as stream:
            pem = stream.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as error:
        raise SigningKeyError(file, "unreadable", f"cannot read it ({error.strerror})") from error
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError as error:
        raise SigningKeyError(
            file, "encrypted_key",
            "the key is encrypted; decrypt it with 'openssl pkey -in KEY -out PLAIN'",
        ) from error
    except (ValueError, UnsupportedAlgorithm) as error:
        raise SigningKeyError(
            file, "invalid_pem", f"it is not a PEM private key ({error})"
        ) from error
    # The public half must pass the trust-anchor rules, or no agent would accept the signature.
    try:
        check_key_strength(key.public_key(), file)
    except TrustedKeyError as error:
        raise SigningKeyError(file, error.reason, error.detail) from error
    if not isinstance(key, _SIGNING_KEY_TYPES):
        raise SigningKeyError(file, "unsupported_key_type", f"{type(key).__name__} cannot sign")
    return key


def sign_manifest(data: bytes, key: SigningKey) -> bytes:
    """Sign ``data`` as ``openssl dgst -sha256 -sign`` (RSA, ECDSA) or pkeyutl (Ed25519)."""
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    return key.sign(data)


def write_signature(path: Path, signature: bytes) -> None:
    """Write ``signature`` to ``path`` through a temporary file and a rename."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(signature)
            stream.flush()
            os.fsync(stream.fileno())
        # A signature is public; readable by all like the manifest it belongs to.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
