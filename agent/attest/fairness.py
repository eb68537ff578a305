"""Fair sharing of attestation work between calling processes.

Attestation runs in the default thread pool, which serves jobs in arrival order. One
process that opens hundreds of connections at once would queue hundreds of jobs, and
every other caller would wait behind all of them. ``PerKeyLimiter.slot(pid)`` lets at
most ``limit`` jobs of one process into the pool at a time; the rest wait in their own
per-process queue, so a burst from one process delays others by at most ``limit`` jobs
per busy process. Use it from the event loop thread only.

``JoinableRuns.run`` lets concurrent requests for the same key (one connection's
streams, woken by one change) share one running job instead of queueing one each.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

KeyT = TypeVar("KeyT", bound=Hashable)
ResultT = TypeVar("ResultT")


@dataclass(slots=True)
class _Entry:
    semaphore: asyncio.Semaphore
    users: int = field(default=0)


class PerKeyLimiter:
    """At most ``limit`` concurrent slots per key; unused keys are forgotten."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self._limit = limit
        self._entries: dict[Hashable, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @contextlib.asynccontextmanager
    async def slot(self, key: Hashable) -> AsyncIterator[None]:
        """Wait for a free slot of ``key`` and hold it for the ``async with`` block."""
        entry = self._entries.get(key)
        if entry is None:
            entry = _Entry(asyncio.Semaphore(self._limit))
            self._entries[key] = entry
        entry.users += 1
        try:
            async with entry.semaphore:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[key]


@dataclass(slots=True)
class _Run(Generic[ResultT]):
    task: asyncio.Future[ResultT]
    versions: tuple[int, ...]


class JoinableRuns(Generic[KeyT, ResultT]):
    """At most one joinable job per key; a request joins it when it is fresh enough.

    A job is tagged with the versions current when it started (for example the
    manifest store's and the CA's change counters). A request passes the versions it
    has seen and joins the running job of its key only if every tag is at least that
    version, so the job started after the last change the request has seen. Otherwise
    the request starts a new job, which later requests of the key join.
    """

    def __init__(self) -> None:
        self._running: dict[KeyT, _Run[ResultT]] = {}

    def __len__(self) -> int:
        return len(self._running)

    async def run(
        self,
        key: KeyT,
        seen: tuple[int, ...],
        current: tuple[int, ...],
        start: Callable[[], Awaitable[ResultT]],
    ) -> ResultT:
        """Return the result of the running job of ``key`` or of a new one from ``start``."""
        running = self._running.get(key)
        if running is None or not _started_after(running.versions, seen):
            running = _Run(asyncio.ensure_future(start()), current)
            self._running[key] = running
            running.task.add_done_callback(lambda _: self._forget(key, running))
        # shield: one cancelled requester must not cancel the job for the others.
        return await asyncio.shield(running.task)

    def _forget(self, key: KeyT, running: _Run[ResultT]) -> None:
        if self._running.get(key) is running:
            del self._running[key]


def _started_after(tags: tuple[int, ...], seen: tuple[int, ...]) -> bool:
    return all(tag >= version for tag, version in zip(tags, seen, strict=True))
