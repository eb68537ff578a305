"""Fair sharing of attestation work between calling processes.

Attestation runs in the default thread pool, which serves jobs in arrival order. One
process that opens hundreds of connections at once would queue hundreds of jobs, and
every other caller would wait behind all of them. ``PerKeyLimiter.slot(pid)`` lets at
most ``limit`` jobs of one process into the pool at a time; the rest wait in their own
per-process queue, so a burst from one process delays others by at most ``limit`` jobs
per busy process. Use it from the event loop thread only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Entry:
    semaphore: asyncio.Semaphore
    users: int = field(default=0)


class PerKeyLimiter:
    """At most ``limit`` concurrent slots per key; keys nobody uses are forgotten."""

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
