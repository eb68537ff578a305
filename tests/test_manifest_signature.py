"""Detached manifest signatures made by the openssl command line, and trust anchors."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.manifests import (
    SignatureError,
    TrustedKeyError,
    load_trusted_keys,
    verify_signature,
)
from tests.test_manifest_support import (
    KeyPair,
    make_key,
    openssl,
    openssl_sign,
    pod_manifest,
    write_manifest,
)

SIGNING_KINDS = ["rsa2048", "p256", "p384", "ed25519"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    directory = tmp_path_factory.mktemp("keys")
    return {kind: make_key(directory, kind) for kind in [*SIGNING_KINDS, "rsa1024"]}


@pytest.mark.parametrize("kind", SIGNING_KINDS)
def test_openssl_signature_verifies(kind: str, keys: dict[str, KeyPair], tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "web.json", pod_manifest(), keys[kind])
    trusted = load_trusted_keys([keys[kind].public])
    verify_signature(manifest.read_bytes(), Path(f"{manifest}.sig").read_bytes(), trusted)


@pytest.mark.parametrize("kind", SIGNING_KINDS)
def test_changed_byte_fails(kind: str, keys: dict[str, KeyPair], tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "web.json", pod_manifest(), keys[kind])
    data = bytearray(manifest.read_bytes())
    data[10] ^= 0x01
    trusted = load_trusted_keys([keys[kind].public])
    with pytest.raises(SignatureError) as caught:
        verify_signature(bytes(data), Path(f"{manifest}.sig").read_bytes(), trusted, file="web")
    assert caught.value.reason == "bad_signature"
    assert caught.value.file == "web"


@pytest.mark.parametrize("kind", SIGNING_KINDS)
def test_untrusted_key_fails(kind: str, keys: dict[str, KeyPair], tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "web.json", pod_manifest(), keys[kind])
    others = [keys[k].public for k in SIGNING_KINDS if k != kind]
    with pytest.raises(SignatureError) as caught:
        verify_signature(
            manifest.read_bytes(), Path(f"{manifest}.sig").read_bytes(), load_trusted_keys(others)
        )
    assert caught.value.reason == "bad_signature"


@pytest.mark.parametrize("kind", SIGNING_KINDS)
def test_copied_signature_fails(kind: str, keys: dict[str, KeyPair], tmp_path: Path) -> None:
    web = write_manifest(tmp_path, "web.json", pod_manifest(), keys[kind])
    api = write_manifest(
        tmp_path, "api.json",
        pod_manifest(spiffe_id="spiffe://cluster.local/ns/shop/sa/api", service_account="api"),
        keys[kind],
    )
    trusted = load_trusted_keys([keys[kind].public])
    with pytest.raises(SignatureError):
        verify_signature(api.read_bytes(), Path(f"{web}.sig").read_bytes(), trusted)


def test_several_trusted_keys(keys: dict[str, KeyPair], tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "web.json", pod_manifest(), keys["p384"])
    trusted = load_trusted_keys([keys[k].public for k in SIGNING_KINDS])
    assert [k.algorithm for k in trusted] == ["rsa-2048", "ecdsa-p256", "ecdsa-p384", "ed25519"]
    verify_signature(manifest.read_bytes(), Path(f"{manifest}.sig").read_bytes(), trusted)


def test_empty_signature_fails(keys: dict[str, KeyPair]) -> None:
    trusted = load_trusted_keys([keys["ed25519"].public])
    with pytest.raises(SignatureError) as caught:
        verify_signature(b"{}", b"", trusted)
    assert caught.value.reason == "bad_signature"


def test_rsa1024_anchor_rejected(keys: dict[str, KeyPair]) -> None:
    with pytest.raises(TrustedKeyError) as caught:
        load_trusted_keys([keys["rsa2048"].public, keys["rsa1024"].public])
    assert caught.value.reason == "rsa_key_too_small"
    assert caught.value.file == str(keys["rsa1024"].public)
    assert "1024 bits" in str(caught.value)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("x25519", "unsupported_key_type"), ("secp256k1", "unsupported_curve")],
)
def test_unsupported_anchor_rejected(kind: str, reason: str, tmp_path: Path) -> None:
    key = make_key(tmp_path, kind)
    with pytest.raises(TrustedKeyError) as caught:
        load_trusted_keys([key.public])
    assert caught.value.reason == reason


def test_certificate_anchor(keys: dict[str, KeyPair], tmp_path: Path) -> None:
    cert = tmp_path / "signer.crt"
    openssl("req", "-new", "-x509", "-key", keys["p256"].private, "-subj", "/CN=signer",
            "-days", "1", "-out", cert)
    manifest = write_manifest(tmp_path, "web.json", pod_manifest(), keys["p256"])
    trusted = load_trusted_keys([cert])
    verify_signature(manifest.read_bytes(), Path(f"{manifest}.sig").read_bytes(), trusted)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(None, "unreadable"), (b"not a pem", "invalid_pem"), (b"", "invalid_pem")],
    ids=["missing", "garbage", "empty"],
)
def test_bad_anchor_file(content: bytes | None, reason: str, tmp_path: Path) -> None:
    path = tmp_path / "anchor.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TrustedKeyError) as caught:
        load_trusted_keys([path])
    assert caught.value.reason == reason
    assert str(path) in str(caught.value)


def test_private_key_as_anchor_rejected(keys: dict[str, KeyPair]) -> None:
    with pytest.raises(TrustedKeyError) as caught:
        load_trusted_keys([keys["p256"].private])
    assert caught.value.reason == "invalid_pem"


def test_no_anchors_rejected() -> None:
    with pytest.raises(TrustedKeyError) as caught:
        load_trusted_keys([])
    assert caught.value.reason == "no_trusted_keys"


def test_signature_of_other_bytes(keys: dict[str, KeyPair], tmp_path: Path) -> None:
    other = tmp_path / "other.bin"
    other.write_bytes(b"unrelated")
    signature = openssl_sign(keys["rsa2048"], other)
    trusted = load_trusted_keys([keys["rsa2048"].public])
    with pytest.raises(SignatureError):
        verify_signature(b"{}", signature.read_bytes(), trusted)
