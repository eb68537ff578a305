"""The committed Workload API code matches proto/workload.proto and the py-spiffe client."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
GENERATED = REPO_ROOT / "agent" / "_proto"
GENERATED_FILES = ("__init__.py", "workload_pb2.py", "workload_pb2.pyi", "workload_pb2_grpc.py")

# Prints every message's fields and the service's methods as JSON, from the descriptor
# of the module named in argv[1]. It runs in its own process because py-spiffe and
# agent._proto register the same top-level message names in the default pool.
DESCRIBE_SCRIPT = r"""
import importlib, json, sys

module = importlib.import_module(sys.argv[1])
file = module.DESCRIPTOR

def describe_message(message):
    fields = {}
    for field in message.fields:
        entry = {"number": field.number, "type": field.type, "repeated": field.is_repeated}
        if field.message_type is not None:
            entry["message"] = field.message_type.full_name
        fields[field.name] = entry
    nested = {nested.name: describe_message(nested) for nested in message.nested_types}
    return {"fields": fields, "nested": nested}

service = file.services_by_name["SpiffeWorkloadAPI"]
print(json.dumps({
    "package": file.package,
    "service": service.full_name,
    "methods": {
        method.name: [method.input_type.full_name, method.output_type.full_name,
                      method.server_streaming, method.client_streaming]
        for method in service.methods
    },
    "messages": {
        name: describe_message(message) for name, message in file.message_types_by_name.items()
    },
}, sort_keys=True))
"""


def describe(module: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", DESCRIBE_SCRIPT, module],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    described: dict[str, object] = json.loads(result.stdout)
    return described


def test_generated_code_is_current(tmp_path: Path) -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools (test extra) is needed to regenerate the code")
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for name in GENERATED_FILES:
        committed = (GENERATED / name).read_text()
        fresh = (tmp_path / name).read_text()
        assert committed == fresh, f"agent/_proto/{name} is stale: run scripts/gen_proto.py"


def test_wire_matches_py_spiffe() -> None:
    # Look the package up without importing it: importing py-spiffe here would register
    # its messages in this process's default pool next to agent._proto.
    if importlib.util.find_spec("spiffe") is None:
        pytest.skip("py-spiffe (test extra) provides the reference proto")
    ours = describe("agent._proto.workload_pb2")
    theirs = describe("spiffe._proto.workload_pb2")
    assert ours["package"] == ""
    assert ours["service"] == "SpiffeWorkloadAPI"
    assert ours["methods"] == theirs["methods"]
    ours_messages = ours["messages"]
    theirs_messages = theirs["messages"]
    assert isinstance(ours_messages, dict)
    assert isinstance(theirs_messages, dict)
    # py-spiffe may carry newer optional messages (WIT-SVID); every one we define must
    # be identical to its counterpart.
    for name, message in ours_messages.items():
        assert name in theirs_messages, f"message {name} is not in the standard"
        assert message == theirs_messages[name], f"message {name} differs from py-spiffe"


def test_methods_of_standard() -> None:
    described = describe("agent._proto.workload_pb2")
    methods = described["methods"]
    assert isinstance(methods, dict)
    assert sorted(methods) == [
        "FetchJWTBundles",
        "FetchJWTSVID",
        "FetchX509Bundles",
        "FetchX509SVID",
        "ValidateJWTSVID",
    ]
    assert methods["FetchX509SVID"] == ["X509SVIDRequest", "X509SVIDResponse", True, False]
    assert methods["FetchJWTSVID"] == ["JWTSVIDRequest", "JWTSVIDResponse", False, False]
