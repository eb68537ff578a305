"""JWT-SVIDs: minting, the JWKS, key rotation and the validator's refusals."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.ca import Authority, CASettings, JwtSvidError, SvidRequestError
from agent.ca.jwtkeys import JwtKey, JwtKeyRing, jwk_thumbprint, new_jwt_key
from agent.ca.jwtsvid import validate_jwt_svid
from agent.ca.keys import public_jwk

TD = "example.org"
WEB = "spiffe://example.org/web"
LEEWAY = 30


@pytest.fixture
async def authority(tmp_path: Path) -> AsyncIterator[Authority]:
    ca = Authority(CASettings(trust_domain=TD, state_dir=tmp_path))
    await ca.start()
    yield ca
    await ca.close()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwks_keys(ca: Authority) -> list[dict[str, Any]]:
    keys: list[dict[str, Any]] = json.loads(ca.jwt_bundle().jwks)["keys"]
    return keys


async def test_jwt_header_and_claims(authority: Authority) -> None:
    before = int(time.time())
    token = await authority.mint_jwt_svid(WEB, ["db", "cache"])
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert header["alg"] == "ES256"
    assert header["typ"] == "JWT"
    assert header["kid"] in {key["kid"] for key in jwks_keys(authority)}
    assert set(claims) == {"sub", "aud", "exp", "iat"}
    assert claims["sub"] == WEB
    assert claims["aud"] == ["db", "cache"]
    assert before <= claims["iat"] <= int(time.time())
    assert claims["exp"] - claims["iat"] == 300


async def test_jwt_validates(authority: Authority) -> None:
    token = await authority.mint_jwt_svid(WEB, ["db", "cache"])
    for audience in ("db", "cache"):
        spiffe_id, claims = authority.validate_jwt_svid(token, audience)
        assert spiffe_id == WEB
        assert claims["aud"] == ["db", "cache"]


async def test_pyjwt_verifies_with_jwks(authority: Authority) -> None:
    token = await authority.mint_jwt_svid(WEB, ["db"])
    kid = jwt.get_unverified_header(token)["kid"]
    jwk_set = jwt.PyJWKSet.from_json(authority.jwt_bundle().jwks.decode())
    claims = jwt.decode(token, jwk_set[kid].key, algorithms=["ES256"], audience="db")
    assert claims["sub"] == WEB
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, jwk_set[kid].key, algorithms=["ES256"], audience="other")


async def test_jwks_entries(authority: Authority) -> None:
    keys = jwks_keys(authority)
    assert len(keys) == 2  # the active key and the pre-published next key
    assert len({key["kid"] for key in keys}) == 2
    for key in keys:
        assert key["kty"] == "EC"
        assert key["crv"] == "P-256"
        assert key["alg"] == "ES256"
        assert "d" not in key
        assert len(unb64url(key["x"])) == 32
        assert len(unb64url(key["y"])) == 32
        assert key["kid"] == jwk_thumbprint(key)
    assert authority.jwt_bundle().trust_domain == TD
    assert authority.jwt_bundle().version == 1


def test_jwk_pads_short_coordinate() -> None:
    # About one P-256 key in 256 has an x coordinate with a leading zero byte; its JWK
    # must still carry 32 bytes.
    for _ in range(5000):
        key = ec.generate_private_key(ec.SECP256R1())
        if key.public_key().public_numbers().x < 2**248:
            break
    else:
        pytest.fail("no P-256 key with a short x coordinate in 5000 tries")
    jwk = public_jwk(key, kid="k", algorithm="ES256")
    assert len(unb64url(jwk["x"])) == 32
    assert unb64url(jwk["x"])[0] == 0


@pytest.mark.parametrize("algorithm", ["RS256", "PS256"])
async def test_rsa_algorithms(tmp_path: Path, algorithm: str) -> None:
    ca = Authority(CASettings(trust_domain=TD, state_dir=tmp_path, jwt_algorithm=algorithm))
    await ca.start()
    try:
        token = await ca.mint_jwt_svid(WEB, ["db"])
        assert jwt.get_unverified_header(token)["alg"] == algorithm
        assert ca.validate_jwt_svid(token, "db")[0] == WEB
        keys = jwks_keys(ca)
    finally:
        await ca.close()
    assert {key["kty"] for key in keys} == {"RSA"}
    assert {key["alg"] for key in keys} == {algorithm}
    kid = jwt.get_unverified_header(token)["kid"]
    jwk_set = jwt.PyJWKSet.from_json(json.dumps({"keys": keys}))
    assert jwt.decode(token, jwk_set[kid].key, algorithms=[algorithm], audience="db")["sub"] == WEB


@pytest.mark.parametrize(
    "audiences", [[], "db", ["db", ""]], ids=["empty-list", "bare-string", "empty-audience"]
)
async def test_mint_rejects_audiences(authority: Authority, audiences: Any) -> None:
    with pytest.raises(SvidRequestError):
        await authority.mint_jwt_svid(WEB, audiences)


async def test_mint_rejects_foreign_id(authority: Authority) -> None:
    with pytest.raises(SvidRequestError) as caught:
        await authority.mint_jwt_svid("spiffe://other.org/web", ["db"])
    assert caught.value.field == "SPIFFE ID"


# Tokens crafted around one known key, checked with the pure validator.

KEY = new_jwt_key("ES256")


def find_key(kid: str) -> JwtKey | None:
    return KEY if kid == KEY.kid else None


def signed(claims: dict[str, Any], **header: Any) -> str:
    headers = {"kid": KEY.kid, "typ": "JWT", **header}
    return jwt.encode(claims, KEY.private_key, algorithm="ES256", headers=headers)


def claims_for(now: int, **changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {"sub": WEB, "aud": ["db"], "exp": now + 300, "iat": now}
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def validate(token: str, audience: str = "db", now: float | None = None) -> str:
    spiffe_id, _ = validate_jwt_svid(
        token,
        audience,
        find_key=find_key,
        trust_domains={TD},
        now=time.time() if now is None else now,
        leeway=LEEWAY,
    )
    return spiffe_id


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return f"{b64url_json(header)}.{b64url_json(claims)}.{b64url(signature)}"


def hs256_forgery(now: int) -> str:
    # The classic algorithm confusion: HMAC keyed with the public key's PEM encoding.
    secret = KEY.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head = f"{b64url_json({'alg': 'HS256', 'kid': KEY.kid, 'typ': 'JWT'})}"
    body = b64url_json(claims_for(now))
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(mac)}"


def with_header(token: str, **changes: Any) -> str:
    head, body, signature = token.split(".")
    header = {**json.loads(unb64url(head)), **changes}
    return f"{b64url_json(header)}.{body}.{signature}"


def tampered(now: int) -> str:
    head, _, signature = signed(claims_for(now)).split(".")
    body = b64url_json(claims_for(now, sub="spiffe://example.org/admin"))
    return f"{head}.{body}.{signature}"


NOW = int(time.time())

REFUSALS = [
    ("tampered-claims", tampered(NOW), "db", "bad_signature"),
    (
        "alg-none",
        unsigned({"alg": "none", "kid": KEY.kid}, claims_for(NOW)),
        "db",
        "unsupported_algorithm",
    ),
    ("hs256", hs256_forgery(NOW), "db", "unsupported_algorithm"),
    (
        "alg-swapped",
        with_header(signed(claims_for(NOW)), alg="ES384"),
        "db",
        "unsupported_algorithm",
    ),
    ("unknown-kid", signed(claims_for(NOW), kid="nope"), "db", "unknown_kid"),
    (
        "no-kid",
        jwt.encode(claims_for(NOW), KEY.private_key, algorithm="ES256"),
        "db",
        "unknown_kid",
    ),
    ("wrong-audience", signed(claims_for(NOW)), "other", "audience_mismatch"),
    ("empty-audience", signed(claims_for(NOW)), "", "missing_audience"),
    ("garbage", "not.a.token", "db", "malformed"),
    ("bad-typ", signed(claims_for(NOW), typ="at+jwt"), "db", "malformed"),
    ("missing-exp", signed(claims_for(NOW, exp=None)), "db", "malformed"),
    ("missing-aud", signed(claims_for(NOW, aud=None)), "db", "malformed"),
    ("string-exp", signed(claims_for(NOW, exp="soon")), "db", "malformed"),
    ("expired", signed(claims_for(NOW, exp=NOW - LEEWAY - 60)), "db", "expired"),
    ("not-yet-valid", signed(claims_for(NOW, nbf=NOW + LEEWAY + 60)), "db", "not_yet_valid"),
    (
        "foreign-subject",
        signed(claims_for(NOW, sub="spiffe://other.org/web")),
        "db",
        "invalid_subject",
    ),
    (
        "subject-no-path",
        signed(claims_for(NOW, sub="spiffe://example.org")),
        "db",
        "invalid_subject",
    ),
    ("subject-not-spiffe", signed(claims_for(NOW, sub="web")), "db", "invalid_subject"),
]


@pytest.mark.parametrize(
    ("token", "audience", "reason"),
    [case[1:] for case in REFUSALS],
    ids=[case[0] for case in REFUSALS],
)
def test_validator_refuses(token: str, audience: str, reason: str) -> None:
    with pytest.raises(JwtSvidError) as caught:
        validate(token, audience, now=NOW)
    assert caught.value.reason == reason
    assert token not in str(caught.value)


def test_validator_accepts_string_aud() -> None:
    assert validate(signed(claims_for(NOW, aud="db")), now=NOW) == WEB


def test_validator_exp_leeway() -> None:
    token = signed(claims_for(NOW, exp=NOW))
    assert validate(token, now=NOW + LEEWAY - 1) == WEB
    with pytest.raises(JwtSvidError) as caught:
        validate(token, now=NOW + LEEWAY + 1)
    assert caught.value.reason == "expired"


async def test_authority_refuses_forgeries(authority: Authority) -> None:
    token = await authority.mint_jwt_svid(WEB, ["db"])
    head, body, signature = token.split(".")
    header = json.loads(unb64url(head))
    cases = {
        "bad_signature": f"{head}.{b64url_json(claims_for(NOW, sub=WEB + 'x'))}.{signature}",
        "unsupported_algorithm": unsigned({**header, "alg": "none"}, json.loads(unb64url(body))),
        "audience_mismatch": token,
    }
    for reason, forged in cases.items():
        with pytest.raises(JwtSvidError) as caught:
            authority.validate_jwt_svid(forged, "db" if reason != "audience_mismatch" else "x")
        assert caught.value.reason == reason


async def test_token_not_logged(authority: Authority, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        token = await authority.mint_jwt_svid(WEB, ["db"])
        authority.validate_jwt_svid(token, "db")
        with pytest.raises(JwtSvidError):
            authority.validate_jwt_svid(token, "other")
    assert caplog.records, "minting should log at debug level"
    signature = token.split(".")[2]
    assert all(signature not in record.getMessage() for record in caplog.records)


def test_ring_keeps_retired_key_until_tokens_expire() -> None:
    first, second, third = (new_jwt_key("ES256") for _ in range(3))
    ring = JwtKeyRing(first, second, retention=330.0, now=0.0)
    assert [key.kid for key in ring.published()] == [first.kid, second.kid]

    ring.rotate(third, now=1000.0)
    assert ring.active is second
    assert ring.find(first.kid) is first
    assert ring.next_removal() == 1330.0
    assert not ring.prune(1329.0)
    assert first.kid in ring.jwks().decode()

    assert ring.prune(1331.0)
    assert ring.find(first.kid) is None
    assert [key.kid for key in ring.published()] == [second.kid, third.kid]


async def test_key_rotation(tmp_path: Path) -> None:
    settings = CASettings(trust_domain=TD, state_dir=tmp_path, jwt_key_rotation=1)
    ca = Authority(settings)
    await ca.start()
    try:
        before = await ca.mint_jwt_svid(WEB, ["db"])
        first_kids = [key["kid"] for key in jwks_keys(ca)]
        seen = ca.notifier.version
        await asyncio.wait_for(ca.notifier.wait_for_change(seen), timeout=5)
        bundle = ca.jwt_bundle()
        after = await ca.mint_jwt_svid(WEB, ["db"])
        assert bundle.version == 2
        kids = [key["kid"] for key in json.loads(bundle.jwks)["keys"]]
        old_kid = jwt.get_unverified_header(before)["kid"]
        new_kid = jwt.get_unverified_header(after)["kid"]
        assert old_kid != new_kid
        # The new key was published one rotation before it signed anything.
        assert new_kid in first_kids
        # The retired key stays until every token it signed has expired.
        assert old_kid in kids
        assert ca.validate_jwt_svid(before, "db")[0] == WEB
        assert ca.validate_jwt_svid(after, "db")[0] == WEB
    finally:
        await ca.close()
