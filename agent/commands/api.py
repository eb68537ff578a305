"""The ``attest-agent api`` commands: a Workload API client for operators and scripts.

``api fetch x509 [--write DIR]``, ``api fetch jwt --audience A [--spiffe-id ID]``,
``api validate jwt --audience A --svid TOKEN`` and ``api watch``. The agent socket comes
from ``--socket``, else SPIFFE_ENDPOINT_SOCKET, else the default path. The calling
process is attested like any workload, so it needs a manifest to get an identity.
Exit status: 0 on success, 1 when the agent returns an error, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent._proto import workload_pb2, workload_pb2_grpc
from agent.commands.endpoint import SOCKET_HELP, socket_target, unreachable_message
from agent.errors import AgentError

SECURITY_METADATA = (("workload.spiffe.io", "true"),)
DEFAULT_TIMEOUT_SECONDS = 10.0


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``api`` parser and its sub-commands."""
    parser = subparsers.add_parser("api", help="call the Workload API as this process")
    parser.add_argument("--socket", help=SOCKET_HELP)
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS,
        help="seconds to wait for the first response (default: %(default)g)",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    fetch = actions.add_parser("fetch", help="fetch an X.509-SVID or JWT-SVID")
    kinds = fetch.add_subparsers(dest="kind", metavar="KIND", required=True)
    fetch_x509 = kinds.add_parser("x509", help="fetch X.509-SVIDs and the bundle")
    fetch_x509.add_argument(
        "--write", type=Path, metavar="DIR",
        help="write svid.N.pem, svid.N.key (mode 0600) and bundle.N.pem into DIR",
    )
    fetch_x509.set_defaults(handler=_handler(fetch_x509_command))
    fetch_jwt = kinds.add_parser("jwt", help="fetch JWT-SVIDs for an audience")
    fetch_jwt.add_argument(
        "--audience", action="append", required=True,
        help="audience (aud claim) of the JWT-SVID; repeat for several audiences",
    )
    fetch_jwt.add_argument(
        "--spiffe-id", default="",
        help="fetch only the JWT-SVID for this SPIFFE ID (default: every identity)",
    )
    fetch_jwt.set_defaults(handler=_handler(fetch_jwt_command))

    validate = actions.add_parser("validate", help="validate a JWT-SVID")
    validate_kinds = validate.add_subparsers(dest="kind", metavar="KIND", required=True)
    validate_jwt = validate_kinds.add_parser("jwt", help="validate a JWT-SVID for an audience")
    validate_jwt.add_argument(
        "--audience", required=True,
        help="audience the token must carry in its aud claim",
    )
    validate_jwt.add_argument("--svid", required=True, help="the JWT-SVID token to validate")
    validate_jwt.set_defaults(handler=_handler(validate_jwt_command))

    watch = actions.add_parser("watch", help="print every X.509-SVID update until interrupted")
    watch.set_defaults(handler=_handler(watch_command))


Command = Callable[[Any, argparse.Namespace], int]


def _handler(command: Command) -> Callable[[argparse.Namespace], int]:
    def handle(args: argparse.Namespace) -> int:
        try:
            target = socket_target(args.socket, os.environ)
        except AgentError as error:
            print(f"attest-agent api: {error}", file=sys.stderr)
            return 2
        try:
            with grpc.insecure_channel(target) as channel:
                return command(workload_pb2_grpc.SpiffeWorkloadAPIStub(channel), args)
        except grpc.RpcError as error:
            print(f"attest-agent api: {_rpc_error_text(error, target)}", file=sys.stderr)
            return 1
        except ValueError as error:
            print(f"attest-agent api: invalid response from the agent: {error}", file=sys.stderr)
            return 1
        except OSError as error:
            print(f"attest-agent api: cannot write {error.filename}: {error.strerror}",
                  file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130

    return handle


def _rpc_error_text(error: grpc.RpcError, target: str) -> str:
    # PERMISSION_DENIED and the agent's own UNAVAILABLE statuses carry a reason code in
    # their details, so those are printed as they are.
    code = error.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        unreachable = unreachable_message(target, code.name)
        if unreachable is not None:
            return unreachable
    return f"{code.name}: {error.details()}"


def fetch_x509_command(stub: Any, args: argparse.Namespace) -> int:
    """Print the first FetchX509SVID response, and write it to files with --write."""
    stream = stub.FetchX509SVID(
        workload_pb2.X509SVIDRequest(), metadata=SECURITY_METADATA, timeout=args.timeout
    )
    try:
        response = next(stream)
    finally:
        stream.cancel()
    _print_x509(response)
    if args.write is not None:
        _write_x509(response, args.write)
        print(f"wrote {len(response.svids)} SVID(s) to {args.write}")
    return 0


def fetch_jwt_command(stub: Any, args: argparse.Namespace) -> int:
    """Print one JWT-SVID token per line."""
    request = workload_pb2.JWTSVIDRequest(audience=args.audience, spiffe_id=args.spiffe_id)
    response = stub.FetchJWTSVID(request, metadata=SECURITY_METADATA, timeout=args.timeout)
    for svid in response.svids:
        print(svid.svid)
    return 0


def validate_jwt_command(stub: Any, args: argparse.Namespace) -> int:
    """Print the token's SPIFFE ID and its claims as JSON."""
    request = workload_pb2.ValidateJWTSVIDRequest(audience=args.audience, svid=args.svid)
    response = stub.ValidateJWTSVID(request, metadata=SECURITY_METADATA, timeout=args.timeout)
    claims = {key: _plain(value) for key, value in response.claims.items()}
    print(response.spiffe_id)
    print(json.dumps(claims, indent=2, sort_keys=True))
    return 0


def watch_command(stub: Any, args: argparse.Namespace) -> int:
    """Print each X.509-SVID update; ends on an error status or Ctrl-C."""
    stream = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=SECURITY_METADATA)
    try:
        for response in stream:
            print(f"update at {datetime.now().astimezone().isoformat(timespec='seconds')}")
            _print_x509(response)
            sys.stdout.flush()
    finally:
        stream.cancel()
    return 0


def _print_x509(response: Any) -> None:
    for index, svid in enumerate(response.svids):
        leaf = x509.load_der_x509_certificate(next(_split_der(svid.x509_svid)))
        print(
            f"svid {index}: {svid.spiffe_id} serial={leaf.serial_number:x} "
            f"not_after={leaf.not_valid_after_utc.isoformat()}"
            + (f" hint={svid.hint}" if svid.hint else "")
        )


def _write_x509(response: Any, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for index, svid in enumerate(response.svids):
        key = serialization.load_der_private_key(svid.x509_svid_key, password=None)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_file(directory / f"svid.{index}.key", key_pem, 0o600)
        _write_file(directory / f"svid.{index}.pem", _der_to_pem(svid.x509_svid), 0o644)
        _write_file(directory / f"bundle.{index}.pem", _der_to_pem(svid.bundle), 0o644)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write with ``mode`` from the start, then rename, so readers never see a partial key."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)


def _der_to_pem(concatenated: bytes) -> bytes:
    certificates = (x509.load_der_x509_certificate(der) for der in _split_der(concatenated))
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certificates)


def _split_der(data: bytes) -> Iterator[bytes]:
    """Split concatenated DER certificates by reading each SEQUENCE's length."""
    offset = 0
    while offset < len(data):
        if data[offset] != 0x30 or offset + 2 > len(data):
            raise ValueError(f"invalid DER certificate at byte {offset}")
        first = data[offset + 1]
        if first < 0x80:
            header, length = 2, first
        else:
            count = first & 0x7F
            header = 2 + count
            length = int.from_bytes(data[offset + 2 : offset + header], "big")
        end = offset + header + length
        if end > len(data):
            raise ValueError(f"truncated DER certificate at byte {offset}")
        yield data[offset:end]
        offset = end


def _plain(value: Any) -> Any:
    """Convert protobuf Struct and ListValue values to plain JSON types."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if hasattr(value, "keys"):
        return {key: _plain(value[key]) for key in value.keys()}  # noqa: SIM118 - Struct
    # ListValue supports len() and indexing but is not a Sequence.
    return [_plain(value[index]) for index in range(len(value))]
