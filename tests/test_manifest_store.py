"""The manifest store on a real directory: load, hot reload, bad files, expiry."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.denial import Denial, Reason
from agent.errors import ConfigError
from agent.manifests import (
    ManifestFileError,
    ManifestStore,
    TrustedKey,
    load_trusted_keys,
)
from tests.test_manifest_support import (
    KeyPair,
    evidence,
    make_key,
    pod_manifest,
    write_manifest,
)

# The acceptance deadline for a change on disk to reach subscribers.
CHANGE_DEADLINE = 2.0
API_ID = "spiffe://cluster.local/ns/shop/sa/api"
WEB_ID = "spiffe://cluster.local/ns/shop/sa/web"


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return make_key(tmp_path_factory.mktemp("signer"), "p256")


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return make_key(tmp_path_factory.mktemp("stranger"), "ed25519")


@pytest.fixture
def trusted(signer: KeyPair) -> list[TrustedKey]:
    return load_trusted_keys([signer.public])


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    path = tmp_path / "manifests"
    path.mkdir()
    return path


@pytest.fixture
async def store(directory: Path, trusted: list[TrustedKey]) -> AsyncIterator[ManifestStore]:
    # The default poll interval: the 2 s deadline must hold with the shipped setting.
    manifest_store = ManifestStore(directory, trusted, trust_domain="cluster.local")
    yield manifest_store
    await manifest_store.close()


async def next_change(store: ManifestStore, seen: int) -> int:
    """Wait for the notifier to move past ``seen``, failing after the 2 s deadline."""
    return await asyncio.wait_for(store.notifier.wait_for_change(seen), CHANGE_DEADLINE)


def api_manifest() -> dict[str, object]:
    return pod_manifest(spiffe_id=API_ID, service_account="api")


def files_of(store: ManifestStore) -> list[str]:
    return [m.file for m in store.manifests]


def rejections(caplog: pytest.LogCaptureFixture, file: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.getMessage().startswith("manifest rejected") and f"file={file} " in r.getMessage()]


async def test_reload_sequence(
    store: ManifestStore, directory: Path, signer: KeyPair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.manifests.store")
    write_manifest(directory, "web.json", pod_manifest(), signer)
    await store.start()
    assert store.loaded
    assert files_of(store) == ["web.json"]
    version = store.notifier.version

    # Add a file.
    write_manifest(directory, "api.json", pod_manifest(hint="first"), signer)
    version = await next_change(store, version)
    assert files_of(store) == ["api.json", "web.json"]

    # Change it in place: same name, new content and signature.
    write_manifest(directory, "api.json", pod_manifest(hint="second"), signer)
    version = await next_change(store, version)
    assert [m.hint for m in store.manifests] == ["second", ""]

    # Corrupt the other file in place (same size): it drops out, the good one keeps serving.
    web = directory / "web.json"
    data = bytearray(web.read_bytes())
    data[5] ^= 0x20
    web.write_bytes(bytes(data))
    version = await next_change(store, version)
    assert files_of(store) == ["api.json"]
    assert store.load_errors == 1
    result = store.match(evidence())
    assert isinstance(result, tuple)
    assert result[0].manifest_files == ("api.json",)
    assert len(rejections(caplog, "web.json")) == 1
    assert "reason=bad_signature" in rejections(caplog, "web.json")[0]

    # An unchanged bad file is neither logged nor counted again.
    await store.reload()
    await store.reload()
    assert store.load_errors == 1
    assert len(rejections(caplog, "web.json")) == 1

    # Delete the good file: nothing matches any more.
    (directory / "api.json").unlink()
    (directory / "api.json.sig").unlink()
    await next_change(store, version)
    assert files_of(store) == []
    denial = store.match(evidence())
    assert isinstance(denial, Denial)
    assert denial.reason is Reason.NO_MANIFEST_FOR_WORKLOAD


async def test_new_spiffe_id_served(store: ManifestStore, directory: Path, signer: KeyPair) -> None:
    write_manifest(directory, "web.json", pod_manifest(), signer)
    await store.start()
    version = store.notifier.version
    write_manifest(directory, "api.json", api_manifest(), signer)
    await next_change(store, version)
    result = store.match(evidence())
    assert isinstance(result, tuple)
    assert [i.spiffe_id for i in result] == [API_ID, WEB_ID]


@pytest.mark.parametrize(
    ("name", "reason"),
    [("unsigned.json", "missing_signature"), ("stranger.json", "bad_signature"),
     ("typo.json", "unknown_key"), ("big.json", "too_large"),
     ("escape.json", "symlink_outside_directory"), ("fifo.json", "not_regular_file")],
)
async def test_bad_file_skipped(
    name: str, reason: str, store: ManifestStore, directory: Path, tmp_path: Path,
    signer: KeyPair, stranger: KeyPair, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent.manifests.store")
    write_manifest(directory, "web.json", pod_manifest(), signer)
    if name == "unsigned.json":
        write_manifest(directory, name, api_manifest(), None)
    elif name == "stranger.json":
        write_manifest(directory, name, api_manifest(), stranger)
    elif name == "typo.json":
        write_manifest(directory, name, pod_manifest(podUID="x"), signer)
    elif name == "big.json":
        write_manifest(directory, name, pod_manifest(hint="x" * 70_000), signer)
    elif name == "escape.json":
        outside = write_manifest(tmp_path, "outside.json", api_manifest(), signer)
        (directory / name).symlink_to(outside)
        (directory / f"{name}.sig").symlink_to(f"{outside}.sig")
    else:
        os.mkfifo(directory / name)
        (directory / f"{name}.sig").write_bytes(b"x")
    await store.start()
    assert files_of(store) == ["web.json"]
    assert store.load_errors == 1
    logged = rejections(caplog, name)
    assert len(logged) == 1
    assert f"reason={reason}" in logged[0]


async def test_symlink_inside_allowed(
    store: ManifestStore, directory: Path, signer: KeyPair
) -> None:
    write_manifest(directory, "real.data", pod_manifest(), signer)
    (directory / "link.json").symlink_to(directory / "real.data")
    (directory / "link.json.sig").symlink_to(directory / "real.data.sig")
    await store.start()
    assert files_of(store) == ["link.json"]


async def test_expiry_notifies(store: ManifestStore, directory: Path, signer: KeyPair) -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat(timespec="milliseconds")
    write_manifest(directory, "web.json", pod_manifest(not_after=soon), signer)
    await store.start()
    assert isinstance(store.match(evidence()), tuple)
    version = store.notifier.version
    # The expiry wake-up fires at not_after, within the deadline after it.
    await asyncio.wait_for(store.notifier.wait_for_change(version), 1 + CHANGE_DEADLINE)
    denial = store.match(evidence())
    assert isinstance(denial, Denial)
    assert denial.reason is Reason.MANIFEST_EXPIRED
    assert files_of(store) == ["web.json"]


async def test_missing_directory_at_start(tmp_path: Path, trusted: list[TrustedKey]) -> None:
    store = ManifestStore(tmp_path / "absent", trusted, trust_domain="cluster.local")
    with pytest.raises(ManifestFileError) as caught:
        await store.start()
    assert caught.value.reason == "directory_not_found"
    assert store.loaded is False
    denial = store.match(evidence())
    assert isinstance(denial, Denial)


async def test_directory_removed_serves_nothing(
    store: ManifestStore, directory: Path, signer: KeyPair
) -> None:
    write_manifest(directory, "web.json", pod_manifest(), signer)
    await store.start()
    version = store.notifier.version
    for path in directory.iterdir():
        path.unlink()
    directory.rmdir()
    await next_change(store, version)
    assert files_of(store) == []


async def test_hidden_and_other_files_ignored(
    store: ManifestStore, directory: Path, signer: KeyPair
) -> None:
    write_manifest(directory, ".web.json", pod_manifest(), signer)
    write_manifest(directory, "web.yaml", pod_manifest(), signer)
    await store.start()
    assert files_of(store) == []
    assert store.load_errors == 0


def test_bad_settings(directory: Path, trusted: list[TrustedKey]) -> None:
    with pytest.raises(ConfigError):
        ManifestStore(directory, trusted, trust_domain="cluster.local",
                      spiffe_id_template="spiffe://{trust_domain}/fixed")
    with pytest.raises(ConfigError):
        ManifestStore(directory, trusted, trust_domain="cluster.local", poll_interval=0)


async def test_start_twice_rejected(store: ManifestStore) -> None:
    await store.start()
    with pytest.raises(RuntimeError):
        await store.start()
