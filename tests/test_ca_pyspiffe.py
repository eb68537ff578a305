"""py-spiffe, a real SPIFFE client library, accepts what the CA mints.

py-spiffe runs in a child process (tests/support/pyspiffe_ca_check.py) because it
registers Workload API protobuf names that clash with agent._proto in one process.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.ca import Authority, CASettings

TD = "example.org"
WEB = "spiffe://example.org/ns/prod/sa/web"
CHECK_SCRIPT = Path(__file__).parent / "support" / "pyspiffe_ca_check.py"
VENV_PYTHON = Path("/opt/venv/bin/python")


def run_pyspiffe(tmp_path: Path, data: dict[str, Any]) -> dict[str, Any]:
    python = VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable)
    request = tmp_path / "pyspiffe-input.json"
    request.write_text(json.dumps(data))
    result = subprocess.run(
        [str(python), str(CHECK_SCRIPT), str(request)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    output: dict[str, Any] = json.loads(result.stdout)
    return output


@pytest.mark.parametrize(
    ("key_type", "jwt_algorithm"),
    [("ec-p256", "ES256"), ("rsa-2048", "RS256"), ("ec-p384", "PS256")],
    ids=["ec-p256-es256", "rsa-2048-rs256", "ec-p384-ps256"],
)
async def test_pyspiffe_accepts_svids(tmp_path: Path, key_type: str, jwt_algorithm: str) -> None:
    settings = CASettings(
        trust_domain=TD,
        state_dir=tmp_path / "state",
        svid_key_type=key_type,
        jwt_algorithm=jwt_algorithm,
    )
    ca = Authority(settings)
    await ca.start()
    try:
        svid = await ca.get_x509_svid(WEB, dns_names=["web.prod.example.org"])
        token = await ca.mint_jwt_svid(WEB, ["db", "cache"])
        data = {
            "chain_der": base64.b64encode(svid.chain_der).decode(),
            "key_der": base64.b64encode(svid.key_der).decode(),
            "bundle_der": base64.b64encode(ca.x509_bundle().der).decode(),
            "jwks": base64.b64encode(ca.jwt_bundle().jwks).decode(),
            "token": token,
            "trust_domain": TD,
            "audience": "db",
            "wrong_audience": "payments",
        }
    finally:
        await ca.close()

    result = run_pyspiffe(tmp_path, data)

    x509_result = result["x509"]
    assert "error" not in x509_result, x509_result
    assert x509_result["spiffe_id"] == WEB
    assert x509_result["chain_length"] == 2
    assert x509_result["bundle_trust_domain"] == TD
    assert x509_result["bundle_size"] == 1
    assert x509_result["anchored"] is True
    assert x509_result["key_matches_leaf"] is True

    jwt_result = result["jwt"]
    assert "error" not in jwt_result, jwt_result
    assert jwt_result["spiffe_id"] == WEB
    assert jwt_result["audience"] == ["cache", "db"]
    assert jwt_result["bundle_keys"] == 2

    rejected = result["jwt_wrong_audience"]
    assert rejected.get("error") == "InvalidTokenError", rejected
    assert "audience" in rejected["message"].lower()
