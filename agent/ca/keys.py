"""Private key types, generation and encodings used by the CA.

Call ``check_key_type`` on a configured key type before use and
``generate_private_key`` off the event loop (RSA generation takes up to seconds).
Only ECDSA P-256/P-384 and RSA of at least 2048 bits exist here.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from agent.ca.errors import UnsupportedAlgorithmError, UnsupportedKeyTypeError

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

KEY_TYPES: tuple[str, ...] = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")
JWT_ALGORITHMS: tuple[str, ...] = ("ES256", "RS256", "PS256")

# The JWT signing key type that goes with each supported JWT algorithm.
_JWT_KEY_TYPES: dict[str, str] = {"ES256": "ec-p256", "RS256": "rsa-2048", "PS256": "rsa-2048"}
_RSA_PUBLIC_EXPONENT = 65537


def check_key_type(key_type: str) -> str:
    """Return ``key_type`` if the CA can generate it, else raise UnsupportedKeyTypeError."""
    if key_type not in KEY_TYPES:
        raise UnsupportedKeyTypeError(key_type, KEY_TYPES)
    return key_type


def check_jwt_algorithm(algorithm: str) -> str:
    """Return ``algorithm`` if the CA signs JWT-SVIDs with it, else raise."""
    if algorithm not in JWT_ALGORITHMS:
        raise UnsupportedAlgorithmError(algorithm, JWT_ALGORITHMS)
    return algorithm


def jwt_key_type(algorithm: str) -> str:
    """Return the key type the CA generates for a JWT signing algorithm."""
    return _JWT_KEY_TYPES[check_jwt_algorithm(algorithm)]


def generate_private_key(key_type: str) -> PrivateKey:
    """Generate a fresh private key of ``key_type``. Blocking: run it in a thread."""
    check_key_type(key_type)
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    bits = int(key_type.removeprefix("rsa-"))
    return rsa.generate_private_key(public_exponent=_RSA_PUBLIC_EXPONENT, key_size=bits)


def key_type_of(key: PrivateKey | PublicKey) -> str:
    """Return the key type name of an existing key, or raise for an unsupported one."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        name = {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}.get(key.curve.name)
        if name is None:
            raise UnsupportedKeyTypeError(f"ec-{key.curve.name}", KEY_TYPES)
        return name
    name = f"rsa-{key.key_size}"
    if key.key_size < 2048:
        raise UnsupportedKeyTypeError(name, KEY_TYPES)
    return name


def signature_hash(signer: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    """Return the certificate signature hash that matches the signer's strength."""
    if isinstance(signer, ec.EllipticCurvePrivateKey) and signer.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def private_key_der(key: PrivateKey) -> bytes:
    """Encode a private key as unencrypted PKCS#8 DER."""
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_key_pem(key: PrivateKey) -> bytes:
    """Encode a private key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_jwk(key: PrivateKey, kid: str, algorithm: str) -> dict[str, Any]:
    """Return the public JWK of ``key`` with its kid and alg.

    PyJWT's encoder writes EC coordinates at the full curve length, as the JWT-SVID
    standard requires.
    """
    public = key.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    jwk.update({"kid": kid, "alg": algorithm, "use": "sig"})
    return jwk
