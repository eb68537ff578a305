"""Prepare the filesystem paths of the public and the internal Unix sockets.

Call ``prepare_public_socket(path)`` before ``FrontDoor.start()``. It creates a
missing directory with mode 0755, removes a stale socket file left by a crashed agent,
and raises SocketInUseError when a live process still accepts on it.

Call ``prepare_internal_socket(path)`` before the internal grpcio server binds. The
internal socket's directory must be mode 0700 and owned by the agent's user. That
directory is what keeps every other process away from the internal server, so that
every peer of the internal server is one of the front door's relay sockets.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

from agent.peer.errors import SocketInUseError, SocketPathError

PUBLIC_DIR_MODE = 0o755
PUBLIC_SOCKET_MODE = 0o777
INTERNAL_DIR_MODE = 0o700

# A live server accepts connect() at once; the timeout only bounds a full accept backlog.
_PROBE_TIMEOUT_SECONDS = 1.0


def _make_dir(directory: Path, mode: int) -> None:
    try:
        directory.mkdir(parents=True)
    except FileExistsError:
        return
    except OSError as exc:
        raise SocketPathError(str(directory), f"cannot create the directory: {exc}") from exc
    os.chmod(directory, mode)  # mkdir's mode is reduced by the umask


def _probe_and_remove(path: Path) -> None:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(_PROBE_TIMEOUT_SECONDS)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        os.unlink(path)  # no process accepts on it: a stale socket from an earlier run
        return
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            raise SocketInUseError(str(path)) from exc  # a full backlog means a live server
        raise SocketPathError(str(path), f"cannot probe the existing socket: {exc}") from exc
    finally:
        probe.close()
    raise SocketInUseError(str(path))


def remove_stale_socket(path: Path) -> None:
    """Remove ``path`` if it is a stale socket; raise if it is live or not a socket."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise SocketPathError(
            str(path), "it exists and is not a socket: remove it or pick another path"
        )
    _probe_and_remove(path)


def prepare_public_socket(path: Path) -> None:
    """Create the socket's directory (mode 0755) if missing and clear a stale socket file."""
    _make_dir(path.parent, PUBLIC_DIR_MODE)
    remove_stale_socket(path)


def check_internal_dir(path: Path) -> None:
    """Raise SocketPathError unless the internal socket's directory is 0700 and ours."""
    directory = path.parent
    try:
        info = os.stat(directory)
    except OSError as exc:
        raise SocketPathError(str(directory), f"cannot stat the directory: {exc}") from exc
    if info.st_uid != os.geteuid():
        raise SocketPathError(
            str(directory), f"owned by uid {info.st_uid}, expected the agent's uid {os.geteuid()}"
        )
    if stat.S_IMODE(info.st_mode) != INTERNAL_DIR_MODE:
        raise SocketPathError(
            str(directory),
            f"mode is {stat.S_IMODE(info.st_mode):o}, expected 700 so that only the agent "
            "can reach the internal server",
        )


def prepare_internal_socket(path: Path) -> None:
    """Create the internal socket's directory with mode 0700, check it, and clear a stale socket."""
    _make_dir(path.parent, INTERNAL_DIR_MODE)
    check_internal_dir(path)
    remove_stale_socket(path)
