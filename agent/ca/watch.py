"""Sources of the CA signing material, and the schedule for reading them again.

CAFiles loads the configured intermediate files, or the development CA under the
state directory, and decides when to read them again. A reload is due when a file
changed, which stat polling notices even for a Kubernetes Secret update through its
symlink swap, or when a development intermediate nears its end. CAFiles also warns
once per intermediate before it expires. Use it from the event loop, because file
work runs in threads.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.ca.files import FileSignature, file_signature
from agent.ca.issuing import DEV_REISSUE_BEFORE, IntermediatePaths, dev_ca_paths, ensure_dev_ca
from agent.ca.material import CAMaterial, load_material
from agent.ca.settings import CASettings
from agent.log import event

logger = logging.getLogger(__name__)

EXPIRY_WARNING = timedelta(hours=12)


class CAFiles:
    """The CA's files, their last loaded state and the expiry warnings already given."""

    def __init__(self, settings: CASettings) -> None:
        self._settings = settings
        self._paths = self._configured_paths(settings)
        self._loaded: FileSignature | None = None
        self._failed: FileSignature | None = None
        self._seen: FileSignature | None = None
        self._next_check = 0.0
        self._warned_serials: set[int] = set()
        self._expired_serials: set[int] = set()
        self._announced_dev_ca = False

    @staticmethod
    def _configured_paths(settings: CASettings) -> IntermediatePaths:
        if settings.uses_dev_ca:
            return dev_ca_paths(settings.state_dir)
        if settings.cert_path is None or settings.key_path is None or settings.bundle_path is None:
            # check_settings rejects this combination; kept for the type checker.
            raise ValueError("cert_path, key_path and bundle_path must be set together")
        return IntermediatePaths(settings.cert_path, settings.key_path, settings.bundle_path)

    def describe(self) -> Path:
        """Return the intermediate certificate path, for log lines."""
        return self._paths.cert

    def next_check(self) -> float:
        """Return the POSIX time of the next poll."""
        return self._next_check

    async def load(self) -> CAMaterial:
        """Read and check the signing material; create the development CA if needed."""
        settings = self._settings
        now = datetime.now(UTC)
        if settings.uses_dev_ca:
            await asyncio.to_thread(ensure_dev_ca, settings.state_dir, settings.trust_domain, now)
            if not self._announced_dev_ca:
                self._announced_dev_ca = True
                event(
                    logger,
                    logging.WARNING,
                    "development CA in use: configure ca cert, key and bundle for production",
                    state_dir=settings.state_dir,
                    path=self._paths.cert,
                )
        paths = (self._paths.cert, self._paths.key, self._paths.bundle)
        # Take the fingerprint first: a file replaced during the read then differs at
        # the next poll and is read again.
        signature = await asyncio.to_thread(file_signature, paths)
        material = await asyncio.to_thread(load_material, *paths, settings.trust_domain, now)
        self._loaded = signature
        self._failed = None
        return material

    async def changed(self, now: float, material: CAMaterial) -> bool:
        """Return True when the material should be reloaded; polls at most once per interval."""
        if now < self._next_check:
            return False
        self._next_check = now + self._settings.file_poll_interval
        if self._settings.uses_dev_ca:
            remaining = material.not_after - datetime.fromtimestamp(now, UTC)
            if remaining < DEV_REISSUE_BEFORE:
                return True
        paths = (self._paths.cert, self._paths.key, self._paths.bundle)
        self._seen = await asyncio.to_thread(file_signature, paths)
        # After a failed reload, wait for the files to change again before retrying,
        # so one broken update gives one error line.
        return self._seen not in (self._loaded, self._failed)

    def record_failure(self) -> None:
        """Remember the files' state that failed to load."""
        self._failed = self._seen

    def warn_if_expiring(self, material: CAMaterial, now: float) -> None:
        """Log once per intermediate when it expires within 12 h, and once when expired."""
        serial = material.cert.serial_number
        remaining = material.not_after - datetime.fromtimestamp(now, UTC)
        if remaining <= timedelta(0):
            if serial not in self._expired_serials:
                self._expired_serials.add(serial)
                event(
                    logger,
                    logging.ERROR,
                    "intermediate CA expired: no SVIDs can be issued until it is replaced",
                    serial=f"{serial:x}",
                    not_after=material.not_after.isoformat(),
                    path=self._paths.cert,
                )
        elif remaining <= EXPIRY_WARNING and serial not in self._warned_serials:
            self._warned_serials.add(serial)
            event(
                logger,
                logging.WARNING,
                "intermediate CA expires within 12 hours: install a new one",
                serial=f"{serial:x}",
                not_after=material.not_after.isoformat(),
                path=self._paths.cert,
            )
