"""The ``attest-agent manifest`` command: sign, verify, hash and check manifests.

    attest-agent manifest sign --key KEY FILE          writes FILE.sig
    attest-agent manifest verify --pubkey PUB FILE     checks FILE.sig
    attest-agent manifest hash --pid PID | --exe PATH  prints sha256:<hex>
    attest-agent manifest check [--trust-domain TD] FILE

Each action exits 0 on success, or 1 with the reason on stderr; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
from pathlib import Path
from typing import Any

from agent.denial import Denial
from agent.errors import ConfigError
from agent.manifests.errors import ManifestError
from agent.manifests.files import MAX_SIGNATURE_BYTES, SIGNATURE_SUFFIX, read_bounded_sync
from agent.manifests.jsondecode import MAX_MANIFEST_BYTES
from agent.manifests.schema import DEFAULT_SPIFFE_ID_TEMPLATE, parse_manifest
from agent.manifests.signature import load_trusted_keys, verify_signature
from agent.manifests.signing import load_signing_key, sign_manifest, write_signature
from agent.spiffeid import InvalidSpiffeIdError, parse_trust_domain

DEFAULT_TRUST_DOMAIN = "cluster.local"
_EXPECTED_ERRORS = (ManifestError, ConfigError, InvalidSpiffeIdError)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``manifest`` parser and its four actions."""
    parser = subparsers.add_parser(
        "manifest", help="sign, verify, hash and check workload manifests",
        description="Work with signed workload manifests.",
    )
    actions = parser.add_subparsers(dest="manifest_action", metavar="ACTION", required=True)
    _register_sign(actions)
    _register_verify(actions)
    _register_hash(actions)
    _register_check(actions)


def _register_sign(actions: argparse._SubParsersAction[Any]) -> None:
    sign = actions.add_parser(
        "sign", help="write FILE.sig, a detached signature of FILE",
        description="Sign the exact bytes of FILE and write FILE.sig, as openssl would.",
    )
    sign.add_argument("--key", required=True, type=Path,
                      help="unencrypted PEM private key: RSA (2048 bits or more), "
                      "ECDSA P-256/P-384 or Ed25519")
    sign.add_argument("file", type=Path, metavar="FILE", help="manifest JSON file")
    sign.set_defaults(handler=_sign)


def _register_verify(actions: argparse._SubParsersAction[Any]) -> None:
    verify = actions.add_parser(
        "verify", help="check FILE.sig against trusted public keys",
        description="Verify the detached signature FILE.sig over FILE.",
    )
    verify.add_argument("--pubkey", required=True, type=Path, action="append",
                        help="PEM public key or certificate to trust; repeat for several")
    verify.add_argument("--signature", type=Path,
                        help="signature file (default: FILE.sig)")
    verify.add_argument("file", type=Path, metavar="FILE", help="manifest JSON file")
    verify.set_defaults(handler=_verify)


def _register_hash(actions: argparse._SubParsersAction[Any]) -> None:
    hash_parser = actions.add_parser(
        "hash", help="print an executable's digest as written in exe_sha256",
        description="Print sha256:<hex> of a running process's executable or of a file.",
    )
    source = hash_parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pid", type=int,
                        help="process whose executable to hash, read through /proc/PID/exe")
    source.add_argument("--exe", type=Path, help="executable file to hash")
    hash_parser.set_defaults(handler=_hash)


def _register_check(actions: argparse._SubParsersAction[Any]) -> None:
    check = actions.add_parser(
        "check", help="validate FILE's schema and SPIFFE ID (not its signature)",
        description="Check a manifest's schema and SPIFFE ID against a trust domain.",
    )
    check.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN,
                       help=f"trust domain the agent serves (default: {DEFAULT_TRUST_DOMAIN})")
    check.add_argument("--spiffe-id-template", default=DEFAULT_SPIFFE_ID_TEMPLATE,
                       help="SPIFFE ID required for pod manifests "
                       f"(default: {DEFAULT_SPIFFE_ID_TEMPLATE})")
    check.add_argument("file", type=Path, metavar="FILE", help="manifest JSON file")
    check.set_defaults(handler=_check)


def _sign(args: argparse.Namespace) -> int:
    file: Path = args.file
    try:
        key = load_signing_key(args.key)
        data = read_bounded_sync(str(file), MAX_MANIFEST_BYTES, str(file))
        target = file.with_name(file.name + SIGNATURE_SUFFIX)
        write_signature(target, sign_manifest(data, key))
    except _EXPECTED_ERRORS as error:
        return _fail("sign", error)
    except OSError as error:
        return _fail("sign", f"cannot write the signature next to {file}: {error.strerror}")
    print(f"wrote {target}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    file: Path = args.file
    signature_file: Path = args.signature or file.with_name(file.name + SIGNATURE_SUFFIX)
    try:
        keys = load_trusted_keys(args.pubkey)
        data = read_bounded_sync(str(file), MAX_MANIFEST_BYTES, str(file))
        signature = read_bounded_sync(str(signature_file), MAX_SIGNATURE_BYTES,
                                      str(signature_file))
        verify_signature(data, signature, keys, file=str(file))
    except _EXPECTED_ERRORS as error:
        return _fail("verify", error)
    print(f"{file}: signature OK ({signature_file})")
    return 0


def _hash(args: argparse.Namespace) -> int:
    if args.exe is not None:
        try:
            with args.exe.open("rb") as stream:
                digest = hashlib.file_digest(stream, "sha256").hexdigest()
        except OSError as error:
            return _fail("hash", f"cannot read {args.exe}: {error.strerror}")
        print(f"sha256:{digest}")
        return 0
    return _hash_pid(args.pid)


def _hash_pid(pid: int) -> int:
    # Imported here so that the other actions work even where /proc attestation cannot.
    from agent.attest.attestor import Attestor  # noqa: PLC0415

    result = asyncio.run(Attestor().attest_pid(pid))
    if isinstance(result, Denial):
        return _fail("hash", f"cannot attest pid {pid} ({result.reason}): {result.message}")
    print(f"sha256:{result.exe_sha256}")
    return 0


def _check(args: argparse.Namespace) -> int:
    file: Path = args.file
    try:
        trust_domain = parse_trust_domain(args.trust_domain)
        data = read_bounded_sync(str(file), MAX_MANIFEST_BYTES, str(file))
        manifest = parse_manifest(data, file=str(file), trust_domain=trust_domain,
                                  spiffe_id_template=args.spiffe_id_template)
    except _EXPECTED_ERRORS as error:
        return _fail("check", error)
    print(f"{file}: OK, grants {manifest.spiffe_id}")
    return 0


def _fail(action: str, error: Exception | str) -> int:
    print(f"attest-agent manifest {action}: {error}", file=sys.stderr)
    return 1
