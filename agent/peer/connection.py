"""A connection accepted on the public socket, with the caller pinned at accept time.

The front door fills in PeerCredentials from SO_PEERCRED, a pidfd for that exact process
and its start time, before any byte of the caller's request is read. The connection
owns the pidfd and closes it when the connection ends.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """SO_PEERCRED as of connect(), translated into the agent's PID namespace."""

    pid: int
    uid: int
    gid: int


@dataclass(eq=False, slots=True)
class Connection:
    """One accepted client connection and the process pinned to it.

    ``conn_id`` is unique for the agent's lifetime; the relay binds the internal client
    end to the abstract name derived from it, so grpc's ``context.peer()`` maps back
    here. ``start_time`` is field 22 of /proc/<pid>/stat read right after accept.

    ``client_inode`` is the inode of the client's end of the socket and ``exe_file`` the
    (st_dev, st_ino) of /proc/<pid>/exe at accept time. The front door always sets
    both, and the attestor then checks which processes hold the client end and whether
    the caller ran execve() since it was pinned. None means a connection built without
    a socket (tests, tools), for which the attestor skips those two checks.
    """

    conn_id: str
    creds: PeerCredentials
    pidfd: int
    start_time: int
    client_inode: int | None = None
    exe_file: tuple[int, int] | None = None
    closed: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.creds.pid

    def close(self) -> None:
        """Release the pidfd; safe to call more than once."""
        if not self.closed:
            self.closed = True
            os.close(self.pidfd)
