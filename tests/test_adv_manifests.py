"""Hostile manifest files beside a good one: each rejected with its own reason.

The store reads a real directory. Bad files signed with the trusted key reach the
strict JSON decoder and the schema; the others are stopped by the signature or the
file checks. tests/test_manifest_store.py covers unsigned files, a stranger's key,
unknown keys, files over the size limit, symlinks out of the directory and FIFOs; this
table adds the remaining attacks and checks them all at once, with the good manifest
still granting its identity.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent.manifests import ManifestStore, load_trusted_keys
from tests.test_manifest_support import (
    KeyPair,
    evidence,
    make_key,
    openssl_sign,
    pod_manifest,
    write_manifest,
)

OTHER_ID = "spiffe://cluster.local/ns/shop/sa/api"


def tampered(directory: Path, signer: KeyPair, stranger: KeyPair) -> None:
    path = write_manifest(directory, "tampered.json", pod_manifest(spiffe_id=OTHER_ID), signer)
    path.write_text(path.read_text().replace("shop/sa/api", "shop/sa/adm"))


def resigned(directory: Path, signer: KeyPair, stranger: KeyPair) -> None:
    # An attacker edits the file and signs it again with a key the agent does not trust.
    path = write_manifest(directory, "resigned.json", pod_manifest(spiffe_id=OTHER_ID), signer)
    path.write_text(path.read_text().replace("shop/sa/api", "shop/sa/adm"))
    openssl_sign(stranger, path)


def copied_signature(directory: Path, signer: KeyPair, stranger: KeyPair) -> None:
    # web.json's valid signature placed beside another manifest.
    write_manifest(directory, "copied.json", pod_manifest(spiffe_id=OTHER_ID), None)
    shutil.copyfile(directory / "web.json.sig", directory / "copied.json.sig")


def signed_bytes(name: str, data: bytes) -> Callable[[Path, KeyPair, KeyPair], None]:
    def write(directory: Path, signer: KeyPair, stranger: KeyPair) -> None:
        (directory / name).write_bytes(data)
        openssl_sign(signer, directory / name)

    return write


def symlink_outside(directory: Path, signer: KeyPair, stranger: KeyPair) -> None:
    outside = directory.parent / "outside"
    outside.mkdir()
    target = write_manifest(outside, "real.json", pod_manifest(spiffe_id=OTHER_ID), signer)
    (directory / "escape.json").symlink_to(target)
    (directory / "escape.json.sig").symlink_to(f"{target}.sig")


GOOD = json.dumps(pod_manifest(spiffe_id=OTHER_ID))
DEEP = '{"spiffe_id": ' + "[" * 5000 + "]" * 5000 + "}"
DUPLICATE = GOOD[:-1] + ', "spiffe_id": "spiffe://cluster.local/ns/shop/sa/adm"}'
INVALID_UTF8 = GOOD.replace("shop/sa/api", "shop/sa/\xff").encode("latin-1")
OTHER_DOMAIN = json.dumps(pod_manifest(spiffe_id="spiffe://evil.example/ns/shop/sa/web"))

# file name, writer, reason logged for it
ATTACKS: list[tuple[str, Callable[[Path, KeyPair, KeyPair], None], str]] = [
    ("tampered.json", tampered, "bad_signature"),
    ("resigned.json", resigned, "bad_signature"),
    ("copied.json", copied_signature, "bad_signature"),
    ("escape.json", symlink_outside, "symlink_outside_directory"),
    ("huge.json", signed_bytes("huge.json", b" " * (1 << 20) + GOOD.encode()), "too_large"),
    ("deep.json", signed_bytes("deep.json", DEEP.encode()), "too_deep"),
    ("utf8.json", signed_bytes("utf8.json", INVALID_UTF8), "invalid_utf8"),
    ("duplicate.json", signed_bytes("duplicate.json", DUPLICATE.encode()), "duplicate_key"),
    ("domain.json", signed_bytes("domain.json", OTHER_DOMAIN.encode()), "wrong_trust_domain"),
]


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return make_key(tmp_path_factory.mktemp("signer"), "p256")


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return make_key(tmp_path_factory.mktemp("stranger"), "p256")


@pytest.fixture
async def loaded(
    tmp_path: Path, signer: KeyPair, stranger: KeyPair
) -> AsyncIterator[ManifestStore]:
    directory = tmp_path / "manifests"
    directory.mkdir()
    write_manifest(directory, "web.json", pod_manifest(), signer)
    for _, write, _ in ATTACKS:
        write(directory, signer, stranger)
    store = ManifestStore(
        directory, load_trusted_keys([signer.public]), trust_domain="cluster.local"
    )
    try:
        yield store
    finally:
        await store.close()


def rejection_reasons(caplog: pytest.LogCaptureFixture) -> dict[str, list[str]]:
    reasons: dict[str, list[str]] = {}
    for record in caplog.records:
        message = record.getMessage()
        if not message.startswith("manifest rejected"):
            continue
        fields = dict(
            part.split("=", 1) for part in message.split() if "=" in part and part[0] != '"'
        )
        reasons.setdefault(fields["file"], []).append(fields["reason"])
    return reasons


async def test_hostile_files_rejected(
    loaded: ManifestStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.manifests.store")
    await loaded.start()
    reasons = rejection_reasons(caplog)
    for name, _, reason in ATTACKS:
        assert reasons.get(name) == [reason], f"{name}: {reasons.get(name)}"
    assert [m.file for m in loaded.manifests] == ["web.json"]
    assert loaded.load_errors == len(ATTACKS)


async def test_good_manifest_keeps_serving(
    loaded: ManifestStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.manifests.store")
    await loaded.start()
    granted = loaded.match(evidence())
    assert isinstance(granted, tuple)
    assert [identity.spiffe_id for identity in granted] == [pod_manifest()["spiffe_id"]]

    # Reloading the unchanged hostile files logs nothing new.
    before = len(caplog.records)
    await loaded.reload()
    assert rejection_reasons_since(caplog, before) == {}
    assert loaded.load_errors == len(ATTACKS)


def rejection_reasons_since(caplog: pytest.LogCaptureFixture, start: int) -> dict[str, str]:
    return {
        str(index): record.getMessage()
        for index, record in enumerate(caplog.records[start:])
        if record.getMessage().startswith("manifest rejected")
    }
