"""SDS servicer over a real grpc.aio server and a raw gRPC client on a Unix socket.

The servicer runs in this process with a FakeResolver (tests/support/sds_fakes.py) in
place of attestation, so each status path can be driven on demand. The tests in
test_sds_envoy.py run the real agent and Envoy end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.rpc import status_pb2

from agent import sds
from agent.denial import Denial, Reason
from agent.errors import AgentError
from agent.sds.encoding import SECRET_TYPE_URL
from tests.support.sds_fakes import FakeResolver, MiniCA, rotated

WEB = "spiffe://example.org/ns/default/sa/web"
STEP = 5.0  # seconds a single response may take before the test fails


@pytest.fixture(scope="module")
def ca() -> MiniCA:
    return MiniCA()


@pytest.fixture
async def channel_to_sds(
    tmp_path: Path, ca: MiniCA
) -> AsyncIterator[tuple[FakeResolver, grpc.aio.Channel]]:
    resolver = FakeResolver(ca.state(WEB))
    server = grpc.aio.server()
    sds.add_to_server(server, resolver)
    address = f"unix:{tmp_path}/sds.sock"
    server.add_insecure_port(address)
    await server.start()
    channel = grpc.aio.insecure_channel(address)
    try:
        yield resolver, channel
    finally:
        await channel.close()
        await server.stop(None)


@pytest.fixture
def served(
    channel_to_sds: tuple[FakeResolver, grpc.aio.Channel],
) -> tuple[FakeResolver, sds_pb2_grpc.SecretDiscoveryServiceStub]:
    resolver, channel = channel_to_sds
    return resolver, sds_pb2_grpc.SecretDiscoveryServiceStub(channel)


def request(
    *names: str, nonce: str = "", error: str | None = None
) -> discovery_pb2.DiscoveryRequest:
    req = discovery_pb2.DiscoveryRequest(
        resource_names=names, type_url=SECRET_TYPE_URL, response_nonce=nonce
    )
    req.node.id = "raw-client"
    if error is not None:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return req


def secrets_of(response: discovery_pb2.DiscoveryResponse) -> list[secret_pb2.Secret]:
    found = []
    for packed in response.resources:
        secret = secret_pb2.Secret()
        assert packed.Unpack(secret)
        found.append(secret)
    return found


async def wait_for_log(caplog: pytest.LogCaptureFixture, text: str) -> None:
    """Wait until the servicer has logged ``text``, which shows that it handled a request."""
    async with asyncio.timeout(STEP):
        while not any(text in r.getMessage() for r in caplog.records):
            await asyncio.sleep(0.01)


async def next_response(call, timeout: float = STEP):  # type: ignore[no-untyped-def]
    return await asyncio.wait_for(call.read(), timeout)


async def test_stream_first_response(served) -> None:  # type: ignore[no-untyped-def]
    _, stub = served
    call = stub.StreamSecrets()
    await call.write(request("default", "ROOTCA"))
    response = await next_response(call)
    assert response.type_url == SECRET_TYPE_URL
    assert response.version_info
    assert response.nonce
    assert [s.name for s in secrets_of(response)] == ["default", "ROOTCA"]
    call.cancel()


async def test_stream_rotation_and_ack(served, ca: MiniCA) -> None:  # type: ignore[no-untyped-def]
    resolver, stub = served
    call = stub.StreamSecrets()
    await call.write(request("default"))
    first = await next_response(call)
    await call.write(request("default", nonce=first.nonce))
    resolver.publish(rotated(resolver.latest, ca))
    update = await next_response(call)
    assert update.version_info != first.version_info
    assert update.nonce != first.nonce
    chain = secrets_of(update)[0].tls_certificate.certificate_chain.inline_bytes
    assert chain == resolver.latest.identities[0].svid.chain_pem
    call.cancel()


async def test_stream_nack_then_change(
    served, ca: MiniCA, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    resolver, stub = served
    call = stub.StreamSecrets()
    await call.write(request("default"))
    first = await next_response(call)
    await call.write(request("default", nonce=first.nonce, error="unable to load certificate"))
    await wait_for_log(caplog, "SDS client rejected a response")
    # Re-publishing the same state must not resend the rejected content; the next
    # response must be the rotated certificate.
    resolver.publish(resolver.latest)
    resolver.publish(rotated(resolver.latest, ca))
    update = await next_response(call)
    assert update.version_info != first.version_info
    chain = secrets_of(update)[0].tls_certificate.certificate_chain.inline_bytes
    assert chain == resolver.latest.identities[0].svid.chain_pem
    nacks = [r.getMessage() for r in caplog.records if "rejected a response" in r.getMessage()]
    assert len(nacks) == 1
    assert 'error="unable to load certificate"' in nacks[0]
    call.cancel()


async def test_stream_stale_nonce_fresh(served) -> None:  # type: ignore[no-untyped-def]
    _, stub = served
    call = stub.StreamSecrets()
    await call.write(request("default", nonce="0123456789abcdef-from-old-agent"))
    response = await next_response(call)
    assert [s.name for s in secrets_of(response)] == ["default"]
    call.cancel()


@pytest.mark.parametrize("name", ["file-cert:/a~/b", "file-root:/c", "spiffe://example.org/other"])
async def test_stream_unknown_name(served, name: str) -> None:  # type: ignore[no-untyped-def]
    _, stub = served
    call = stub.StreamSecrets()
    await call.write(request("default", name))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await next_response(call)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert repr(name) in caught.value.details()


async def test_stream_revocation(served) -> None:  # type: ignore[no-untyped-def]
    resolver, stub = served
    call = stub.StreamSecrets()
    await call.write(request("default"))
    await next_response(call)
    resolver.publish(Denial(Reason.NO_MANIFEST_FOR_WORKLOAD, "manifest removed", pid=4242))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await next_response(call)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "no_manifest_for_workload" in caught.value.details()


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        pytest.param(Reason.PROCESS_REPLACED, grpc.StatusCode.UNAVAILABLE, id="attestation-failed"),
        pytest.param(
            Reason.NO_MANIFEST_FOR_WORKLOAD, grpc.StatusCode.PERMISSION_DENIED, id="no-identity"
        ),
    ],
)
async def test_denied_caller(served, reason: Reason, code: grpc.StatusCode) -> None:  # type: ignore[no-untyped-def]
    resolver, stub = served
    resolver.publish(Denial(reason, "denied by test", pid=4242))
    call = stub.StreamSecrets()
    # The servicer ends a denied stream without waiting for a request, so the write may
    # already see the final status.
    with contextlib.suppress(grpc.aio.AioRpcError):
        await call.write(request("default"))
    stream_code = await asyncio.wait_for(call.code(), STEP)
    with pytest.raises(grpc.aio.AioRpcError) as fetch_error:
        await stub.FetchSecrets(request("default"), timeout=STEP)
    assert stream_code == code
    assert fetch_error.value.code() == code


async def test_fetch_matches_stream(served) -> None:  # type: ignore[no-untyped-def]
    _, stub = served
    call = stub.StreamSecrets()
    await call.write(request("default", "ROOTCA"))
    streamed = await next_response(call)
    call.cancel()
    fetched = await stub.FetchSecrets(request("default", "ROOTCA"), timeout=STEP)
    assert fetched.version_info == streamed.version_info
    assert fetched.type_url == SECRET_TYPE_URL
    assert list(fetched.resources) == list(streamed.resources)
    assert fetched.nonce


async def test_fetch_unknown_name(served) -> None:  # type: ignore[no-untyped-def]
    _, stub = served
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.FetchSecrets(request("file-root:/c"), timeout=STEP)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'file-root:/c'" in caught.value.details()


async def test_delta_stream(served, ca: MiniCA) -> None:  # type: ignore[no-untyped-def]
    resolver, stub = served
    call = stub.DeltaSecrets()
    first_request = discovery_pb2.DeltaDiscoveryRequest(
        type_url=SECRET_TYPE_URL, resource_names_subscribe=["default", "ROOTCA"]
    )
    await call.write(first_request)
    first = await next_response(call)
    assert first.type_url == SECRET_TYPE_URL
    assert [r.name for r in first.resources] == ["default", "ROOTCA"]
    await call.write(
        discovery_pb2.DeltaDiscoveryRequest(type_url=SECRET_TYPE_URL, response_nonce=first.nonce)
    )
    resolver.publish(rotated(resolver.latest, ca))
    update = await next_response(call)
    assert [r.name for r in update.resources] == ["default"]
    assert update.nonce != first.nonce
    call.cancel()


async def test_stream_survives_half_close(served, ca: MiniCA) -> None:  # type: ignore[no-untyped-def]
    resolver, stub = served
    call = stub.StreamSecrets()
    await call.write(request("default"))
    await call.done_writing()
    await next_response(call)
    resolver.publish(rotated(resolver.latest, ca))
    update = await next_response(call)
    assert [s.name for s in secrets_of(update)] == ["default"]
    call.cancel()


@pytest.mark.parametrize(
    ("error", "details"),
    [
        pytest.param(
            AgentError("signing key unreadable"), "identity issuance failed", id="agent-error"
        ),
        pytest.param(RuntimeError("bug in a lower layer"), "internal error", id="unexpected"),
    ],
)
async def test_stream_watch_failure(served, error: Exception, details: str) -> None:  # type: ignore[no-untyped-def]
    resolver, stub = served
    call = stub.StreamSecrets()
    await call.write(request("default"))
    await next_response(call)
    resolver.fail(error)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await next_response(call)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == details


SERVICE = "/envoy.service.secret.v3.SecretDiscoveryService"
UNDECODABLE = {
    "length-overrun": b"\x0a\xff\xff\xff\xff\x0f",
    "truncated": b"\x0a\x05ab",
    "bad-utf8": b"\x0a\x01\xff",
}
MALFORMED_LOG = "malformed request rejected"


def rejections(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if MALFORMED_LOG in r.getMessage()]


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("payload", UNDECODABLE.values(), ids=UNDECODABLE.keys())
async def test_fetch_undecodable(
    channel_to_sds, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    _, channel = channel_to_sds
    # Without serializers the call sends and returns raw bytes.
    fetch_raw = channel.unary_unary(f"{SERVICE}/FetchSecrets")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fetch_raw(payload, timeout=STEP)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "request is not a valid message"
    assert len(rejections(caplog)) == 1
    assert "method=FetchSecrets" in rejections(caplog)[0]
    assert_no_traceback(caplog)
    stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
    fetched = await stub.FetchSecrets(request("default"), timeout=STEP)
    assert [s.name for s in secrets_of(fetched)] == ["default"]


@pytest.mark.parametrize(
    ("method", "valid"),
    [
        pytest.param("StreamSecrets", request("default"), id="sotw"),
        pytest.param(
            "DeltaSecrets",
            discovery_pb2.DeltaDiscoveryRequest(
                type_url=SECRET_TYPE_URL, resource_names_subscribe=["default"]
            ),
            id="delta",
        ),
    ],
)
async def test_stream_undecodable(
    channel_to_sds, method: str, valid, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    _, channel = channel_to_sds
    open_raw = channel.stream_stream(f"{SERVICE}/{method}")
    # A valid first request, then undecodable bytes in the same stream.
    call = open_raw()
    await call.write(valid.SerializeToString())
    assert await next_response(call)
    await call.write(UNDECODABLE["length-overrun"])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await next_response(call)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "request is not a valid message"
    assert len(rejections(caplog)) == 1
    assert f"method={method}" in rejections(caplog)[0]
    assert_no_traceback(caplog)
    # The service keeps serving valid streams.
    again = open_raw()
    await again.write(valid.SerializeToString())
    assert await next_response(again)
    again.cancel()


async def test_undecodable_log_rate(
    channel_to_sds, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    _, channel = channel_to_sds
    fetch_raw = channel.unary_unary(f"{SERVICE}/FetchSecrets")
    for _ in range(9):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await fetch_raw(UNDECODABLE["truncated"], timeout=STEP)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    logged = rejections(caplog)
    # Nine rejections are logged on the 1st, 2nd, 4th and 8th occurrence only.
    assert len(logged) == 4
    assert [line.split("count=")[1].split()[0] for line in logged] == ["1", "2", "4", "8"]
