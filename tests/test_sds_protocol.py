"""Unit tests for the SDS stream state (SotwSession, DeltaSession), without grpc.

Caller states come from tests/support/sds_fakes.py: real certificates in fake SVID
objects, so these tests need neither the CA nor attestation.
"""

from __future__ import annotations

import logging

import pytest
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from agent.sds.encoding import SECRET_TYPE_URL
from agent.sds.protocol import DeltaSession, SotwSession
from agent.sds.resources import InvalidRequestError, UnknownResourceError
from tests.support.sds_fakes import MiniCA, rotated

WEB = "spiffe://example.org/ns/default/sa/web"
FIELDS = {"pid": 4242, "conn_id": "c1"}


@pytest.fixture(scope="module")
def ca() -> MiniCA:
    return MiniCA()


def request(*names: str, nonce: str = "", version: str = "", error: str | None = None):  # type: ignore[no-untyped-def]
    req = discovery_pb2.DiscoveryRequest(
        resource_names=names, type_url=SECRET_TYPE_URL, response_nonce=nonce, version_info=version
    )
    req.node.id = "sidecar"
    if error is not None:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return req


def names_of(response) -> list[str]:  # type: ignore[no-untyped-def]
    names = []
    for packed in response.resources:
        assert packed.type_url == SECRET_TYPE_URL
        secret = secret_pb2.Secret()
        assert packed.Unpack(secret)
        names.append(secret.name)
    return names


def test_sotw_first_response(ca: MiniCA) -> None:
    session = SotwSession(FIELDS)
    assert session.on_state(ca.state(WEB)) is None
    response = session.on_request(request("default", "ROOTCA"))
    assert response is not None
    assert response.type_url == SECRET_TYPE_URL
    assert response.version_info
    assert len(response.nonce) == 32
    assert names_of(response) == ["default", "ROOTCA"]


def test_sotw_request_before_state(ca: MiniCA) -> None:
    session = SotwSession(FIELDS)
    assert session.on_request(request("default")) is None
    response = session.on_state(ca.state(WEB))
    assert response is not None
    assert names_of(response) == ["default"]


def test_sotw_ack_sends_nothing(ca: MiniCA) -> None:
    session = SotwSession(FIELDS)
    session.on_state(ca.state(WEB))
    first = session.on_request(request("default"))
    assert first is not None
    ack = request("default", nonce=first.nonce, version=first.version_info)
    assert session.on_request(ack) is None


def test_sotw_same_state_not_resent(ca: MiniCA) -> None:
    session = SotwSession(FIELDS)
    state = ca.state(WEB)
    session.on_state(state)
    assert session.on_request(request("default")) is not None
    assert session.on_state(state) is None


def test_sotw_rotation_pushes(ca: MiniCA) -> None:
    session = SotwSession(FIELDS)
    state = ca.state(WEB)
    session.on_state(state)
    first = session.on_request(request("default"))
    update = session.on_state(rotated(state, ca))
    assert first is not None
    assert update is not None
    assert update.version_info != first.version_info
    assert update.nonce != first.nonce
    assert names_of(update) == ["default"]


def test_sotw_names_change(ca: MiniCA) -> None:
    session = SotwSession(FIELDS)
    session.on_state(ca.state(WEB))
    first = session.on_request(request("default"))
    assert first is not None
    second = session.on_request(request("default", "ROOTCA", nonce=first.nonce))
    assert second is not None
    assert names_of(second) == ["default", "ROOTCA"]


def test_sotw_nack_not_resent(ca: MiniCA, caplog: pytest.LogCaptureFixture) -> None:
    session = SotwSession(FIELDS)
    state = ca.state(WEB)
    session.on_state(state)
    first = session.on_request(request("default"))
    assert first is not None
    nack = request("default", nonce=first.nonce, error="bad certificate chain")
    with caplog.at_level(logging.WARNING, logger="agent.sds.protocol"):
        assert session.on_request(nack) is None
    assert session.on_state(state) is None
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert messages[0].startswith("SDS client rejected a response")
    assert 'error="bad certificate chain"' in messages[0]
    assert f"version={first.version_info}" in messages[0]
    # New content after the NACK is sent.
    update = session.on_state(rotated(state, ca))
    assert update is not None
    assert update.version_info != first.version_info


def test_sotw_stale_nonce_ignored(ca: MiniCA) -> None:
    session = SotwSession(FIELDS)
    session.on_state(ca.state(WEB))
    first = session.on_request(request("default"))
    assert first is not None
    assert session.on_request(request("default", "ROOTCA", nonce="stale")) is None


def test_sotw_first_request_old_nonce(ca: MiniCA) -> None:
    session = SotwSession(FIELDS)
    session.on_state(ca.state(WEB))
    response = session.on_request(request("default", nonce="from-old-stream", version="v9"))
    assert response is not None
    assert names_of(response) == ["default"]


def test_sotw_unknown_name(ca: MiniCA) -> None:
    session = SotwSession(FIELDS)
    session.on_state(ca.state(WEB))
    with pytest.raises(UnknownResourceError, match="file-root:/c"):
        session.on_request(request("default", "file-root:/c"))


def test_sotw_foreign_type_url(ca: MiniCA) -> None:
    session = SotwSession(FIELDS)
    session.on_state(ca.state(WEB))
    req = request("default")
    req.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    with pytest.raises(InvalidRequestError, match=r"envoy\.config\.cluster\.v3\.Cluster"):
        session.on_request(req)


def test_sotw_empty_names(ca: MiniCA) -> None:
    session = SotwSession(FIELDS)
    session.on_state(ca.state(WEB))
    assert session.on_request(request()) is None


def delta(subscribe=(), unsubscribe=(), nonce="", error=None, initial=None):  # type: ignore[no-untyped-def]
    req = discovery_pb2.DeltaDiscoveryRequest(
        type_url=SECRET_TYPE_URL,
        resource_names_subscribe=subscribe,
        resource_names_unsubscribe=unsubscribe,
        response_nonce=nonce,
        initial_resource_versions=initial or {},
    )
    req.node.id = "sidecar"
    if error is not None:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return req


def delta_names(response) -> list[str]:  # type: ignore[no-untyped-def]
    names = []
    for resource in response.resources:
        secret = secret_pb2.Secret()
        assert resource.resource.type_url == SECRET_TYPE_URL
        assert resource.resource.Unpack(secret)
        assert secret.name == resource.name
        assert resource.version
        names.append(resource.name)
    return names


def test_delta_subscribe_and_rotate(ca: MiniCA) -> None:
    session = DeltaSession(FIELDS)
    state = ca.state(WEB)
    session.on_state(state)
    first = session.on_request(delta(subscribe=["default", "ROOTCA"]))
    assert first is not None
    assert first.type_url == SECRET_TYPE_URL
    assert first.nonce
    assert delta_names(first) == ["default", "ROOTCA"]
    assert session.on_request(delta(nonce=first.nonce)) is None
    update = session.on_state(rotated(state, ca))
    assert update is not None
    # Only the rotated certificate changes; the bundle is the same.
    assert delta_names(update) == ["default"]


def test_delta_subscribe_more(ca: MiniCA) -> None:
    session = DeltaSession(FIELDS)
    session.on_state(ca.state(WEB))
    first = session.on_request(delta(subscribe=["default"]))
    assert first is not None
    second = session.on_request(delta(subscribe=["ROOTCA"], nonce=first.nonce))
    assert second is not None
    assert delta_names(second) == ["ROOTCA"]


def test_delta_resubscribe_resends(ca: MiniCA) -> None:
    session = DeltaSession(FIELDS)
    session.on_state(ca.state(WEB))
    first = session.on_request(delta(subscribe=["default"]))
    assert first is not None
    again = session.on_request(delta(subscribe=["default"], nonce=first.nonce))
    assert again is not None
    assert delta_names(again) == ["default"]
    assert again.resources[0].version == first.resources[0].version


def test_delta_initial_versions(ca: MiniCA) -> None:
    state = ca.state(WEB)
    earlier = DeltaSession(FIELDS)
    earlier.on_state(state)
    first = earlier.on_request(delta(subscribe=["default", "ROOTCA"]))
    assert first is not None
    held = {r.name: r.version for r in first.resources if r.name == "ROOTCA"}
    session = DeltaSession(FIELDS)
    session.on_state(state)
    again = session.on_request(delta(subscribe=["default", "ROOTCA"], initial=held))
    assert again is not None
    assert delta_names(again) == ["default"]


def test_delta_nack_not_resent(ca: MiniCA) -> None:
    session = DeltaSession(FIELDS)
    state = ca.state(WEB)
    session.on_state(state)
    first = session.on_request(delta(subscribe=["default"]))
    assert first is not None
    assert session.on_request(delta(nonce=first.nonce, error="rejected")) is None
    assert session.on_state(state) is None
    assert session.on_state(rotated(state, ca)) is not None


def test_delta_unsubscribe(ca: MiniCA) -> None:
    session = DeltaSession(FIELDS)
    state = ca.state(WEB)
    session.on_state(state)
    first = session.on_request(delta(subscribe=["default"]))
    assert first is not None
    assert session.on_request(delta(unsubscribe=["default"], nonce=first.nonce)) is None
    assert session.on_state(rotated(state, ca)) is None


def test_delta_unknown_name(ca: MiniCA) -> None:
    session = DeltaSession(FIELDS)
    session.on_state(ca.state(WEB))
    with pytest.raises(UnknownResourceError) as caught:
        session.on_request(delta(subscribe=["file-cert:/a~/b"]))
    assert caught.value.resource == "file-cert:/a~/b"
