"""Stand-ins for agent.ca and agent.identities used by the SDS unit tests.

The certificates are real (made with cryptography), so encoded Secrets can be parsed
back and checked. Only the objects that carry them are fakes, which lets the SDS
encoding and protocol be tested without the CA, attestation or the gRPC server.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.attest.evidence import Evidence
from agent.denial import Denial
from agent.identities import CallerIdentity, CallerState
from agent.manifests.identity import Identity
from agent.peer.connection import Connection, PeerCredentials

PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER


@dataclass(frozen=True)
class FakeSvid:
    spiffe_id: str
    chain_pem: bytes
    chain_der: bytes
    key_pem: bytes
    key_der: bytes
    not_before: datetime.datetime
    not_after: datetime.datetime
    serial: int
    hint: str = ""


@dataclass(frozen=True)
class FakeBundle:
    trust_domain: str
    pem: bytes
    der: bytes
    version: int = 1


@dataclass(frozen=True)
class FakeJwtBundle:
    trust_domain: str
    jwks: bytes = b'{"keys": []}'
    version: int = 1


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass
class MiniCA:
    """A root and an intermediate CA that mint leaf SVIDs for one trust domain."""

    trust_domain: str = "example.org"
    root_key: ec.EllipticCurvePrivateKey = field(init=False)
    root: x509.Certificate = field(init=False)
    inter_key: ec.EllipticCurvePrivateKey = field(init=False)
    inter: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        td_uri = x509.UniformResourceIdentifier(f"spiffe://{self.trust_domain}")
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = self._ca_cert(
            _name("root"), self.root_key, _name("root"), self.root_key, td_uri, now
        )
        self.inter_key = ec.generate_private_key(ec.SECP256R1())
        self.inter = self._ca_cert(
            _name("node"), self.inter_key, _name("root"), self.root_key, td_uri, now
        )

    @staticmethod
    def _ca_cert(subject, key, issuer, issuer_key, uri, now) -> x509.Certificate:  # type: ignore[no-untyped-def]
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(x509.SubjectAlternativeName([uri]), critical=False)
            .sign(issuer_key, hashes.SHA256())
        )

    def bundle(self, version: int = 1) -> FakeBundle:
        return FakeBundle(
            self.trust_domain, self.root.public_bytes(PEM), self.root.public_bytes(DER), version
        )

    def svid(self, spiffe_id: str, *, with_root: bool = False, ttl: int = 3600) -> FakeSvid:
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.inter.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(seconds=5))
            .not_valid_after(now + datetime.timedelta(seconds=ttl))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, True, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [x509.ExtendedKeyUsageOID.SERVER_AUTH, x509.ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
                critical=True,
            )
            .sign(self.inter_key, hashes.SHA256())
        )
        chain = [leaf, self.inter] + ([self.root] if with_root else [])
        pkcs8 = serialization.PrivateFormat.PKCS8
        none = serialization.NoEncryption()
        return FakeSvid(
            spiffe_id=spiffe_id,
            chain_pem=b"".join(c.public_bytes(PEM) for c in chain),
            chain_der=b"".join(c.public_bytes(DER) for c in chain),
            key_pem=key.private_bytes(PEM, pkcs8, none),
            key_der=key.private_bytes(DER, pkcs8, none),
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            serial=leaf.serial_number,
        )

    def state(
        self, *spiffe_ids: str, bundle_version: int = 1, with_root: bool = False
    ) -> CallerState:
        """Return a caller state holding fresh SVIDs for ``spiffe_ids``, first is the default."""
        held = tuple(
            CallerIdentity(
                identity=Identity(spiffe_id=sid), svid=self.svid(sid, with_root=with_root)
            )
            for sid in spiffe_ids
        )
        return CallerState(
            evidence=EVIDENCE,
            identities=held,
            bundle=self.bundle(bundle_version),
            jwt_bundle=FakeJwtBundle(self.trust_domain),
        )


EVIDENCE = Evidence(
    pid=4242, uid=1000, gid=1000, euid=1000, egid=1000, start_time=1, exe_sha256="0" * 64
)


def rotated(state: CallerState, ca: MiniCA) -> CallerState:
    """Return ``state`` with every SVID re-minted, as after a rotation."""
    held = tuple(
        CallerIdentity(identity=h.identity, svid=ca.svid(h.identity.spiffe_id))
        for h in state.identities
    )
    return replace(state, identities=held)


class FakeResolver:
    """An IdentityResolver stand-in fed by the test: every connection is the same caller.

    The test pushes states or Denials with ``publish``. Each open watch yields the
    latest item first and then every later one, like the real resolver's watch.
    """

    def __init__(self, first: CallerState | Denial) -> None:
        self.latest: CallerState | Denial = first
        self.connection = Connection(
            "test-conn", PeerCredentials(4242, 1000, 1000), pidfd=-1, start_time=1
        )
        self.connection.closed = False
        self._queues: list[object] = []
        self.peers: list[str] = []
        self.metrics = None

    def connection_for(self, grpc_peer: str) -> Connection | None:
        self.peers.append(grpc_peer)
        return self.connection

    async def resolve(self, conn: Connection) -> CallerState | Denial:
        return self.latest

    def fail(self, error: Exception) -> None:
        """Make every open watch raise ``error``, as when minting an SVID fails."""
        for queue in self._queues:
            queue.put_nowait(error)  # type: ignore[attr-defined]

    def publish(self, item: CallerState | Denial) -> None:
        self.latest = item
        for queue in self._queues:
            queue.put_nowait(item)  # type: ignore[attr-defined]

    async def watch(
        self, conn: Connection, *, api: str = "workload_api"
    ) -> AsyncIterator[CallerState | Denial]:
        import asyncio

        queue: asyncio.Queue[CallerState | Denial] = asyncio.Queue()
        self._queues.append(queue)
        try:
            item = self.latest
            while True:
                yield item
                if isinstance(item, Denial):
                    return
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
        finally:
            self._queues.remove(queue)
