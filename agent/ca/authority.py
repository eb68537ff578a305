"""The node's certificate authority: mints SVIDs, keeps them fresh, publishes bundles.

Create ``Authority(settings)``, ``await start()`` before any other call and
``await close()`` at shutdown; calls outside that window raise CANotReadyError. Use it
from one event loop. Minting, key generation and file reads run in threads. Every SVID
renewal and every bundle change bumps ``notifier`` once; subscribers then fetch the
current state again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from agent.ca import watch
from agent.ca.errors import CAError, CANotReadyError, IntermediateExpiredError, SvidRequestError
from agent.ca.ids import check_dns_name, check_workload_id
from agent.ca.jwtissuer import JwtIssuer
from agent.ca.jwtkeys import JwtBundle
from agent.ca.material import CAMaterial
from agent.ca.rotation import CacheEntry, CacheKey, SvidCache
from agent.ca.settings import CASettings, check_settings
from agent.ca.x509svid import (
    X509Bundle,
    X509Svid,
    make_x509_bundle,
    mint_x509_svid,
    validity_window,
)
from agent.log import event
from agent.notify import Notifier

logger = logging.getLogger(__name__)

# After a failed renewal, the next attempt waits a tenth of the SVID lifetime, but at
# least the minimum (so that a short-lived SVID cannot spin the loop) and at most the
# maximum.
RENEWAL_RETRY_MIN_SECONDS = 0.5
RENEWAL_RETRY_MAX_SECONDS = 5.0
# Validated (SPIFFE ID, DNS names, TTL) requests remembered; cleared when full.
_CHECKED_KEYS_KEPT = 4096


class Authority:
    """Mints X.509-SVIDs and JWT-SVIDs for one trust domain and rotates them."""

    def __init__(self, settings: CASettings) -> None:
        check_settings(settings)
        self._settings = settings
        self._notifier = Notifier()
        self._cache = SvidCache(random.SystemRandom())
        self._inflight: dict[CacheKey, asyncio.Task[CacheEntry]] = {}
        self._checked_keys: dict[tuple[str, Sequence[str], int | None], CacheKey] = {}
        self._material: CAMaterial | None = None
        self._x509_bundle: X509Bundle | None = None
        self._jwt: JwtIssuer | None = None
        self._files = watch.CAFiles(settings)
        self._wake = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # Lifecycle

    async def start(self) -> None:
        """Load (or create) the signing material, make JWT keys, start rotation."""
        if self._task is not None or self._closed:
            raise CANotReadyError("start()", "start() may run once, and not after close()")
        material = await self._files.load()
        self._install_material(material, initial=True)
        settings = self._settings
        self._jwt = await JwtIssuer.create(
            self.trust_domain,
            settings.jwt_algorithm,
            settings.jwt_svid_ttl,
            settings.jwt_key_rotation,
        )
        self._task = asyncio.create_task(self._run(), name="ca-rotation")
        self._task.add_done_callback(_log_rotation_stop)
        event(
            logger,
            logging.INFO,
            "certificate authority started",
            trust_domain=self.trust_domain,
            serial=f"{material.cert.serial_number:x}",
            not_after=material.not_after.isoformat(),
        )

    async def close(self) -> None:
        """Stop rotation and forget every cached SVID and key."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for pending in list(self._inflight.values()):
            pending.cancel()
        self._cache.clear()
        self._material = None
        self._jwt = None

    async def reload(self) -> None:
        """Re-read the CA files now; on error keep the current CA and raise CAError."""
        self._require_running("reload()")
        async with self._reload_lock:
            material = await self._files.load()
            self._install_material(material, initial=False)

    # Properties

    @property
    def trust_domain(self) -> str:
        return self._settings.trust_domain

    @property
    def notifier(self) -> Notifier:
        """Change counter bumped once per SVID renewal and once per bundle change."""
        return self._notifier

    @property
    def ready(self) -> bool:
        """True while the CA runs and its intermediate certificate is valid."""
        if self._closed or self._task is None or self._task.done() or self._material is None:
            return False
        return datetime.now(UTC) < self._material.not_after

    @property
    def intermediate_not_after(self) -> datetime:
        return self._require_material("intermediate_not_after").not_after

    # X.509-SVIDs and bundle

    async def get_x509_svid(
        self,
        spiffe_id: str,
        *,
        dns_names: Sequence[str] = (),
        ttl: int | None = None,
        hint: str = "",
    ) -> X509Svid:
        """Return a current X.509-SVID for ``spiffe_id``, minting one if none is cached.

        SVIDs are cached per (SPIFFE ID, DNS names, TTL); ``ttl`` None means the
        configured default. Raises SvidRequestError for invalid input and
        IntermediateExpiredError when the CA can no longer sign.
        """
        self._require_running("get_x509_svid()")
        key = self._cache_key(spiffe_id, dns_names, ttl)
        now = time.time()
        entry = self._cache.lookup(key, now)
        if entry is None or not entry.usable(now) or not self._signed_by_current(entry):
            entry = await self._renew(key, hint, renewal=entry is not None)
            self._wake.set()
        svid = entry.svid
        return svid if svid.hint == hint else replace(svid, hint=hint)

    def x509_bundle(self) -> X509Bundle:
        """Return the trust domain's root certificates."""
        self._require_running("x509_bundle()")
        if self._x509_bundle is None:
            raise CANotReadyError("x509_bundle()")
        return self._x509_bundle

    def _signed_by_current(self, entry: CacheEntry) -> bool:
        # After an intermediate change, no caller gets an SVID from the old one, even
        # before the rotation task has re-issued it.
        material = self._require_material("get_x509_svid()")
        return entry.svid.chain[1:] == material.chain

    def _cache_key(self, spiffe_id: str, dns_names: Sequence[str], ttl: int | None) -> CacheKey:
        # Callers ask for the same few keys on every fetch; validate each only once.
        # Only exact tuples and ints are remembered (True == 1 would alias a TTL).
        memo = (spiffe_id, dns_names, ttl)
        rememberable = type(dns_names) is tuple and (ttl is None or type(ttl) is int)
        if rememberable and (known := self._checked_keys.get(memo)) is not None:
            return known
        key = self._check_key(spiffe_id, dns_names, ttl)
        if rememberable:
            if len(self._checked_keys) >= _CHECKED_KEYS_KEPT:
                self._checked_keys.clear()
            self._checked_keys[memo] = key
        return key

    def _check_key(self, spiffe_id: str, dns_names: Sequence[str], ttl: int | None) -> CacheKey:
        check_workload_id(spiffe_id, self.trust_domain)
        if isinstance(dns_names, str):
            raise SvidRequestError("DNS names", dns_names, "pass a sequence of names, not a string")
        names = tuple(sorted({check_dns_name(name) for name in dns_names}))
        if ttl is None:
            ttl = self._settings.x509_svid_ttl
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
            raise SvidRequestError("TTL", ttl, "use a positive number of seconds")
        return (spiffe_id, names, ttl)

    async def _renew(self, key: CacheKey, hint: str, *, renewal: bool) -> CacheEntry:
        # One mint per key at a time: concurrent requesters share the running task,
        # shielded so that one cancelled requester does not cancel it for the others.
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._mint_and_store(key, hint, renewal=renewal))
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await asyncio.shield(task)

    async def _mint_and_store(self, key: CacheKey, hint: str, *, renewal: bool) -> CacheEntry:
        material = self._require_material("minting")
        spiffe_id, dns_names, ttl = key
        now = datetime.now(UTC)
        if now >= material.not_after:
            raise IntermediateExpiredError(material.not_after)

        not_before, not_after, capped = validity_window(
            material, now, ttl, self._settings.backdate_seconds
        )
        if capped:
            event(
                logger,
                logging.WARNING,
                "SVID TTL capped at the intermediate CA's expiry",
                spiffe_id=spiffe_id,
                ttl_seconds=ttl,
                not_after=not_after.isoformat(),
            )
        svid = await asyncio.to_thread(
            functools.partial(
                mint_x509_svid,
                material,
                spiffe_id,
                dns_names=dns_names,
                key_type=self._settings.svid_key_type,
                not_before=not_before,
                not_after=not_after,
                hint=hint,
            )
        )

        issued_at = now.timestamp()
        lifetime = (not_after - now).total_seconds() if capped else float(ttl)
        entry = self._cache.store(key, svid, issued_at, lifetime, capped=capped)
        event(
            logger,
            logging.DEBUG,
            "X.509-SVID minted",
            spiffe_id=spiffe_id,
            serial=f"{svid.serial:x}",
            not_after=svid.not_after.isoformat(),
        )
        if renewal:
            self._notifier.notify()
        return entry

    # JWT-SVIDs and bundle

    async def mint_jwt_svid(self, spiffe_id: str, audiences: Sequence[str]) -> str:
        """Return a JWT-SVID for ``spiffe_id`` valid for every audience in ``audiences``.

        Raises SvidRequestError for an invalid SPIFFE ID or an empty audience list.
        """
        issuer = self._require_jwt("mint_jwt_svid()")
        check_workload_id(spiffe_id, self.trust_domain)
        return await issuer.mint(spiffe_id, audiences)

    def validate_jwt_svid(self, token: str, audience: str) -> tuple[str, dict[str, Any]]:
        """Return (spiffe_id, claims) of a valid JWT-SVID or raise JwtSvidError."""
        return self._require_jwt("validate_jwt_svid()").validate(token, audience)

    def jwt_bundle(self) -> JwtBundle:
        """Return the JWKS of every JWT key whose tokens may still be valid."""
        return self._require_jwt("jwt_bundle()").bundle

    # Signing material

    def _install_material(self, material: CAMaterial, *, initial: bool) -> None:
        previous = self._material
        self._material = material
        chain_changed = previous is not None and previous.chain != material.chain
        roots_changed = previous is None or previous.roots != material.roots
        if chain_changed:
            # Re-issue every cached SVID from the new intermediate.
            self._cache.mark_all_due(time.time())
            self._wake.set()
            event(
                logger,
                logging.INFO,
                "intermediate CA replaced",
                serial=f"{material.cert.serial_number:x}",
                not_after=material.not_after.isoformat(),
            )
        if roots_changed:
            version = 1 if self._x509_bundle is None else self._x509_bundle.version + 1
            self._x509_bundle = make_x509_bundle(self.trust_domain, material.roots, version)
            if not initial:
                self._notifier.notify()

    # Background rotation

    async def _run(self) -> None:
        try:
            while not self._closed:
                await self._run_once()
        except CANotReadyError:
            # close() can land while a step runs, and Python 3.11's wait_for may drop
            # the cancellation; the next step then finds the CA closed.
            if not self._closed:
                raise

    async def _run_once(self) -> None:
        self._wake.clear()
        now = time.time()
        await self._renew_due(now)
        await self._rotate_jwt_keys(now)
        await self._check_files(now)
        delay = max(0.0, self._next_deadline() - time.time())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()

    def _next_deadline(self) -> float:
        deadlines = [self._require_jwt("rotation").next_deadline(), self._files.next_check()]
        next_renewal = self._cache.next_renewal()
        if next_renewal is not None:
            deadlines.append(next_renewal)
        return min(deadlines)

    async def _renew_due(self, now: float) -> None:
        for key in self._cache.due(now):
            if self._cache.is_abandoned(key, now):
                self._cache.drop(key)
                event(logger, logging.DEBUG, "unused X.509-SVID dropped", spiffe_id=key[0])
                continue
            entry = self._cache.peek(key)
            hint = entry.svid.hint if entry else ""
            lifetime = entry.lifetime if entry else RENEWAL_RETRY_MAX_SECONDS * 10
            retry_delay = min(
                RENEWAL_RETRY_MAX_SECONDS, max(RENEWAL_RETRY_MIN_SECONDS, lifetime / 10)
            )
            retry_at = now + retry_delay
            try:
                await self._renew(key, hint, renewal=True)
            except IntermediateExpiredError:
                # CAFiles.warn_if_expiring logs this once; one line per SVID and retry
                # would flood the log until the intermediate is replaced.
                self._cache.postpone(key, retry_at)
            except CAError as error:
                self._cache.postpone(key, retry_at)
                event(
                    logger,
                    logging.ERROR,
                    "X.509-SVID renewal failed",
                    spiffe_id=key[0],
                    error=error,
                )

    async def _rotate_jwt_keys(self, now: float) -> None:
        if await self._require_jwt("rotation").rotate(now):
            self._notifier.notify()

    async def _check_files(self, now: float) -> None:
        material = self._require_material("rotation")
        self._files.warn_if_expiring(material, now)
        if not await self._files.changed(now, material):
            return
        async with self._reload_lock:
            try:
                fresh = await self._files.load()
            except CAError as error:
                self._files.record_failure()
                event(
                    logger,
                    logging.ERROR,
                    "CA files could not be reloaded; keeping the current intermediate",
                    path=self._files.describe(),
                    error=error,
                )
                return
            self._install_material(fresh, initial=False)

    # Guards

    def _require_running(self, operation: str) -> None:
        if self._closed or self._task is None:
            raise CANotReadyError(operation)

    def _require_material(self, operation: str) -> CAMaterial:
        if self._material is None:
            raise CANotReadyError(operation)
        return self._material

    def _require_jwt(self, operation: str) -> JwtIssuer:
        self._require_running(operation)
        if self._jwt is None:
            raise CANotReadyError(operation)
        return self._jwt


def _log_rotation_stop(task: asyncio.Task[None]) -> None:
    # The rotation loop only ends by cancellation; anything else is a bug that leaves
    # SVIDs unrenewed, so it is logged here and ``ready`` turns False.
    if task.cancelled():
        return
    error = task.exception()
    event(logger, logging.CRITICAL, "CA rotation task stopped", error=repr(error))
