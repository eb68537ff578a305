"""Property tests: parsers that read untrusted or operator input raise only their error type.

The SPIFFE ID and manifest parsers have their own property tests
(tests/test_spiffeid_properties.py, tests/test_manifest_properties.py). This file
covers /proc/<pid>/cgroup parsing, the agent config file and overrides, the holder
scan's cgroup scope and the sock_diag reply parser.
"""

from __future__ import annotations

import string
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.attest.cgroups import CgroupInfo, parse_cgroup_file
from agent.attest.errors import CgroupParseError
from agent.attest.scope import cgroup_scope
from agent.config import Settings, load_settings
from agent.errors import ConfigError
from agent.peer.sockdiag import parse_peer_reply
from tests.support.cgroups import pod_segments

path_component = st.text(alphabet=string.ascii_letters + string.digits + "._-:@\\", max_size=70)
cgroup_path = st.lists(
    st.one_of(path_component, st.sampled_from(["..", ".", "kubepods", "kubepods.slice"])),
    max_size=8,
).map(lambda parts: "/" + "/".join(parts))
cgroup_line = st.tuples(
    st.integers(min_value=0, max_value=20),
    st.sampled_from(["", "pids", "memory", "cpu,cpuacct", "name=systemd", "x:y"]),
    st.one_of(cgroup_path, st.text(max_size=40)),
).map(lambda t: f"{t[0]}:{t[1]}:{t[2]}")


def parse_or_error(text: str) -> CgroupInfo | None:
    try:
        return parse_cgroup_file(text)
    except CgroupParseError as error:
        assert error.reason.value in ("invalid_cgroup", "ambiguous_cgroups")
        return None


@settings(max_examples=400)
@given(st.text(max_size=300))
def test_cgroup_random_text(text: str) -> None:
    parse_or_error(text)


@settings(max_examples=400)
@given(st.lists(cgroup_line, max_size=15).map("\n".join))
def test_cgroup_random_lines(text: str) -> None:
    parse_or_error(text)


@settings(max_examples=200)
@given(
    st.uuids(version=4),
    st.binary(min_size=32, max_size=32).map(bytes.hex),
    st.sampled_from(["cgroupfs", "systemd"]),
    st.sampled_from(["containerd", "crio", "docker"]),
    st.sampled_from(["burstable", "besteffort", "guaranteed"]),
    st.lists(path_component.filter(lambda c: "pod" not in c and len(c) < 60), max_size=3),
)
def test_cgroup_kubelet_layouts(
    pod: uuid.UUID, container: str, driver: str, runtime: str, qos: str, prefix: list[str]
) -> None:
    if driver == "cgroupfs" and runtime != "crio":
        runtime = "containerd"
    segments = pod_segments(str(pod), container, driver=driver, runtime=runtime, qos=qos)
    path = "/" + "/".join([p for p in prefix if p not in ("", ".", "..")] + segments)
    text = f"0::{path}\n12:pids:{path}\n1:name=systemd:/\n"
    info = parse_or_error(text)
    assert info is not None, text
    assert info.pod_uid == str(pod)
    assert info.container_id == container


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_holder_scope_random_text(text: str) -> None:
    # Points at an empty directory: every line must be skipped, none may raise.
    with tempfile.TemporaryDirectory() as root:
        assert cgroup_scope(text, Path(root)) == []


toml_scalar = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(str),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(max_size=30).map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"')
                             .replace("\n", "\\n") + '"'),
    st.sampled_from(['["/a", "/b"]', "[]", "[1, 2]", "{ x = 1 }", '"/tmp/x.sock"']),
)
setting_name = st.one_of(
    st.sampled_from([f.name for f in Settings.__dataclass_fields__.values()]),
    st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=12),
)


def load_or_error(text: str, overrides: dict[str, Any] | None = None) -> Settings | None:
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as handle:
        handle.write(text)
        handle.flush()
        try:
            return load_settings(Path(handle.name), overrides)
        except ConfigError as error:
            assert str(error)
            return None


@settings(max_examples=300)
@given(st.text(max_size=200))
def test_config_random_text(text: str) -> None:
    load_or_error(text)


@settings(max_examples=300)
@given(st.lists(st.tuples(setting_name, toml_scalar), max_size=6, unique_by=lambda t: t[0]))
def test_config_random_documents(pairs: list[tuple[str, str]]) -> None:
    lines = [f"{name} = {value}" for name, value in pairs if name[:3] != "ca_"]
    lines += ["[ca]"] + [f"{name[3:]} = {value}" for name, value in pairs if name[:3] == "ca_"]
    load_or_error("\n".join(lines) + "\n")


def test_config_invalid_utf8() -> None:
    # Found by fuzz/fuzz_parsers.py: tomllib raised UnicodeDecodeError, not ConfigError.
    assert load_or_error_bytes(b"::\n\x8e") is None


def load_or_error_bytes(data: bytes) -> Settings | None:
    with tempfile.NamedTemporaryFile("wb", suffix=".toml") as handle:
        handle.write(data)
        handle.flush()
        try:
            return load_settings(Path(handle.name))
        except ConfigError:
            return None


@settings(max_examples=300)
@given(
    st.dictionaries(
        setting_name,
        st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=20), st.booleans(),
                  st.lists(st.text(max_size=5), max_size=2)),
        max_size=4,
    )
)
def test_config_random_overrides(overrides: dict[str, Any]) -> None:
    load_or_error("", overrides)


@settings(max_examples=500)
@given(st.binary(max_size=120), st.integers(min_value=0, max_value=2**32 - 1))
def test_sockdiag_random_reply(reply: bytes, inode: int) -> None:
    try:
        peer = parse_peer_reply(reply, inode)
    except (ValueError, OSError):
        return
    assert 0 <= peer < 2**32


def test_sockdiag_short_error_reply() -> None:
    # Found by fuzz/fuzz_parsers.py: an NLMSG_ERROR header without its error code.
    reply = bytes.fromhex("b3b3b322" "0200" "1b00" "b3b3b3ff" "ffffffff" "ff")
    with pytest.raises(ValueError, match="has no error code"):
        parse_peer_reply(reply, 12345)
