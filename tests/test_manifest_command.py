"""The ``attest-agent manifest`` actions, run as a real process on files made here."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_manifest_support import (
    KeyPair,
    make_key,
    openssl,
    openssl_sign,
    pod_manifest,
    write_manifest,
)

SIGNING_KINDS = ["rsa2048", "p256", "p384", "ed25519"]


def agent(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "manifest", *map(str, args)],
        capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    directory = tmp_path_factory.mktemp("keys")
    return {kind: make_key(directory, kind) for kind in [*SIGNING_KINDS, "rsa1024"]}


def openssl_verify(key: KeyPair, file: Path, signature: Path) -> None:
    if key.kind == "ed25519":
        openssl("pkeyutl", "-verify", "-rawin", "-pubin", "-inkey", key.public, "-in", file,
                "-sigfile", signature)
    else:
        openssl("dgst", "-sha256", "-verify", key.public, "-signature", signature, file)


@pytest.mark.parametrize("kind", SIGNING_KINDS)
def test_sign_verifies_with_openssl(kind: str, keys: dict[str, KeyPair], tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "web.json", pod_manifest(), None)
    result = agent("sign", "--key", keys[kind].private, manifest)
    assert result.returncode == 0, result.stderr
    signature = tmp_path / "web.json.sig"
    assert result.stdout.strip() == f"wrote {signature}"
    assert oct(signature.stat().st_mode & 0o777) == "0o644"
    openssl_verify(keys[kind], manifest, signature)
    assert agent("verify", "--pubkey", keys[kind].public, manifest).returncode == 0


@pytest.mark.parametrize("kind", SIGNING_KINDS)
def test_verify_openssl_signature(kind: str, keys: dict[str, KeyPair], tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "web.json", pod_manifest(), keys[kind])
    result = agent("verify", "--pubkey", keys[kind].public, manifest)
    assert result.returncode == 0, result.stderr
    assert "signature OK" in result.stdout


def test_verify_tampered_fails(keys: dict[str, KeyPair], tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "web.json", pod_manifest(), keys["p256"])
    manifest.write_text(manifest.read_text().replace('"web"', '"adm"'))
    result = agent("verify", "--pubkey", keys["p256"].public, manifest)
    assert result.returncode == 1
    assert "does not verify" in result.stderr
    assert str(manifest) in result.stderr


def test_verify_other_key_fails(keys: dict[str, KeyPair], tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "web.json", pod_manifest(), keys["p256"])
    result = agent("verify", "--pubkey", keys["ed25519"].public, manifest)
    assert result.returncode == 1
    assert "does not verify" in result.stderr


def test_verify_several_pubkeys(keys: dict[str, KeyPair], tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "web.json", pod_manifest(), keys["rsa2048"])
    result = agent("verify", "--pubkey", keys["ed25519"].public,
                   "--pubkey", keys["rsa2048"].public, manifest)
    assert result.returncode == 0, result.stderr


def test_verify_missing_signature(keys: dict[str, KeyPair], tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "web.json", pod_manifest(), None)
    result = agent("verify", "--pubkey", keys["p256"].public, manifest)
    assert result.returncode == 1
    assert "web.json.sig" in result.stderr


def test_verify_weak_pubkey(keys: dict[str, KeyPair], tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "web.json", pod_manifest(), None)
    openssl_sign(keys["rsa1024"], manifest)
    result = agent("verify", "--pubkey", keys["rsa1024"].public, manifest)
    assert result.returncode == 1
    assert "1024 bits" in result.stderr


def test_sign_rejects_weak_key(keys: dict[str, KeyPair], tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "web.json", pod_manifest(), None)
    result = agent("sign", "--key", keys["rsa1024"].private, manifest)
    assert result.returncode == 1
    assert "1024 bits" in result.stderr
    assert not (tmp_path / "web.json.sig").exists()


def test_sign_rejects_encrypted_key(keys: dict[str, KeyPair], tmp_path: Path) -> None:
    encrypted = tmp_path / "enc.pem"
    openssl("pkey", "-in", keys["p256"].private, "-aes256", "-passout", "pass:secret",
            "-out", encrypted)
    manifest = write_manifest(tmp_path, "web.json", pod_manifest(), None)
    result = agent("sign", "--key", encrypted, manifest)
    assert result.returncode == 1
    assert "encrypted" in result.stderr


def test_sign_rejects_public_key(keys: dict[str, KeyPair], tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "web.json", pod_manifest(), None)
    result = agent("sign", "--key", keys["p256"].public, manifest)
    assert result.returncode == 1
    assert "not a PEM private key" in result.stderr


def test_hash_exe(tmp_path: Path) -> None:
    program = tmp_path / "program"
    program.write_bytes(b"#!/bin/sh\necho hi\n")
    result = agent("hash", "--exe", program)
    assert result.returncode == 0, result.stderr
    expected = hashlib.sha256(program.read_bytes()).hexdigest()
    assert result.stdout.strip() == f"sha256:{expected}"


def test_hash_exe_missing(tmp_path: Path) -> None:
    result = agent("hash", "--exe", tmp_path / "absent")
    assert result.returncode == 1
    assert "absent" in result.stderr


def test_hash_pid() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        result = agent("hash", "--pid", str(child.pid))
    finally:
        child.kill()
        child.wait()
    assert result.returncode == 0, result.stderr
    executable = Path(os.path.realpath(sys.executable))
    expected = hashlib.sha256(executable.read_bytes()).hexdigest()
    assert result.stdout.strip() == f"sha256:{expected}"


def test_hash_pid_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    result = agent("hash", "--pid", str(child.pid))
    assert result.returncode == 1
    assert "process_exited" in result.stderr


def test_hash_needs_one_source() -> None:
    assert agent("hash").returncode == 2
    assert agent("hash", "--pid", "1", "--exe", "/bin/sh").returncode == 2


def test_hash_output_is_manifest_form(tmp_path: Path) -> None:
    program = tmp_path / "program"
    program.write_bytes(b"binary")
    digest = agent("hash", "--exe", program).stdout.strip()
    manifest = write_manifest(tmp_path, "web.json", pod_manifest(exe_sha256=[digest]), None)
    assert agent("check", manifest).returncode == 0


def test_check_valid(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "web.json", pod_manifest(), None)
    result = agent("check", manifest)
    assert result.returncode == 0, result.stderr
    assert "grants spiffe://cluster.local/ns/shop/sa/web" in result.stdout


def test_check_trust_domain(tmp_path: Path) -> None:
    document = pod_manifest(spiffe_id="spiffe://example.org/ns/shop/sa/web")
    manifest = write_manifest(tmp_path, "web.json", document, None)
    default = agent("check", manifest)
    assert default.returncode == 1
    assert "'cluster.local'" in default.stderr
    assert agent("check", "--trust-domain", "example.org", manifest).returncode == 0
    assert agent("check", "--trust-domain", "spiffe://example.org", manifest).returncode == 0


def test_check_uppercase_trust_domain(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "web.json", pod_manifest(), None)
    result = agent("check", "--trust-domain", "Cluster.local", manifest)
    assert result.returncode == 1
    assert "lowercase it: 'cluster.local'" in result.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (json.dumps(pod_manifest(podUID="x")), "'podUID'"),
        ('{"uid": 1, "uid": 2}', "'uid'"),
        ("not json", "invalid manifest"),
        (json.dumps(pod_manifest(service_account="api")), "expected 'spiffe://cluster.local/ns"),
    ],
    ids=["unknown_key", "duplicate_key", "not_json", "template"],
)
def test_check_rejects(content: str, expected: str, tmp_path: Path) -> None:
    manifest = tmp_path / "bad.json"
    manifest.write_text(content)
    result = agent("check", manifest)
    assert result.returncode == 1
    assert expected in result.stderr
    assert str(manifest) in result.stderr


def test_check_custom_template(tmp_path: Path) -> None:
    document = pod_manifest(spiffe_id="spiffe://cluster.local/k8s/shop/web")
    manifest = write_manifest(tmp_path, "web.json", document, None)
    template = "spiffe://{trust_domain}/k8s/{namespace}/{service_account}"
    assert agent("check", manifest).returncode == 1
    assert agent("check", "--spiffe-id-template", template, manifest).returncode == 0
