"""The X.509-SVID cache and its renewal schedule.

SvidCache stores one SVID per (SPIFFE ID, DNS names, TTL). Each entry is due for
renewal at half its lifetime, moved by up to +/-10% of that half so that many SVIDs
issued together renew spread out instead of in one burst. An entry that no caller
requested for longer than its lifetime is dropped at its next due time, not renewed.
An SVID capped at the intermediate's end renews only when it expires.
The cache is plain data: the Authority calls it from the event loop and passes the
time (POSIX seconds) into every method.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from agent.ca.x509svid import X509Svid

# Key of a cache entry: SPIFFE ID, sorted DNS names, TTL in seconds.
CacheKey = tuple[str, tuple[str, ...], int]

RENEW_FRACTION = 0.5
JITTER = 0.1
# A cached SVID older than this fraction of its lifetime is renewed by the requester
# itself, in case the background renewal fell behind (for example after a suspend).
STALE_FRACTION = 0.75


@dataclass(frozen=True)
class CacheEntry:
    """One cached SVID with its schedule; ``lifetime`` is in seconds from ``issued_at``."""

    svid: X509Svid
    issued_at: float
    lifetime: float
    renew_at: float
    last_requested: float
    capped: bool = False

    def usable(self, now: float) -> bool:
        """Return True while the SVID may be handed out without renewing it first.

        A capped SVID ends with the intermediate, and a renewal from the same
        intermediate would end at the same time, so it stays usable until it expires.
        """
        if self.capped:
            return now < self.issued_at + self.lifetime
        return now < self.issued_at + self.lifetime * STALE_FRACTION


def renewal_time(issued_at: float, lifetime: float, rng: random.Random) -> float:
    """Return when an SVID issued at ``issued_at`` should be renewed."""
    jitter = rng.uniform(-JITTER, JITTER)
    return issued_at + lifetime * RENEW_FRACTION * (1.0 + jitter)


class SvidCache:
    """Cached X.509-SVIDs keyed by CacheKey, with renewal and expiry bookkeeping."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._entries: dict[CacheKey, CacheEntry] = {}
        self._rng = rng or random.SystemRandom()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: CacheKey) -> bool:
        return key in self._entries

    def lookup(self, key: CacheKey, now: float) -> CacheEntry | None:
        """Return the entry for ``key`` and record that it was requested at ``now``."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        entry = replace(entry, last_requested=now)
        self._entries[key] = entry
        return entry

    def peek(self, key: CacheKey) -> CacheEntry | None:
        """Return the entry for ``key`` without recording a request."""
        return self._entries.get(key)

    def store(
        self,
        key: CacheKey,
        svid: X509Svid,
        issued_at: float,
        lifetime: float,
        *,
        capped: bool = False,
    ) -> CacheEntry:
        """Insert or replace the SVID for ``key`` and schedule its renewal.

        ``capped`` means the SVID ends with the intermediate CA. Renewing it earlier
        would only repeat the same end, ever more often as that end nears, so its
        renewal waits until it expires, unless a new intermediate arrives first
        (``mark_all_due``).
        """
        previous = self._entries.get(key)
        renew_at = issued_at + lifetime if capped else renewal_time(issued_at, lifetime, self._rng)
        entry = CacheEntry(
            svid=svid,
            issued_at=issued_at,
            lifetime=lifetime,
            renew_at=renew_at,
            last_requested=previous.last_requested if previous else issued_at,
            capped=capped,
        )
        self._entries[key] = entry
        return entry

    def due(self, now: float) -> list[CacheKey]:
        """Return the keys whose renewal time has come, earliest first."""
        due = [(e.renew_at, key) for key, e in self._entries.items() if e.renew_at <= now]
        return [key for _, key in sorted(due)]

    def is_abandoned(self, key: CacheKey, now: float) -> bool:
        """Return True if no caller requested ``key`` for longer than its lifetime."""
        entry = self._entries[key]
        return now - entry.last_requested > entry.lifetime

    def postpone(self, key: CacheKey, until: float) -> None:
        """Move the renewal of ``key`` to ``until``, after a failed renewal."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries[key] = replace(entry, renew_at=until)

    def drop(self, key: CacheKey) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def mark_all_due(self, now: float) -> None:
        """Schedule every entry for renewal at ``now``, after the signing CA changed."""
        for key, entry in self._entries.items():
            self._entries[key] = replace(entry, renew_at=now)

    def next_renewal(self) -> float | None:
        """Return the earliest renewal time, or None when the cache is empty."""
        return min((entry.renew_at for entry in self._entries.values()), default=None)
