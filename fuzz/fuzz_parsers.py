"""Coverage-guided fuzzing (atheris) of the parsers that read untrusted bytes.

Run: ``python fuzz/fuzz_parsers.py -runs=100000`` or ``-max_total_time=60``; any
libFuzzer flag works. The first input byte picks the target: manifest bytes, a
/proc/<pid>/cgroup file, a SPIFFE ID, the agent's TOML config, or a sock_diag reply.
Each target may raise only its documented error type (see docs/security.md); anything
else is a crash that atheris reports with the input that caused it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from agent.attest.cgroups import parse_cgroup_file
    from agent.attest.errors import CgroupParseError
    from agent.attest.scope import cgroup_scope
    from agent.config import load_settings
    from agent.errors import ConfigError
    from agent.manifests import DEFAULT_SPIFFE_ID_TEMPLATE, ManifestSchemaError, parse_manifest
    from agent.peer.sockdiag import parse_peer_reply
    from agent.spiffeid import InvalidSpiffeIdError, SpiffeId

_CONFIG_FILE = Path(tempfile.mkdtemp(prefix="fuzz-config-")) / "agent.toml"
_EMPTY_CGROUP_ROOT = _CONFIG_FILE.parent


def fuzz_manifest(data: bytes) -> None:
    with contextlib.suppress(ManifestSchemaError):
        parse_manifest(data, file="fuzz.json", trust_domain="cluster.local",
                       spiffe_id_template=DEFAULT_SPIFFE_ID_TEMPLATE)


def fuzz_cgroup(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")
    with contextlib.suppress(CgroupParseError):
        parse_cgroup_file(text)
    if cgroup_scope(text, _EMPTY_CGROUP_ROOT):
        raise RuntimeError("an empty cgroup root produced a scope")


def fuzz_spiffe_id(data: bytes) -> None:
    with contextlib.suppress(InvalidSpiffeIdError):
        SpiffeId.parse(data.decode("utf-8", errors="replace"))


def fuzz_config(data: bytes) -> None:
    _CONFIG_FILE.write_bytes(data)
    with contextlib.suppress(ConfigError):
        load_settings(_CONFIG_FILE)


def fuzz_sockdiag(data: bytes) -> None:
    with contextlib.suppress(ValueError, OSError):
        parse_peer_reply(data, 12345)


TARGETS = [fuzz_manifest, fuzz_cgroup, fuzz_spiffe_id, fuzz_config, fuzz_sockdiag]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    TARGETS[data[0] % len(TARGETS)](data[1:])


def main() -> None:
    os.environ.setdefault("PYTHONHASHSEED", "0")
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
