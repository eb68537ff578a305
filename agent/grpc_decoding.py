"""Request deserializers for grpc.aio handlers that never raise on undecodable bytes.

When a deserializer raises, grpcio 1.85 ends a unary call with UNKNOWN and logs a
traceback per request, and in a stream it raises the error inside the handler's request
iterator. One client sending undecodable bytes could so flood the agent's log.
Register each method with ``decode_or_malformed(RequestType)`` instead. The handler
then receives the MALFORMED sentinel for undecodable bytes, must end the call with
INVALID_ARGUMENT, and should log only when ``agent.log.is_logged_occurrence(count)`` is
true.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError

__all__ = ["MALFORMED", "Malformed", "decode_or_malformed"]


class Malformed:
    """Sentinel type for a request whose bytes are not a valid protobuf message."""


MALFORMED = Malformed()


def decode_or_malformed(message_type: Any) -> Callable[[bytes], Any]:
    """Return a deserializer that yields MALFORMED instead of raising on bad bytes."""

    def decode(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except DecodeError:
            return MALFORMED

    return decode
