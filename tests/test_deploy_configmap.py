"""The manifest store reads a directory laid out as the kubelet mounts a ConfigMap.

The kubelet writes a ConfigMap volume as a timestamped directory, a ``..data`` symlink
to it, and one symlink per key through ``..data``. An update writes a new timestamped
directory and renames a new ``..data`` over the old one. The example manifest from
deploy/manifests-configmap.yaml is signed here with the openssl command line.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from agent.manifests import ManifestStore, load_trusted_keys

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "manifests-configmap.yaml"


def openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.skip("the openssl command line is not installed")
    return path


def example_manifest() -> bytes:
    config_map = yaml.safe_load(EXAMPLE.read_text())
    return str(config_map["data"]["web.json"]).encode()


def make_key(directory: Path) -> tuple[Path, Path]:
    key, public = directory / "ops.key", directory / "ops.pub"
    subprocess.run([openssl(), "genpkey", "-algorithm", "ed25519", "-out", str(key)], check=True)
    subprocess.run([openssl(), "pkey", "-in", str(key), "-pubout", "-out", str(public)], check=True)
    return key, public


def sign(key: Path, manifest: Path) -> None:
    subprocess.run(
        [openssl(), "pkeyutl", "-sign", "-rawin", "-inkey", str(key),
         "-in", str(manifest), "-out", f"{manifest}.sig"],
        check=True,
    )


def publish(volume: Path, key: Path, files: dict[str, bytes], stamp: str) -> None:
    """Write ``files`` as the kubelet's atomic writer does, signing every manifest."""
    data_dir = volume / f"..{stamp}"
    data_dir.mkdir()
    for name, content in files.items():
        (data_dir / name).write_bytes(content)
        sign(key, data_dir / name)
    names = [*files, *(f"{name}.sig" for name in files)]
    new_link = volume / "..data_tmp"
    new_link.symlink_to(data_dir.name)
    old_target = os.readlink(volume / "..data") if (volume / "..data").is_symlink() else None
    new_link.rename(volume / "..data")
    for name in names:
        link = volume / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    if old_target is not None:
        shutil.rmtree(volume / old_target)


@pytest.fixture
async def store_and_volume(tmp_path: Path) -> AsyncIterator[tuple[ManifestStore, Path, Path]]:
    key, public = make_key(tmp_path)
    volume = tmp_path / "manifests"
    volume.mkdir()
    publish(volume, key, {"web.json": example_manifest()}, "2026_01_01_00_00_00.000000001")
    store = ManifestStore(
        volume, load_trusted_keys([public]), trust_domain="cluster.local", poll_interval=0.2,
    )
    await store.start()
    try:
        yield store, volume, key
    finally:
        await store.close()


async def test_loads_configmap_layout(
    store_and_volume: tuple[ManifestStore, Path, Path],
) -> None:
    store, _volume, _key = store_and_volume

    assert store.load_errors == 0
    assert [manifest.file for manifest in store.manifests] == ["web.json"]
    assert store.manifests[0].spiffe_id == "spiffe://cluster.local/ns/default/sa/web"


async def test_reloads_configmap_update(
    store_and_volume: tuple[ManifestStore, Path, Path],
) -> None:
    store, volume, key = store_and_volume
    document = json.loads(example_manifest())
    document["x509_svid_ttl"] = 1800
    seen = store.notifier.version

    publish(volume, key, {"web.json": json.dumps(document).encode()}, "2026_01_01_00_01_00.2")
    # The store promises to see a change within 2 s.
    await asyncio.wait_for(store.notifier.wait_for_change(seen), timeout=2)

    assert store.load_errors == 0
    assert [manifest.x509_svid_ttl for manifest in store.manifests] == [1800]
