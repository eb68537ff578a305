"""Real cgroups for tests: pod-like and systemd-service-like groups under /sys/fs/cgroup.

Use the context managers; they create the directories, let the test move processes
in with ``add(pid)``, and on exit move any remaining processes back to the hierarchy's
root and remove every directory they created::

    with pod_cgroup("pids", driver="cgroupfs") as pod:
        pod.add(proc.pid)
        ...  # /proc/<pid>/cgroup now shows .../kubepods/burstable/pod<uid>/<cid>

Hierarchies are named as in /proc/<pid>/cgroup: a cgroup v1 controller ("pids",
"memory", ...), "systemd" for the v1 ``name=systemd`` hierarchy, or "unified" for
cgroup v2 (/sys/fs/cgroup/unified on hybrid hosts, /sys/fs/cgroup on pure v2 hosts).
Every group lives below a fresh top directory ``attest-test-<random>`` so parallel
tests never share a directory, so the path the kernel reports starts with that prefix.
Without root, or when the hierarchy is missing or read-only, the helpers call
pytest.skip with the reason.
"""

from __future__ import annotations

import errno
import os
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CGROUP_MOUNT = Path("/sys/fs/cgroup")

# Scope prefixes that each container runtime uses with the systemd cgroup driver.
SYSTEMD_SCOPE_PREFIX = {
    "containerd": "cri-containerd",
    "docker": "docker",
    "crio": "crio",
}

# Removing a cgroup fails with EBUSY until the kernel has released exited tasks.
_RMDIR_DEADLINE_SECONDS = 5.0


def hierarchy_root(hierarchy: str) -> Path:
    """Return the mount point of a hierarchy, or skip the test when it cannot be used."""
    if os.geteuid() != 0:
        pytest.skip("creating cgroups under /sys/fs/cgroup needs root")
    if hierarchy == "unified":
        root = CGROUP_MOUNT / "unified"
        if not (root / "cgroup.procs").exists():
            root = CGROUP_MOUNT  # pure cgroup v2 host
        if not (root / "cgroup.controllers").exists():
            pytest.skip("no cgroup v2 hierarchy is mounted under /sys/fs/cgroup")
    else:
        root = CGROUP_MOUNT / hierarchy
        if not (root / "cgroup.procs").exists() or (root / "cgroup.controllers").exists():
            pytest.skip(f"cgroup v1 hierarchy {hierarchy!r} is not mounted at {root}")
    probe = root / f"attest-probe-{secrets.token_hex(4)}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        pytest.skip(f"cgroup hierarchy {root} is not writable: {exc}")
    return root


def pod_segments(
    pod_uid: str,
    container_id: str,
    *,
    driver: str = "cgroupfs",
    runtime: str = "containerd",
    qos: str = "burstable",
) -> list[str]:
    """Return the path components that the kubelet creates for one container.

    ``driver`` is "cgroupfs" (``kubepods/burstable/pod<uid>/<cid>``) or "systemd"
    (``kubepods.slice/.../kubepods-burstable-pod<uid_with_underscores>.slice/
    cri-containerd-<cid>.scope``). ``qos`` "guaranteed" omits the QoS level, as the
    kubelet does.
    """
    if driver == "cgroupfs":
        parts = ["kubepods"] if qos == "guaranteed" else ["kubepods", qos]
        leaf = f"crio-{container_id}" if runtime == "crio" else container_id
        return [*parts, f"pod{pod_uid}", leaf]
    if driver == "systemd":
        underscored = pod_uid.replace("-", "_")
        if qos == "guaranteed":
            parts = ["kubepods.slice", f"kubepods-pod{underscored}.slice"]
        else:
            parts = [
                "kubepods.slice",
                f"kubepods-{qos}.slice",
                f"kubepods-{qos}-pod{underscored}.slice",
            ]
        return [*parts, f"{SYSTEMD_SCOPE_PREFIX[runtime]}-{container_id}.scope"]
    raise ValueError(f"unknown cgroup driver {driver!r}: use 'cgroupfs' or 'systemd'")


@dataclass
class TestCgroup:
    """One created cgroup: its directory, the path the kernel reports, and the IDs in it."""

    __test__ = False  # not a pytest test class

    hierarchy: str
    root: Path
    path: Path
    pod_uid: str | None = None
    container_id: str | None = None
    systemd_unit: str | None = None
    created: list[Path] = field(default_factory=list)

    @property
    def relative(self) -> str:
        """The path as /proc/<pid>/cgroup shows it from the root cgroup namespace."""
        return "/" + str(self.path.relative_to(self.root))

    def add(self, pid: int) -> None:
        """Move a process (all its threads) into this cgroup."""
        (self.path / "cgroup.procs").write_text(f"{pid}\n")


def _make_dirs(root: Path, segments: list[str]) -> TestCgroup:
    top = root / f"attest-test-{secrets.token_hex(6)}"
    created = [top]
    top.mkdir()
    current = top
    for segment in segments:
        current = current / segment
        current.mkdir()
        created.append(current)
    return TestCgroup(hierarchy="", root=root, path=current, created=created)


def _evacuate(group_dir: Path, root: Path) -> None:
    try:
        pids = (group_dir / "cgroup.procs").read_text().split()
    except FileNotFoundError:
        return
    for pid in pids:
        try:
            (root / "cgroup.procs").write_text(f"{pid}\n")
        except ProcessLookupError:
            continue


def _remove_dir(group_dir: Path) -> None:
    deadline = time.monotonic() + _RMDIR_DEADLINE_SECONDS
    while True:
        try:
            group_dir.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def remove_cgroup(group: TestCgroup) -> None:
    """Move remaining processes to the hierarchy root and remove the created directories."""
    for group_dir in reversed(group.created):
        _evacuate(group_dir, group.root)
        _remove_dir(group_dir)


@contextmanager
def pod_cgroup(
    hierarchy: str = "unified",
    *,
    driver: str = "cgroupfs",
    runtime: str = "containerd",
    qos: str = "burstable",
    pod_uid: str | None = None,
    container_id: str | None = None,
) -> Iterator[TestCgroup]:
    """Create a container cgroup of a pod and remove it on exit.

    ``pod_uid`` (dashed UUID) and ``container_id`` (64 hex characters) are random unless
    given; pass the same values to several calls to put one container in several
    hierarchies.
    """
    root = hierarchy_root(hierarchy)
    pod_uid = pod_uid or str(uuid.uuid4())
    container_id = container_id or secrets.token_hex(32)
    segments = pod_segments(pod_uid, container_id, driver=driver, runtime=runtime, qos=qos)
    group = _make_dirs(root, segments)
    group.hierarchy = hierarchy
    group.pod_uid = pod_uid
    group.container_id = container_id
    try:
        yield group
    finally:
        remove_cgroup(group)


@contextmanager
def service_cgroup(hierarchy: str = "unified", unit: str | None = None) -> Iterator[TestCgroup]:
    """Create ``system.slice/<unit>`` (a systemd service outside any pod) and remove it on exit."""
    root = hierarchy_root(hierarchy)
    unit = unit or f"attest-test-{secrets.token_hex(4)}.service"
    group = _make_dirs(root, ["system.slice", unit])
    group.hierarchy = hierarchy
    group.systemd_unit = unit
    try:
        yield group
    finally:
        remove_cgroup(group)


@contextmanager
def custom_cgroup(hierarchy: str, segments: list[str]) -> Iterator[TestCgroup]:
    """Create an arbitrary nested cgroup (for layouts the other helpers do not cover)."""
    root = hierarchy_root(hierarchy)
    group = _make_dirs(root, segments)
    group.hierarchy = hierarchy
    try:
        yield group
    finally:
        remove_cgroup(group)
