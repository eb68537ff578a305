"""SHA-256 of a process's executable, read through /proc/<pid>/exe, with an LRU cache.

``ExeHasher.digest(pid)`` blocks while it reads the file, so callers run it in a
worker thread; the cache is guarded by a lock for that reason. ``cached_digest(pid)``
reads no content and returns only cached digests, so the event loop may call it. Opening
/proc/<pid>/exe opens the file the process runs, even if it was deleted or lives in
another mount namespace, so no path is ever resolved in the agent's own namespace.

Digests are cached by the identity of the opened file, taken with fstat: (st_dev,
st_ino, st_size, st_mtime_ns, st_ctime_ns). Any write to the file changes its ctime
and so its key, while another process running the same unchanged file reuses the
entry. Kernels may keep timestamps at clock-tick granularity, so a file changed twice
within one tick could keep its key. Digests of files whose ctime is less than
``RACY_WINDOW_NS`` old are therefore not cached: such files are hashed on every call
until they are older, and any later write gets a ctime after the cached one.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from agent.attest.errors import ExeTooLargeError, ExeUnreadableError

_CHUNK_BYTES = 1 << 20

# Far above timestamp granularity on Linux filesystems (one clock tick, 1 ns with
# multigrain timestamps) and at least FAT's 2 s.
RACY_WINDOW_NS = 2_000_000_000


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """Cache key of an opened file: a change of content changes at least one field."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, info: os.stat_result) -> FileIdentity:
        return cls(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


@dataclass(frozen=True, slots=True)
class HashCacheStats:
    """Counters of the digest cache; ``bytes_hashed`` counts bytes read for hashing."""

    hits: int
    misses: int
    entries: int
    bytes_hashed: int


@dataclass(frozen=True, slots=True)
class ExeDigest:
    """The digest of a process's executable and the link text shown for it."""

    sha256: str
    exe_path: str | None
    file_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the hashed file


class ExeHasher:
    """Hashes executables through /proc/<pid>/exe and caches digests by file identity."""

    def __init__(
        self, proc_root: Path, *, cache_size: int = 256, max_exe_size: int | None = None
    ) -> None:
        if cache_size < 0:
            raise ValueError(f"cache_size must be 0 or more, got {cache_size}")
        self._proc_root = proc_root
        self._cache_size = cache_size
        self._max_exe_size = max_exe_size
        self._cache: OrderedDict[FileIdentity, str] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._bytes_hashed = 0

    @property
    def stats(self) -> HashCacheStats:
        with self._lock:
            return HashCacheStats(self._hits, self._misses, len(self._cache), self._bytes_hashed)

    def digest(self, pid: int) -> ExeDigest:
        """Hash the file that ``pid`` runs; raise ExeUnreadableError or ExeTooLargeError."""
        path = f"{self._proc_root}/{pid}/exe"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise _unreadable(pid, path, exc) from exc
        try:
            sha256, identity = self._digest_open_file(pid, path, fd)
        finally:
            os.close(fd)
        return _exe_digest(sha256, path, identity)

    def cached_digest(self, pid: int) -> ExeDigest | None:
        """Return the digest of the file ``pid`` runs if it is cached, else None.

        Reads no file content, so it does not block on disk; errors are raised as by
        ``digest``. A miss is not counted: the caller hashes next, which counts it.
        """
        path = f"{self._proc_root}/{pid}/exe"
        # stat follows the /proc link to the same file that open would, without an fd.
        try:
            info = os.stat(path)
        except OSError as exc:
            raise _unreadable(pid, path, exc) from exc
        sha256 = self._cached_sha256(pid, path, info)
        if sha256 is None:
            return None
        return _exe_digest(sha256, path, FileIdentity.of(info))

    def _cached_sha256(self, pid: int, path: str, info: os.stat_result) -> str | None:
        self._check_file(pid, path, info)
        return self._lookup(FileIdentity.of(info), count_miss=False)

    def _check_file(self, pid: int, path: str, info: os.stat_result) -> None:
        if not stat.S_ISREG(info.st_mode):
            raise ExeUnreadableError(f"{path} is not a regular file", pid=pid)
        if self._max_exe_size is not None and info.st_size > self._max_exe_size:
            raise ExeTooLargeError(
                f"executable of process {pid} has {info.st_size} bytes, more than the "
                f"maximum of {self._max_exe_size}: raise the limit to attest it",
                pid=pid,
                size=info.st_size,
                limit=self._max_exe_size,
            )

    def _digest_open_file(self, pid: int, path: str, fd: int) -> tuple[str, FileIdentity]:
        try:
            info = os.fstat(fd)
        except OSError as exc:
            raise _unreadable(pid, path, exc) from exc
        self._check_file(pid, path, info)
        identity = FileIdentity.of(info)
        cached = self._lookup(identity, count_miss=True)
        if cached is not None:
            return cached, identity
        sha256 = self._hash(pid, path, fd)
        self._check_unchanged(pid, path, fd, identity)
        if time.time_ns() - identity.ctime_ns >= RACY_WINDOW_NS:
            self._store(identity, sha256)
        return sha256, identity

    def _hash(self, pid: int, path: str, fd: int) -> str:
        digest = hashlib.sha256()
        offset = 0
        try:
            while chunk := os.pread(fd, _CHUNK_BYTES, offset):
                digest.update(chunk)
                offset += len(chunk)
        except OSError as exc:
            raise _unreadable(pid, path, exc) from exc
        with self._lock:
            self._bytes_hashed += offset
        return digest.hexdigest()

    def _check_unchanged(self, pid: int, path: str, fd: int, before: FileIdentity) -> None:
        # A write during hashing would make the digest describe no version of the file.
        try:
            after = FileIdentity.of(os.fstat(fd))
        except OSError as exc:
            raise _unreadable(pid, path, exc) from exc
        if after != before:
            raise ExeUnreadableError(
                f"executable of process {pid} changed while it was hashed", pid=pid
            )

    def _lookup(self, identity: FileIdentity, *, count_miss: bool) -> str | None:
        # A cached-only lookup that misses is retried with hashing, which counts the miss.
        with self._lock:
            sha256 = self._cache.get(identity)
            if sha256 is None:
                if count_miss:
                    self._misses += 1
                return None
            self._hits += 1
            self._cache.move_to_end(identity)
            return sha256

    def _store(self, identity: FileIdentity, sha256: str) -> None:
        if self._cache_size == 0:
            return
        with self._lock:
            self._cache[identity] = sha256
            self._cache.move_to_end(identity)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)


def _exe_digest(sha256: str, path: str, identity: FileIdentity) -> ExeDigest:
    return ExeDigest(
        sha256=sha256, exe_path=_link_text(path), file_id=(identity.dev, identity.ino)
    )


def _unreadable(pid: int, path: str, exc: OSError) -> ExeUnreadableError:
    if exc.errno == errno.ENOENT:
        detail = "no executable (a kernel thread, or the process exited)"
    else:
        detail = str(exc)
    return ExeUnreadableError(f"cannot read executable {path}: {detail}", pid=pid)


def _link_text(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None  # display only; the digest above is what counts
