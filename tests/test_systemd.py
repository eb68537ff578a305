"""systemd unit and example config: systemd-analyze, hardening settings and settings load."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.cli import build_parser
from agent.config import load_settings
from agent.telemetry.health import parse_health_address

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "attest-agent.service"
CONFIG = ROOT / "systemd" / "config.toml"
INSTALLED_PATH = "/usr/local/bin/attest-agent"
# systemd-analyze security scores exposure from 0 (locked down) to 100; the unit scores
# 40 ("4.0 OK") with systemd 252. A change that weakens the sandbox raises the score.
MAX_EXPOSURE = 40


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    return path


def agent_command() -> str:
    candidate = Path(sys.executable).parent / "attest-agent"
    path = str(candidate) if candidate.exists() else shutil.which("attest-agent")
    if path is None:
        pytest.skip("the attest-agent console script is not installed")
    return path


def installable_unit(directory: Path, text: str | None = None) -> Path:
    """Write the unit with ExecStart pointing at the installed attest-agent.

    systemd-analyze verify checks that the ExecStart program exists. The unit names
    /usr/local/bin/attest-agent, where a host install puts it; here the project is
    installed in a virtualenv, so the copy names that console script instead.
    """
    unit_text = UNIT.read_text() if text is None else text
    path = directory / "attest-agent.service"
    path.write_text(unit_text.replace(INSTALLED_PATH, agent_command()))
    return path


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), "verify", str(unit)],
        capture_output=True, text=True, timeout=120, check=False,
    )


def service_section() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def test_verify_clean(tmp_path: Path) -> None:
    result = verify(installable_unit(tmp_path))

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == ""


def test_verify_reports_unknown_directive(tmp_path: Path) -> None:
    # A control: verify only warns about an unknown key and still exits 0, which is why
    # the clean test also requires empty output.
    broken = UNIT.read_text().replace("PrivateTmp=yes", "PrivatTmp=yes")

    result = verify(installable_unit(tmp_path, broken))

    assert "Unknown key 'PrivatTmp'" in result.stderr


def test_verify_needs_exec_start_binary(tmp_path: Path) -> None:
    if Path(INSTALLED_PATH).exists():
        pytest.skip(f"{INSTALLED_PATH} exists on this machine, so verify cannot fail on it")
    unit = tmp_path / "attest-agent.service"
    unit.write_text(UNIT.read_text())

    result = verify(unit)

    assert result.returncode != 0
    assert f"Command {INSTALLED_PATH} is not executable" in result.stderr


def test_security_exposure(tmp_path: Path) -> None:
    unit = installable_unit(tmp_path)
    command = [
        systemd_analyze(), "security", "--offline=true", f"--threshold={MAX_EXPOSURE}", str(unit),
    ]

    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("Restart", "on-failure"),
        ("RuntimeDirectory", "attest-agent attest-agent/public"),
        ("RuntimeDirectoryPreserve", "yes"),
        ("StateDirectory", "attest-agent"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("ExecStart", f"{INSTALLED_PATH} run --config /etc/attest-agent/config.toml"),
    ],
)
def test_service_setting(key: str, expected: str) -> None:
    assert service_section()[key] == expected


def test_capabilities_match_daemonset() -> None:
    documents = yaml.safe_load_all((ROOT / "daemonset.yaml").read_text())
    daemonset = next(doc for doc in documents if doc and doc["kind"] == "DaemonSet")
    agent = daemonset["spec"]["template"]["spec"]["containers"][0]
    kubernetes = agent["securityContext"]["capabilities"]["add"]

    bounding = service_section()["CapabilityBoundingSet"].split()

    assert bounding == [f"CAP_{name}" for name in kubernetes]
    assert service_section()["AmbientCapabilities"] == ""


def test_example_config_loads() -> None:
    settings = load_settings(CONFIG)

    assert settings.socket_path == Path("/run/attest-agent/public/api.sock")
    assert settings.state_dir == Path("/var/lib/attest-agent")
    assert settings.manifests_dir == Path("/etc/attest-agent/manifests")
    assert settings.manifest_keys == (Path("/etc/attest-agent/keys/ops.pub"),)
    assert settings.ca_cert == Path("/etc/attest-agent/ca/intermediate.pem")
    assert settings.ca_key == Path("/etc/attest-agent/ca/intermediate.key")
    assert settings.ca_bundle == Path("/etc/attest-agent/ca/bundle.pem")
    assert settings.x509_svid_ttl == 3600
    assert settings.jwt_svid_ttl == 300


def test_config_paths_inside_unit_directories() -> None:
    # ProtectSystem=strict makes everything read-only except the unit's own runtime and
    # state directories, so the agent's writable paths must be inside them.
    settings = load_settings(CONFIG)
    service = service_section()
    runtime = [Path("/run") / name for name in service["RuntimeDirectory"].split()]
    state = Path("/var/lib") / service["StateDirectory"]

    assert settings.socket_path.parent in runtime
    assert settings.state_dir == state
    assert settings.internal_socket_path.is_relative_to(state)


def test_example_health_address_is_loopback() -> None:
    settings = load_settings(CONFIG)

    assert settings.health_address is not None
    host, port = parse_health_address(settings.health_address)
    assert host == "127.0.0.1"
    assert port == 8081


def test_run_parses_unit_arguments() -> None:
    arguments = service_section()["ExecStart"].split()[1:]

    parsed = build_parser().parse_args(arguments)

    assert parsed.command == "run"
    assert parsed.config == Path("/etc/attest-agent/config.toml")
    assert callable(parsed.handler)
