"""The envoy.service.secret.v3.SecretDiscoveryService servicer.

Register it with ``agent.sds.add_to_server``. Each call maps its gRPC peer to the
connection that the front door accepted and attests the caller through the shared
IdentityResolver, exactly as the Workload API does; SDS requests carry no security
header. Status codes:

- caller connection unknown or attestation failed: UNAVAILABLE (Envoy retries);
- no identity, or an identity revoked during a stream: PERMISSION_DENIED;
- unknown resource name or foreign type_url: INVALID_ARGUMENT naming the value;
- a request that is not a valid protobuf message: INVALID_ARGUMENT, logged on the 1st,
  2nd, 4th, 8th, ... occurrence only, so a flooding client cannot fill the log;
- SVID minting failed: UNAVAILABLE.

A stream never ends with OK while the agent runs, because Envoy 1.40 reconnects in a
tight loop after an OK; it ends only when the client cancels, on one of the errors
above, or when the server shuts down.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncIterator
from typing import Any, NoReturn, Protocol, TypeAlias

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from agent.denial import Denial
from agent.errors import AgentError
from agent.grpc_decoding import Malformed, decode_or_malformed
from agent.identities import CallerState
from agent.log import event, is_logged_occurrence
from agent.peer.connection import Connection
from agent.sds.errors import (
    InvalidRequestError,
    SdsError,
    SecretEncodingError,
    UnknownResourceError,
)
from agent.sds.protocol import DeltaSession, SotwSession
from agent.telemetry.metrics import Metrics, StreamApi

__all__ = ["SERVICE_NAME", "Resolver", "SecretDiscoveryService", "register"]

logger = logging.getLogger(__name__)

SERVICE_NAME = "envoy.service.secret.v3.SecretDiscoveryService"


class Resolver(Protocol):
    """The part of agent.identities.IdentityResolver that SDS uses."""

    @property
    def metrics(self) -> Metrics | None: ...
    def connection_for(self, grpc_peer: str) -> Connection | None: ...
    async def resolve(self, conn: Connection) -> CallerState | Denial: ...
    def watch(
        self, conn: Connection, *, api: StreamApi = ...
    ) -> AsyncIterator[CallerState | Denial]: ...


class _Kind(enum.Enum):
    REQUEST = enum.auto()
    STATE = enum.auto()
    WATCH_ENDED = enum.auto()
    FAILED = enum.auto()


_Session = SotwSession | DeltaSession
_SotwRequest: TypeAlias = discovery_pb2.DiscoveryRequest | Malformed
_DeltaRequest: TypeAlias = discovery_pb2.DeltaDiscoveryRequest | Malformed
_Event = tuple[_Kind, object]


class SecretDiscoveryService(sds_pb2_grpc.SecretDiscoveryServiceServicer):  # type: ignore[misc]
    """Serves TLS certificates and validation contexts to attested Envoy callers."""

    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver
        self._malformed_count = 0

    async def StreamSecrets(
        self,
        request_iterator: AsyncIterator[_SotwRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        conn = await self._connection(context)
        fields = _log_fields(conn, "StreamSecrets")
        session = SotwSession(fields)
        async for response in self._serve(conn, session, fields, request_iterator, context):
            yield response

    async def DeltaSecrets(
        self,
        request_iterator: AsyncIterator[_DeltaRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        conn = await self._connection(context)
        fields = _log_fields(conn, "DeltaSecrets")
        session = DeltaSession(fields)
        async for response in self._serve(conn, session, fields, request_iterator, context):
            yield response

    async def FetchSecrets(
        self, request: _SotwRequest, context: grpc.aio.ServicerContext
    ) -> discovery_pb2.DiscoveryResponse:
        conn = await self._connection(context)
        fields = _log_fields(conn, "FetchSecrets")
        if isinstance(request, Malformed):
            await self._abort_malformed(context, fields)
        try:
            outcome = await self._resolver.resolve(conn)
        except AgentError as err:
            await _abort_issue_failed(context, fields, err)
        if isinstance(outcome, Denial):
            await _abort_denied(context, outcome)
        session = SotwSession(fields)
        session.on_state(outcome)
        try:
            response = session.on_request(request)
        except SecretEncodingError as err:
            await _abort_issue_failed(context, fields, err)
        except SdsError as err:
            await _abort_invalid(context, fields, err)
        if response is None:
            # Only an empty name list gets no Secrets, so it gets an empty response.
            return discovery_pb2.DiscoveryResponse(type_url=request.type_url)
        return response

    async def _connection(self, context: grpc.aio.ServicerContext) -> Connection:
        conn = self._resolver.connection_for(context.peer())
        if conn is None:
            # Fail closed: a call that did not come through the front door has no pinned
            # process, so nothing can be attested.
            event(
                logger,
                logging.WARNING,
                "SDS caller has no pinned connection",
                address=context.peer(),
            )
            await _abort(context, grpc.StatusCode.UNAVAILABLE, "caller could not be identified")
        return conn

    async def _abort_malformed(
        self, context: grpc.aio.ServicerContext, fields: dict[str, object]
    ) -> NoReturn:
        self._malformed_count += 1
        count = self._malformed_count
        if is_logged_occurrence(count):
            event(logger, logging.WARNING, "malformed request rejected", **fields, count=count)
        await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "request is not a valid message")

    async def _serve(
        self,
        conn: Connection,
        session: _Session,
        fields: dict[str, object],
        requests: AsyncIterator[object],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[object]:
        event(logger, logging.DEBUG, "SDS stream opened", **fields)
        events: asyncio.Queue[_Event] = asyncio.Queue()
        tasks = [
            asyncio.create_task(_pump_requests(requests, events)),
            asyncio.create_task(_pump_states(self._resolver.watch(conn, api="sds"), events)),
        ]
        try:
            while True:
                kind, item = await events.get()
                if kind is _Kind.WATCH_ENDED:
                    await _abort(context, grpc.StatusCode.UNAVAILABLE, "caller connection closed")
                if kind is _Kind.FAILED and isinstance(item, Exception):
                    await _abort_failed(context, fields, item)
                if isinstance(item, Denial):
                    await _abort_denied(context, item)
                if isinstance(item, Malformed):
                    await self._abort_malformed(context, fields)
                if kind is _Kind.REQUEST and self._resolver.metrics is not None:
                    _count_nack(self._resolver.metrics, item)
                try:
                    response = _apply(session, kind, item)
                except SecretEncodingError as err:
                    await _abort_issue_failed(context, fields, err)
                except SdsError as err:
                    await _abort_invalid(context, fields, err)
                if response is not None:
                    yield response
        finally:
            for task in tasks:
                task.cancel()
            # Errors from the tasks already reached the loop as FAILED events.
            await asyncio.gather(*tasks, return_exceptions=True)


def register(server: Any, servicer: SecretDiscoveryService) -> None:
    """Add the servicer's three methods to a grpc.aio server under SERVICE_NAME.

    This replaces the generated registration in sds_pb2_grpc, whose deserializers raise
    on undecodable bytes, so that such requests reach the servicer as MALFORMED.
    """
    sotw_request = decode_or_malformed(discovery_pb2.DiscoveryRequest)
    sotw_response = discovery_pb2.DiscoveryResponse.SerializeToString
    handlers = {
        "StreamSecrets": grpc.stream_stream_rpc_method_handler(
            servicer.StreamSecrets,
            request_deserializer=sotw_request,
            response_serializer=sotw_response,
        ),
        "DeltaSecrets": grpc.stream_stream_rpc_method_handler(
            servicer.DeltaSecrets,
            request_deserializer=decode_or_malformed(discovery_pb2.DeltaDiscoveryRequest),
            response_serializer=discovery_pb2.DeltaDiscoveryResponse.SerializeToString,
        ),
        "FetchSecrets": grpc.unary_unary_rpc_method_handler(
            servicer.FetchSecrets,
            request_deserializer=sotw_request,
            response_serializer=sotw_response,
        ),
    }
    generic = grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)
    server.add_generic_rpc_handlers((generic,))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def _apply(session: _Session, kind: _Kind, item: object) -> object | None:
    if kind is _Kind.STATE and isinstance(item, CallerState):
        return session.on_state(item)
    if isinstance(session, SotwSession) and isinstance(item, discovery_pb2.DiscoveryRequest):
        return session.on_request(item)
    if isinstance(session, DeltaSession) and isinstance(item, discovery_pb2.DeltaDiscoveryRequest):
        return session.on_request(item)
    raise TypeError(f"unexpected {kind.name} event of type {type(item).__name__}")


async def _pump_requests(requests: AsyncIterator[object], events: asyncio.Queue[_Event]) -> None:
    # When the client half-closes, updates keep flowing until it cancels the call.
    try:
        async for request in requests:
            await events.put((_Kind.REQUEST, request))
    except Exception as err:
        # Any error is forwarded: the stream logs it and ends, and the task never hides it.
        await events.put((_Kind.FAILED, err))


async def _pump_states(
    states: AsyncIterator[CallerState | Denial], events: asyncio.Queue[_Event]
) -> None:
    try:
        async for state in states:
            await events.put((_Kind.STATE, state))
    except Exception as err:
        # Without this the stream would wait forever for a watch that is gone.
        await events.put((_Kind.FAILED, err))
        return
    await events.put((_Kind.WATCH_ENDED, None))


def _count_nack(metrics: Metrics, request: object) -> None:
    # Both request types mark a NACK with error_detail; the session logs it.
    requests = (discovery_pb2.DiscoveryRequest, discovery_pb2.DeltaDiscoveryRequest)
    if isinstance(request, requests) and request.HasField("error_detail"):
        metrics.sds_nack()


def _log_fields(conn: Connection, method: str) -> dict[str, object]:
    return {"pid": conn.pid, "conn_id": conn.conn_id, "api": "sds", "method": method}


async def _abort_denied(context: grpc.aio.ServicerContext, denial: Denial) -> NoReturn:
    # The resolver has logged the decision with its details; the caller gets the code only.
    if denial.is_attestation_failure:
        await _abort(
            context, grpc.StatusCode.UNAVAILABLE, f"caller attestation failed ({denial.reason})"
        )
    await _abort(
        context, grpc.StatusCode.PERMISSION_DENIED, f"no identity issued ({denial.reason})"
    )


async def _abort_invalid(
    context: grpc.aio.ServicerContext, fields: dict[str, object], err: SdsError
) -> NoReturn:
    resource = err.resource if isinstance(err, UnknownResourceError) else None
    value = err.value if isinstance(err, InvalidRequestError) else None
    event(
        logger,
        logging.WARNING,
        "SDS request rejected",
        **fields,
        resource=resource,
        detail=value,
        error=str(err),
    )
    await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(err))


async def _abort_failed(
    context: grpc.aio.ServicerContext, fields: dict[str, object], err: Exception
) -> NoReturn:
    if isinstance(err, AgentError):
        await _abort_issue_failed(context, fields, err)
    # Fail closed on a bug as well: end the stream so that Envoy reconnects.
    event(logger, logging.ERROR, "SDS stream failed", **fields, error=repr(err))
    await _abort(context, grpc.StatusCode.UNAVAILABLE, "internal error")


async def _abort_issue_failed(
    context: grpc.aio.ServicerContext, fields: dict[str, object], err: AgentError
) -> NoReturn:
    event(
        logger, logging.ERROR, "SDS could not issue the caller's secrets", **fields, error=str(err)
    )
    await _abort(context, grpc.StatusCode.UNAVAILABLE, "identity issuance failed")


async def _abort(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str
) -> NoReturn:
    await context.abort(code, message)
    # context.abort always raises. This line exists for the type checker (NoReturn).
    raise RuntimeError("grpc context.abort returned")
