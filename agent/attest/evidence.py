"""Evidence: what the agent proved about a calling process.

Evidence is produced only by agent.attest after the pinned process was re-checked; the
manifest matcher and the services treat every field as kernel-sourced fact.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Evidence:
    """Kernel-sourced facts about one calling process.

    ``uid``/``gid`` are the real ids and ``euid``/``egid`` the effective ids from
    /proc/<pid>/status. ``start_time`` is field 22 of /proc/<pid>/stat, in clock ticks
    since boot. ``exe_sha256`` is lowercase hex of the bytes behind /proc/<pid>/exe.
    ``pod_uid`` uses dashes; ``container_id`` is 64 lowercase hex characters;
    ``systemd_unit`` is set only outside any pod. ``exe_path`` is the link text of
    /proc/<pid>/exe, for display only and never used for decisions.
    """

    pid: int
    uid: int
    gid: int
    euid: int
    egid: int
    start_time: int
    exe_sha256: str
    pod_uid: str | None = None
    container_id: str | None = None
    systemd_unit: str | None = None
    exe_path: str | None = None

    def as_json_dict(self) -> dict[str, object]:
        """Return the public view used by ``attest-agent inspect`` and the audit log."""
        return {
            "pid": self.pid,
            "uid": self.uid,
            "gid": self.gid,
            "exe_sha256": self.exe_sha256,
            "pod_uid": self.pod_uid,
            "container_id": self.container_id,
            "systemd_unit": self.systemd_unit,
            "start_time": self.start_time,
        }
