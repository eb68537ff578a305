"""When IdentityResolver.watch re-attests: stream starts, changes, renewals, intervals.

Real components throughout: a Python child in a pod cgroup, the real Attestor, a
ManifestStore over manifests signed with openssl, and a development-CA Authority. The
connection is built from a pidfd of the child without a socket (client_inode and
exe_file None), so the attestor skips the holder scan and the exec check, which
tests/test_adv_exec.py covers. Two thin wrappers count the attestor's and the CA's
calls and pass everything through.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.attest.attestor import Attestor
from agent.attest.evidence import Evidence
from agent.ca import Authority, CASettings, JwtBundle, X509Bundle, X509Svid
from agent.denial import Denial, Reason
from agent.identities import CallerState, IdentityResolver
from agent.manifests import ManifestStore, load_trusted_keys
from agent.notify import Notifier
from agent.peer.connection import Connection, PeerCredentials
from agent.peer.process import read_start_time
from tests.support.cgroups import pod_cgroup
from tests.support.processes import ChildProcess, start_process
from tests.test_manifest_support import KeyPair, make_key, pod_manifest, write_manifest

TRUST_DOMAIN = "cluster.local"
WEB_ID = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/web"
OTHER_ID = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/other"
# Functional deadline for a change to reach a stream on a loaded machine.
DEADLINE_SECONDS = 20.0
# Loop iterations that let a woken stream finish its pass before the test looks.
SETTLE_ITERATIONS = 50
SLEEPER = "import sys\nsys.stdin.readline()\n"


class CountingAttestor:
    """The real Attestor; counts calls to ``attest``."""

    def __init__(self) -> None:
        self.real = Attestor()
        self.calls = 0

    def attest(self, conn: Connection) -> Awaitable[Evidence | Denial]:
        self.calls += 1
        return self.real.attest(conn)


class CountingAuthority:
    """The real Authority; counts calls to ``get_x509_svid``."""

    def __init__(self, real: Authority) -> None:
        self.real = real
        self.svid_calls = 0

    @property
    def notifier(self) -> Notifier:
        return self.real.notifier

    async def get_x509_svid(
        self, spiffe_id: str, *, dns_names: Sequence[str] = (), ttl: int | None = None,
        hint: str = "",
    ) -> X509Svid:
        self.svid_calls += 1
        return await self.real.get_x509_svid(spiffe_id, dns_names=dns_names, ttl=ttl, hint=hint)

    def x509_bundle(self) -> X509Bundle:
        return self.real.x509_bundle()

    def jwt_bundle(self) -> JwtBundle:
        return self.real.jwt_bundle()

    def mint_jwt_svid(self, spiffe_id: str, audiences: Sequence[str]) -> Awaitable[str]:
        return self.real.mint_jwt_svid(spiffe_id, audiences)

    def validate_jwt_svid(self, token: str, audience: str) -> tuple[str, dict[str, Any]]:
        return self.real.validate_jwt_svid(token, audience)


class NoRegistry:
    def lookup(self, grpc_peer: str) -> Connection | None:
        return None


@dataclass
class World:
    child: ChildProcess
    conn: Connection
    attestor: CountingAttestor
    authority: CountingAuthority
    store: ManifestStore
    manifests: Path
    key: KeyPair
    pod_uid: str
    digest: str

    def resolver(self, reattest_interval: float = 30.0) -> IdentityResolver:
        return IdentityResolver(
            NoRegistry(), self.attestor, self.store, self.authority,
            reattest_interval=reattest_interval,
        )

    async def grant(self, **overrides: Any) -> None:
        """Sign the web manifest for the child and load it into the store."""
        document = pod_manifest(
            spiffe_id=WEB_ID, exe_sha256=[self.digest], pod_uid=self.pod_uid, **overrides
        )
        await asyncio.to_thread(write_manifest, self.manifests, "web.json", document, self.key)
        await self.store.reload()


PYTHON = os.path.realpath(sys.executable)


@pytest.fixture
def child_in_pod() -> Iterator[tuple[ChildProcess, str]]:
    with ExitStack() as stack:
        pod = stack.enter_context(pod_cgroup("unified"))
        child = stack.enter_context(
            start_process([PYTHON, "-c", SLEEPER], cgroup_dirs=[pod.path])
        )
        assert pod.pod_uid is not None
        yield child, pod.pod_uid


@pytest.fixture
async def world(tmp_path: Path, child_in_pod: tuple[ChildProcess, str]) -> AsyncIterator[World]:
    child, pod_uid = child_in_pod
    key = await asyncio.to_thread(make_key, tmp_path / "keys", "p256")
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    store = ManifestStore(manifests, load_trusted_keys([key.public]), trust_domain=TRUST_DOMAIN,
                          poll_interval=3600)
    authority = Authority(CASettings(trust_domain=TRUST_DOMAIN, state_dir=tmp_path / "ca"))
    digest = hashlib.sha256(Path(PYTHON).read_bytes()).hexdigest()
    # start_process returns once the shell wrapper moved the child; wait for its exec.
    await wait_until(lambda: os.readlink(f"/proc/{child.pid}/exe") == PYTHON, "the exec")
    pidfd = os.pidfd_open(child.pid)
    conn = Connection("watch-test", PeerCredentials(child.pid, os.geteuid(), os.getegid()),
                      pidfd, read_start_time(child.pid, Path("/proc")))
    await store.start()
    await authority.start()
    try:
        yield World(child, conn, CountingAttestor(), CountingAuthority(authority), store,
                    manifests, key, pod_uid, f"sha256:{digest}")
    finally:
        conn.close()
        await authority.close()
        await store.close()


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE_SECONDS
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def settle() -> None:
    for _ in range(SETTLE_ITERATIONS):
        await asyncio.sleep(0)


async def cancel(pending: asyncio.Future[Any]) -> None:
    pending.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pending


async def first_state(stream: AsyncIterator[CallerState | Denial]) -> CallerState:
    state = await anext(stream)
    assert isinstance(state, CallerState), state
    return state


def serial_of(state: CallerState | Denial) -> int:
    assert isinstance(state, CallerState), state
    return state.identities[0].svid.serial


async def renew_other_svid(world: World) -> None:
    """Mint a short-lived SVID for another workload and wait until the CA renews it."""
    await world.authority.real.get_x509_svid(OTHER_ID, ttl=2)
    version = world.authority.notifier.version
    await wait_until(lambda: world.authority.notifier.version > version, "the CA's renewal")


async def test_watch_ca_change_no_reattest(world: World) -> None:
    await world.grant()
    stream = world.resolver().watch(world.conn)
    await first_state(stream)
    next_item = asyncio.ensure_future(anext(stream))
    await settle()
    calls_before = world.authority.svid_calls

    await renew_other_svid(world)
    # The stream's pass requests its own SVID from the CA after any attestation.
    await wait_until(lambda: world.authority.svid_calls > calls_before, "the stream's wake")
    await settle()

    assert world.attestor.calls == 1
    assert not next_item.done()
    await cancel(next_item)
    await stream.aclose()


async def test_watch_renewal_shares_attestation(world: World) -> None:
    await world.grant(x509_svid_ttl=3)
    resolver = world.resolver()
    streams = [resolver.watch(world.conn) for _ in range(3)]
    serials = [serial_of(await first_state(stream)) for stream in streams]
    assert len(set(serials)) == 1
    assert world.attestor.calls == 3  # every stream start attests on its own

    renewed = await asyncio.wait_for(
        asyncio.gather(*(anext(stream) for stream in streams)), DEADLINE_SECONDS
    )

    assert {serial_of(state) for state in renewed} != {serials[0]}
    assert len({serial_of(state) for state in renewed}) == 1
    assert world.attestor.calls == 4  # one attestation, shared by the three streams
    for stream in streams:
        await stream.aclose()


async def test_watch_store_change_reattests(world: World) -> None:
    await world.grant()
    stream = world.resolver().watch(world.conn)
    first = await first_state(stream)
    assert first.identities[0].identity.hint == ""

    await world.grant(hint="edge")
    changed = await asyncio.wait_for(anext(stream), DEADLINE_SECONDS)

    assert isinstance(changed, CallerState)
    assert changed.identities[0].identity.hint == "edge"
    assert world.attestor.calls == 2
    await stream.aclose()


async def test_watch_interval_reattests(world: World) -> None:
    await world.grant()
    stream = world.resolver(reattest_interval=0.2).watch(world.conn)
    await first_state(stream)
    next_item = asyncio.ensure_future(anext(stream))

    await wait_until(lambda: world.attestor.calls >= 3, "periodic re-attestations")

    assert not next_item.done()  # the state did not change, so nothing was sent
    await cancel(next_item)
    await stream.aclose()


async def test_stream_start_and_unary_attest(world: World) -> None:
    await world.grant()
    resolver = world.resolver()
    first = resolver.watch(world.conn)
    second = resolver.watch(world.conn)

    await first_state(first)
    await first_state(second)
    assert isinstance(await resolver.resolve(world.conn), CallerState)
    assert isinstance(await resolver.resolve(world.conn), CallerState)

    assert world.attestor.calls == 4
    await first.aclose()
    await second.aclose()


async def test_watch_renewal_after_exit_revoked(world: World) -> None:
    await world.grant(x509_svid_ttl=3)
    stream = world.resolver().watch(world.conn)
    await first_state(stream)
    os.kill(world.child.pid, signal.SIGKILL)
    await asyncio.to_thread(world.child.popen.wait)

    # The renewed SVID is never sent: the stream re-attests first and ends.
    ended = await asyncio.wait_for(anext(stream), DEADLINE_SECONDS)

    assert isinstance(ended, Denial)
    assert ended.reason == Reason.IDENTITY_REVOKED
    assert world.attestor.calls == 2
    await stream.aclose()


async def test_watch_renews_without_ca_notice(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CA's background renewal never runs, so no change notice arrives. The stream
    # still requests the SVID again as it nears expiry (far before reattest_interval,
    # 30 s) and sends the SVID the CA mints then.
    async def no_renewal(now: float) -> None:
        return None

    monkeypatch.setattr(world.authority.real, "_renew_due", no_renewal)
    await world.grant(x509_svid_ttl=3)
    stream = world.resolver().watch(world.conn)
    first = await first_state(stream)

    renewed = await asyncio.wait_for(anext(stream), DEADLINE_SECONDS)

    assert serial_of(renewed) != serial_of(first)
    assert renewed.identities[0].svid.not_after > first.identities[0].svid.not_after
    await stream.aclose()
