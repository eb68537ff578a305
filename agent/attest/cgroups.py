"""Parse /proc/<pid>/cgroup into a pod UID, a container ID and a systemd unit.

``parse_cgroup_file(text)`` is a pure function. It returns CgroupInfo or raises
CgroupParseError, with reason INVALID_CGROUP for malformed input and AMBIGUOUS_CGROUPS
when the file names two pods or two containers. Callers read the file with a size
limit (``MAX_CGROUP_FILE_CHARS``) and never consult /proc/<pid>/mountinfo, which the
workload can shape with bind mounts.

Each line is ``hierarchy-id:controllers:path`` (cgroup v1 has one line per hierarchy,
v2 has ``0::path``). Paths may start with ``/..`` inside a cgroup namespace. Both
kubelet cgroup drivers are recognised:

- cgroupfs: ``/kubepods/burstable/pod<uuid>/<container-id>``, where the runtime
  may prefix the container ID (``crio-<id>``);
- systemd: ``/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uuid
  with underscores>.slice/<runtime>-<id>.scope`` (``cri-containerd``, ``crio``,
  ``docker``, ...).

Rules: a container ID is exactly 64 lowercase hex characters; ``*-conmon-<id>`` is a
runtime's monitor process and not a container. Container IDs that appear before the
pod component belong to an enclosing node container (kind, for example) and are
ignored. Lines without IDs never conflict with lines that have them. A systemd unit
(the innermost ``*.service`` component) is reported only when no line names a pod or
a container.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from agent.attest.errors import CgroupParseError
from agent.denial import Reason

# Real files have one line per hierarchy (about 15) of at most PATH_MAX characters.
MAX_CGROUP_FILE_CHARS = 256 * 1024
MAX_CGROUP_PATH_CHARS = 4096
# Parsed texts kept for reuse: one per distinct cgroup set (container) on the node.
_PARSED_TEXTS_CACHED = 1024
_MAX_CACHED_TEXT_CHARS = 8192

_CONTAINER_COMPONENT = re.compile(
    r"(?:(?P<prefix>[a-z][a-z0-9-]*?)-)?(?P<id>[0-9a-f]{64})(?:\.scope)?"
)
# Pod UIDs are UUIDs; static pods use a 32-hex hash of their manifest instead.
_POD_COMPONENT = re.compile(
    r"(?:[a-z0-9-]+-)?pod"
    r"(?P<uid>[0-9a-f]{8}(?P<sep>[-_])[0-9a-f]{4}(?P=sep)[0-9a-f]{4}(?P=sep)[0-9a-f]{4}"
    r"(?P=sep)[0-9a-f]{12}|[0-9a-f]{32})"
    r"(?:\.slice)?"
)
_SERVICE_COMPONENT = re.compile(r"[A-Za-z0-9:_.\\@-]+\.service")
_LINE = re.compile(r"(?P<hierarchy>[0-9]+):(?P<controllers>[^:]*):(?P<path>.*)")


@dataclass(frozen=True, slots=True)
class CgroupInfo:
    """Workload identifiers found in one cgroup file; None where absent."""

    pod_uid: str | None = None
    container_id: str | None = None
    systemd_unit: str | None = None


@dataclass(frozen=True, slots=True)
class _LineIds:
    pod_uid: str | None
    container_id: str | None
    systemd_unit: str | None


def _invalid(message: str) -> CgroupParseError:
    return CgroupParseError(Reason.INVALID_CGROUP, message)


def _ambiguous(kind: str, values: set[str]) -> CgroupParseError:
    listed = ", ".join(sorted(values))
    return CgroupParseError(
        Reason.AMBIGUOUS_CGROUPS, f"ambiguous cgroups: the file names several {kind}: {listed}"
    )


def _path_components(path: str) -> list[str]:
    # Empty, "." and ".." parts come from cgroup namespaces ("/../../pod..") and carry no IDs.
    return [part for part in path.split("/") if part not in ("", ".", "..")]


def _pod_uid(component: str) -> str | None:
    match = _POD_COMPONENT.fullmatch(component)
    if match is None:
        return None
    return match["uid"].replace("_", "-")


def is_pod_component(component: str) -> bool:
    """Tell whether one cgroup path component is a kubelet pod cgroup (either driver)."""
    return _pod_uid(component) is not None


def _container_id(component: str) -> str | None:
    match = _CONTAINER_COMPONENT.fullmatch(component)
    if match is None:
        return None
    prefix = match["prefix"] or ""
    if prefix == "conmon" or prefix.endswith("-conmon"):
        return None  # the runtime's monitor process (crio-conmon-<id>), not a container
    return match["id"]


def _parse_path(path: str) -> _LineIds:
    components = _path_components(path)
    pods = [(index, uid) for index, part in enumerate(components) if (uid := _pod_uid(part))]
    if len({uid for _, uid in pods}) > 1:
        raise _ambiguous("pod UIDs in one path", {uid for _, uid in pods})
    pod_uid = pods[-1][1] if pods else None

    # Container IDs before the pod component belong to an enclosing node container.
    after_pod = components[pods[-1][0] + 1 :] if pods else components
    containers = {cid for part in after_pod if (cid := _container_id(part))}
    if len(containers) > 1:
        raise _ambiguous("container IDs in one path", containers)
    container_id = next(iter(containers), None)

    units = [part for part in components if _SERVICE_COMPONENT.fullmatch(part)]
    return _LineIds(pod_uid, container_id, units[-1] if units else None)


def _split_lines(text: str) -> list[str]:
    if len(text) > MAX_CGROUP_FILE_CHARS:
        raise _invalid(
            f"cgroup file has {len(text)} characters, more than the limit of "
            f"{MAX_CGROUP_FILE_CHARS}"
        )
    lines = text.splitlines()
    if not lines:
        raise _invalid("cgroup file is empty")
    return lines


def _parse_line(number: int, line: str) -> _LineIds:
    match = _LINE.fullmatch(line)
    if match is None:
        shown = line[:80]
        raise _invalid(f"cgroup line {number} is not 'hierarchy-id:controllers:path': {shown!r}")
    path = match["path"]
    if not path.startswith("/"):
        raise _invalid(f"cgroup line {number} has a relative path: {path[:80]!r}")
    if len(path) > MAX_CGROUP_PATH_CHARS:
        raise _invalid(
            f"cgroup line {number} has a path of {len(path)} characters, more than "
            f"PATH_MAX ({MAX_CGROUP_PATH_CHARS})"
        )
    return _parse_path(path)


def _single(kind: str, values: list[str | None]) -> str | None:
    distinct = {value for value in values if value is not None}
    if len(distinct) > 1:
        raise _ambiguous(kind, distinct)
    return next(iter(distinct), None)


def parse_cgroup_file(text: str) -> CgroupInfo:
    """Parse the text of /proc/<pid>/cgroup; raise CgroupParseError when it is unusable.

    The result depends on the text alone, and a process sends the same text on every
    call, so results of texts up to ``_MAX_CACHED_TEXT_CHARS`` are cached. Errors are
    not: each call with an unusable text raises a new exception.
    """
    if len(text) <= _MAX_CACHED_TEXT_CHARS:
        return _parse_cached(text)
    return _parse(text)


def _parse(text: str) -> CgroupInfo:
    parsed = [_parse_line(number, line) for number, line in enumerate(_split_lines(text), 1)]
    pod_uid = _single("pod UIDs", [ids.pod_uid for ids in parsed])
    container_id = _single("container IDs", [ids.container_id for ids in parsed])
    if pod_uid is not None or container_id is not None:
        return CgroupInfo(pod_uid=pod_uid, container_id=container_id)
    unit = _single("systemd units", [ids.systemd_unit for ids in parsed])
    return CgroupInfo(systemd_unit=unit)


_parse_cached = functools.lru_cache(maxsize=_PARSED_TEXTS_CACHED)(_parse)
