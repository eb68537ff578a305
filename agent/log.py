"""Structured logging: fixed message sentences with key=value fields.

Call ``event(logger, level, "attestation denied", pid=..., reason=...)``. The message is
a fixed sentence; everything that varies goes in named fields, whose names are listed in
FIELD_NAMES so that log queries stay stable. Never pass keys, tokens or key files.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

# Field names used across the agent. Keep this list the single place they are defined.
FIELD_NAMES: frozenset[str] = frozenset(
    {
        "pid",
        "uid",
        "gid",
        "start_time",
        "conn_id",
        "exe_sha256",
        "exe_path",
        "pod_uid",
        "container_id",
        "systemd_unit",
        "spiffe_id",
        "trust_domain",
        "reason",
        "detail",
        "error",
        "path",
        "file",
        "key",
        "count",
        "limit",
        "method",
        "api",
        "resource",
        "version",
        "nonce",
        "serial",
        "not_after",
        "ttl_seconds",
        "elapsed_ms",
        "address",
        "socket",
        "state_dir",
        "manifests_dir",
        "manifest_keys",
        "signal",
    }
)


def _quote(value: object) -> str:
    text = str(value)
    if text == "" or any(ch in text for ch in ' "=\n\t'):
        return json.dumps(text)
    return text


def format_fields(fields: dict[str, Any]) -> str:
    """Render fields as ``key=value`` pairs, quoting values with spaces or quotes."""
    pairs = (f"{name}={_quote(value)}" for name, value in fields.items() if value is not None)
    return " ".join(pairs)


def is_logged_occurrence(count: int) -> bool:
    """Return True for the 1st, 2nd, 4th, 8th, ... occurrence, so repeats log rarely."""
    return count > 0 and count & (count - 1) == 0


def event(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    """Log one event: a fixed sentence followed by its key=value fields."""
    if not logger.isEnabledFor(level):
        return
    rendered = format_fields(fields)
    if rendered:
        logger.log(level, "%s %s", message, rendered)
    else:
        logger.log(level, "%s", message)


def configure(level: str = "INFO") -> None:
    """Configure root logging for the daemon: one line per event on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("time=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
