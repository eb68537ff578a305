"""Versioned change notification for asyncio subscribers.

A Notifier stores a version number that grows by one on every change. A subscriber
remembers the last version it handled and awaits ``wait_for_change(seen)``, which
returns at once if the version has already moved on, so no change is ever missed
between two waits. Call ``notify()`` from the event loop thread only.
"""

from __future__ import annotations

import asyncio


class Notifier:
    """Monotonic version counter with an awaitable change event."""

    def __init__(self) -> None:
        self._version = 0
        self._event = asyncio.Event()

    @property
    def version(self) -> int:
        return self._version

    def notify(self) -> int:
        """Record a change, wake every waiter and return the new version."""
        self._version += 1
        # Swap in a fresh event first so that waiters woken now wait on the next one.
        event, self._event = self._event, asyncio.Event()
        event.set()
        return self._version

    async def wait_for_change(self, seen: int) -> int:
        """Wait until the version differs from ``seen`` and return the new version."""
        while self._version == seen:
            await self._event.wait()
        return self._version
