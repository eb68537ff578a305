"""JWT signing keys: rotation, retention and the published JWKS.

A JwtKeyRing contains three kinds of keys. The *active* key signs new JWT-SVIDs. The
*next* key is already published, one rotation period before it signs anything, so
that validators holding a cached JWKS know it when it becomes active. *Retired* keys
stay published until every token they signed has expired (retirement time plus the
JWT-SVID TTL plus the validation leeway). The ring is not thread-safe: use it from the
event loop, and generate keys in a thread (``new_jwt_key``).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from agent.ca.keys import PrivateKey, generate_private_key, jwt_key_type, public_jwk


@dataclass(frozen=True)
class JwtBundle:
    """The trust domain's JWT signing keys as a JWKS document, with a version."""

    trust_domain: str
    jwks: bytes
    version: int


@dataclass(frozen=True)
class JwtKey:
    """One JWT signing key with its kid (RFC 7638 thumbprint) and algorithm."""

    kid: str
    algorithm: str
    private_key: PrivateKey = field(repr=False)
    jwk: dict[str, Any] = field(repr=False)


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """Return the RFC 7638 SHA-256 thumbprint of a public JWK, base64url without padding."""
    members = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("e", "kty", "n")
    canonical = json.dumps({name: jwk[name] for name in members}, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def new_jwt_key(algorithm: str) -> JwtKey:
    """Generate a JWT signing key for ``algorithm``. Blocking: run it in a thread."""
    private_key = generate_private_key(jwt_key_type(algorithm))
    unnamed = public_jwk(private_key, kid="", algorithm=algorithm)
    kid = jwk_thumbprint(unnamed)
    jwk = {**unnamed, "kid": kid}
    return JwtKey(kid=kid, algorithm=algorithm, private_key=private_key, jwk=jwk)


@dataclass
class _Retired:
    key: JwtKey
    remove_at: float


class JwtKeyRing:
    """Active, next and retired JWT signing keys.

    ``retention`` is how long, in seconds, a retired key stays published: the longest
    JWT-SVID lifetime plus the validation leeway. Times are POSIX seconds.
    """

    def __init__(self, active: JwtKey, upcoming: JwtKey, retention: float, now: float) -> None:
        self.active = active
        self.upcoming = upcoming
        self.activated_at = now
        self._retention = retention
        self._retired: list[_Retired] = []

    def rotate(self, new_upcoming: JwtKey, now: float) -> None:
        """Retire the active key, activate the published next key, publish ``new_upcoming``."""
        self._retired.append(_Retired(self.active, now + self._retention))
        self.active = self.upcoming
        self.upcoming = new_upcoming
        self.activated_at = now

    def prune(self, now: float) -> bool:
        """Drop retired keys whose tokens have all expired; return True if any went."""
        kept = [entry for entry in self._retired if entry.remove_at > now]
        changed = len(kept) != len(self._retired)
        self._retired = kept
        return changed

    def next_removal(self) -> float | None:
        """Return when the next retired key leaves the bundle, or None if none is retired."""
        return min((entry.remove_at for entry in self._retired), default=None)

    def published(self) -> tuple[JwtKey, ...]:
        """Return every key in the bundle: active, next, then retired keys."""
        return (self.active, self.upcoming, *(entry.key for entry in self._retired))

    def find(self, kid: str) -> JwtKey | None:
        """Return the published key with ``kid``, or None."""
        for key in self.published():
            if key.kid == kid:
                return key
        return None

    def jwks(self) -> bytes:
        """Return the published public keys as a JWKS JSON document."""
        document = {"keys": [key.jwk for key in self.published()]}
        return json.dumps(document, separators=(",", ":")).encode()
