"""X.509-SVID minting: the SPIFFE X509-SVID profile, openssl acceptance, refusals."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from agent.ca import (
    Authority,
    CAError,
    CAFileError,
    CANotReadyError,
    CASettings,
    IntermediateExpiredError,
    InvalidSettingError,
    SvidRequestError,
    UnsupportedAlgorithmError,
    UnsupportedKeyTypeError,
)
from agent.ca.issuing import init_root, issue_intermediate

TD = "example.org"
WEB = "spiffe://example.org/ns/default/sa/web"


def make_ca(directory: Path, *, intermediate_ttl: timedelta = timedelta(hours=24)) -> Path:
    """Create root/ and node/ under ``directory``; return the node directory."""
    now = datetime.now(UTC)
    init_root(directory / "root", TD, "ec-p256", timedelta(days=30), now)
    node = directory / "node"
    issue_intermediate(
        directory / "root", "node-1", node, key_type="ec-p256", lifetime=intermediate_ttl, now=now
    )
    return node


def file_settings(node: Path, state_dir: Path, **overrides: object) -> CASettings:
    values: dict[str, object] = {
        "trust_domain": TD,
        "state_dir": state_dir,
        "cert_path": node / "intermediate.pem",
        "key_path": node / "intermediate.key",
        "bundle_path": node / "bundle.pem",
    }
    values.update(overrides)
    return CASettings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def authority(tmp_path: Path) -> AsyncIterator[Authority]:
    node = make_ca(tmp_path)
    ca = Authority(file_settings(node, tmp_path / "state"))
    await ca.start()
    yield ca
    await ca.close()


def openssl_verify(tmp_path: Path, root: Path, intermediate: Path, leaf_pem: bytes) -> str:
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(leaf_pem)
    result = subprocess.run(
        ["openssl", "verify", "-CAfile", str(root), "-untrusted", str(intermediate), str(leaf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.stdout + result.stderr


async def test_openssl_accepts_svid(authority: Authority, tmp_path: Path) -> None:
    svid = await authority.get_x509_svid(WEB, dns_names=["web.example.org"])
    leaf_pem = svid.chain[0].public_bytes(serialization.Encoding.PEM)
    node = tmp_path / "node"
    output = openssl_verify(tmp_path, node / "bundle.pem", node / "intermediate.pem", leaf_pem)
    assert output.strip() == f"{tmp_path / 'leaf.pem'}: OK"


async def test_openssl_rejects_other_root(authority: Authority, tmp_path: Path) -> None:
    # The same check against an unrelated root must fail, or the test above proves nothing.
    other = tmp_path / "other"
    init_root(other, TD, "ec-p256", timedelta(days=1), datetime.now(UTC))
    svid = await authority.get_x509_svid(WEB)
    leaf_pem = svid.chain[0].public_bytes(serialization.Encoding.PEM)
    node = tmp_path / "node"
    output = openssl_verify(tmp_path, other / "root.pem", node / "intermediate.pem", leaf_pem)
    assert "OK" not in output.splitlines()[-1]


async def test_svid_extensions(authority: Authority) -> None:
    svid = await authority.get_x509_svid(WEB, dns_names=["web.example.org", "web"])
    leaf = svid.chain[0]
    oids = {extension.oid for extension in leaf.extensions}
    # The X509-SVID profile, plus the AKI that RFC 5280 section 4.2.1.1 requires in
    # every certificate a CA issues.
    assert oids == {
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    }

    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [WEB]
    assert sorted(san.get_values_for_type(x509.DNSName)) == ["web", "web.example.org"]
    assert len(list(san)) == 3

    constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is False

    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_encipherment
    assert not usage.value.key_cert_sign
    assert not usage.value.crl_sign
    assert not usage.value.key_agreement

    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


async def test_svid_chain_and_key(authority: Authority, tmp_path: Path) -> None:
    svid = await authority.get_x509_svid(WEB)
    intermediate = x509.load_pem_x509_certificate((tmp_path / "node/intermediate.pem").read_bytes())
    root = x509.load_pem_x509_certificate((tmp_path / "node/bundle.pem").read_bytes())
    assert svid.chain[1:] == (intermediate,)
    assert root not in svid.chain
    assert svid.chain_der == b"".join(
        c.public_bytes(serialization.Encoding.DER) for c in svid.chain
    )
    assert x509.load_pem_x509_certificates(svid.chain_pem) == list(svid.chain)

    key = serialization.load_der_private_key(svid.key_der, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    assert key.public_key() == svid.chain[0].public_key()
    assert serialization.load_pem_private_key(svid.key_pem, password=None).public_key() == (
        key.public_key()
    )
    assert svid.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")


async def test_svid_validity_and_serial(authority: Authority) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    svid = await authority.get_x509_svid(WEB, ttl=600)
    after = datetime.now(UTC)
    assert before - timedelta(seconds=31) <= svid.not_before <= after - timedelta(seconds=29)
    assert before + timedelta(seconds=599) <= svid.not_after <= after + timedelta(seconds=600)
    assert svid.serial == svid.chain[0].serial_number
    assert svid.serial.bit_length() > 64


async def test_svid_cached_per_request(authority: Authority) -> None:
    first = await authority.get_x509_svid(WEB, dns_names=["a.example.org"])
    again = await authority.get_x509_svid(WEB, dns_names=["a.example.org"], hint="internal")
    other_ttl = await authority.get_x509_svid(WEB, dns_names=["a.example.org"], ttl=60)
    other_dns = await authority.get_x509_svid(WEB)
    assert again.serial == first.serial
    assert again.hint == "internal"
    assert first.hint == ""
    assert len({first.serial, other_ttl.serial, other_dns.serial}) == 3


@pytest.mark.parametrize(
    ("key_type", "expected_class", "size"),
    [
        ("ec-p256", ec.EllipticCurvePrivateKey, 256),
        ("ec-p384", ec.EllipticCurvePrivateKey, 384),
        ("rsa-2048", rsa.RSAPrivateKey, 2048),
        ("rsa-3072", rsa.RSAPrivateKey, 3072),
        ("rsa-4096", rsa.RSAPrivateKey, 4096),
    ],
    ids=["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096"],
)
async def test_svid_key_types(
    tmp_path: Path, key_type: str, expected_class: type, size: int
) -> None:
    node = make_ca(tmp_path)
    ca = Authority(file_settings(node, tmp_path / "state", svid_key_type=key_type))
    await ca.start()
    try:
        svid = await ca.get_x509_svid(WEB)
    finally:
        await ca.close()
    key = serialization.load_der_private_key(svid.key_der, password=None)
    assert isinstance(key, expected_class)
    assert key.key_size == size
    usage = svid.chain[0].extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert usage.key_encipherment == (expected_class is rsa.RSAPrivateKey)
    leaf_pem = svid.chain[0].public_bytes(serialization.Encoding.PEM)
    output = openssl_verify(tmp_path, node / "bundle.pem", node / "intermediate.pem", leaf_pem)
    assert output.strip().endswith(": OK")


@pytest.mark.parametrize("key_type", ["rsa-1024", "rsa-512", "ed25519", "EC-P256", ""])
def test_key_type_rejected(tmp_path: Path, key_type: str) -> None:
    with pytest.raises(UnsupportedKeyTypeError) as caught:
        Authority(CASettings(trust_domain=TD, state_dir=tmp_path, svid_key_type=key_type))
    assert caught.value.key_type == key_type
    assert repr(key_type) in str(caught.value)
    assert "ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096" in str(caught.value)


@pytest.mark.parametrize("algorithm", ["HS256", "none", "ES384", "es256"])
def test_jwt_algorithm_rejected(tmp_path: Path, algorithm: str) -> None:
    with pytest.raises(UnsupportedAlgorithmError) as caught:
        Authority(CASettings(trust_domain=TD, state_dir=tmp_path, jwt_algorithm=algorithm))
    assert caught.value.algorithm == algorithm
    assert "ES256, RS256, PS256" in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        ({"x509_svid_ttl": 0}, "x509_svid_ttl"),
        ({"jwt_svid_ttl": -5}, "jwt_svid_ttl"),
        ({"backdate_seconds": -1}, "backdate_seconds"),
        ({"cert_path": Path("/x.pem")}, "cert/key/bundle"),
    ],
    ids=["zero-x509-ttl", "negative-jwt-ttl", "negative-backdate", "cert-without-key"],
)
def test_settings_rejected(tmp_path: Path, overrides: dict[str, object], setting: str) -> None:
    settings = CASettings(trust_domain=TD, state_dir=tmp_path, **overrides)  # type: ignore[arg-type]
    with pytest.raises(InvalidSettingError) as caught:
        Authority(settings)
    assert caught.value.setting == setting


def test_trust_domain_rejected(tmp_path: Path) -> None:
    with pytest.raises(CAError, match=r"Example\.org"):
        Authority(CASettings(trust_domain="Example.org", state_dir=tmp_path))


@pytest.mark.parametrize(
    ("spiffe_id", "dns_names", "ttl", "field"),
    [
        ("spiffe://other.org/web", (), None, "SPIFFE ID"),
        ("spiffe://example.org", (), None, "SPIFFE ID"),
        ("spiffe://example.org/a//b", (), None, "SPIFFE ID"),
        ("https://example.org/web", (), None, "SPIFFE ID"),
        (WEB, ("bad name",), None, "DNS name"),
        (WEB, ("-leading.example.org",), None, "DNS name"),
        (WEB, (), 0, "TTL"),
        (WEB, (), -60, "TTL"),
    ],
    ids=[
        "other-trust-domain",
        "no-path",
        "empty-segment",
        "https-scheme",
        "dns-space",
        "dns-leading-dash",
        "zero-ttl",
        "negative-ttl",
    ],
)
async def test_svid_request_rejected(
    authority: Authority, spiffe_id: str, dns_names: tuple[str, ...], ttl: int | None, field: str
) -> None:
    with pytest.raises(SvidRequestError) as caught:
        await authority.get_x509_svid(spiffe_id, dns_names=dns_names, ttl=ttl)
    assert caught.value.field == field


async def test_remembered_request_still_checks_types(authority: Authority) -> None:
    # Valid requests are remembered by value; True == 1 must not reuse the entry of ttl=1.
    svid = await authority.get_x509_svid(WEB, ttl=1)
    assert (await authority.get_x509_svid(WEB, ttl=1)).serial == svid.serial
    with pytest.raises(SvidRequestError) as caught:
        await authority.get_x509_svid(WEB, ttl=True)
    assert caught.value.field == "TTL"
    with pytest.raises(SvidRequestError):
        await authority.get_x509_svid(WEB, dns_names="www.example.org")


async def test_ttl_capped_at_intermediate(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    node = make_ca(tmp_path, intermediate_ttl=timedelta(hours=2))
    ca = Authority(file_settings(node, tmp_path / "state"))
    await ca.start()
    try:
        with caplog.at_level(logging.WARNING, logger="agent.ca"):
            svid = await ca.get_x509_svid(WEB, ttl=3 * 3600)
        assert svid.not_after == ca.intermediate_not_after
    finally:
        await ca.close()
    capped = [r for r in caplog.records if "SVID TTL capped" in r.getMessage()]
    assert len(capped) == 1
    assert f"spiffe_id={WEB}" in capped[0].getMessage()
    assert "ttl_seconds=10800" in capped[0].getMessage()


def expiry_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "expires within 12 hours" in r.getMessage()]


async def test_expiry_warning_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    node = make_ca(tmp_path, intermediate_ttl=timedelta(hours=6))
    ca = Authority(file_settings(node, tmp_path / "state"))
    with caplog.at_level(logging.WARNING, logger="agent.ca"):
        await ca.start()
        # The rotation task checks the expiry on its first pass, right after start().
        deadline = asyncio.get_running_loop().time() + 2
        while not expiry_warnings(caplog) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        await ca.get_x509_svid(WEB)
        await asyncio.sleep(0.1)
        await ca.close()
    warnings = expiry_warnings(caplog)
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING


async def test_expired_intermediate_rejected(tmp_path: Path) -> None:
    long_ago = datetime.now(UTC) - timedelta(days=3)
    init_root(tmp_path / "root", TD, "ec-p256", timedelta(days=30), long_ago)
    node = tmp_path / "node"
    issue_intermediate(
        tmp_path / "root", "n", node, key_type="ec-p256", lifetime=timedelta(hours=1), now=long_ago
    )
    ca = Authority(file_settings(node, tmp_path / "state"))
    with pytest.raises(IntermediateExpiredError):
        await ca.start()
    assert not ca.ready


async def test_mismatched_key_rejected(tmp_path: Path) -> None:
    node = make_ca(tmp_path)
    other = tmp_path / "other"
    issue_intermediate(
        tmp_path / "root",
        "n2",
        other,
        key_type="ec-p256",
        lifetime=timedelta(hours=1),
        now=datetime.now(UTC),
    )
    settings = file_settings(node, tmp_path / "state", key_path=other / "intermediate.key")
    with pytest.raises(CAFileError, match="does not belong"):
        await Authority(settings).start()


async def test_wrong_bundle_rejected(tmp_path: Path) -> None:
    node = make_ca(tmp_path)
    init_root(tmp_path / "other", TD, "ec-p256", timedelta(days=1), datetime.now(UTC))
    settings = file_settings(node, tmp_path / "state", bundle_path=tmp_path / "other/root.pem")
    with pytest.raises(CAFileError, match="not signed by any root"):
        await Authority(settings).start()


async def test_missing_file_rejected(tmp_path: Path) -> None:
    node = make_ca(tmp_path)
    settings = file_settings(node, tmp_path / "state", cert_path=node / "absent.pem")
    with pytest.raises(CAFileError) as caught:
        await Authority(settings).start()
    assert caught.value.path == node / "absent.pem"
    assert "file not found" in str(caught.value)


async def test_use_before_start(tmp_path: Path) -> None:
    ca = Authority(CASettings(trust_domain=TD, state_dir=tmp_path))
    with pytest.raises(CANotReadyError):
        await ca.get_x509_svid(WEB)
    with pytest.raises(CANotReadyError):
        ca.x509_bundle()
    assert not ca.ready


async def test_x509_bundle(authority: Authority, tmp_path: Path) -> None:
    bundle = authority.x509_bundle()
    root = x509.load_pem_x509_certificate((tmp_path / "node/bundle.pem").read_bytes())
    assert bundle.trust_domain == TD
    assert bundle.certificates == (root,)
    assert bundle.der == root.public_bytes(serialization.Encoding.DER)
    assert bundle.pem == root.public_bytes(serialization.Encoding.PEM)
    assert bundle.version == 1
    assert authority.ready


async def test_dev_ca_created_and_reused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = CASettings(trust_domain=TD, state_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="agent.ca"):
        first = Authority(settings)
        await first.start()
        first_bundle = first.x509_bundle()
        await first.close()
    dev_warnings = [r for r in caplog.records if "development CA in use" in r.getMessage()]
    assert len(dev_warnings) == 1
    assert dev_warnings[0].levelno == logging.WARNING
    for name in ("root.key", "intermediate.key"):
        assert (tmp_path / "dev-ca" / name).stat().st_mode & 0o777 == 0o600

    second = Authority(settings)
    await second.start()
    try:
        assert second.x509_bundle().certificates == first_bundle.certificates
        svid = await second.get_x509_svid(WEB)
    finally:
        await second.close()
    leaf_pem = svid.chain[0].public_bytes(serialization.Encoding.PEM)
    dev = tmp_path / "dev-ca"
    output = openssl_verify(tmp_path, dev / "root.pem", dev / "intermediate.pem", leaf_pem)
    assert output.strip().endswith(": OK")


async def test_dev_ca_other_trust_domain(tmp_path: Path) -> None:
    first = Authority(CASettings(trust_domain=TD, state_dir=tmp_path))
    await first.start()
    old_root = first.x509_bundle().certificates
    await first.close()
    second = Authority(CASettings(trust_domain="other.org", state_dir=tmp_path))
    await second.start()
    try:
        assert second.x509_bundle().certificates != old_root
        svid = await second.get_x509_svid("spiffe://other.org/web")
    finally:
        await second.close()
    assert svid.spiffe_id == "spiffe://other.org/web"
