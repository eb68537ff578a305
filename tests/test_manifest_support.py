"""Helpers for the manifest tests: keys and signatures made by the openssl command line.

This module contains no tests. It carries the manifest tests' file prefix so that it
stays with them.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.attest.evidence import Evidence

TRUST_DOMAIN = "cluster.local"
POD_UID = "0f7c7d2a-3b1e-4c55-9d1e-6a2b8c9d0e1f"
OTHER_POD_UID = "11111111-2222-4333-8444-555555555555"
DIGEST = "a" * 64
OTHER_DIGEST = "b" * 64
CONTAINER_ID = "c" * 64

KEY_ALGORITHMS = {
    "rsa2048": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    "rsa1024": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
    "p256": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "p384": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
    "ed25519": ["-algorithm", "ED25519"],
    "x25519": ["-algorithm", "X25519"],
    "secp256k1": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:secp256k1"],
}


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class KeyPair:
    kind: str
    private: Path
    public: Path


def make_key(directory: Path, kind: str) -> KeyPair:
    """Generate a key pair with ``openssl genpkey`` and export its public key."""
    directory.mkdir(parents=True, exist_ok=True)
    private = directory / f"{kind}.key.pem"
    public = directory / f"{kind}.pub.pem"
    openssl("genpkey", *KEY_ALGORITHMS[kind], "-out", private)
    openssl("pkey", "-in", private, "-pubout", "-out", public)
    return KeyPair(kind, private, public)


def openssl_sign(key: KeyPair, file: Path, signature: Path | None = None) -> Path:
    """Sign ``file`` with the openssl commands that operators use for manifests."""
    out = signature or file.with_name(file.name + ".sig")
    if key.kind == "ed25519":
        openssl("pkeyutl", "-sign", "-rawin", "-inkey", key.private, "-in", file, "-out", out)
    else:
        openssl("dgst", "-sha256", "-sign", key.private, "-out", out, file)
    return out


def pod_manifest(**overrides: Any) -> dict[str, Any]:
    """Return a valid pod manifest document, with keys replaced or removed (None)."""
    document: dict[str, Any] = {
        "spiffe_id": f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/web",
        "exe_sha256": [f"sha256:{DIGEST}"],
        "pod_uid": POD_UID,
        "namespace": "shop",
        "service_account": "web",
    }
    document.update(overrides)
    return {key: value for key, value in document.items() if value is not None}


def write_manifest(
    directory: Path, name: str, document: dict[str, Any], key: KeyPair | None
) -> Path:
    """Write ``name`` as JSON and, if a key is given, its openssl signature."""
    path = directory / name
    path.write_text(json.dumps(document, indent=2))
    if key is not None:
        openssl_sign(key, path)
    return path


def evidence(**overrides: Any) -> Evidence:
    """Return evidence of a process in POD_UID running DIGEST, with fields replaced."""
    values: dict[str, Any] = {
        "pid": 4242,
        "uid": 1000,
        "gid": 1000,
        "euid": 1000,
        "egid": 1000,
        "start_time": 12345,
        "exe_sha256": DIGEST,
        "pod_uid": POD_UID,
        "container_id": CONTAINER_ID,
    }
    values.update(overrides)
    return Evidence(**values)
