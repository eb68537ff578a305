"""Safe access to the manifest directory.

``scan_directory`` (blocking: run it in a thread) lists ``*.json`` manifests with a
fingerprint of each manifest and its ``.sig`` file, so the store re-reads only what
changed. ``read_bounded`` reads at most ``limit`` bytes with aiofiles and raises
ManifestFileError for a symlink leading out of the directory, a non-regular file, an
unreadable file or one larger than ``limit``. ``read_bounded_sync`` does the same for
the command line.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import aiofiles

from agent.manifests.errors import ManifestFileError

MANIFEST_SUFFIX = ".json"
SIGNATURE_SUFFIX = ".sig"
MAX_SIGNATURE_BYTES = 16 * 1024

# O_NONBLOCK keeps a FIFO planted in the directory from blocking the read forever.
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


@dataclass(frozen=True, slots=True)
class FileState:
    """Stat snapshot of one file, used to detect changes between scans.

    ``real_path`` is the path with symlinks resolved, or None if the file is missing.
    """

    real_path: str | None
    signature: tuple[int, ...] | None
    mtime_ns: int = 0


@dataclass(frozen=True, slots=True)
class ManifestFiles:
    """A manifest file and its detached signature as seen by one directory scan."""

    name: str
    manifest: FileState
    signature: FileState

    def modified_since(self, time_ns: int) -> bool:
        """Tell whether either file's modification time is at or after ``time_ns``.

        File times advance in coarse ticks, so a file rewritten in place within one
        tick keeps its stat. Callers re-read such recent files instead of trusting stat.
        """
        return max(self.manifest.mtime_ns, self.signature.mtime_ns) >= time_ns


def scan_directory(directory: Path) -> dict[str, ManifestFiles]:
    """List the manifests in ``directory`` by file name, ignoring hidden files.

    Raises ManifestFileError(reason "directory_not_found") if the directory cannot be
    listed.
    """
    try:
        names = sorted(
            entry.name
            for entry in os.scandir(directory)
            if entry.name.endswith(MANIFEST_SUFFIX) and not entry.name.startswith(".")
        )
    except OSError as error:
        raise ManifestFileError(
            str(directory), "directory_not_found",
            f"cannot list the manifest directory ({error.strerror}); create it or fix the path",
        ) from error
    return {
        name: ManifestFiles(
            name,
            _file_state(directory / name),
            _file_state(directory / (name + SIGNATURE_SUFFIX)),
        )
        for name in names
    }


def check_inside(directory: Path, state: FileState, name: str) -> str:
    """Return the resolved path, or raise if the file is missing or resolves outside."""
    if state.real_path is None:
        raise ManifestFileError(name, "unreadable", "the file disappeared; it will be retried")
    root = os.path.realpath(directory)
    if os.path.commonpath([root, state.real_path]) != root:
        raise ManifestFileError(
            name, "symlink_outside_directory",
            f"it resolves to {state.real_path}, outside {root}; copy the file into the directory",
        )
    return state.real_path


async def read_bounded(path: str, limit: int, name: str) -> bytes:
    """Read a regular file of at most ``limit`` bytes without following a final symlink."""
    try:
        async with aiofiles.open(path, "rb", opener=_open_no_follow) as stream:
            _check_regular(os.fstat(stream.fileno()), name)
            data = await stream.read(limit + 1)
    except OSError as error:
        raise ManifestFileError(name, "unreadable", f"cannot read it ({error.strerror})") from error
    return _check_size(data, limit, name)


def read_bounded_sync(path: str, limit: int, name: str) -> bytes:
    """Blocking twin of ``read_bounded`` for the command line."""
    try:
        with open(path, "rb", opener=_open_no_follow) as stream:
            _check_regular(os.fstat(stream.fileno()), name)
            data = stream.read(limit + 1)
    except OSError as error:
        raise ManifestFileError(name, "unreadable", f"cannot read it ({error.strerror})") from error
    return _check_size(data, limit, name)


def _open_no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | _OPEN_FLAGS)


def _check_regular(status: os.stat_result, name: str) -> None:
    if not stat.S_ISREG(status.st_mode):
        raise ManifestFileError(name, "not_regular_file", "it is not a regular file")


def _check_size(data: bytes, limit: int, name: str) -> bytes:
    if len(data) > limit:
        raise ManifestFileError(
            name, "too_large", f"it is larger than {limit} bytes; split it or shorten it"
        )
    return data


def _file_state(path: Path) -> FileState:
    try:
        link = os.lstat(path)
        target = os.stat(path)
    except OSError:
        return FileState(None, None)
    fields = (
        link.st_ino, link.st_mtime_ns, link.st_ctime_ns, link.st_size,
        target.st_dev, target.st_ino, target.st_mtime_ns, target.st_ctime_ns, target.st_size,
    )
    return FileState(os.path.realpath(path), fields, target.st_mtime_ns)
