"""CA file handling: atomic 0600 key writes and clear errors for bad files."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from agent.ca import CAFileError
from agent.ca.files import (
    file_signature,
    read_certificates,
    read_private_key,
    write_atomic,
    write_private_key,
)


@pytest.fixture
def open_umask() -> Iterator[None]:
    # With umask 0 a plain open() would create 0666 files; the key must still be 0600.
    previous = os.umask(0)
    yield
    os.umask(previous)


def test_key_written_0600(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "intermediate.key"
    key = ec.generate_private_key(ec.SECP256R1())
    write_private_key(path, key)
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = read_private_key(path)
    assert loaded.public_key() == key.public_key()
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_key_replaced_by_rename(tmp_path: Path) -> None:
    path = tmp_path / "intermediate.key"
    path.write_bytes(b"old")
    path.chmod(0o644)
    old_inode = path.stat().st_ino
    write_private_key(path, ec.generate_private_key(ec.SECP256R1()))
    # A new inode shows the old file was replaced, not rewritten in place, and the
    # replacement has its own mode rather than the old file's 0644.
    assert path.stat().st_ino != old_inode
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["intermediate.key"]


def test_write_into_missing_directory(tmp_path: Path) -> None:
    target = tmp_path / "absent" / "root.key"
    with pytest.raises(CAFileError) as caught:
        write_atomic(target, b"x", 0o600)
    assert caught.value.path == target
    assert "cannot create a temporary file" in str(caught.value)


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (b"", "not a PEM certificate file"),
        (b"garbage\n", "not a PEM certificate file"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a PEM"),
    ],
    ids=["empty", "garbage", "bad-base64-body"],
)
def test_bad_certificate_file(tmp_path: Path, content: bytes, detail: str) -> None:
    path = tmp_path / "bundle.pem"
    path.write_bytes(content)
    with pytest.raises(CAFileError) as caught:
        read_certificates(path)
    assert caught.value.path == path
    assert detail in str(caught.value)


def encrypted_key() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )


def ed25519_key() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.mark.parametrize(
    ("make_content", "detail"),
    [
        (lambda: b"", "not an unencrypted PEM private key"),
        (encrypted_key, "not an unencrypted PEM private key"),
        (ed25519_key, "unsupported key type Ed25519PrivateKey"),
    ],
    ids=["empty", "encrypted", "ed25519"],
)
def test_bad_key_file(tmp_path: Path, make_content: Callable[[], bytes], detail: str) -> None:
    path = tmp_path / "intermediate.key"
    path.write_bytes(make_content())
    with pytest.raises(CAFileError) as caught:
        read_private_key(path)
    assert detail in str(caught.value)
    assert "BEGIN" not in str(caught.value)


def test_file_signature_changes(tmp_path: Path) -> None:
    path = tmp_path / "intermediate.pem"
    missing = file_signature((path,))
    assert missing == (None,)
    path.write_bytes(b"one")
    first = file_signature((path,))
    write_atomic(path, b"two", 0o644)
    second = file_signature((path,))
    assert first != missing
    assert second != first
    assert file_signature((path,)) == second
