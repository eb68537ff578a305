"""The ``attest-agent healthcheck`` command: exit 0 when the agent responds on its socket.

It calls grpc.health.v1.Health/Check for the whole server (service ""). SERVING means
healthy. An agent built without the health service returns UNIMPLEMENTED, which still
proves it is up and serving gRPC, so that counts as healthy too. Anything else (no
socket, timeout, NOT_SERVING) exits 1, which suits container liveness probes.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import grpc

from agent.commands.endpoint import SOCKET_HELP, socket_target, unreachable_message
from agent.errors import AgentError

HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
# HealthCheckResponse.ServingStatus values from grpc/health/v1/health.proto.
SERVING_STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
SERVING = 1
PREFIX = "attest-agent healthcheck: "


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``healthcheck`` parser."""
    parser = subparsers.add_parser(
        "healthcheck", help="exit 0 when the agent responds on its socket"
    )
    parser.add_argument("--socket", help=SOCKET_HELP)
    parser.add_argument(
        "--timeout", type=float, default=3.0,
        help="seconds to wait for the response (default: %(default)g)",
    )
    parser.set_defaults(handler=healthcheck)


def healthcheck(args: argparse.Namespace) -> int:
    """Check the agent's health: 0 for SERVING or any gRPC response, else 1."""
    try:
        target = socket_target(args.socket, os.environ)
    except AgentError as error:
        print(f"{PREFIX}{error}", file=sys.stderr)
        return 2
    with grpc.insecure_channel(target) as channel:
        # The request is an empty HealthCheckRequest (service ""), which encodes to no
        # bytes; raw bytes avoid a dependency on the grpcio-health-checking package.
        check = channel.unary_unary(HEALTH_CHECK_METHOD)
        try:
            response: bytes = check(b"", timeout=args.timeout)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                print("agent answered (no health service registered)")
                return 0
            _report_unhealthy(error, target)
            return 1
    status = _serving_status(response)
    name = SERVING_STATUS_NAMES.get(status, str(status))
    if status != SERVING:
        print(f"{PREFIX}agent not healthy: {name}", file=sys.stderr)
        return 1
    print(name)
    return 0


def _report_unhealthy(error: grpc.RpcError, target: str) -> None:
    code = error.code()
    message = None
    if code == grpc.StatusCode.UNAVAILABLE:
        message = unreachable_message(target, code.name)
    if message is None:
        message = f"agent not healthy: {code.name}: {error.details()}"
    print(f"{PREFIX}{message}", file=sys.stderr)


def _serving_status(response: bytes) -> int:
    """Decode HealthCheckResponse: field 1 (status) is a varint; absent means 0."""
    if len(response) >= 2 and response[0] == 0x08:
        return response[1] & 0x7F
    return 0
