"""Envoy SDS v3 on the agent socket.

The server calls ``add_to_server(server, resolver)`` once, before it starts, to register
the SecretDiscoveryService next to the Workload API on the same grpc.aio server.
"""

from __future__ import annotations

import grpc
from envoy.service.secret.v3 import sds_pb2_grpc

from agent.sds.service import Resolver, SecretDiscoveryService

__all__ = ["SecretDiscoveryService", "add_to_server"]


def add_to_server(server: grpc.aio.Server, resolver: Resolver) -> None:
    """Register on ``server`` a SecretDiscoveryService that resolves callers with ``resolver``."""
    sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(
        SecretDiscoveryService(resolver), server
    )
