"""Agent settings: one frozen dataclass, read from a TOML file and overridden by flags.

Call ``load_settings(path, overrides)``: it reads the file (if any) with tomllib, applies
the command-line overrides on top and validates every value, raising ConfigError that
names the setting, the bad value and the fix. Unknown keys are rejected so that a typo
never silently falls back to a default. With no file and no overrides the agent runs
with a development CA and default paths under /tmp/attest-agent/.

File layout (every key optional)::

    socket_path = "/tmp/attest-agent/public/api.sock"
    state_dir = "/tmp/attest-agent/state"
    manifests_dir = "/tmp/attest-agent/manifests"
    manifest_keys = ["/etc/attest-agent/keys/ops.pub"]
    trust_domain = "cluster.local"
    x509_svid_ttl = 3600
    jwt_svid_ttl = 300
    log_level = "INFO"
    spiffe_id_template = "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
    health_address = "127.0.0.1:8081"   # "" turns the HTTP health endpoint off
    max_connections = 4096
    reattest_interval = 30.0
    audit_log = "-"                       # a file path, "-" for stdout, "" for none
    admin_socket = "/tmp/attest-agent/state/admin/admin.sock"  # default: under state_dir

    [ca]
    cert = "/etc/attest-agent/ca/intermediate.pem"
    key = "/etc/attest-agent/ca/intermediate.key"
    bundle = "/etc/attest-agent/ca/bundle.pem"
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from agent.spiffeid import InvalidSpiffeIdError, parse_trust_domain
from agent.telemetry.errors import HealthAddressError
from agent.telemetry.health import DEFAULT_HEALTH_ADDRESS, parse_health_address

__all__ = ["AUDIT_TO_STDOUT", "DEFAULT_ROOT", "LOG_LEVELS", "Settings", "load_settings"]

DEFAULT_ROOT = Path("/tmp/attest-agent")  # noqa: S108 - documented default location
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH_BYTES = 107
_MAX_TTL_SECONDS = 30 * 24 * 3600
_MIN_X509_TTL_SECONDS = 10
_MIN_JWT_TTL_SECONDS = 10
_MAX_CONNECTIONS_LIMIT = 1_000_000
AUDIT_TO_STDOUT = "-"


@dataclass(frozen=True, slots=True)
class Settings:
    """Every agent setting, after validation.

    ``spiffe_id_template`` None means the manifest store's own default template.
    ``ca_cert``/``ca_key``/``ca_bundle`` None means a development CA kept in
    ``state_dir``. ``health_address`` None disables the HTTP health endpoint.
    ``reattest_interval`` is in seconds; TTLs are in whole seconds. ``audit_log`` is a
    file path, ``"-"`` for stdout, or None for no audit log. ``admin_socket`` None
    means ``<state_dir>/admin/admin.sock`` (see ``admin_socket_path``). The admin
    socket's directory is created with mode 0700 and must keep that mode.
    """

    socket_path: Path = DEFAULT_ROOT / "public" / "api.sock"
    state_dir: Path = DEFAULT_ROOT / "state"
    manifests_dir: Path = DEFAULT_ROOT / "manifests"
    manifest_keys: tuple[Path, ...] = ()
    trust_domain: str = "cluster.local"
    x509_svid_ttl: int = 3600
    jwt_svid_ttl: int = 300
    log_level: str = "INFO"
    spiffe_id_template: str | None = None
    ca_cert: Path | None = None
    ca_key: Path | None = None
    ca_bundle: Path | None = None
    health_address: str | None = DEFAULT_HEALTH_ADDRESS
    max_connections: int = 4096
    reattest_interval: float = 30.0
    # Audit records go to stdout by default: the agent logs to stderr, so stdout carries
    # only audit lines and a log collector can keep the two streams apart.
    audit_log: str | None = AUDIT_TO_STDOUT
    admin_socket: Path | None = None

    @property
    def internal_socket_path(self) -> Path:
        """Socket of the internal gRPC server, in a directory only the agent can enter."""
        return self.state_dir / "internal" / "grpc.sock"

    @property
    def admin_socket_path(self) -> Path:
        """Socket of the root-only admin protocol (``attest-agent drift``)."""
        if self.admin_socket is not None:
            return self.admin_socket
        return self.state_dir / "admin" / "admin.sock"

    @property
    def uses_development_ca(self) -> bool:
        return self.ca_cert is None


# TOML key -> Settings field. The [ca] table's keys get a "ca_" prefix.
_TOP_LEVEL_KEYS: frozenset[str] = frozenset(
    field.name for field in dataclasses.fields(Settings) if not field.name.startswith("ca_")
)
_CA_KEYS: frozenset[str] = frozenset({"cert", "key", "bundle"})


def load_settings(path: Path | None = None, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Read settings from ``path`` (TOML), apply ``overrides`` and validate the result.

    ``overrides`` uses the Settings field names; None values are ignored, so an unset
    command-line flag keeps the file's value.
    """
    values: dict[str, Any] = _read_file(path) if path is not None else {}
    for name, value in (overrides or {}).items():
        if name not in _TOP_LEVEL_KEYS and name not in {f"ca_{key}" for key in _CA_KEYS}:
            raise ConfigError(f"unknown setting {name!r}")
        if value is not None:
            values[name] = value
    source = str(path) if path is not None else "command line"
    return _build(values, source)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} not found: check the --config path") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not valid UTF-8 ({exc}): save it as UTF-8"
        ) from exc

    values: dict[str, Any] = {}
    for key, value in document.items():
        if key == "ca":
            values.update(_read_ca_table(path, value))
        elif key in _TOP_LEVEL_KEYS:
            values[key] = value
        else:
            allowed = ", ".join(sorted((*_TOP_LEVEL_KEYS, "[ca]")))
            raise ConfigError(f"unknown key {key!r} in {path}: known keys are {allowed}")
    return values


def _read_ca_table(path: Path, table: object) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"'ca' in {path} must be a table ([ca]), got {table!r}")
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in _CA_KEYS:
            allowed = ", ".join(sorted(_CA_KEYS))
            raise ConfigError(f"unknown key 'ca.{key}' in {path}: known keys are {allowed}")
        values[f"ca_{key}"] = value
    return values


def _build(values: Mapping[str, Any], source: str) -> Settings:
    defaults = Settings()
    settings = Settings(
        socket_path=_path(values, "socket_path", defaults.socket_path),
        state_dir=_path(values, "state_dir", defaults.state_dir),
        manifests_dir=_path(values, "manifests_dir", defaults.manifests_dir),
        manifest_keys=_paths(values, "manifest_keys"),
        trust_domain=_trust_domain(values.get("trust_domain", defaults.trust_domain)),
        x509_svid_ttl=_int(values, "x509_svid_ttl", defaults.x509_svid_ttl, _MIN_X509_TTL_SECONDS),
        jwt_svid_ttl=_int(values, "jwt_svid_ttl", defaults.jwt_svid_ttl, _MIN_JWT_TTL_SECONDS),
        log_level=_log_level(values.get("log_level", defaults.log_level)),
        spiffe_id_template=_optional_str(values, "spiffe_id_template"),
        ca_cert=_optional_path(values, "ca_cert"),
        ca_key=_optional_path(values, "ca_key"),
        ca_bundle=_optional_path(values, "ca_bundle"),
        health_address=_health_address(values.get("health_address", defaults.health_address)),
        max_connections=_max_connections(values.get("max_connections", defaults.max_connections)),
        reattest_interval=_reattest_interval(
            values.get("reattest_interval", defaults.reattest_interval)
        ),
        audit_log=_audit_log(values.get("audit_log", defaults.audit_log)),
        admin_socket=_optional_path(values, "admin_socket"),
    )
    _check_socket_path("socket_path", settings.socket_path)
    _check_socket_path("admin_socket", settings.admin_socket_path)
    _check_ca_files(settings, source)
    return settings


def _path(values: Mapping[str, Any], name: str, default: Path) -> Path:
    value = values.get(name, default)
    if not isinstance(value, str | Path) or str(value) == "":
        raise ConfigError(f"{name} must be a non-empty path string, got {value!r}")
    path = Path(value)
    if not path.is_absolute():
        raise ConfigError(f"{name} must be an absolute path, got {str(value)!r}")
    return path


def _optional_path(values: Mapping[str, Any], name: str) -> Path | None:
    if values.get(name) is None:
        return None
    return _path(values, name, Path())


def _paths(values: Mapping[str, Any], name: str) -> tuple[Path, ...]:
    raw = values.get(name, ())
    if isinstance(raw, str | Path):
        raw = [raw]
    if not isinstance(raw, list | tuple):
        raise ConfigError(f"{name} must be a list of paths, got {raw!r}")
    return tuple(_path({name: item}, name, Path()) for item in raw)


def _optional_str(values: Mapping[str, Any], name: str) -> str | None:
    value = values.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _int(values: Mapping[str, Any], name: str, default: int, minimum: int) -> int:
    value = values.get(name, default)
    # bool is an int subclass; `x509_svid_ttl = true` is a mistake, not 1 second.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be a whole number of seconds, got {value!r}")
    if not minimum <= value <= _MAX_TTL_SECONDS:
        raise ConfigError(
            f"{name} must be between {minimum} and {_MAX_TTL_SECONDS} seconds, got {value}"
        )
    return value


def _trust_domain(value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"trust_domain must be a string such as 'example.org', got {value!r}")
    try:
        return str(parse_trust_domain(value))
    except InvalidSpiffeIdError as exc:
        raise ConfigError(f"trust_domain {value!r} is invalid: {exc}") from exc


def _log_level(value: object) -> str:
    if not isinstance(value, str) or value.upper() not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return value.upper()


def _max_connections(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"max_connections must be a whole number, got {value!r}")
    if not 1 <= value <= _MAX_CONNECTIONS_LIMIT:
        raise ConfigError(
            f"max_connections must be between 1 and {_MAX_CONNECTIONS_LIMIT}, got {value}"
        )
    return value


def _reattest_interval(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"reattest_interval must be a number of seconds, got {value!r}")
    if not 0 < value <= 3600:
        raise ConfigError(f"reattest_interval must be in (0, 3600] seconds, got {value}")
    return float(value)


def _health_address(value: object) -> str | None:
    # An empty string turns the endpoint off; None comes from Settings built in code.
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(
            f"health_address must be a string such as '127.0.0.1:8081', got {value!r}"
        )
    try:
        parse_health_address(value)
    except HealthAddressError as exc:
        raise ConfigError(str(exc)) from exc
    return value


def _audit_log(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"audit_log must be a path string, '-' or '', got {value!r}")
    if value != AUDIT_TO_STDOUT and not Path(value).is_absolute():
        raise ConfigError(
            f"audit_log must be an absolute path, '-' for stdout or '' for none, got {value!r}"
        )
    return value


def _check_socket_path(name: str, path: Path) -> None:
    if len(str(path).encode()) > _MAX_SOCKET_PATH_BYTES:
        raise ConfigError(
            f"{name} {str(path)!r} is longer than {_MAX_SOCKET_PATH_BYTES} bytes, "
            "the limit for Unix socket addresses: choose a shorter path"
        )


def _check_ca_files(settings: Settings, source: str) -> None:
    if (settings.ca_cert is None) != (settings.ca_key is None):
        raise ConfigError(
            f"[ca] cert and key must be set together (in {source}): set both to use your "
            "own intermediate CA, or neither for a development CA"
        )
    if settings.ca_bundle is not None and settings.ca_cert is None:
        raise ConfigError(f"[ca] bundle is set without cert and key (in {source}): set all three")
