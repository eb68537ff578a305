"""Versioned change notification for asyncio subscribers.

A Notifier stores a version number that grows by one on every change. A subscriber
remembers the last version it handled and awaits ``wait_for_change(seen)``, which
returns at once if the version has already moved on, so no change is ever missed
between two waits. Call ``notify()`` from the event loop thread only.

``next_change(seen)`` returns a future instead, which is cheaper for a subscriber that
also waits for other things with ``asyncio.wait``: it creates no task. The future is
shared by every subscriber of the same version, so never ``await`` it from a task
that may be cancelled (cancelling the task would cancel the shared future); pass it
to ``asyncio.wait``, which leaves it alone.
"""

from __future__ import annotations

import asyncio


class Notifier:
    """Monotonic version counter with an awaitable change event."""

    def __init__(self) -> None:
        self._version = 0
        self._next: asyncio.Future[None] | None = None

    @property
    def version(self) -> int:
        return self._version

    def notify(self) -> int:
        """Record a change, wake every waiter and return the new version."""
        self._version += 1
        future, self._next = self._next, None
        if future is not None and not future.done():
            future.set_result(None)
        return self._version

    def next_change(self, seen: int) -> asyncio.Future[None]:
        """Return a future that is done once the version differs from ``seen``."""
        loop = asyncio.get_running_loop()
        if self._version != seen:
            done: asyncio.Future[None] = loop.create_future()
            done.set_result(None)
            return done
        if self._next is None or self._next.done():  # done: a subscriber cancelled it
            self._next = loop.create_future()
        return self._next

    async def wait_for_change(self, seen: int) -> int:
        """Wait until the version differs from ``seen`` and return the new version."""
        while self._version == seen:
            # shield: cancelling this waiter must not cancel the future others share.
            await asyncio.shield(self.next_change(seen))
        return self._version
