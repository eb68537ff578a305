"""`attest-agent attest`, the init-container check, run as a real process on real files.

Keys and signatures come from the openssl command line. The checked binary is a copied
``sleep`` with its own digest. For the cgroup cases the command itself runs inside a
real pod cgroup, so /proc/self/cgroup names the pod as it does in a Kubernetes pod.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.commands.attest import EXIT_POD_UID, InitCheckError, resolve_pod_uid
from tests.support.cgroups import pod_cgroup
from tests.support.processes import CopiedBinary, copy_sleep, start_process
from tests.test_manifest_support import KeyPair, make_key, openssl_sign, pod_manifest

ATTEST = [sys.executable, "-m", "agent", "attest"]
SPIFFE_ID = "spiffe://cluster.local/ns/shop/sa/web"
# The cgroup file of a process outside any pod: a non-pod v1 group and the v2 root.
NO_POD_CGROUP = "4:memory:/process_api/3dcb01624deb246c40cdba3fc622db87\n0::/\n"


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    directory = tmp_path_factory.mktemp("keys")
    return {
        "p256": make_key(directory, "p256"),
        "ed25519": make_key(directory, "ed25519"),
        "rogue": make_key(directory / "rogue", "p256"),
    }


@pytest.fixture
def binary(tmp_path: Path) -> CopiedBinary:
    return copy_sleep(tmp_path / "bin", "main-container")


@pytest.fixture(autouse=True)
def no_pod_uid_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    # Child processes inherit the environment; each test sets POD_UID itself.
    monkeypatch.delenv("POD_UID", raising=False)


def write_signed(
    directory: Path, document: dict[str, Any], key: KeyPair, name: str = "web.json"
) -> Path:
    path = directory / name
    path.write_text(json_text(document))
    openssl_sign(key, path)
    return path


def json_text(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2) + "\n"


def manifest_for(binary: CopiedBinary, pod_uid: str | None, **overrides: Any) -> dict[str, Any]:
    return pod_manifest(exe_sha256=[f"sha256:{binary.sha256}"], pod_uid=pod_uid, **overrides)


def attest(
    manifest: Path,
    key: KeyPair,
    exe: Path,
    *extra: str | Path,
    pod_uid: str | None = None,
    cgroup_dirs: Sequence[Path] = (),
) -> Result:
    """Run the command, in ``cgroup_dirs`` when given, with POD_UID set when given."""
    argv = [*ATTEST, "--manifest", str(manifest), "--pubkey", str(key.public),
            "--exe", str(exe), *map(str, extra)]
    env = {"POD_UID": pod_uid} if pod_uid is not None else {}
    if not cgroup_dirs:
        completed = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, **env},
        )
        return Result(completed.returncode, completed.stdout, completed.stderr)
    with start_process(argv, env=env, cgroup_dirs=cgroup_dirs) as child:
        stdout, stderr = child.popen.communicate(timeout=60)
        return Result(child.popen.returncode, stdout, stderr)


def assert_one_line(result: Result, code: int, *fragments: str) -> None:
    """Check the exit code, that stderr is one line, and that it names every fragment."""
    assert result.code == code, result
    assert result.stdout == ""
    assert result.stderr.startswith("attest-agent attest: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def test_attest_with_pod_uid_variable(
    tmp_path: Path, keys: dict[str, KeyPair], binary: CopiedBinary
) -> None:
    pod_uid = str(uuid.uuid4())
    manifest = write_signed(tmp_path, manifest_for(binary, pod_uid), keys["p256"])
    result = attest(manifest, keys["p256"], binary.path, pod_uid=pod_uid)
    assert result.code == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == (
        f"{manifest}: OK: grants {SPIFFE_ID} to {binary.path} (sha256:{binary.sha256}) "
        f"in pod {pod_uid} (pod UID from POD_UID)\n"
    )


def test_attest_pod_uid_from_cgroup(
    tmp_path: Path, keys: dict[str, KeyPair], binary: CopiedBinary
) -> None:
    with pod_cgroup("pids", driver="systemd") as pod:
        assert pod.pod_uid is not None
        manifest = write_signed(tmp_path, manifest_for(binary, pod.pod_uid), keys["p256"])
        result = attest(manifest, keys["p256"], binary.path, cgroup_dirs=[pod.path])
    assert result.code == 0, result.stderr
    assert result.stdout.endswith(f"in pod {pod.pod_uid} (pod UID from cgroup)\n")
    assert result.stdout.count("\n") == 1


def test_attest_both_sources_agree(
    tmp_path: Path, keys: dict[str, KeyPair], binary: CopiedBinary
) -> None:
    with pod_cgroup("pids") as pod:
        assert pod.pod_uid is not None
        manifest = write_signed(tmp_path, manifest_for(binary, pod.pod_uid), keys["p256"])
        result = attest(manifest, keys["p256"], binary.path,
                        pod_uid=pod.pod_uid.upper(), cgroup_dirs=[pod.path])
    assert result.code == 0, result.stderr
    assert result.stdout.endswith(f"in pod {pod.pod_uid} (pod UID from POD_UID and cgroup)\n")


def test_attest_sources_disagree(
    tmp_path: Path, keys: dict[str, KeyPair], binary: CopiedBinary
) -> None:
    other = str(uuid.uuid4())
    with pod_cgroup("pids") as pod:
        assert pod.pod_uid is not None
        manifest = write_signed(tmp_path, manifest_for(binary, pod.pod_uid), keys["p256"])
        result = attest(manifest, keys["p256"], binary.path,
                        pod_uid=other, cgroup_dirs=[pod.path])
    assert_one_line(result, 7, "pod UID mismatch", f"POD_UID is {other}", pod.pod_uid)


def test_attest_pod_uid_mismatch(
    tmp_path: Path, keys: dict[str, KeyPair], binary: CopiedBinary
) -> None:
    manifest_pod, this_pod = str(uuid.uuid4()), str(uuid.uuid4())
    manifest = write_signed(tmp_path, manifest_for(binary, manifest_pod), keys["p256"])
    result = attest(manifest, keys["p256"], binary.path, pod_uid=this_pod)
    assert_one_line(
        result, 7, "pod UID mismatch", f"pod_uid {manifest_pod}", f"this pod is {this_pod}"
    )


def test_attest_tampered_manifest(
    tmp_path: Path, keys: dict[str, KeyPair], binary: CopiedBinary
) -> None:
    pod_uid = str(uuid.uuid4())
    manifest = write_signed(tmp_path, manifest_for(binary, pod_uid), keys["p256"])
    # Same length, one character changed: a widened grant to another service account.
    manifest.write_text(manifest.read_text().replace('"web"', '"wex"'))
    result = attest(manifest, keys["p256"], binary.path, pod_uid=pod_uid)
    assert_one_line(result, 3, "signature", "does not verify", str(manifest))


def test_attest_wrong_key(tmp_path: Path, keys: dict[str, KeyPair], binary: CopiedBinary) -> None:
    pod_uid = str(uuid.uuid4())
    manifest = write_signed(tmp_path, manifest_for(binary, pod_uid), keys["rogue"])
    result = attest(manifest, keys["p256"], binary.path, pod_uid=pod_uid)
    assert_one_line(result, 3, "does not verify with any of the 1 trusted keys")


def test_attest_missing_signature(
    tmp_path: Path, keys: dict[str, KeyPair], binary: CopiedBinary
) -> None:
    pod_uid = str(uuid.uuid4())
    manifest = write_signed(tmp_path, manifest_for(binary, pod_uid), keys["p256"])
    Path(f"{manifest}.sig").unlink()
    result = attest(manifest, keys["p256"], binary.path, pod_uid=pod_uid)
    assert_one_line(result, 3, f"{manifest}.sig", "No such file")


def test_attest_explicit_sig_ed25519(
    tmp_path: Path, keys: dict[str, KeyPair], binary: CopiedBinary
) -> None:
    pod_uid = str(uuid.uuid4())
    manifest = tmp_path / "web.json"
    manifest.write_text(json_text(manifest_for(binary, pod_uid)))
    signature = openssl_sign(keys["ed25519"], manifest, tmp_path / "detached.bin")
    result = attest(manifest, keys["ed25519"], binary.path, "--sig", signature, pod_uid=pod_uid)
    assert result.code == 0, result.stderr
    assert "(pod UID from POD_UID)" in result.stdout


def test_attest_wrong_binary(
    tmp_path: Path, keys: dict[str, KeyPair], binary: CopiedBinary
) -> None:
    pod_uid = str(uuid.uuid4())
    manifest = write_signed(tmp_path, manifest_for(binary, pod_uid), keys["p256"])
    other = copy_sleep(tmp_path / "other", "swapped")
    result = attest(manifest, keys["p256"], other.path, pod_uid=pod_uid)
    assert_one_line(
        result, 6, f"sha256:{other.sha256}", "not in exe_sha256", f"sha256:{binary.sha256}"
    )


def test_attest_expired_manifest(
    tmp_path: Path, keys: dict[str, KeyPair], binary: CopiedBinary
) -> None:
    pod_uid = str(uuid.uuid4())
    document = manifest_for(binary, pod_uid, not_after="2020-01-31T12:00:00Z")
    manifest = write_signed(tmp_path, document, keys["p256"])
    result = attest(manifest, keys["p256"], binary.path, pod_uid=pod_uid)
    assert_one_line(result, 5, "expired at 2020-01-31T12:00:00+00:00")


def test_attest_invalid_manifest(
    tmp_path: Path, keys: dict[str, KeyPair], binary: CopiedBinary
) -> None:
    pod_uid = str(uuid.uuid4())
    document = {**manifest_for(binary, pod_uid), "podUID": pod_uid}
    manifest = write_signed(tmp_path, document, keys["p256"])
    result = attest(manifest, keys["p256"], binary.path, pod_uid=pod_uid)
    assert_one_line(result, 4, "'podUID'", "did you mean 'pod_uid'?")


def test_attest_manifest_without_pod(
    tmp_path: Path, keys: dict[str, KeyPair], binary: CopiedBinary
) -> None:
    document = {"spiffe_id": SPIFFE_ID, "exe_sha256": [binary.sha256], "uid": 1000}
    manifest = write_signed(tmp_path, document, keys["p256"])
    result = attest(manifest, keys["p256"], binary.path, pod_uid=str(uuid.uuid4()))
    assert_one_line(result, 7, "has no pod_uid")


def test_attest_pod_uid_unknown(
    tmp_path: Path, keys: dict[str, KeyPair], binary: CopiedBinary
) -> None:
    manifest = write_signed(tmp_path, manifest_for(binary, str(uuid.uuid4())), keys["p256"])
    result = attest(manifest, keys["p256"], binary.path)
    assert_one_line(result, 7, "cannot determine the pod UID", "POD_UID is not set")


@pytest.mark.parametrize(
    ("case", "expected_code", "fragment"),
    [
        ("malformed_pod_uid", 7, "POD_UID='pod-1' is not a pod UID"),
        ("missing_exe", 2, "cannot read executable"),
        ("wrong_trust_domain", 4, "but this agent serves 'example.org'"),
        ("bad_trust_domain", 2, "Bad_Domain"),
    ],
)
def test_attest_input_errors(
    case: str,
    expected_code: int,
    fragment: str,
    tmp_path: Path,
    keys: dict[str, KeyPair],
    binary: CopiedBinary,
) -> None:
    pod_uid = str(uuid.uuid4())
    manifest = write_signed(tmp_path, manifest_for(binary, pod_uid), keys["p256"])
    extra: list[str] = []
    exe = binary.path
    if case == "malformed_pod_uid":
        pod_uid = "pod-1"
    elif case == "missing_exe":
        exe = tmp_path / "absent"
    elif case == "wrong_trust_domain":
        extra = ["--trust-domain", "example.org"]
    elif case == "bad_trust_domain":
        extra = ["--trust-domain", "Bad_Domain"]
    result = attest(manifest, keys["p256"], exe, *extra, pod_uid=pod_uid)
    assert_one_line(result, expected_code, fragment)


def test_attest_help_lists_exit_codes() -> None:
    completed = subprocess.run(
        [*ATTEST, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0
    for line in ["  3  the signature file", "  6  the executable's SHA-256", "  7  the pod UID"]:
        assert line in completed.stdout


POD = "0f7c7d2a-3b1e-4c55-9d1e-6a2b8c9d0e1f"
POD_CGROUP = f"1:pids:/kubepods/burstable/pod{POD}/{'c' * 64}\n0::/\n"
TWO_PODS = (
    f"1:pids:/kubepods/burstable/pod{POD}/{'c' * 64}\n"
    f"2:memory:/kubepods/burstable/pod{uuid.UUID(int=1)}/{'d' * 64}\n"
)


@pytest.mark.parametrize(
    ("env_value", "cgroup_text", "expected"),
    [
        pytest.param(POD, NO_POD_CGROUP, (POD, "POD_UID"), id="variable-only"),
        pytest.param(None, POD_CGROUP, (POD, "cgroup"), id="cgroup-only"),
        pytest.param(POD.upper(), POD_CGROUP, (POD, "POD_UID and cgroup"), id="both-agree"),
        pytest.param("a" * 32, NO_POD_CGROUP, ("a" * 32, "POD_UID"), id="static-pod-hash"),
    ],
)
def test_resolve_pod_uid_sources(
    env_value: str | None, cgroup_text: str, expected: tuple[str, str]
) -> None:
    pod = resolve_pod_uid(env_value, cgroup_text)
    assert (pod.value, pod.source) == expected


@pytest.mark.parametrize(
    ("env_value", "cgroup_text", "fragment"),
    [
        pytest.param(str(uuid.UUID(int=2)), POD_CGROUP, "pod UID mismatch", id="disagree"),
        pytest.param(None, NO_POD_CGROUP, "cannot determine the pod UID", id="neither"),
        pytest.param("", POD_CGROUP, "POD_UID='' is not a pod UID", id="empty-variable"),
        pytest.param(f" {POD}", POD_CGROUP, "is not a pod UID", id="padded-variable"),
        pytest.param(POD, TWO_PODS, "several pod UIDs", id="ambiguous-cgroup"),
        pytest.param(POD, "not a cgroup line\n", "cannot read the pod UID", id="invalid-cgroup"),
    ],
)
def test_resolve_pod_uid_failures(env_value: str | None, cgroup_text: str, fragment: str) -> None:
    with pytest.raises(InitCheckError) as caught:
        resolve_pod_uid(env_value, cgroup_text)
    assert caught.value.exit_code == EXIT_POD_UID
    assert fragment in str(caught.value)
