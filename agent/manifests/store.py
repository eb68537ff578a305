"""The manifest store: a directory of signed manifests, reloaded while the agent runs.

Create a ManifestStore, ``await start()`` (loads the directory and raises
ManifestFileError if it cannot be listed), then call ``match`` for each attested caller
and watch ``notifier`` to re-evaluate open streams. ``await reload()`` re-reads at once
(for SIGHUP) and ``await close()`` stops the background polling.

Every poll (``poll_interval`` seconds) re-reads only files whose stat changed. A file
that fails to read, verify or parse is skipped, logged once per version with its file
name and reason, and counted in ``load_errors``; the other manifests keep serving. The
set of manifests is replaced as a whole, so ``match`` never sees half a reload. The
notifier moves when the set changes and when a manifest's ``not_after`` passes, so
subscribers re-run ``match`` and lose identities that expired.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.attest.evidence import Evidence
from agent.denial import Denial, Reason
from agent.errors import ConfigError
from agent.log import event
from agent.manifests.errors import ManifestError, ManifestFileError
from agent.manifests.files import ManifestFiles, scan_directory
from agent.manifests.identity import Identity
from agent.manifests.loading import load_manifest_file, verify_and_parse
from agent.manifests.matching import ManifestVerdict, explain_manifests, match_manifests
from agent.manifests.schema import (
    DEFAULT_SPIFFE_ID_TEMPLATE,
    Manifest,
    check_spiffe_id_template,
)
from agent.manifests.signature import TrustedKey
from agent.notify import Notifier
from agent.spiffeid import parse_trust_domain

logger = logging.getLogger(__name__)

# Files modified this recently are re-read even if their stat looks unchanged, because
# an in-place rewrite within one file-time tick leaves size and times as they were.
_RECENT_CHANGE_NS = 2_000_000_000


@dataclass(frozen=True, slots=True)
class _Loaded:
    files: ManifestFiles
    outcome: Manifest | ManifestError


def _same_outcome(old: Manifest | ManifestError, new: Manifest | ManifestError) -> bool:
    if isinstance(old, Manifest) and isinstance(new, Manifest):
        return old.sha256 == new.sha256
    if isinstance(old, ManifestError) and isinstance(new, ManifestError):
        return (type(old), old.reason, str(old)) == (type(new), new.reason, str(new))
    return False


class ManifestStore:
    """Signed manifests from one directory, with hot reload and change notification."""

    def __init__(
        self,
        directory: Path,
        trusted_keys: Sequence[TrustedKey],
        *,
        trust_domain: str,
        spiffe_id_template: str = DEFAULT_SPIFFE_ID_TEMPLATE,
        poll_interval: float = 1.0,
    ) -> None:
        if poll_interval <= 0:
            raise ConfigError(f"invalid poll interval {poll_interval}; use a positive number")
        self._directory = Path(directory)
        self._keys = tuple(trusted_keys)
        self._trust_domain = parse_trust_domain(trust_domain)
        self._template = check_spiffe_id_template(spiffe_id_template)
        self._poll_interval = poll_interval
        self.notifier = Notifier()
        self.loaded = False
        self.load_errors = 0
        self._manifests: tuple[Manifest, ...] = ()
        self._cache: dict[str, _Loaded] = {}
        self._expired: frozenset[str] = frozenset()
        self._directory_failed = False
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def manifests(self) -> tuple[Manifest, ...]:
        """The manifests currently loaded, sorted by file name, expired ones included."""
        return self._manifests

    async def start(self) -> None:
        """Load the directory, raising ManifestFileError if it cannot be listed, then poll."""
        if self._closed or self._poller is not None:
            raise RuntimeError("ManifestStore.start() called twice or after close()")
        await self._load(strict=True)
        self.loaded = True
        self._poller = asyncio.create_task(self._poll(), name="manifest-store-poll")
        event(logger, logging.INFO, "manifest store started",
              manifests_dir=self._directory, count=len(self._manifests))

    async def reload(self) -> None:
        """Re-read changed files now, as on SIGHUP."""
        await self._load(strict=False)

    async def close(self) -> None:
        """Stop polling and expiry wake-ups; safe to call more than once."""
        self._closed = True
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)

    def match(
        self, evidence: Evidence, now: datetime | None = None
    ) -> tuple[Identity, ...] | Denial:
        """Return the identities the evidence may hold, or a Denial (see matching)."""
        if not self.loaded:
            message = "no manifest grants an identity: the manifest store is not loaded yet"
            return Denial(Reason.NO_MANIFEST_FOR_WORKLOAD, message, evidence.pid)
        return match_manifests(self._manifests, evidence, now)

    def explain(self, evidence: Evidence, now: datetime | None = None) -> list[ManifestVerdict]:
        """Return one verdict per loaded manifest file, sorted by file name."""
        return explain_manifests(self._manifests, evidence, now)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            await self._load(strict=False)

    async def _load(self, *, strict: bool) -> None:
        async with self._lock:
            try:
                listing = await asyncio.to_thread(scan_directory, self._directory)
            except ManifestFileError as error:
                if strict:
                    raise
                # Fail closed: an unlistable directory means no manifests.
                self._log_directory_failure(error)
                listing = {}
            else:
                self._directory_failed = False
            recent = time.time_ns() - _RECENT_CHANGE_NS
            loaded = {
                name: await self._reuse_or_load(files, recent) for name, files in listing.items()
            }
            for name in self._cache.keys() - loaded.keys():
                event(logger, logging.INFO, "manifest removed", file=name)
            self._cache = loaded
            self._swap(tuple(e.outcome for e in loaded.values() if isinstance(e.outcome, Manifest)))

    async def _reuse_or_load(self, files: ManifestFiles, recent_ns: int) -> _Loaded:
        """Return the cached outcome if the files did not change, else load them again.

        An outcome equal to the cached one (same manifest bytes, or the same error) is
        not logged or counted again, so a bad file produces one error per version.
        """
        cached = self._cache.get(files.name)
        if cached is not None and cached.files == files and not files.modified_since(recent_ns):
            return cached
        outcome: Manifest | ManifestError
        try:
            outcome = await self._load_file(files)
        except ManifestError as error:
            outcome = error
        if cached is None or not _same_outcome(cached.outcome, outcome):
            self._log_outcome(files.name, outcome)
        return _Loaded(files, outcome)

    def _log_outcome(self, name: str, outcome: Manifest | ManifestError) -> None:
        if isinstance(outcome, ManifestError):
            self.load_errors += 1
            event(logger, logging.ERROR, "manifest rejected",
                  file=name, reason=outcome.reason, key=outcome.key, error=str(outcome))
        else:
            event(logger, logging.INFO, "manifest loaded",
                  file=name, spiffe_id=outcome.spiffe_id, not_after=outcome.not_after)

    async def _load_file(self, files: ManifestFiles) -> Manifest:
        data, signature = await load_manifest_file(self._directory, files)
        return await asyncio.to_thread(
            verify_and_parse,
            files.name,
            data,
            signature,
            self._keys,
            trust_domain=self._trust_domain,
            spiffe_id_template=self._template,
        )

    def _swap(self, manifests: tuple[Manifest, ...]) -> None:
        changed = [(m.file, m.sha256) for m in manifests] != [
            (m.file, m.sha256) for m in self._manifests
        ]
        self._manifests = manifests
        expiry_changed = self._refresh_expiry()
        if changed:
            event(logger, logging.INFO, "manifest set changed", count=len(manifests))
        if changed or expiry_changed:
            self.notifier.notify()

    def _refresh_expiry(self) -> bool:
        """Recompute which manifests expired, re-arm the wake-up, and tell if that changed."""
        now = datetime.now(UTC)
        expired = frozenset(m.file for m in self._manifests if m.is_expired(now))
        for name in sorted(expired - self._expired):
            event(logger, logging.INFO, "manifest expired", file=name)
        changed = expired != self._expired
        self._expired = expired
        self._arm_expiry_timer(now)
        return changed

    def _arm_expiry_timer(self, now: datetime) -> None:
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        pending = [m.not_after for m in self._manifests if m.not_after and m.not_after > now]
        if pending and not self._closed:
            delay = (min(pending) - now).total_seconds()
            loop = asyncio.get_running_loop()
            self._expiry_timer = loop.call_later(delay, self._on_expiry_timer)

    def _on_expiry_timer(self) -> None:
        self._expiry_timer = None
        if self._refresh_expiry():
            self.notifier.notify()

    def _log_directory_failure(self, error: ManifestFileError) -> None:
        if not self._directory_failed:
            self._directory_failed = True
            event(logger, logging.ERROR, "manifest directory unreadable, serving no manifests",
                  manifests_dir=self._directory, reason=error.reason, error=str(error))
