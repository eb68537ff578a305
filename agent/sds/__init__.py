"""Envoy SDS v3 on the agent socket.

The server calls ``add_to_server(server, resolver)`` once, before it starts, to register
the SecretDiscoveryService next to the Workload API on the same grpc.aio server. The
encoding, resource and protocol modules do not import grpc.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.sds.service import Resolver

__all__ = ["add_to_server"]


def add_to_server(server: Any, resolver: Resolver) -> None:
    """Register on ``server`` a SecretDiscoveryService that resolves callers with ``resolver``."""
    # Imported here so that importing agent.sds.encoding does not load grpc.
    from agent.sds.service import SecretDiscoveryService, register  # noqa: PLC0415

    register(server, SecretDiscoveryService(resolver))
