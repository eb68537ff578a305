"""Pod cgroups for benchmark workloads, laid out as the kubelet's cgroupfs driver does.

Workloads run in pods, as on a Kubernetes node: the agent then scans only the caller's
pod for other holders of its connection, not the whole cgroup the benchmark runs in.
``Pods`` creates ``bench-<random>/kubepods/burstable/pod<uid>/<container id>`` in the
cgroup v2 hierarchy (/sys/fs/cgroup/unified on hybrid hosts, else /sys/fs/cgroup) and,
as the kubelet does, in each cgroup v1 hierarchy where this process is not in the root
group; ``Children.start(..., pod=pod)`` starts a process inside one. Leaving the
``with`` block moves any remaining process back to the root and removes every
directory. Creating cgroups needs root.
"""

from __future__ import annotations

import contextlib
import errno
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

CGROUP_MOUNT = Path("/sys/fs/cgroup")
# Removing a cgroup fails with EBUSY until the kernel has released exited tasks.
_RMDIR_DEADLINE_SECONDS = 5.0


@dataclass(frozen=True)
class Pod:
    """One container cgroup of a pod: its directory per hierarchy and the pod UID."""

    paths: tuple[Path, ...]
    pod_uid: str

    @property
    def procs_files(self) -> tuple[Path, ...]:
        return tuple(path / "cgroup.procs" for path in self.paths)


def _mount_dir(hierarchy: str, controllers: str) -> Path | None:
    if hierarchy == "0" and controllers == "":
        candidates = [CGROUP_MOUNT / "unified", CGROUP_MOUNT]
        return next((c for c in candidates if (c / "cgroup.controllers").exists()), None)
    names = [name.removeprefix("name=") for name in controllers.split(",") if name]
    candidates = [CGROUP_MOUNT / ",".join(names), *(CGROUP_MOUNT / name for name in names)]
    return next((c for c in candidates if (c / "cgroup.procs").exists()), None)


def pod_parent_dirs() -> list[Path]:
    """Return where to create pods: the v2 hierarchy, and each v1 one this process is not
    at the root of, below this process's own cgroup (so limits set on it still apply)."""
    parents: list[Path] = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        is_v2 = hierarchy == "0" and controllers == ""
        if not is_v2 and path == "/":
            continue
        mount = _mount_dir(hierarchy, controllers)
        if mount is not None:
            parents.append(mount / path.lstrip("/"))
    if not parents:
        raise RuntimeError("no usable cgroup hierarchy under /sys/fs/cgroup for pod cgroups")
    return parents


class Pods:
    """Every pod cgroup of one benchmark section; removed when the block ends."""

    def __init__(self) -> None:
        top = f"bench-{secrets.token_hex(6)}"
        self._tops = [parent / top for parent in pod_parent_dirs()]
        self._created: list[Path] = []

    def create(self) -> Pod:
        """Create a pod's container cgroup in every hierarchy the agent reads."""
        pod_uid = str(uuid.uuid4())
        relative = Path("kubepods", "burstable", f"pod{pod_uid}", secrets.token_hex(32))
        paths = []
        for top in self._tops:
            directory = top
            for part in ("", *relative.parts):
                directory = directory / part if part else directory
                if directory.exists():
                    continue
                try:
                    directory.mkdir()
                except PermissionError as exc:
                    raise RuntimeError(f"cannot create cgroup {directory}: run as root") from exc
                self._created.append(directory)
            paths.append(directory)
        return Pod(tuple(paths), pod_uid)

    def __enter__(self) -> Pods:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for directory in reversed(self._created):
            _evacuate(directory, self._parent_of(directory))
            _remove(directory)
        self._created.clear()

    def _parent_of(self, directory: Path) -> Path:
        return next(top.parent for top in self._tops if directory.is_relative_to(top))


def _evacuate(directory: Path, parent: Path) -> None:
    try:
        pids = (directory / "cgroup.procs").read_text().split()
    except FileNotFoundError:
        return
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            (parent / "cgroup.procs").write_text(f"{pid}\n")


def _remove(directory: Path) -> None:
    deadline = time.monotonic() + _RMDIR_DEADLINE_SECONDS
    while True:
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
