"""The processes that share a caller's cgroup scope, read from cgroupfs and /proc.

The socket holder check (agent.attest.holders) scans the fd tables of these
processes. ``cgroup_scope(text, root)`` turns a /proc/<pid>/cgroup text into the
directories to scan: for a caller in a Kubernetes pod, the pod's cgroup with all its
containers; otherwise the caller's own cgroup; in every hierarchy where the text names
a cgroup other than the root and the directory exists under ``root``.
``pids_in_cgroups`` lists the processes of those directories and ``all_pids`` those of
a whole /proc, for callers whose scope is not visible. All of them block on cgroupfs
and procfs reads; none reads file content from disk.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.attest.cgroups import is_pod_component
from agent.attest.errors import ProcUnreadableError

# Errors for which pathlib's exists() returns False rather than raising, plus a name
# too long to exist.
_MISSING_ERRNOS = frozenset(
    {errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP, errno.ENAMETOOLONG}
)
_PROCS_READ_BYTES = 65536
_LEAF_LINK_COUNT = 2
_PARSED_SCOPES_CACHED = 1024
_MAX_CACHED_TEXT_CHARS = 4096
# A node has about 15 hierarchies; the bound only guards against odd cgroup files.
_FOUND_MOUNTS_KEPT = 256


@dataclass(frozen=True, slots=True)
class ScopeDir:
    """A cgroup directory whose processes are scanned; ``recursive`` adds its descendants."""

    path: str
    recursive: bool


def cgroup_scope(cgroup_text: str, cgroup_root: Path) -> list[ScopeDir]:
    """Return the cgroup directories to scan for a process with this /proc/<pid>/cgroup."""
    root = str(cgroup_root)
    found: dict[tuple[int, int], ScopeDir] = {}
    for hierarchy, controllers, relative, recursive in _scope_lines(cgroup_text):
        mount = _mount_dir(hierarchy, controllers, root)
        if mount is None:
            continue
        path = os.path.join(mount, relative)
        info = _stat(path)
        if info is not None and stat.S_ISDIR(info.st_mode):
            # Two hierarchies may be one directory (cpu and cpuacct mounted together).
            found.setdefault((info.st_dev, info.st_ino), ScopeDir(path, recursive))
    return list(found.values())


def _scope_lines(cgroup_text: str) -> tuple[tuple[str, str, str, bool], ...]:
    """Parse /proc/<pid>/cgroup into (hierarchy, controllers, relative path, recursive).

    The parse is a pure function of the text, so it is cached: callers of one pod send
    the same text on every call. Whether the directories exist is checked on every
    call. Texts longer than any real cgroup file are parsed without the cache, so the
    cache stays small.
    """
    if len(cgroup_text) > _MAX_CACHED_TEXT_CHARS:
        return _parse_scope_lines(cgroup_text)
    return _cached_scope_lines(cgroup_text)


def _parse_scope_lines(cgroup_text: str) -> tuple[tuple[str, str, str, bool], ...]:
    lines = []
    for line in cgroup_text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, separator, path = rest.partition(":")
        components = [part for part in path.split("/") if part]
        if not separator or not path.startswith("/") or {".", ".."} & set(components):
            continue  # outside the agent's cgroup namespace, or malformed
        if not components:
            continue  # the root cgroup of a hierarchy groups nothing, so it adds no scope
        pods = [index for index, part in enumerate(components) if is_pod_component(part)]
        if pods:
            relative, recursive = components[: pods[-1] + 1], True
        else:
            relative, recursive = components, False
        lines.append((hierarchy, controllers, os.path.join(*relative), recursive))
    return tuple(lines)


_cached_scope_lines = functools.lru_cache(maxsize=_PARSED_SCOPES_CACHED)(_parse_scope_lines)


def _mount_dir(hierarchy: str, controllers: str, cgroup_root: str) -> str | None:
    """Return where the hierarchy is mounted under ``cgroup_root``, or None.

    Found mounts are remembered: they do not move while the agent runs, and a mount
    that goes away is noticed anyway, because the caller's directory below it is
    checked on every call. Absent ones are looked for again each time.
    """
    key = (hierarchy, controllers, cgroup_root)
    mount = _found_mounts.get(key)
    if mount is None:
        mount = _find_mount_dir(hierarchy, controllers, cgroup_root)
        if mount is not None and len(_found_mounts) < _FOUND_MOUNTS_KEPT:
            _found_mounts[key] = mount
    return mount


def _find_mount_dir(hierarchy: str, controllers: str, cgroup_root: str) -> str | None:
    if hierarchy == "0" and controllers == "":
        candidates = [os.path.join(cgroup_root, "unified"), cgroup_root]
        return next((c for c in candidates if _exists(c, "cgroup.controllers")), None)
    names = [name.removeprefix("name=") for name in controllers.split(",") if name]
    candidates = [
        os.path.join(cgroup_root, ",".join(names)),
        *(os.path.join(cgroup_root, name) for name in names),
    ]
    return next(
        (
            c
            for c in candidates
            if _exists(c, "cgroup.procs") and not _exists(c, "cgroup.controllers")
        ),
        None,
    )


_found_mounts: dict[tuple[str, str, str], str] = {}


def _stat(path: str) -> os.stat_result | None:
    """Return os.stat of ``path``, or None where pathlib's exists() would return False."""
    try:
        return os.stat(path)
    except OSError as exc:
        if exc.errno in _MISSING_ERRNOS:
            return None
        raise ProcUnreadableError(f"cannot read {path}: {exc}", pid=None, path=path) from exc
    except ValueError:
        return None  # a NUL byte or an unencodable character: no such file


def _exists(directory: str, name: str) -> bool:
    return _stat(os.path.join(directory, name)) is not None


class TooManyCgroupsError(Exception):
    """A bounded listing found more cgroup directories than its limit."""


def pids_in_cgroups(scope_dirs: Iterable[ScopeDir], max_dirs: int | None = None) -> set[int]:
    """Return the process ids listed in ``cgroup.procs`` of each directory (and below).

    With ``max_dirs``, raise TooManyCgroupsError once more directories than that were
    found in all, before reading any of them.
    """
    pids: set[int] = set()
    left = max_dirs
    for scope in scope_dirs:
        directories = _walk(scope.path, left) if scope.recursive else [scope.path]
        if left is not None:
            left -= len(directories)
            if left < 0:
                raise TooManyCgroupsError
        for directory in directories:
            pids |= _read_procs(directory + "/cgroup.procs")
    return pids


def _walk(top: str, max_dirs: int | None = None) -> list[str]:
    """Return ``top`` and every directory below it, skipping any that vanish meanwhile.

    Like os.walk without onerror: a directory that cannot be listed (removed while it
    is walked) is skipped, and symbolic links are not followed. A directory below
    ``top`` whose link count is 2 has no subdirectories, because cgroupfs, like most
    Linux file systems, counts "." and each subdirectory's "..". Such a leaf (a
    container's cgroup) is not listed, since listing costs more than the stat.
    """
    found = [top]
    pending = [top]
    while pending:
        directory = pending.pop()
        try:
            # The top (a pod's cgroup) normally has subdirectories, so it is listed at once.
            if directory is not top and _is_leaf(directory):
                continue
            below = _subdirectories(directory)
        except OSError:
            continue
        found.extend(below)
        pending.extend(below)
        if max_dirs is not None and len(found) > max_dirs:
            raise TooManyCgroupsError
    return found


def _subdirectories(directory: str) -> list[str]:
    """Return the paths of the subdirectories of ``directory``; raise OSError if unlistable.

    cgroupfs reports each entry's type, so is_dir() needs no stat there. On a file
    system that does not report types, is_dir() stats and fails for an entry removed
    meanwhile. The entries are then checked one by one, so only that entry is skipped
    (it is gone), not the whole directory.
    """
    with os.scandir(directory) as entries:
        listed = list(entries)
    try:
        return [entry.path for entry in listed if entry.is_dir(follow_symlinks=False)]
    except OSError:
        return [entry.path for entry in listed if _is_dir(entry)]


def _is_leaf(directory: str) -> bool:
    return os.stat(directory, follow_symlinks=False).st_nlink == _LEAF_LINK_COUNT


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _read_procs(path: str) -> set[int]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return set()  # the cgroup was removed while it was walked
    except OSError as exc:
        raise ProcUnreadableError(f"cannot read {path}: {exc}", pid=None, path=path) from exc
    try:
        chunks = []
        # cgroupfs generates the list on read; it may arrive in several reads.
        while chunk := os.read(fd, _PROCS_READ_BYTES):
            chunks.append(chunk)
    except FileNotFoundError:
        return set()  # removed between open and read
    except OSError as exc:
        raise ProcUnreadableError(f"cannot read {path}: {exc}", pid=None, path=path) from exc
    finally:
        os.close(fd)
    return {int(field) for field in b"".join(chunks).split()}


def all_pids(proc_root: Path) -> set[int]:
    """Return every process id visible in ``proc_root``."""
    try:
        names = os.listdir(proc_root)
    except OSError as exc:
        raise ProcUnreadableError(
            f"cannot list {proc_root}: {exc}", pid=None, path=str(proc_root)
        ) from exc
    return {int(name) for name in names if name.isdigit()}
