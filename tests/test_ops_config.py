"""Settings of the operations features: health_address, audit_log and admin_socket."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import Settings, load_settings
from agent.errors import ConfigError


def settings_from(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return load_settings(path)


def test_ops_defaults() -> None:
    settings = load_settings()
    assert settings.health_address == "127.0.0.1:8081"
    assert settings.audit_log == "-"
    assert settings.admin_socket is None
    assert settings.admin_socket_path == Path("/tmp/attest-agent/state/admin/admin.sock")


def test_admin_socket_follows_state_dir(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, 'state_dir = "/var/lib/agent"\n')
    assert settings.admin_socket_path == Path("/var/lib/agent/admin/admin.sock")


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        pytest.param('health_address = ""\n', "health_address", None, id="health-off"),
        pytest.param('health_address = "[::1]:9090"\n', "health_address", "[::1]:9090",
                     id="health-ipv6"),
        pytest.param('audit_log = ""\n', "audit_log", None, id="audit-off"),
        pytest.param('audit_log = "-"\n', "audit_log", "-", id="audit-stdout"),
        pytest.param('audit_log = "/var/log/agent.jsonl"\n', "audit_log",
                     "/var/log/agent.jsonl", id="audit-file"),
        pytest.param('admin_socket = "/run/agent-admin/a.sock"\n', "admin_socket_path",
                     Path("/run/agent-admin/a.sock"), id="admin-path"),
    ],
)
def test_ops_values(tmp_path: Path, text: str, field: str, expected: object) -> None:
    assert getattr(settings_from(tmp_path, text), field) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param('health_address = "localhost:8081"\n',
                     "invalid health_address 'localhost:8081': 'localhost' is not an IP address",
                     id="health-hostname"),
        pytest.param("health_address = 8081\n",
                     "health_address must be a string such as '127.0.0.1:8081', got 8081",
                     id="health-number"),
        pytest.param('audit_log = "audit.jsonl"\n',
                     "audit_log must be an absolute path, '-' for stdout or '' for none, "
                     "got 'audit.jsonl'", id="audit-relative"),
        pytest.param('admin_socket = "relative.sock"\n',
                     "admin_socket must be an absolute path, got 'relative.sock'",
                     id="admin-relative"),
        pytest.param(f'admin_socket = "/{"a" * 120}.sock"\n',
                     "admin_socket '/" + "a" * 120 + ".sock' is longer than 107 bytes",
                     id="admin-too-long"),
        pytest.param(f'state_dir = "/{"s" * 100}"\n', "admin_socket '/" + "s" * 100,
                     id="state-dir-too-long-for-admin"),
    ],
)
def test_ops_invalid(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from(tmp_path, text)
    assert message in str(caught.value)
