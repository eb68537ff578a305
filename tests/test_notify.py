"""Notifier: versions, wait_for_change and the shared next_change future."""

from __future__ import annotations

import asyncio

from agent.notify import Notifier


async def test_next_change_done_when_version_moved() -> None:
    notifier = Notifier()
    seen = notifier.version
    notifier.notify()
    assert notifier.next_change(seen).done()


async def test_next_change_shared_and_completed_by_notify() -> None:
    notifier = Notifier()
    seen = notifier.version
    first, second = notifier.next_change(seen), notifier.next_change(seen)
    assert first is second
    assert not first.done()
    assert notifier.notify() == seen + 1
    assert first.done()
    # The next version gets a new future.
    assert not notifier.next_change(seen + 1).done()


async def test_next_change_survives_asyncio_wait_timeouts() -> None:
    notifier = Notifier()
    future = notifier.next_change(notifier.version)
    done, _ = await asyncio.wait({future}, timeout=0.01)
    assert not done
    assert not future.cancelled()  # asyncio.wait leaves the shared future alone
    notifier.notify()
    assert future.done()


async def test_next_change_replaces_a_cancelled_future() -> None:
    notifier = Notifier()
    seen = notifier.version
    cancelled = notifier.next_change(seen)
    cancelled.cancel()
    fresh = notifier.next_change(seen)
    assert fresh is not cancelled
    notifier.notify()  # must not raise on the cancelled one
    assert fresh.done()
    assert not fresh.cancelled()


async def test_wait_for_change_returns_new_version() -> None:
    notifier = Notifier()
    waiter = asyncio.ensure_future(notifier.wait_for_change(0))
    await asyncio.sleep(0)
    assert not waiter.done()
    notifier.notify()
    assert await waiter == 1
