"""Settings: TOML file, flag overrides, defaults and validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import Settings, load_settings
from agent.errors import ConfigError

FULL_FILE = """
socket_path = "/run/agent/api.sock"
state_dir = "/var/lib/agent"
manifests_dir = "/etc/agent/manifests"
manifest_keys = ["/etc/agent/keys/a.pub", "/etc/agent/keys/b.pub"]
trust_domain = "example.org"
x509_svid_ttl = 600
jwt_svid_ttl = 120
log_level = "debug"
spiffe_id_template = "spiffe://{trust_domain}/k8s/{namespace}/{service_account}"
health_address = "127.0.0.1:8081"
max_connections = 100
reattest_interval = 5

[ca]
cert = "/etc/agent/ca/cert.pem"
key = "/etc/agent/ca/key.pem"
bundle = "/etc/agent/ca/bundle.pem"
"""


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_defaults_without_file() -> None:
    settings = load_settings()
    assert settings == Settings()
    assert settings.socket_path == Path("/tmp/attest-agent/public/api.sock")
    assert settings.trust_domain == "cluster.local"
    assert settings.uses_development_ca
    assert settings.internal_socket_path == Path("/tmp/attest-agent/state/internal/grpc.sock")


def test_file_sets_every_key(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, FULL_FILE))
    assert settings.socket_path == Path("/run/agent/api.sock")
    assert settings.state_dir == Path("/var/lib/agent")
    assert settings.manifests_dir == Path("/etc/agent/manifests")
    assert settings.manifest_keys == (Path("/etc/agent/keys/a.pub"), Path("/etc/agent/keys/b.pub"))
    assert settings.trust_domain == "example.org"
    assert settings.x509_svid_ttl == 600
    assert settings.jwt_svid_ttl == 120
    assert settings.log_level == "DEBUG"
    assert settings.spiffe_id_template == "spiffe://{trust_domain}/k8s/{namespace}/{service_account}"
    assert settings.health_address == "127.0.0.1:8081"
    assert settings.max_connections == 100
    assert settings.reattest_interval == 5.0
    assert settings.ca_cert == Path("/etc/agent/ca/cert.pem")
    assert settings.ca_key == Path("/etc/agent/ca/key.pem")
    assert settings.ca_bundle == Path("/etc/agent/ca/bundle.pem")
    assert not settings.uses_development_ca


def test_flags_override_file(tmp_path: Path) -> None:
    overrides = {
        "socket_path": Path("/tmp/other/api.sock"),
        "trust_domain": "flags.example",
        "manifest_keys": [Path("/k/flag.pub")],
        "log_level": None,  # an unset flag keeps the file's value
    }
    settings = load_settings(write_config(tmp_path, FULL_FILE), overrides)
    assert settings.socket_path == Path("/tmp/other/api.sock")
    assert settings.trust_domain == "flags.example"
    assert settings.manifest_keys == (Path("/k/flag.pub"),)
    assert settings.log_level == "DEBUG"


def test_trust_domain_id_accepted() -> None:
    settings = load_settings(None, {"trust_domain": "spiffe://example.org"})
    assert settings.trust_domain == "example.org"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param('socket_pth = "/x"\n', "unknown key 'socket_pth'", id="top-level-typo"),
        pytest.param('[ca]\ncertificate = "/x"\n', "unknown key 'ca.certificate'", id="ca-typo"),
        pytest.param('ca = "/x"\n', "must be a table", id="ca-not-table"),
        pytest.param('trust_domain = "Example.org"\n', "trust_domain 'Example.org'", id="td-upper"),
        pytest.param('trust_domain = "a.org/path"\n', "trust_domain 'a.org/path'", id="td-path"),
        pytest.param("trust_domain = 5\n", "trust_domain must be a string", id="td-int"),
        pytest.param("x509_svid_ttl = -1\n", "x509_svid_ttl must be between", id="ttl-neg"),
        pytest.param("x509_svid_ttl = true\n", "whole number of seconds", id="ttl-bool"),
        pytest.param('jwt_svid_ttl = "5m"\n', "jwt_svid_ttl must be a whole", id="ttl-str"),
        pytest.param("jwt_svid_ttl = 99999999\n", "jwt_svid_ttl must be between", id="ttl-big"),
        pytest.param('log_level = "verbose"\n', "log_level must be one of", id="log-level"),
        pytest.param('state_dir = "state"\n', "state_dir must be an absolute", id="relative"),
        pytest.param('manifests_dir = ""\n', "manifests_dir must be a non-empty", id="empty"),
        pytest.param("manifest_keys = 3\n", "manifest_keys must be a list", id="keys-int"),
        pytest.param(
            'socket_path = "/' + "s" * 120 + '"\n', "longer than 107 bytes", id="socket-long"
        ),
        pytest.param('[ca]\ncert = "/c.pem"\n', "cert and key must be set together", id="no-key"),
        pytest.param('[ca]\nbundle = "/b.pem"\n', "bundle is set without", id="bundle-only"),
        pytest.param("max_connections = 0\n", "max_connections must be between", id="conns-0"),
        pytest.param("reattest_interval = 0\n", "reattest_interval must be in", id="reattest-0"),
        pytest.param('spiffe_id_template = ""\n', "spiffe_id_template must be", id="template"),
        pytest.param("socket_path = [\n", "is not valid TOML", id="bad-toml"),
    ],
)
def test_invalid_file(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write_config(tmp_path, text))
    assert expected in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_settings(missing)
    assert str(missing) in str(caught.value)
    assert "not found" in str(caught.value)


def test_unknown_override() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"socket": "/x"})
    assert "unknown setting 'socket'" in str(caught.value)
