"""Check CA output with py-spiffe, in a process of its own.

py-spiffe registers the Workload API messages in the default protobuf pool, so it
must not share a process with agent._proto. Run it as
``python pyspiffe_ca_check.py INPUT.json``. The input contains base64 values:
chain_der, key_der, bundle_der, jwks, token, and plain strings trust_domain,
audience and wrong_audience. The script prints one JSON object with what py-spiffe
saw, or the class and message of the error it raised, for each check.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from spiffe import JwtBundle, JwtSvid, TrustDomain, X509Bundle, X509Svid


def _failure(error: Exception) -> dict[str, str]:
    return {"error": type(error).__name__, "message": str(error)}


def check_x509(data: dict[str, Any]) -> dict[str, Any]:
    try:
        svid = X509Svid.parse_raw(
            base64.b64decode(data["chain_der"]), base64.b64decode(data["key_der"])
        )
        bundle = X509Bundle.parse_raw(
            TrustDomain(data["trust_domain"]), base64.b64decode(data["bundle_der"])
        )
    except Exception as error:  # report any py-spiffe failure to the test
        return _failure(error)
    chain = svid.cert_chain
    authorities = list(bundle.x509_authorities)
    # The last chain certificate must be signed by a bundle authority.
    anchored = False
    for root in authorities:
        try:
            chain[-1].verify_directly_issued_by(root)
            anchored = True
        except (ValueError, TypeError, InvalidSignature):
            continue  # not this root: try the next one
    leaf_public = svid.leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_public = svid.private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "spiffe_id": str(svid.spiffe_id),
        "chain_length": len(chain),
        "bundle_trust_domain": str(bundle.trust_domain),
        "bundle_size": len(authorities),
        "anchored": anchored,
        "key_matches_leaf": leaf_public == key_public,
    }


def check_jwt(data: dict[str, Any], audience: str) -> dict[str, Any]:
    try:
        bundle = JwtBundle.parse(TrustDomain(data["trust_domain"]), base64.b64decode(data["jwks"]))
        svid = JwtSvid.parse_and_validate(data["token"], bundle, {audience})
    except Exception as error:  # report any py-spiffe failure to the test
        return _failure(error)
    return {
        "spiffe_id": str(svid.spiffe_id),
        "audience": sorted(svid.audience),
        "bundle_keys": len(bundle.jwt_authorities),
    }


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as stream:
        data = json.load(stream)
    result = {
        "x509": check_x509(data),
        "jwt": check_jwt(data, data["audience"]),
        "jwt_wrong_audience": check_jwt(data, data["wrong_audience"]),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
