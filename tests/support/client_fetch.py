"""A workload that uses py-spiffe as an application would; the tests run it as a child.

Usage: ``python client_fetch.py x509`` or ``python client_fetch.py jwt AUDIENCE
WRONG_AUDIENCE``. The socket comes from SPIFFE_ENDPOINT_SOCKET. Prints one JSON object
on stdout: the fetched material, or ``{"error": ...}`` with py-spiffe's message (which
contains the gRPC status and details). It never imports agent._proto, since py-spiffe
registers the same message names in the default protobuf pool.
"""

from __future__ import annotations

import json
import sys

from cryptography.hazmat.primitives import serialization
from spiffe import WorkloadApiClient
from spiffe.errors import PySpiffeError

TIMEOUT_SECONDS = 20.0


def pem(cert: object) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()  # type: ignore[attr-defined]


def fetch_x509(client: WorkloadApiClient) -> dict[str, object]:
    context = client.fetch_x509_context(timeout=TIMEOUT_SECONDS)
    svid = context.default_svid
    bundles = {
        str(bundle.trust_domain): [pem(cert) for cert in bundle.x509_authorities]
        for bundle in context.x509_bundle_set.bundles
    }
    key_pem = svid.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "spiffe_id": str(svid.spiffe_id),
        "chain": [pem(cert) for cert in svid.cert_chain],
        "key": key_pem,
        "bundles": bundles,
        "svid_count": len(context.x509_svids),
    }


def fetch_jwt(client: WorkloadApiClient, audience: str, wrong: str) -> dict[str, object]:
    svid = client.fetch_jwt_svid(audience={audience}, timeout=TIMEOUT_SECONDS)
    validated = client.validate_jwt_svid(svid.token, audience, timeout=TIMEOUT_SECONDS)
    result: dict[str, object] = {
        "spiffe_id": str(svid.spiffe_id),
        "token": svid.token,
        "audience": sorted(svid.audience),
        "validated_spiffe_id": str(validated.spiffe_id),
    }
    try:
        client.validate_jwt_svid(svid.token, wrong, timeout=TIMEOUT_SECONDS)
        result["wrong_audience"] = "accepted"
    except PySpiffeError as error:
        result["wrong_audience"] = str(error)
    bundles = client.fetch_jwt_bundles(timeout=TIMEOUT_SECONDS)
    result["jwt_bundle_trust_domains"] = sorted(str(b.trust_domain) for b in bundles.bundles)
    return result


def main() -> int:
    client = WorkloadApiClient()
    try:
        if sys.argv[1] == "x509":
            result = fetch_x509(client)
        else:
            result = fetch_jwt(client, sys.argv[2], sys.argv[3])
    except PySpiffeError as error:
        result = {"error": str(error)}
    finally:
        client.close()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
