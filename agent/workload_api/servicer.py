"""The SpiffeWorkloadAPI gRPC servicer (grpc.aio).

Register it with ``add_to_server(server, resolver)``. Every method first checks the
``workload.spiffe.io: true`` header (else INVALID_ARGUMENT), maps the gRPC peer to the
connection the front door pinned, and re-attests the caller through the resolver. Status
codes follow the SPIFFE Workload API standard, so standard clients retry correctly:

- attestation failure, unknown caller, CA failure, shutdown: UNAVAILABLE (retry);
- no identity, or identity revoked during a stream: PERMISSION_DENIED with the reason
  code in the message (retry later);
- missing audience or token, invalid token, unparsable SPIFFE ID: INVALID_ARGUMENT.

Streams send the complete state at once and again only when the message changes, and
never end with OK while the agent runs. A client cancelling a stream is normal (one-shot
clients read one message and cancel) and is not logged as an error.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc

from agent.ca.errors import CAError, JwtSvidError
from agent.denial import Denial
from agent.grpc_decoding import MALFORMED
from agent.identities import CallerState, IdentityResolver, ResolverClosedError
from agent.log import event, is_logged_occurrence
from agent.peer.connection import Connection
from agent.spiffeid import InvalidSpiffeIdError, SpiffeId
from agent.workload_api import messages
from agent.workload_api.registration import register

__all__ = ["SECURITY_HEADER", "WorkloadApiServicer", "add_to_server"]

logger = logging.getLogger(__name__)

SECURITY_HEADER = ("workload.spiffe.io", "true")
# Serialized stream responses kept; about 2 KiB each, cleared when full.
_RESPONSES_KEPT = 1024

_T = TypeVar("_T")


class WorkloadApiServicer:
    """Serves the five SpiffeWorkloadAPI methods for attested callers."""

    def __init__(self, resolver: IdentityResolver) -> None:
        self._resolver = resolver
        self._malformed_count = 0
        self._responses: dict[tuple[str, tuple[str, ...]], tuple[tuple[object, ...], bytes]] = {}
        self._responses_versions: tuple[int, int] | None = None

    async def FetchX509SVID(self, request: Any, context: Any) -> AsyncIterator[Any]:
        build = messages.x509_svid_response
        async for response in self._stream(request, context, "FetchX509SVID", build):
            yield response

    async def FetchX509Bundles(self, request: Any, context: Any) -> AsyncIterator[Any]:
        async for response in self._stream(request, context, "FetchX509Bundles", _x509_bundles):
            yield response

    async def FetchJWTBundles(self, request: Any, context: Any) -> AsyncIterator[Any]:
        async for response in self._stream(request, context, "FetchJWTBundles", _jwt_bundles):
            yield response

    async def FetchJWTSVID(self, request: Any, context: Any) -> Any:
        method = "FetchJWTSVID"
        conn = await self._admit(request, context, method)
        audiences = [audience for audience in request.audience if audience]
        if not audiences:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified")
        requested = await _requested_spiffe_id(context, request.spiffe_id)
        state = await self._resolve(context, conn, method)
        if requested is not None and requested not in state.spiffe_ids:
            event(
                logger,
                logging.WARNING,
                "JWT-SVID denied for an identity the caller does not hold",
                pid=conn.pid,
                spiffe_id=requested,
                reason="spiffe_id_not_held",
            )
            await _abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "no identity issued for the requested SPIFFE ID (spiffe_id_not_held)",
            )
        tokens = []
        for held in state.identities:
            spiffe_id = held.identity.spiffe_id
            if requested is not None and spiffe_id != requested:
                continue
            minting = self._resolver.authority.mint_jwt_svid(spiffe_id, audiences)
            token = await self._call_ca(context, minting, conn, method)
            tokens.append((spiffe_id, token, held.identity.hint))
        return messages.jwt_svid_response(tokens)

    async def ValidateJWTSVID(self, request: Any, context: Any) -> Any:
        method = "ValidateJWTSVID"
        conn = await self._admit(request, context, method)
        if not request.audience:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified")
        if not request.svid:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "svid must be specified")
        # Only attested callers with an identity may use the agent's keys to validate.
        await self._resolve(context, conn, method)
        try:
            spiffe_id, claims = self._resolver.authority.validate_jwt_svid(
                request.svid, request.audience
            )
        except JwtSvidError as error:
            event(
                logger,
                logging.INFO,
                "JWT-SVID validation failed",
                pid=conn.pid,
                reason=error.reason,
                detail=str(error),
            )
            await _abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"invalid JWT-SVID ({error.reason})"
            )
        return messages.validate_jwt_svid_response(spiffe_id, claims)

    async def _stream(
        self, request: Any, context: Any, method: str, build: Callable[[CallerState], Any]
    ) -> AsyncIterator[Any]:
        conn = await self._admit(request, context, method)
        previous: bytes | None = None
        try:
            async for outcome in self._resolver.watch(conn):
                if isinstance(outcome, Denial):
                    await _abort_for_denial(context, outcome)
                response = self._serialized(method, outcome, build)
                if response == previous:
                    continue
                previous = response
                yield response
        except ResolverClosedError:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, "agent is shutting down")
        except CAError as error:
            _log_ca_failure(conn, method, error)
            await _abort(context, grpc.StatusCode.UNAVAILABLE, "identity issuance failed")
        # The watch ends only when the connection closed, so no client reads this status.
        # Ending with OK would stop a standard client's retries, so never do that.
        await _abort(context, grpc.StatusCode.UNAVAILABLE, "connection closed")

    def _serialized(
        self, method: str, state: CallerState, build: Callable[[CallerState], Any]
    ) -> bytes:
        """Return the serialized stream response for ``state``, built once per state.

        Every field of a stream response derives from what the state's fingerprint
        names (SPIFFE IDs, SVID serial numbers, hints, bundle versions), so callers with
        the same fingerprint receive the same bytes. Only the latest response per set
        of SPIFFE IDs is kept, and every manifest or CA change (a renewal, a removed
        manifest) empties the cache, so the keys of old SVIDs do not linger here.
        """
        versions = self._resolver.versions
        if versions != self._responses_versions:
            self._responses.clear()
            self._responses_versions = versions
        fingerprint = state.fingerprint()
        key = (method, state.spiffe_ids)
        cached = self._responses.get(key)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        response: bytes = build(state).SerializeToString()
        if len(self._responses) >= _RESPONSES_KEPT:
            self._responses.clear()
        self._responses[key] = (fingerprint, response)
        return response

    async def _admit(self, request: Any, context: Any, method: str) -> Connection:
        if request is MALFORMED:
            self._malformed_count += 1
            count = self._malformed_count
            # A flooding client cannot fill the log: only powers of two are logged.
            if is_logged_occurrence(count):
                message = "malformed request rejected"
                event(logger, logging.WARNING, message, method=method, count=count)
            await _abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "request is not a valid message"
            )
        if SECURITY_HEADER not in tuple(context.invocation_metadata() or ()):
            event(logger, logging.INFO, "request without the security header", method=method)
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "security header missing from request (workload.spiffe.io: true)",
            )
        conn = self._resolver.connection_for(context.peer())
        if conn is None or conn.closed:
            # Fail closed: a call the front door did not relay has no pinned process.
            event(logger, logging.WARNING, "request from an unknown peer", method=method)
            await _abort(context, grpc.StatusCode.UNAVAILABLE, "caller could not be identified")
        return conn

    async def _resolve(self, context: Any, conn: Connection, method: str) -> CallerState:
        outcome = await self._call_ca(context, self._resolver.resolve(conn), conn, method)
        if isinstance(outcome, Denial):
            await _abort_for_denial(context, outcome)
        return outcome

    async def _call_ca(
        self, context: Any, awaitable: Awaitable[_T], conn: Connection, method: str
    ) -> _T:
        try:
            return await awaitable
        except ResolverClosedError:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, "agent is shutting down")
        except CAError as error:
            _log_ca_failure(conn, method, error)
            await _abort(context, grpc.StatusCode.UNAVAILABLE, "identity issuance failed")


def add_to_server(server: Any, resolver: IdentityResolver) -> None:
    """Register the SpiffeWorkloadAPI servicer on a grpc.aio server."""
    register(server, WorkloadApiServicer(resolver))


def _x509_bundles(state: CallerState) -> Any:
    return messages.x509_bundles_response(state.bundle)


def _jwt_bundles(state: CallerState) -> Any:
    return messages.jwt_bundles_response(state.jwt_bundle)


async def _requested_spiffe_id(context: Any, text: str) -> str | None:
    if not text:
        return None
    try:
        return str(SpiffeId.parse(text))
    except InvalidSpiffeIdError as error:
        await _abort(
            context, grpc.StatusCode.INVALID_ARGUMENT, f"invalid spiffe_id ({error.reason})"
        )


async def _abort_for_denial(context: Any, denial: Denial) -> NoReturn:
    # The resolver logged the decision with its details; the caller gets only the code.
    if denial.is_attestation_failure:
        await _abort(
            context, grpc.StatusCode.UNAVAILABLE, f"caller attestation failed ({denial.reason})"
        )
    await _abort(
        context, grpc.StatusCode.PERMISSION_DENIED, f"no identity issued ({denial.reason})"
    )


async def _abort(context: Any, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    # context.abort always raises. This line exists for the type checker (NoReturn).
    raise RuntimeError("grpc context.abort returned")


def _log_ca_failure(conn: Connection, method: str, error: CAError) -> None:
    event(
        logger, logging.ERROR, "identity issuance failed", pid=conn.pid, method=method, error=error
    )
