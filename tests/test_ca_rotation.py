"""SVID renewal, the renewal schedule, and intermediate replacement without restart."""

from __future__ import annotations

import asyncio
import logging
import random
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.ca import (
    Authority,
    CAFileError,
    CANotReadyError,
    CASettings,
    IntermediateExpiredError,
)
from agent.ca.issuing import init_root, issue_intermediate
from agent.ca.rotation import SvidCache, renewal_time
from agent.ca.x509svid import X509Svid

TD = "example.org"
WEB = "spiffe://example.org/web"


def make_ca(directory: Path) -> Path:
    now = datetime.now(UTC)
    init_root(directory / "root", TD, "ec-p256", timedelta(days=30), now)
    return reissue(directory)


def reissue(directory: Path, root: str = "root") -> Path:
    node = directory / "node"
    issue_intermediate(
        directory / root,
        "node-1",
        node,
        key_type="ec-p256",
        lifetime=timedelta(hours=24),
        now=datetime.now(UTC),
    )
    return node


def file_settings(node: Path, **overrides: object) -> CASettings:
    values: dict[str, object] = {
        "trust_domain": TD,
        "state_dir": node.parent / "state",
        "cert_path": node / "intermediate.pem",
        "key_path": node / "intermediate.key",
        "bundle_path": node / "bundle.pem",
        "file_poll_interval": 0.2,
    }
    values.update(overrides)
    return CASettings(**values)  # type: ignore[arg-type]


async def wait_for_version(ca: Authority, seen: int, deadline: float) -> int:
    return await asyncio.wait_for(ca.notifier.wait_for_change(seen), timeout=deadline)


async def test_renewal_at_half_life(tmp_path: Path) -> None:
    ttl = 4
    ca = Authority(CASettings(trust_domain=TD, state_dir=tmp_path, x509_svid_ttl=ttl))
    await ca.start()
    try:
        seen = ca.notifier.version
        issued = time.monotonic()
        svid = await ca.get_x509_svid(WEB)
        serials = [svid.serial]
        for _ in range(2):
            version = await wait_for_version(ca, seen, deadline=ttl)
            renewed = time.monotonic()
            fraction = (renewed - issued) / ttl
            assert 0.4 <= fraction <= 0.6, f"renewed at {fraction:.0%} of the lifetime"
            assert version == seen + 1, "one renewal must bump the notifier once"
            svid = await ca.get_x509_svid(WEB)
            assert svid.serial not in serials
            serials.append(svid.serial)
            assert ca.notifier.version == version
            seen, issued = version, renewed
    finally:
        await ca.close()


class ExtremeRandom(random.Random):
    """Returns the lower or upper bound of uniform(), to probe the jitter range."""

    def __init__(self, upper: bool) -> None:
        super().__init__()
        self.upper = upper

    def uniform(self, a: float, b: float) -> float:
        return b if self.upper else a


@pytest.mark.parametrize(
    ("upper", "expected"), [(False, 145.0), (True, 155.0)], ids=["low", "high"]
)
def test_renewal_jitter_bounds(upper: bool, expected: float) -> None:
    assert renewal_time(100.0, 100.0, ExtremeRandom(upper)) == pytest.approx(expected)


def test_renewal_jitter_spreads() -> None:
    times = {renewal_time(0.0, 3600.0, random.Random(seed)) for seed in range(50)}
    assert len(times) == 50
    assert min(times) >= 0.45 * 3600
    assert max(times) <= 0.55 * 3600


def fake_svid(serial: int) -> X509Svid:
    now = datetime.now(UTC)
    return X509Svid(WEB, (), b"", b"", b"", b"", now, now, serial, "")


def test_cache_due_and_abandoned() -> None:
    cache = SvidCache(ExtremeRandom(upper=False))
    early = (WEB, (), 100)
    late = ("spiffe://example.org/db", (), 200)
    cache.store(late, fake_svid(2), issued_at=0.0, lifetime=200.0)
    cache.store(early, fake_svid(1), issued_at=0.0, lifetime=100.0)
    assert cache.next_renewal() == pytest.approx(45.0)
    assert cache.due(44.0) == []
    assert cache.due(100.0) == [early, late]

    assert not cache.is_abandoned(early, 100.0)
    assert cache.is_abandoned(early, 100.5)
    cache.lookup(early, 90.0)
    assert not cache.is_abandoned(early, 150.0)

    cache.postpone(early, 500.0)
    assert cache.due(100.0) == [late]
    cache.mark_all_due(7.0)
    assert sorted(cache.due(7.0)) == sorted([early, late])


def test_cache_entry_usable() -> None:
    cache = SvidCache(random.Random(1))
    entry = cache.store((WEB, (), 100), fake_svid(1), issued_at=0.0, lifetime=100.0)
    assert entry.usable(74.0)
    assert not entry.usable(75.0)


def test_capped_entry_renews_at_expiry() -> None:
    cache = SvidCache(random.Random(1))
    entry = cache.store((WEB, (), 3600), fake_svid(1), issued_at=0.0, lifetime=10.0, capped=True)
    assert entry.renew_at == 10.0
    assert entry.usable(9.9)
    assert not entry.usable(10.0)
    assert cache.due(9.9) == []


async def test_capped_svid_not_churned(tmp_path: Path) -> None:
    # An intermediate that ends in a few seconds caps every SVID at its end. Renewing
    # at half-life would repeat that end ever more often; the CA must wait instead.
    now = datetime.now(UTC)
    init_root(tmp_path / "root", TD, "ec-p256", timedelta(days=1), now)
    node = tmp_path / "node"
    issue_intermediate(
        tmp_path / "root", "n", node, key_type="ec-p256", lifetime=timedelta(seconds=4), now=now
    )
    ca = Authority(file_settings(node))
    await ca.start()
    try:
        seen = ca.notifier.version
        first = await ca.get_x509_svid(WEB)
        assert first.not_after == ca.intermediate_not_after
        remaining = (ca.intermediate_not_after - datetime.now(UTC)).total_seconds()
        await asyncio.sleep(max(0.0, remaining - 0.5))
        again = await ca.get_x509_svid(WEB)
        assert again.serial == first.serial
        assert ca.notifier.version == seen
        await asyncio.sleep(1.0)
        assert not ca.ready
        with pytest.raises(IntermediateExpiredError):
            await ca.get_x509_svid(WEB)
    finally:
        await ca.close()


async def test_unused_svid_dropped(tmp_path: Path) -> None:
    ca = Authority(CASettings(trust_domain=TD, state_dir=tmp_path, x509_svid_ttl=2))
    await ca.start()
    try:
        await ca.get_x509_svid(WEB)
        assert len(ca._cache) == 1
        deadline = time.monotonic() + 6
        while len(ca._cache) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert len(ca._cache) == 0
        # A request after the drop mints again.
        assert (await ca.get_x509_svid(WEB)).spiffe_id == WEB
    finally:
        await ca.close()


async def test_concurrent_requests_share_mint(tmp_path: Path) -> None:
    ca = Authority(CASettings(trust_domain=TD, state_dir=tmp_path, svid_key_type="rsa-2048"))
    await ca.start()
    try:
        svids = await asyncio.gather(*(ca.get_x509_svid(WEB) for _ in range(5)))
    finally:
        await ca.close()
    assert len({svid.serial for svid in svids}) == 1


async def test_intermediate_replaced(tmp_path: Path) -> None:
    node = make_ca(tmp_path)
    ca = Authority(file_settings(node))
    await ca.start()
    try:
        old = await ca.get_x509_svid(WEB)
        bundle_version = ca.x509_bundle().version
        seen = ca.notifier.version
        reissue(tmp_path)
        new_intermediate = x509.load_pem_x509_certificate((node / "intermediate.pem").read_bytes())
        await wait_for_version(ca, seen, deadline=5)
        svid = await ca.get_x509_svid(WEB)
        assert svid.chain[1] == new_intermediate
        assert svid.serial != old.serial
        assert ca.intermediate_not_after == new_intermediate.not_valid_after_utc
        assert ca.x509_bundle().version == bundle_version
    finally:
        await ca.close()
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(svid.chain[0].public_bytes(serialization.Encoding.PEM))
    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(node / "bundle.pem"),
            "-untrusted",
            str(node / "intermediate.pem"),
            str(leaf),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


async def test_root_replaced(tmp_path: Path) -> None:
    node = make_ca(tmp_path)
    ca = Authority(file_settings(node))
    await ca.start()
    try:
        first = ca.x509_bundle()
        seen = ca.notifier.version
        init_root(tmp_path / "root2", TD, "ec-p256", timedelta(days=30), datetime.now(UTC))
        reissue(tmp_path, root="root2")
        await wait_for_version(ca, seen, deadline=5)
        second = ca.x509_bundle()
    finally:
        await ca.close()
    new_root = x509.load_pem_x509_certificate((tmp_path / "root2/root.pem").read_bytes())
    assert second.version == first.version + 1
    assert second.certificates == (new_root,)


async def test_broken_update_kept_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    node = make_ca(tmp_path)
    ca = Authority(file_settings(node))
    await ca.start()
    try:
        serial = (await ca.get_x509_svid(WEB)).chain[1].serial_number
        with caplog.at_level(logging.ERROR, logger="agent.ca"):
            (node / "intermediate.pem").write_bytes(b"not a certificate\n")
            deadline = time.monotonic() + 5
            while not reload_errors(caplog) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.6)  # three more polls of the same broken file
        assert len(reload_errors(caplog)) == 1
        assert ca.ready
        assert (await ca.get_x509_svid(WEB, ttl=60)).chain[1].serial_number == serial

        with pytest.raises(CAFileError):
            await ca.reload()
        seen = ca.notifier.version
        reissue(tmp_path)
        await wait_for_version(ca, seen, deadline=5)
        assert (await ca.get_x509_svid(WEB)).chain[1].serial_number != serial
    finally:
        await ca.close()


def reload_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "could not be reloaded" in r.getMessage()]


async def test_explicit_reload(tmp_path: Path) -> None:
    # A long poll interval, so only reload() can pick up the new file.
    node = make_ca(tmp_path)
    ca = Authority(file_settings(node, file_poll_interval=3600))
    await ca.start()
    try:
        old = ca.intermediate_not_after
        await asyncio.sleep(1.1)  # certificate times have whole seconds
        reissue(tmp_path)
        await ca.reload()
        assert ca.intermediate_not_after > old
    finally:
        await ca.close()


async def test_closed_authority(tmp_path: Path) -> None:
    ca = Authority(CASettings(trust_domain=TD, state_dir=tmp_path))
    await ca.start()
    assert ca.ready
    await ca.close()
    assert not ca.ready
    with pytest.raises(CANotReadyError):
        await ca.get_x509_svid(WEB)
    with pytest.raises(CANotReadyError):
        await ca.mint_jwt_svid(WEB, ["a"])
    with pytest.raises(CANotReadyError):
        await ca.start()
