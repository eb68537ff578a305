"""xDS protocol state for one SDS stream, without grpc.

The servicer creates one session per stream and feeds it every request and every new
caller state, in arrival order. Each call returns the response to send, or None. A
session raises UnknownResourceError or InvalidRequestError when the stream must end
with INVALID_ARGUMENT. Rules it applies:

- every response carries a version_info (a digest of its content) and a fresh random
  nonce, and sets type_url on itself and on each resource;
- the first request of a stream is always answered, even if it echoes a nonce from an
  earlier stream, for example after an agent restart;
- a request with error_detail is a NACK: it is logged, and the rejected content is not
  sent again until it changes;
- content that the client already has is not sent again.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterable, Mapping

from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from agent.identities import CallerState
from agent.log import event
from agent.sds.encoding import SECRET_TYPE_URL, EnvoyNode, secret_version
from agent.sds.resources import InvalidRequestError, build_secrets

__all__ = ["DeltaSession", "SotwSession", "new_nonce"]

logger = logging.getLogger(__name__)


def new_nonce() -> str:
    """Return a random nonce, so that a nonce from an earlier stream never matches."""
    return secrets.token_hex(16)


class SotwSession:
    """State of one StreamSecrets stream, or of one FetchSecrets call."""

    def __init__(self, log_fields: Mapping[str, object]) -> None:
        self._log_fields = dict(log_fields)
        self._node: EnvoyNode | None = None
        self._state: CallerState | None = None
        self._names: tuple[str, ...] = ()
        self._sent_nonce: str | None = None
        self._sent_version: str | None = None
        self._rejected_version: str | None = None

    @property
    def node(self) -> EnvoyNode | None:
        return self._node

    def on_request(
        self, request: discovery_pb2.DiscoveryRequest
    ) -> discovery_pb2.DiscoveryResponse | None:
        """Apply one request and return the response it calls for, if any."""
        _check_type_url(request.type_url)
        if self._node is None:
            # Only the first request is sure to carry the node; remember it for the stream.
            self._node = EnvoyNode.from_proto(request.node)
            self._names = tuple(request.resource_names)
            return self._respond(force=True)
        stale = self._sent_nonce is not None and request.response_nonce != self._sent_nonce
        if request.HasField("error_detail"):
            # The rejected version is known only when the nonce names the latest response.
            version = None if stale else self._sent_version
            _log_nack(self._log_fields, request.resource_names, request, version)
            if not stale:
                self._rejected_version = self._sent_version
        if stale:
            # A reply to an older response; the client sends another for the latest one.
            return None
        self._names = tuple(request.resource_names)
        return self._respond(force=False)

    def on_state(self, state: CallerState) -> discovery_pb2.DiscoveryResponse | None:
        """Record a new caller state and return the update it calls for, if any."""
        self._state = state
        return self._respond(force=False)

    def _respond(self, *, force: bool) -> discovery_pb2.DiscoveryResponse | None:
        if self._state is None or self._node is None:
            return None
        if not self._names:
            # SDS has no wildcard: an empty name list subscribes to nothing.
            return None
        secrets_by_name = build_secrets(self._names, self._state, self._node)
        versions = {name: secret_version(secret) for name, secret in secrets_by_name.items()}
        version = _combined_version(versions)
        if not force and version in (self._sent_version, self._rejected_version):
            return None
        response = discovery_pb2.DiscoveryResponse(
            version_info=version, type_url=SECRET_TYPE_URL, nonce=new_nonce()
        )
        for secret in secrets_by_name.values():
            # Pack sets each resource's type_url, which Envoy requires.
            response.resources.add().Pack(secret)
        self._sent_version = version
        self._sent_nonce = response.nonce
        return response


class DeltaSession:
    """State of one DeltaSecrets stream: subscriptions and per-resource versions."""

    def __init__(self, log_fields: Mapping[str, object]) -> None:
        self._log_fields = dict(log_fields)
        self._node: EnvoyNode | None = None
        self._state: CallerState | None = None
        self._subscribed: dict[str, None] = {}
        # Version of each resource that the client has, from our responses or from its reconnect.
        self._client_versions: dict[str, str] = {}
        self._rejected: dict[str, str] = {}
        self._sent_nonce: str | None = None
        self._sent_versions: dict[str, str] = {}

    @property
    def node(self) -> EnvoyNode | None:
        return self._node

    def on_request(
        self, request: discovery_pb2.DeltaDiscoveryRequest
    ) -> discovery_pb2.DeltaDiscoveryResponse | None:
        """Apply one request's subscription changes and ACK or NACK; return any update."""
        _check_type_url(request.type_url)
        if self._node is None:
            self._node = EnvoyNode.from_proto(request.node)
            self._client_versions.update(request.initial_resource_versions)
        elif request.HasField("error_detail"):
            if request.response_nonce == self._sent_nonce:
                _log_nack(self._log_fields, self._sent_versions, request, None)
                self._rejected.update(self._sent_versions)
            else:
                _log_nack(self._log_fields, (), request, None)
        # Subscription changes count even on a request that echoes an older nonce.
        for name in request.resource_names_unsubscribe:
            self._subscribed.pop(name, None)
            self._client_versions.pop(name, None)
            self._rejected.pop(name, None)
        for name in request.resource_names_subscribe:
            if name in self._subscribed:
                # A repeated subscription is a request to send the resource again.
                self._client_versions.pop(name, None)
                self._rejected.pop(name, None)
            self._subscribed[name] = None
        return self._respond()

    def on_state(self, state: CallerState) -> discovery_pb2.DeltaDiscoveryResponse | None:
        """Record a new caller state and return the changed resources, if any."""
        self._state = state
        return self._respond()

    def _respond(self) -> discovery_pb2.DeltaDiscoveryResponse | None:
        if self._state is None or self._node is None or not self._subscribed:
            return None
        secrets_by_name = build_secrets(self._subscribed, self._state, self._node)
        response = discovery_pb2.DeltaDiscoveryResponse(type_url=SECRET_TYPE_URL, nonce=new_nonce())
        sent: dict[str, str] = {}
        for name, secret in secrets_by_name.items():
            version = secret_version(secret)
            if version in (self._client_versions.get(name), self._rejected.get(name)):
                continue
            resource = response.resources.add(name=name, version=version)
            resource.resource.Pack(secret)
            sent[name] = version
        if not sent:
            return None
        response.system_version_info = _combined_version(sent)
        self._client_versions.update(sent)
        self._sent_versions = sent
        self._sent_nonce = response.nonce
        return response


def _check_type_url(type_url: str) -> None:
    # Envoy always sets it; an empty type_url is accepted since this service has one type.
    if type_url and type_url != SECRET_TYPE_URL:
        raise InvalidRequestError("type_url", type_url, repr(SECRET_TYPE_URL))


def _combined_version(versions: Mapping[str, str]) -> str:
    text = "\n".join(f"{name}={version}" for name, version in sorted(versions.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _log_nack(
    log_fields: Mapping[str, object],
    names: Iterable[str],
    request: discovery_pb2.DiscoveryRequest | discovery_pb2.DeltaDiscoveryRequest,
    version: str | None,
) -> None:
    detail: status_pb2.Status = request.error_detail
    event(
        logger,
        logging.WARNING,
        "SDS client rejected a response",
        **log_fields,
        resource=",".join(names),
        version=version,
        nonce=request.response_nonce,
        error=detail.message,
    )
