"""`attest-agent ca init` and `ca issue-intermediate`, run as real processes."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from agent.ca import Authority, CASettings
from agent.ca.files import read_private_key
from agent.commands.ca import parse_duration

TD = "example.org"


def attest_agent(*args: str | Path) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("attest-agent", path=str(Path(sys.executable).parent))
    command = [executable] if executable else [sys.executable, "-m", "agent"]
    return subprocess.run(
        [*command, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, timeout=30, check=False
    )


def init_and_issue(tmp_path: Path, *extra_init: str) -> tuple[Path, Path]:
    root, node = tmp_path / "root", tmp_path / "node"
    done = attest_agent("ca", "init", "--trust-domain", TD, "--out", root, *extra_init)
    assert done.returncode == 0, done.stderr
    done = attest_agent(
        "ca",
        "issue-intermediate",
        "--root",
        root,
        "--node",
        "node-1",
        "--ttl",
        "24h",
        "--out",
        node,
    )
    assert done.returncode == 0, done.stderr
    return root, node


@pytest.mark.parametrize(
    ("key_type", "key_class", "size"),
    [
        ("ec-p256", ec.EllipticCurvePrivateKey, 256),
        ("ec-p384", ec.EllipticCurvePrivateKey, 384),
        ("rsa-2048", rsa.RSAPrivateKey, 2048),
        ("rsa-3072", rsa.RSAPrivateKey, 3072),
        ("rsa-4096", rsa.RSAPrivateKey, 4096),
    ],
    ids=["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096"],
)
def test_ca_files_verify(tmp_path: Path, key_type: str, key_class: type, size: int) -> None:
    root, node = init_and_issue(tmp_path, "--key-type", key_type)
    for key_file in (root / "root.key", node / "intermediate.key"):
        assert key_file.stat().st_mode & 0o777 == 0o600
    assert (node / "bundle.pem").read_bytes() == (root / "root.pem").read_bytes()

    root_key = read_private_key(root / "root.key")
    assert isinstance(root_key, key_class)
    assert root_key.key_size == size

    done = openssl("verify", "-CAfile", root / "root.pem", node / "intermediate.pem")
    assert done.stdout.strip() == f"{node / 'intermediate.pem'}: OK", done.stderr
    done = openssl("verify", "-CAfile", root / "root.pem", root / "root.pem")
    assert done.returncode == 0, done.stderr


def test_ca_certificate_profile(tmp_path: Path) -> None:
    root_dir, node = init_and_issue(tmp_path)
    root = x509.load_pem_x509_certificate((root_dir / "root.pem").read_bytes())
    intermediate = x509.load_pem_x509_certificate((node / "intermediate.pem").read_bytes())

    for cert, path_length in ((root, None), (intermediate, 0)):
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        assert constraints.critical
        assert constraints.value.ca is True
        assert constraints.value.path_length == path_length
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
        assert usage.critical
        assert usage.value.key_cert_sign
        assert usage.value.crl_sign
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{TD}"]

    constraint = root.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraint.critical
    assert constraint.value.permitted_subtrees == [x509.UniformResourceIdentifier(TD)]
    lifetime = intermediate.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(hours=23, minutes=58) < lifetime <= timedelta(hours=24)


def test_name_constraint_enforced(tmp_path: Path) -> None:
    # A leaf for another trust domain, signed with the intermediate's key, must fail
    # openssl verification because of the root's name constraint.
    _, node = init_and_issue(tmp_path)
    intermediate = x509.load_pem_x509_certificate((node / "intermediate.pem").read_bytes())
    signer = read_private_key(node / "intermediate.key")

    leaf_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(intermediate.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://evil.org/x")]),
            critical=True,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(signer, hashes.SHA256())
    )

    leaf_path = tmp_path / "evil.pem"
    leaf_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    done = openssl(
        "verify",
        "-CAfile",
        node / "bundle.pem",
        "-untrusted",
        node / "intermediate.pem",
        leaf_path,
    )
    assert done.returncode != 0
    assert "permitted subtree violation" in done.stdout + done.stderr


async def test_agent_mints_from_cli_files(tmp_path: Path) -> None:
    _, node = init_and_issue(tmp_path)
    settings = CASettings(
        trust_domain=TD,
        state_dir=tmp_path / "state",
        cert_path=node / "intermediate.pem",
        key_path=node / "intermediate.key",
        bundle_path=node / "bundle.pem",
    )
    ca = Authority(settings)
    await ca.start()
    try:
        svid = await ca.get_x509_svid("spiffe://example.org/web")
    finally:
        await ca.close()
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(svid.chain[0].public_bytes(serialization.Encoding.PEM))
    done = openssl(
        "verify", "-CAfile", node / "bundle.pem", "-untrusted", node / "intermediate.pem", leaf
    )
    assert done.stdout.strip() == f"{leaf}: OK", done.stderr
    assert not (tmp_path / "state" / "dev-ca").exists()


def test_init_keeps_existing_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert attest_agent("ca", "init", "--trust-domain", TD, "--out", root).returncode == 0
    original = (root / "root.key").read_bytes()
    done = attest_agent("ca", "init", "--trust-domain", TD, "--out", root)
    assert done.returncode == 1
    assert "already exists; pass --force" in done.stderr
    assert (root / "root.key").read_bytes() == original
    forced = attest_agent("ca", "init", "--trust-domain", TD, "--out", root, "--force")
    assert forced.returncode == 0, forced.stderr
    assert (root / "root.key").read_bytes() != original
    assert (root / "root.key").stat().st_mode & 0o777 == 0o600


def test_init_rejects_rsa_1024(tmp_path: Path) -> None:
    done = attest_agent(
        "ca", "init", "--trust-domain", TD, "--out", tmp_path, "--key-type", "rsa-1024"
    )
    assert done.returncode == 2
    assert "invalid choice: 'rsa-1024'" in done.stderr
    assert not (tmp_path / "root.key").exists()


def test_init_rejects_bad_trust_domain(tmp_path: Path) -> None:
    done = attest_agent("ca", "init", "--trust-domain", "Example.ORG", "--out", tmp_path)
    assert done.returncode == 1
    assert "Example.ORG" in done.stderr
    assert not (tmp_path / "root.key").exists()


def test_issue_without_root(tmp_path: Path) -> None:
    done = attest_agent(
        "ca",
        "issue-intermediate",
        "--root",
        tmp_path / "absent",
        "--node",
        "n",
        "--out",
        tmp_path / "node",
    )
    assert done.returncode == 1
    assert "root.pem: file not found" in done.stderr


def test_intermediate_capped_at_root(tmp_path: Path) -> None:
    root, node = tmp_path / "root", tmp_path / "node"
    assert (
        attest_agent("ca", "init", "--trust-domain", TD, "--out", root, "--ttl", "2h").returncode
        == 0
    )
    done = attest_agent(
        "ca", "issue-intermediate", "--root", root, "--node", "n", "--ttl", "24h", "--out", node
    )
    assert done.returncode == 0, done.stderr
    assert "capped at the root's expiry" in done.stderr
    root_cert = x509.load_pem_x509_certificate((root / "root.pem").read_bytes())
    cert = x509.load_pem_x509_certificate((node / "intermediate.pem").read_bytes())
    assert cert.not_valid_after_utc == root_cert.not_valid_after_utc


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("24h", 86400), ("90m", 5400), ("1h30m", 5400), ("7d", 604800), ("45s", 45), ("3600", 3600)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "h", "24x", "1h 30m", "-5m", "0", "0h", "1.5h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)
