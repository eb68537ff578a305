"""Loading one signed manifest file: path checks, bounded reads, signature, schema.

The manifest store (asynchronously, while serving) and ``attest-agent explain`` (once,
synchronously) load files through these functions, so both accept and reject exactly
the same files for the same reasons. Every failure raises a ManifestError subclass that
names the file and its reason code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from agent.manifests.errors import SignatureError
from agent.manifests.files import (
    MAX_SIGNATURE_BYTES,
    SIGNATURE_SUFFIX,
    ManifestFiles,
    check_inside,
    read_bounded,
    read_bounded_sync,
)
from agent.manifests.jsondecode import MAX_MANIFEST_BYTES
from agent.manifests.schema import Manifest, parse_manifest
from agent.manifests.signature import TrustedKey, verify_signature

__all__ = ["load_manifest_file", "load_manifest_file_sync", "signed_paths", "verify_and_parse"]


def signed_paths(directory: Path, files: ManifestFiles) -> tuple[str, str]:
    """Return the manifest and signature paths, checked to stay inside ``directory``."""
    name = files.name
    manifest_path = check_inside(directory, files.manifest, name)
    if files.signature.real_path is None:
        raise SignatureError(
            name,
            "missing_signature",
            f"{name}{SIGNATURE_SUFFIX} is missing; sign the file with 'attest-agent manifest sign'",
        )
    signature_path = check_inside(directory, files.signature, name + SIGNATURE_SUFFIX)
    return manifest_path, signature_path


def verify_and_parse(
    name: str,
    data: bytes,
    signature: bytes,
    keys: Sequence[TrustedKey],
    *,
    trust_domain: str,
    spiffe_id_template: str,
) -> Manifest:
    """Verify the detached signature, then parse the manifest strictly."""
    # The signature is checked before parsing, so unsigned bytes never reach the parser.
    verify_signature(data, signature, keys, file=name)
    return parse_manifest(
        data, file=name, trust_domain=trust_domain, spiffe_id_template=spiffe_id_template
    )


async def load_manifest_file(directory: Path, files: ManifestFiles) -> tuple[bytes, bytes]:
    """Read a manifest and its signature without blocking the event loop."""
    manifest_path, signature_path = signed_paths(directory, files)
    data = await read_bounded(manifest_path, MAX_MANIFEST_BYTES, files.name)
    signature = await read_bounded(
        signature_path, MAX_SIGNATURE_BYTES, files.name + SIGNATURE_SUFFIX
    )
    return data, signature


def load_manifest_file_sync(
    directory: Path,
    files: ManifestFiles,
    keys: Sequence[TrustedKey],
    *,
    trust_domain: str,
    spiffe_id_template: str,
) -> Manifest:
    """Read, verify and parse one manifest file in the calling thread."""
    manifest_path, signature_path = signed_paths(directory, files)
    data = read_bounded_sync(manifest_path, MAX_MANIFEST_BYTES, files.name)
    signature = read_bounded_sync(
        signature_path, MAX_SIGNATURE_BYTES, files.name + SIGNATURE_SUFFIX
    )
    return verify_and_parse(
        files.name,
        data,
        signature,
        keys,
        trust_domain=trust_domain,
        spiffe_id_template=spiffe_id_template,
    )
