"""The agent's capabilities, checked by experiment: which ones open another user's exe.

A root process limited to a capability set (setpriv --bounding-set) tries to open
/proc/PID/exe of processes run by other users. The set in daemonset.yaml must open all
of them, and dropping either capability must break one case, which shows neither is
superfluous.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NOBODY = 65534
PROBE = (
    "import sys\n"
    "for pid in sys.argv[1:]:\n"
    "    try:\n"
    "        with open(f'/proc/{pid}/exe', 'rb') as f:\n"
    "            f.read(4)\n"
    "        print('ok')\n"
    "    except OSError as e:\n"
    "        print(e.strerror)\n"
)


def daemonset_capabilities() -> list[str]:
    documents = yaml.safe_load_all((ROOT / "daemonset.yaml").read_text())
    daemonset = next(doc for doc in documents if doc and doc["kind"] == "DaemonSet")
    agent = daemonset["spec"]["template"]["spec"]["containers"][0]
    return list(agent["securityContext"]["capabilities"]["add"])


def require_root_and_setpriv() -> str:
    if os.geteuid() != 0:
        pytest.skip("needs root to start processes as another user and limit capabilities")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    return setpriv


@pytest.fixture(scope="module")
def targets() -> Iterator[dict[str, int]]:
    """Start the target processes: name -> pid."""
    setpriv = require_root_and_setpriv()
    as_nobody = [setpriv, "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups"]
    directory = Path(tempfile.mkdtemp(prefix="attest-agent-caps-"))
    directory.chmod(0o755)
    # An executable that only its owner may read: mode 0711, owned by another user.
    private_exe = directory / "sleep-private"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", private_exe)
    os.chown(private_exe, NOBODY, NOBODY)
    private_exe.chmod(0o711)
    processes = {
        "other-user": subprocess.Popen([*as_nobody, "sleep", "300"]),
        "other-user-private-exe": subprocess.Popen([*as_nobody, str(private_exe), "300"]),
        "root-full-capabilities": subprocess.Popen(["sleep", "300"]),
    }
    try:
        sleep_exe = os.path.realpath(shutil.which("sleep") or "/bin/sleep")
        wait_for_exe(processes["other-user"].pid, sleep_exe)
        wait_for_exe(processes["other-user-private-exe"].pid, str(private_exe))
        wait_for_exe(processes["root-full-capabilities"].pid, sleep_exe)
        yield {name: process.pid for name, process in processes.items()}
    finally:
        for process in processes.values():
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(directory)


def wait_for_exe(pid: int, expected: str) -> None:
    """Wait until setpriv has exec'd the target, so the probe sees its final exe and uid."""
    deadline = time.monotonic() + 10
    while os.readlink(f"/proc/{pid}/exe") != expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"pid {pid} did not exec {expected} within 10 s")
        time.sleep(0.01)


def probe(capabilities: list[str], targets: dict[str, int]) -> dict[str, str]:
    """Open each target's /proc/PID/exe as root limited to ``capabilities``."""
    setpriv = require_root_and_setpriv()
    bounding = ",".join(["-all", *(f"+{name.lower()}" for name in capabilities)])
    command = [
        setpriv, "--inh-caps=-all", f"--bounding-set={bounding}",
        sys.executable, "-c", PROBE, *map(str, targets.values()),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    return dict(zip(targets, result.stdout.split("\n"), strict=False))


def test_daemonset_capabilities_suffice(targets: dict[str, int]) -> None:
    results = probe(daemonset_capabilities(), targets)

    assert results == {name: "ok" for name in targets}


def test_no_capabilities_fail(targets: dict[str, int]) -> None:
    results = probe([], targets)

    assert results == {name: "Permission denied" for name in targets}


def test_without_ptrace(targets: dict[str, int]) -> None:
    capabilities = [c for c in daemonset_capabilities() if c != "SYS_PTRACE"]

    results = probe(capabilities, targets)

    assert results["other-user"] == "Permission denied"
    assert results["root-full-capabilities"] == "Permission denied"


def test_without_dac_read_search(targets: dict[str, int]) -> None:
    capabilities = [c for c in daemonset_capabilities() if c != "DAC_READ_SEARCH"]

    results = probe(capabilities, targets)

    assert results["other-user"] == "ok"
    assert results["root-full-capabilities"] == "ok"
    assert results["other-user-private-exe"] == "Permission denied"
