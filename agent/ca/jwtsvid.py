"""Sign and validate JWT-SVIDs (SPIFFE JWT-SVID standard) with PyJWT.

``sign_jwt_svid`` and ``validate_jwt_svid`` are pure functions of their arguments and
the given time, so callers decide the clock. Validation raises JwtSvidError with a
``reason`` code; neither the error nor any log line contains the token. RSA signing
is slow: async callers run ``sign_jwt_svid`` in a thread.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import jwt
from jwt.types import Options

from agent.ca.errors import JwtSvidError, SvidRequestError
from agent.ca.ids import parse_workload_id
from agent.ca.jwtkeys import JwtKey

# Algorithms the JWT-SVID standard allows. Everything else, including "none" and the
# HMAC family (HS256, ...), is rejected before any key is looked up.
ALLOWED_ALGORITHMS: frozenset[str] = frozenset(
    {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"}
)
_ALLOWED_TYPES = ("JWT", "JOSE")


def sign_jwt_svid(key: JwtKey, spiffe_id: str, audiences: Sequence[str], ttl: int, now: int) -> str:
    """Return a compact JWS with claims sub, aud (a list), exp and iat."""
    claims = {"sub": spiffe_id, "aud": list(audiences), "exp": now + ttl, "iat": now}
    headers = {"kid": key.kid, "typ": "JWT"}
    return jwt.encode(claims, key.private_key, algorithm=key.algorithm, headers=headers)


def validate_jwt_svid(
    token: str,
    audience: str,
    *,
    find_key: Callable[[str], JwtKey | None],
    trust_domains: Collection[str],
    now: float,
    leeway: float,
) -> tuple[str, dict[str, Any]]:
    """Check a JWT-SVID and return (spiffe_id, claims).

    Order: header syntax, algorithm allow-list, kid lookup, the algorithm bound to
    that key, signature, audience, exp and nbf (with ``leeway`` seconds), then a
    subject that is a workload SPIFFE ID in one of ``trust_domains``.
    """
    if not audience:
        raise JwtSvidError("missing_audience", "an audience is required to validate a JWT-SVID")
    key, algorithm = _check_header(token, find_key)
    claims = _decode(token, key, algorithm, audience)
    _check_times(claims, now, leeway)
    return _check_subject(claims, trust_domains), claims


def _check_header(token: str, find_key: Callable[[str], JwtKey | None]) -> tuple[JwtKey, str]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as error:
        raise JwtSvidError("malformed", f"the token is not a compact JWS ({error})") from None
    algorithm = header.get("alg")
    if algorithm not in ALLOWED_ALGORITHMS:
        raise JwtSvidError(
            "unsupported_algorithm",
            f"alg {algorithm!r} is not allowed; use one of {', '.join(sorted(ALLOWED_ALGORITHMS))}",
        )
    typ = header.get("typ")
    if typ is not None and typ not in _ALLOWED_TYPES:
        raise JwtSvidError("malformed", f"typ {typ!r} is neither JWT nor JOSE")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise JwtSvidError("unknown_kid", "the header has no kid")
    key = find_key(kid)
    if key is None:
        raise JwtSvidError("unknown_kid", f"kid {kid!r} is not in the JWT bundle")
    # A key signs with exactly one algorithm, which closes RSA PKCS#1/PSS confusion.
    if algorithm != key.algorithm:
        raise JwtSvidError(
            "unsupported_algorithm",
            f"kid {kid!r} signs with {key.algorithm}, but the token says {algorithm}",
        )
    return key, algorithm


def _decode(token: str, key: JwtKey, algorithm: str, audience: str) -> dict[str, Any]:
    options: Options = {
        "require": ["sub", "aud", "exp"],
        # Times are checked by _check_times against the caller's clock.
        "verify_exp": False,
        "verify_nbf": False,
        "verify_iat": False,
    }
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key.private_key.public_key(),
            algorithms=[algorithm],
            audience=audience,
            options=options,
        )
    except jwt.InvalidSignatureError:
        raise JwtSvidError(
            "bad_signature", f"signature check with kid {key.kid!r} failed"
        ) from None
    except jwt.InvalidAudienceError:
        raise JwtSvidError(
            "audience_mismatch", f"audience {audience!r} is not in the token's aud claim"
        ) from None
    except jwt.InvalidTokenError as error:
        raise JwtSvidError("malformed", f"invalid claims ({error})") from None
    return claims


def _numeric(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JwtSvidError("malformed", f"claim {name} is not a number")
    return float(value)


def _check_times(claims: dict[str, Any], now: float, leeway: float) -> None:
    expires = _numeric(claims, "exp")
    if expires is not None and now > expires + leeway:
        raise JwtSvidError("expired", f"the token expired at {int(expires)} (now {int(now)})")
    not_before = _numeric(claims, "nbf")
    if not_before is not None and now < not_before - leeway:
        raise JwtSvidError("not_yet_valid", f"the token is not valid before {int(not_before)}")


def _check_subject(claims: dict[str, Any], trust_domains: Collection[str]) -> str:
    subject = claims.get("sub")
    if not isinstance(subject, str):
        raise JwtSvidError("invalid_subject", "claim sub is not a string")
    try:
        parsed = parse_workload_id(subject)
    except SvidRequestError as error:
        raise JwtSvidError("invalid_subject", error.detail) from None
    if parsed.trust_domain not in trust_domains:
        raise JwtSvidError("invalid_subject", f"trust domain {parsed.trust_domain!r} is not known")
    return subject
