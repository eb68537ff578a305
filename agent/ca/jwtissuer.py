"""JWT-SVID issuing for one trust domain: rotating keys, minting, validating, the JWKS.

Create a JwtIssuer with ``await JwtIssuer.create(...)``. Call ``rotate(now)`` when
``next_deadline()`` passes; it returns True when the published bundle changed, which
the Authority turns into a notification. Use it from one event loop: key generation
and RSA signing run in threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from agent.ca.errors import SvidRequestError
from agent.ca.jwtkeys import JwtBundle, JwtKeyRing, new_jwt_key
from agent.ca.jwtsvid import sign_jwt_svid, validate_jwt_svid
from agent.log import event

logger = logging.getLogger(__name__)

# Clock skew allowed when checking a JWT-SVID's exp and nbf, in seconds.
JWT_LEEWAY_SECONDS = 30


class JwtIssuer:
    """Signs JWT-SVIDs with the active key of a JwtKeyRing and publishes its JWKS.

    ``ttl`` is the JWT-SVID lifetime and ``rotation`` how long one key signs, both
    in seconds. Callers check SPIFFE IDs before ``mint``.
    """

    def __init__(
        self, trust_domain: str, algorithm: str, ttl: int, rotation: int, ring: JwtKeyRing
    ) -> None:
        self._trust_domain = trust_domain
        self._algorithm = algorithm
        self._ttl = ttl
        self._rotation = rotation
        self._ring = ring
        self._bundle = JwtBundle(trust_domain, ring.jwks(), version=1)

    @classmethod
    async def create(cls, trust_domain: str, algorithm: str, ttl: int, rotation: int) -> JwtIssuer:
        """Generate the active and the pre-published next key and return an issuer."""
        active, upcoming = await asyncio.gather(
            asyncio.to_thread(new_jwt_key, algorithm), asyncio.to_thread(new_jwt_key, algorithm)
        )
        # A retired key stays published while any token it signed may still pass
        # validation: the token lifetime plus the validation leeway.
        ring = JwtKeyRing(active, upcoming, ttl + JWT_LEEWAY_SECONDS, time.time())
        return cls(trust_domain, algorithm, ttl, rotation, ring)

    @property
    def bundle(self) -> JwtBundle:
        return self._bundle

    async def mint(self, spiffe_id: str, audiences: Sequence[str]) -> str:
        """Return a JWT-SVID for every audience in ``audiences`` (a non-empty list)."""
        if isinstance(audiences, str) or not audiences:
            raise SvidRequestError("audiences", audiences, "pass a non-empty list of audiences")
        for audience in audiences:
            if not isinstance(audience, str) or not audience:
                raise SvidRequestError("audience", audience, "audiences are non-empty strings")
        key = self._ring.active
        token = await asyncio.to_thread(
            sign_jwt_svid, key, spiffe_id, list(audiences), self._ttl, int(time.time())
        )
        event(logger, logging.DEBUG, "JWT-SVID minted", spiffe_id=spiffe_id, key=key.kid)
        return token

    def validate(self, token: str, audience: str) -> tuple[str, dict[str, Any]]:
        """Return (spiffe_id, claims) of a valid JWT-SVID or raise JwtSvidError."""
        return validate_jwt_svid(
            token,
            audience,
            find_key=self._ring.find,
            trust_domains={self._trust_domain},
            now=time.time(),
            leeway=JWT_LEEWAY_SECONDS,
        )

    def next_deadline(self) -> float:
        """Return the POSIX time of the next key rotation or retired-key removal."""
        rotation_at = self._ring.activated_at + self._rotation
        removal_at = self._ring.next_removal()
        return rotation_at if removal_at is None else min(rotation_at, removal_at)

    async def rotate(self, now: float) -> bool:
        """Drop expired retired keys and rotate when due; return True if the JWKS changed."""
        changed = self._ring.prune(now)
        if now >= self._ring.activated_at + self._rotation:
            upcoming = await asyncio.to_thread(new_jwt_key, self._algorithm)
            self._ring.rotate(upcoming, time.time())
            event(logger, logging.INFO, "JWT signing key rotated", key=self._ring.active.kid)
            changed = True
        if changed:
            version = self._bundle.version + 1
            self._bundle = JwtBundle(self._trust_domain, self._ring.jwks(), version)
        return changed
