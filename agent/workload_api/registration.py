"""Registration of the Workload API methods with request decoding that cannot crash.

grpcio's generated registration decodes requests with ``FromString``. When a client
sends bytes that are not a valid protobuf message, grpcio logs a traceback per request
and returns UNKNOWN, so one client could flood the agent's log. These handlers decode
through ``decode_or_malformed`` instead: undecodable bytes become the MALFORMED
sentinel, which the servicer answers with INVALID_ARGUMENT and one rate-limited log line.
"""

from __future__ import annotations

from typing import Any

import grpc

from agent._proto import workload_pb2
from agent.grpc_decoding import decode_or_malformed

__all__ = ["SERVICE_NAME", "method_handlers", "register"]

SERVICE_NAME = "SpiffeWorkloadAPI"


def _serialize(message: Any) -> bytes:
    # Streams send responses serialized in advance, once per state (see the servicer).
    if isinstance(message, bytes):
        return message
    data: bytes = message.SerializeToString()
    return data


def method_handlers(servicer: Any) -> dict[str, grpc.RpcMethodHandler]:
    """Build the handler table for the five SpiffeWorkloadAPI methods."""
    streams = {
        "FetchX509SVID": workload_pb2.X509SVIDRequest,
        "FetchX509Bundles": workload_pb2.X509BundlesRequest,
        "FetchJWTBundles": workload_pb2.JWTBundlesRequest,
    }
    unaries = {
        "FetchJWTSVID": workload_pb2.JWTSVIDRequest,
        "ValidateJWTSVID": workload_pb2.ValidateJWTSVIDRequest,
    }
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for name, request_type in streams.items():
        handlers[name] = grpc.unary_stream_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=decode_or_malformed(request_type),
            response_serializer=_serialize,
        )
    for name, request_type in unaries.items():
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=decode_or_malformed(request_type),
            response_serializer=_serialize,
        )
    return handlers


def register(server: Any, servicer: Any) -> None:
    """Add the servicer's methods to a grpc.aio server under SERVICE_NAME."""
    handlers = method_handlers(servicer)
    generic = grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)
    server.add_generic_rpc_handlers((generic,))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
