"""Prometheus metrics: names, labels and values as scraped in the exposition format."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.denial import Denial, Reason
from agent.telemetry.metrics import EXPORTED_NAMES, Metrics

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def scrape(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Return every sample of the registry's text exposition, keyed by name and labels."""
    text = generate_latest(metrics.registry).decode()
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return scrape(metrics)[(name, frozenset(labels.items()))]


def fixed_metrics() -> Metrics:
    return Metrics(clock=NOW.timestamp)


def test_exported_names_match_registry() -> None:
    metrics = fixed_metrics()

    names = {name for name, _labels in scrape(metrics)}
    agent_names = {name for name in names if not name.endswith("_created")}

    assert agent_names == set(EXPORTED_NAMES)
    assert all(name.startswith("attest_agent_") for name in names)


@pytest.mark.parametrize(
    ("denial", "result", "reason"),
    [
        (None, "success", "none"),
        (Denial(Reason.EXE_HASH_MISMATCH, "digest differs", pid=7), "denied", "exe_hash_mismatch"),
        (Denial(Reason.PROCESS_EXITED, "process gone", pid=7), "error", "process_exited"),
    ],
    ids=["issued", "denied", "attestation-error"],
)
def test_attestation_labels(denial: Denial | None, result: str, reason: str) -> None:
    metrics = fixed_metrics()

    metrics.observe_attestation(denial, 0.003)
    metrics.observe_attestation(denial, 0.2)

    total = "attest_agent_attestations_total"
    assert value(metrics, total, result=result, reason=reason) == 2
    assert value(metrics, "attest_agent_attestation_duration_seconds_count") == 2
    assert value(metrics, "attest_agent_attestation_duration_seconds_sum") == pytest.approx(0.203)
    assert value(metrics, "attest_agent_attestation_duration_seconds_bucket", le="0.005") == 1


def test_every_reason_exported_at_zero() -> None:
    metrics = fixed_metrics()

    samples = scrape(metrics)
    reasons = {
        dict(labels)["reason"]
        for name, labels in samples
        if name == "attest_agent_attestations_total"
    }

    assert reasons == {str(reason) for reason in Reason} | {"none"}
    assert value(metrics, "attest_agent_manifest_load_errors_total") == 0


def test_counters_count_calls() -> None:
    metrics = fixed_metrics()

    metrics.svid_minted("x509")
    metrics.svid_minted("jwt")
    metrics.svid_minted("jwt")
    metrics.svid_rotated()
    metrics.manifest_load_error()
    metrics.sds_nack()
    metrics.sds_nack()

    assert value(metrics, "attest_agent_svids_minted_total", type="x509") == 1
    assert value(metrics, "attest_agent_svids_minted_total", type="jwt") == 2
    assert value(metrics, "attest_agent_svid_rotations_total") == 1
    assert value(metrics, "attest_agent_manifest_load_errors_total") == 1
    assert value(metrics, "attest_agent_sds_nacks_total") == 2


def test_open_streams_by_api() -> None:
    metrics = fixed_metrics()

    metrics.stream_opened("sds")
    with pytest.raises(RuntimeError), metrics.open_stream("workload_api"):
        assert value(metrics, "attest_agent_open_streams", api="workload_api") == 1
        raise RuntimeError("stream failed")

    assert value(metrics, "attest_agent_open_streams", api="workload_api") == 0
    assert value(metrics, "attest_agent_open_streams", api="sds") == 1


def test_expiry_nan_when_unknown() -> None:
    metrics = fixed_metrics()

    assert math.isnan(value(metrics, "attest_agent_earliest_svid_expiry_seconds"))
    assert math.isnan(value(metrics, "attest_agent_intermediate_ca_expiry_seconds"))
    assert math.isnan(value(metrics, "attest_agent_svid_min_remaining_lifetime_ratio"))


def test_expiry_seconds_at_scrape() -> None:
    metrics = fixed_metrics()
    served = [(NOW - timedelta(minutes=30), NOW + timedelta(minutes=30))]

    metrics.set_served_svids_source(lambda: served)
    metrics.set_intermediate_ca_not_after(NOW + timedelta(hours=11))

    assert value(metrics, "attest_agent_earliest_svid_expiry_seconds") == 1800
    assert value(metrics, "attest_agent_intermediate_ca_expiry_seconds") == 11 * 3600
    served.append((NOW - timedelta(hours=1), NOW - timedelta(seconds=5)))
    assert value(metrics, "attest_agent_earliest_svid_expiry_seconds") == -5
    served.clear()
    assert math.isnan(value(metrics, "attest_agent_earliest_svid_expiry_seconds"))


@pytest.mark.parametrize(
    ("windows", "expected"),
    [
        ([(-30, 30)], 0.5),
        ([(-30, 30), (-45, 15)], 0.25),
        ([(-3600, -600)], -600 / 3000),
        ([(0, 0)], math.nan),
        ([], math.nan),
    ],
    ids=["half-left", "smallest-wins", "expired", "zero-lifetime", "none-served"],
)
def test_remaining_lifetime_ratio(windows: list[tuple[int, int]], expected: float) -> None:
    metrics = fixed_metrics()
    served = [
        (NOW + timedelta(minutes=start), NOW + timedelta(minutes=end)) for start, end in windows
    ]

    metrics.set_served_svids_source(lambda: served)
    ratio = value(metrics, "attest_agent_svid_min_remaining_lifetime_ratio")

    if math.isnan(expected):
        assert math.isnan(ratio)
    else:
        assert ratio == pytest.approx(expected)


def test_registries_are_private() -> None:
    first, second = fixed_metrics(), fixed_metrics()

    first.svid_rotated()

    assert value(first, "attest_agent_svid_rotations_total") == 1
    assert value(second, "attest_agent_svid_rotations_total") == 0
