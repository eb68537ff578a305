"""`attest-agent explain` run as a separate process on real processes, cgroups and files.

Keys and signatures are made with the openssl command line. The explained process is
a copied ``sleep`` with its own digest, moved into a real pod cgroup.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cgroups import TestCgroup, pod_cgroup
from tests.support.processes import ChildProcess, CopiedBinary, copy_sleep, start_sleeper
from tests.test_manifest_support import (
    KeyPair,
    make_key,
    openssl,
    openssl_sign,
    pod_manifest,
    write_manifest,
)

EXPLAIN = [sys.executable, "-m", "agent", "explain"]
OTHER_POD_UID = "11111111-2222-4333-8444-555555555555"
OTHER_DIGEST = "b" * 64

# The explained process: its copied binary, its pod cgroup and the running child.
Workload = tuple[CopiedBinary, TestCgroup, ChildProcess]


def explain(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EXPLAIN, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    directory = tmp_path_factory.mktemp("keys")
    return {"trusted": make_key(directory, "p256"), "rogue": make_key(directory / "rogue", "p256")}


@pytest.fixture
def workload(tmp_path: Path) -> Iterator[Workload]:
    sleep = copy_sleep(tmp_path / "bin", "explain")
    with (
        pod_cgroup("pids") as pod,
        start_sleeper(sleep, cgroup_dirs=[pod.path]) as proc,
    ):
        yield sleep, pod, proc


def pod_doc(
    pod_uid: str | None, digest: str, account: str, trust_domain: str = "cluster.local"
) -> dict[str, Any]:
    return pod_manifest(
        spiffe_id=f"spiffe://{trust_domain}/ns/shop/sa/{account}",
        exe_sha256=[f"sha256:{digest}"],
        pod_uid=pod_uid,
        service_account=account,
    )


def four_manifests(
    directory: Path, keys: dict[str, KeyPair], sleep: CopiedBinary, pod: TestCgroup
) -> None:
    """Write one matching manifest, one with another digest, one for another pod,
    one signed by an untrusted key and one that is not JSON."""
    directory.mkdir()
    trusted, rogue = keys["trusted"], keys["rogue"]
    write_manifest(directory, "a-match.json", pod_doc(pod.pod_uid, sleep.sha256, "web"), trusted)
    write_manifest(
        directory, "b-digest.json", pod_doc(pod.pod_uid, OTHER_DIGEST, "batch"), trusted
    )
    write_manifest(
        directory, "c-other-pod.json", pod_doc(OTHER_POD_UID, sleep.sha256, "api"), trusted
    )
    write_manifest(directory, "d-bad-sig.json", pod_doc(pod.pod_uid, sleep.sha256, "db"), rogue)
    broken = directory / "e-broken.json"
    broken.write_text('{"spiffe_id": ')
    openssl_sign(trusted, broken)


def rows_by_file(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["file"]: row for row in report["manifests"]}


def test_explain_json_verdicts(
    tmp_path: Path, keys: dict[str, KeyPair], workload: Workload
) -> None:
    sleep, pod, proc = workload
    manifests = tmp_path / "manifests"
    four_manifests(manifests, keys, sleep, pod)
    result = explain("--pid", proc.pid, "--manifests-dir", manifests,
                     "--manifest-key", keys["trusted"].public, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["pid"] == proc.pid
    assert report["evidence"]["exe_sha256"] == sleep.sha256
    assert report["evidence"]["pod_uid"] == pod.pod_uid
    assert report["evidence"]["container_id"] == pod.container_id
    assert report["evidence"]["exe_path"] == str(sleep.path)
    assert report["development_key"] is False
    assert [key["path"] for key in report["trusted_keys"]] == [str(keys["trusted"].public)]

    rows = rows_by_file(report)
    assert list(rows) == [
        "a-match.json", "b-digest.json", "c-other-pod.json", "d-bad-sig.json", "e-broken.json"
    ]
    assert rows["a-match.json"]["status"] == "match"
    assert rows["a-match.json"]["reason"] is None
    assert rows["b-digest.json"]["status"] == "no_match"
    assert rows["b-digest.json"]["reason"] == "exe_hash_mismatch"
    assert f"sha256:{sleep.sha256}" in rows["b-digest.json"]["detail"]
    assert rows["c-other-pod.json"]["status"] == "no_match"
    assert rows["c-other-pod.json"]["reason"] == "no_manifest_for_workload"
    assert OTHER_POD_UID in rows["c-other-pod.json"]["detail"]
    assert pod.pod_uid in rows["c-other-pod.json"]["detail"]
    assert rows["d-bad-sig.json"]["status"] == "not_loaded"
    assert rows["d-bad-sig.json"]["reason"] == "bad_signature"
    assert rows["d-bad-sig.json"]["spiffe_id"] is None
    assert rows["e-broken.json"]["status"] == "not_loaded"
    assert rows["e-broken.json"]["reason"] == "invalid_json"

    decision = report["decision"]
    assert decision["granted"] is True
    assert decision["reason"] is None
    assert decision["identities"] == [
        {"spiffe_id": "spiffe://cluster.local/ns/shop/sa/web", "manifest_files": ["a-match.json"]}
    ]


def test_explain_text_report(
    tmp_path: Path, keys: dict[str, KeyPair], workload: Workload
) -> None:
    sleep, pod, proc = workload
    manifests = tmp_path / "manifests"
    four_manifests(manifests, keys, sleep, pod)
    result = explain("--pid", proc.pid, "--manifests-dir", manifests,
                     "--manifest-key", keys["trusted"].public)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"process {proc.pid}: evidence"
    assert f"  exe_sha256    sha256:{sleep.sha256}" in lines
    assert f"  pod_uid       {pod.pod_uid}" in lines
    assert "  systemd_unit  -" in lines
    assert f"manifests in {manifests} (5 files)" in lines
    assert "  a-match.json: match, grants spiffe://cluster.local/ns/shop/sa/web" in lines
    digest_line = next(line for line in lines if line.startswith("  b-digest.json: "))
    assert digest_line.startswith("  b-digest.json: no match (exe_hash_mismatch) for ")
    pod_line = next(line for line in lines if line.startswith("  c-other-pod.json: "))
    assert pod_line.startswith("  c-other-pod.json: no match (no_manifest_for_workload) ")
    signature_line = next(line for line in lines if line.startswith("  d-bad-sig.json: "))
    assert signature_line.startswith("  d-bad-sig.json: not loaded (bad_signature): ")
    assert "does not verify" in signature_line
    broken_line = next(line for line in lines if line.startswith("  e-broken.json: "))
    assert broken_line.startswith("  e-broken.json: not loaded (invalid_json): ")
    assert lines[-1] == (
        "decision: granted spiffe://cluster.local/ns/shop/sa/web (the first is the default)"
    )


def test_explain_denied_nearest_reason(
    tmp_path: Path, keys: dict[str, KeyPair], workload: Workload
) -> None:
    sleep, pod, proc = workload
    manifests = tmp_path / "manifests"
    four_manifests(manifests, keys, sleep, pod)
    (manifests / "a-match.json").unlink()
    result = explain("--pid", proc.pid, "--manifests-dir", manifests,
                     "--manifest-key", keys["trusted"].public, "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert "a-match.json" not in rows_by_file(report)
    assert report["decision"]["granted"] is False
    assert report["decision"]["identities"] == []
    assert report["decision"]["reason"] == "exe_hash_mismatch"
    assert "b-digest.json" in report["decision"]["message"]

    text = explain("--pid", proc.pid, "--manifests-dir", manifests,
                   "--manifest-key", keys["trusted"].public)
    assert text.returncode == 1
    assert text.stdout.splitlines()[-1].startswith(
        "decision: denied (exe_hash_mismatch): no manifest grants an identity"
    )


def test_explain_two_identities(
    tmp_path: Path, keys: dict[str, KeyPair], workload: Workload
) -> None:
    sleep, pod, proc = workload
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    trusted = keys["trusted"]
    write_manifest(manifests, "z-web.json", pod_doc(pod.pod_uid, sleep.sha256, "web"), trusted)
    write_manifest(manifests, "m-admin.json", pod_doc(pod.pod_uid, sleep.sha256, "admin"), trusted)
    result = explain("--pid", proc.pid, "--manifests-dir", manifests,
                     "--manifest-key", trusted.public, "--json")
    assert result.returncode == 0, result.stderr
    identities = json.loads(result.stdout)["decision"]["identities"]
    assert [identity["spiffe_id"] for identity in identities] == [
        "spiffe://cluster.local/ns/shop/sa/admin",
        "spiffe://cluster.local/ns/shop/sa/web",
    ]


def test_explain_exited_process(tmp_path: Path, keys: dict[str, KeyPair]) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    sleep = copy_sleep(tmp_path / "bin", "explain-gone")
    write_manifest(manifests, "web.json", pod_doc(str(uuid.uuid4()), sleep.sha256, "web"),
                   keys["trusted"])
    proc = start_sleeper(sleep)
    pid = proc.pid
    proc.stop()
    result = explain("--pid", pid, "--manifests-dir", manifests,
                     "--manifest-key", keys["trusted"].public, "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["evidence"] is None
    assert report["decision"]["reason"] == "process_exited"
    assert rows_by_file(report)["web.json"]["status"] == "not_evaluated"

    text = explain("--pid", pid, "--manifests-dir", manifests,
                   "--manifest-key", keys["trusted"].public)
    assert text.returncode == 1
    assert text.stdout.startswith(f"process {pid}: no evidence (process_exited): ")


def write_config(path: Path, **settings: object) -> Path:
    lines = [f"{name} = {json.dumps(value)}" for name, value in settings.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_explain_reads_config(
    tmp_path: Path, keys: dict[str, KeyPair], workload: Workload
) -> None:
    sleep, pod, proc = workload
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    document = pod_doc(pod.pod_uid, sleep.sha256, "web", trust_domain="example.org")
    write_manifest(manifests, "web.json", document, keys["trusted"])
    config = write_config(
        tmp_path / "agent.toml",
        manifests_dir=str(manifests),
        manifest_keys=[str(keys["trusted"].public)],
        trust_domain="example.org",
    )
    result = explain("--pid", proc.pid, "--config", config, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["manifests_dir"] == str(manifests)
    assert report["decision"]["identities"][0]["spiffe_id"] == "spiffe://example.org/ns/shop/sa/web"

    # A flag overrides the file: in cluster.local the same manifest is in the wrong domain.
    overridden = explain("--pid", proc.pid, "--config", config, "--trust-domain",
                         "cluster.local", "--json")
    assert overridden.returncode == 1, overridden.stderr
    row = rows_by_file(json.loads(overridden.stdout))["web.json"]
    assert row["status"] == "not_loaded"
    assert row["reason"] == "wrong_trust_domain"


def test_explain_development_key(
    tmp_path: Path, keys: dict[str, KeyPair], workload: Workload
) -> None:
    sleep, pod, proc = workload
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    development = make_key(tmp_path / "dev", "p256")
    openssl("pkey", "-in", development.private, "-pubout", "-out", state_dir / "dev-manifest.pub")
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_manifest(manifests, "web.json", pod_doc(pod.pod_uid, sleep.sha256, "web"), development)
    config = write_config(
        tmp_path / "agent.toml", state_dir=str(state_dir), manifests_dir=str(manifests)
    )
    result = explain("--pid", proc.pid, "--config", config, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["development_key"] is True
    assert [key["path"] for key in report["trusted_keys"]] == [str(state_dir / "dev-manifest.pub")]

    text = explain("--pid", proc.pid, "--config", config)
    assert "the agent's development key" in text.stdout


def test_explain_dev_key_without_config(
    tmp_path: Path, keys: dict[str, KeyPair], workload: Workload
) -> None:
    sleep, pod, proc = workload
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    development = make_key(tmp_path / "dev", "p256")
    openssl("pkey", "-in", development.private, "-pubout", "-out", state_dir / "dev-manifest.pub")
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_manifest(manifests, "web.json", pod_doc(pod.pod_uid, sleep.sha256, "web"), development)

    result = explain("--pid", proc.pid, "--state-dir", state_dir, "--manifests-dir", manifests,
                     "--json")
    text = explain("--pid", proc.pid, "--state-dir", state_dir, "--manifests-dir", manifests)

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["development_key"] is True
    assert [key["path"] for key in report["trusted_keys"]] == [str(state_dir / "dev-manifest.pub")]
    assert text.returncode == 0, text.stderr
    assert "the agent's development key" in text.stdout


def test_explain_default_state_dir(tmp_path: Path, workload: Workload) -> None:
    # No --config and no --state-dir: the run command's default state_dir applies. The
    # test does not own that directory, so it checks whichever outcome its content gives.
    _sleep, _pod, proc = workload
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    default_key = "/tmp/attest-agent/state/dev-manifest.pub"

    result = explain("--pid", proc.pid, "--manifests-dir", manifests, "--json")

    if Path(default_key).is_file():
        assert result.returncode == 1, result.stderr
        report = json.loads(result.stdout)
        assert report["development_key"] is True
        assert [key["path"] for key in report["trusted_keys"]] == [default_key]
    else:
        assert result.returncode == 2
        assert f"the agent's development key {default_key} does not exist" in result.stderr


def test_explain_without_key(tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    empty_state = tmp_path / "empty-state"
    result = explain("--pid", 1, "--manifests-dir", manifests, "--state-dir", empty_state)
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"development key {empty_state / 'dev-manifest.pub'} does not exist" in result.stderr
    assert "--manifest-key" in result.stderr
    assert "--config" in result.stderr
    assert "--state-dir" in result.stderr

    state_dir = tmp_path / "state"
    config = write_config(
        tmp_path / "agent.toml", state_dir=str(state_dir), manifests_dir=str(manifests)
    )
    with_config = explain("--pid", 1, "--config", config)
    assert with_config.returncode == 2
    assert str(state_dir / "dev-manifest.pub") in with_config.stderr
    assert "--manifest-key" in with_config.stderr


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("config_not_toml", "is not valid TOML"),
        ("config_unknown_key", "unknown key 'manifest_dir'"),
        ("missing_directory", "cannot list the manifest directory"),
        ("weak_key", "the RSA key has 1024 bits"),
        ("bad_trust_domain", "Bad_Domain"),
    ],
)
def usage_error_args(case: str, tmp_path: Path, keys: dict[str, KeyPair]) -> list[str | Path]:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    trusted = keys["trusted"].public
    config = tmp_path / "agent.toml"
    if case == "config_not_toml":
        config.write_text("manifests_dir = \n")
        return ["--config", config]
    if case == "config_unknown_key":
        config.write_text('manifest_dir = "/tmp"\n')
        return ["--config", config]
    if case == "missing_directory":
        return ["--manifests-dir", tmp_path / "absent", "--manifest-key", trusted]
    if case == "weak_key":
        weak = make_key(tmp_path, "rsa1024").public
        return ["--manifests-dir", manifests, "--manifest-key", weak]
    if case == "bad_trust_domain":
        return ["--manifests-dir", manifests, "--manifest-key", trusted,
                "--trust-domain", "Bad_Domain"]
    raise ValueError(case)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("config_not_toml", "is not valid TOML"),
        ("config_unknown_key", "unknown key 'manifest_dir'"),
        ("missing_directory", "cannot list the manifest directory"),
        ("weak_key", "the RSA key has 1024 bits"),
        ("bad_trust_domain", "Bad_Domain"),
    ],
)
def test_explain_usage_errors(
    case: str, expected: str, tmp_path: Path, keys: dict[str, KeyPair]
) -> None:
    result = explain("--pid", 1, *usage_error_args(case, tmp_path, keys))
    assert result.returncode == 2, result.stdout
    assert result.stderr.startswith("attest-agent explain: ")
    assert expected in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("pid", ["0", "-4", "web"])
def test_explain_invalid_pid(pid: str) -> None:
    result = explain("--pid", pid)
    assert result.returncode == 2
    assert f"invalid pid {pid!r}: use a positive process id" in result.stderr


def test_explain_requires_pid() -> None:
    result = explain("--json")
    assert result.returncode == 2
    assert "--pid" in result.stderr
