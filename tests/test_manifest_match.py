"""Matching evidence against manifests: every reason code, merging and ordering."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.denial import Denial, Reason
from agent.manifests import (
    DEFAULT_SPIFFE_ID_TEMPLATE,
    Identity,
    Manifest,
    ManifestSchemaError,
    explain_manifests,
    match_manifests,
    parse_manifest,
)
from tests.test_manifest_support import (
    CONTAINER_ID,
    DIGEST,
    OTHER_DIGEST,
    OTHER_POD_UID,
    POD_UID,
    evidence,
    pod_manifest,
)

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
PAST = "2030-06-01T11:59:59Z"
FUTURE = "2030-06-01T12:30:00Z"


def manifest(file: str, **overrides: Any) -> Manifest:
    return parse_manifest(json.dumps(pod_manifest(**overrides)).encode(), file=file,
                          trust_domain="cluster.local",
                          spiffe_id_template=DEFAULT_SPIFFE_ID_TEMPLATE)


def host_manifest(file: str, **values: Any) -> Manifest:
    document = {"spiffe_id": "spiffe://cluster.local/host/agent", "exe_sha256": [DIGEST],
                **values}
    return parse_manifest(json.dumps(document).encode(), file=file, trust_domain="cluster.local",
                          spiffe_id_template=DEFAULT_SPIFFE_ID_TEMPLATE)


def denial_of(result: tuple[Identity, ...] | Denial) -> Denial:
    assert isinstance(result, Denial), f"expected a denial, got {result!r}"
    return result


def identities_of(result: tuple[Identity, ...] | Denial) -> tuple[Identity, ...]:
    assert not isinstance(result, Denial), f"expected identities, got {result!r}"
    return result


def test_pod_manifest_matches() -> None:
    result = identities_of(match_manifests([manifest("web.json")], evidence(), NOW))
    assert [i.spiffe_id for i in result] == ["spiffe://cluster.local/ns/shop/sa/web"]
    assert result[0].manifest_files == ("web.json",)


DENIALS = [
    ("no_manifests", [], {}, Reason.NO_MANIFEST_FOR_WORKLOAD),
    ("other_pod", [("web.json", {"pod_uid": OTHER_POD_UID})], {},
     Reason.NO_MANIFEST_FOR_WORKLOAD),
    ("caller_not_in_pod", [("web.json", {})], {"pod_uid": None},
     Reason.NO_MANIFEST_FOR_WORKLOAD),
    ("wrong_digest", [("web.json", {"exe_sha256": [OTHER_DIGEST]})], {},
     Reason.EXE_HASH_MISMATCH),
    ("wrong_container", [("web.json", {"container_id": "d" * 64})], {},
     Reason.SELECTOR_MISMATCH),
    ("expired", [("web.json", {"not_after": PAST})], {}, Reason.MANIFEST_EXPIRED),
    ("expired_at_instant", [("web.json", {"not_after": "2030-06-01T12:00:00Z"})], {},
     Reason.MANIFEST_EXPIRED),
    ("expired_beats_digest",
     [("a.json", {"exe_sha256": [OTHER_DIGEST]}), ("b.json", {"not_after": PAST})], {},
     Reason.MANIFEST_EXPIRED),
    ("digest_beats_other_pod",
     [("a.json", {"pod_uid": OTHER_POD_UID}), ("b.json", {"exe_sha256": [OTHER_DIGEST]})], {},
     Reason.EXE_HASH_MISMATCH),
]


@pytest.mark.parametrize(
    ("manifests", "observed", "reason"),
    [case[1:] for case in DENIALS],
    ids=[case[0] for case in DENIALS],
)
def test_denial_reason(
    manifests: list[tuple[str, dict[str, Any]]], observed: dict[str, Any], reason: Reason
) -> None:
    loaded = [manifest(file, **overrides) for file, overrides in manifests]
    denial = denial_of(match_manifests(loaded, evidence(**observed), NOW))
    assert denial.reason is reason
    assert denial.pid == 4242
    assert f"exe_sha256={DIGEST}" in denial.message
    assert "pid=4242" in denial.message


def test_expired_denial_names_file() -> None:
    denial = denial_of(match_manifests([manifest("old.json", not_after=PAST)], evidence(), NOW))
    assert "old.json" in denial.message
    assert "2030-06-01T11:59:59+00:00" in denial.message


def test_future_not_after_matches() -> None:
    result = identities_of(match_manifests([manifest("w.json", not_after=FUTURE)], evidence(), NOW))
    assert result[0].not_after == datetime(2030, 6, 1, 12, 30, tzinfo=UTC)


def test_digest_case_insensitive() -> None:
    loaded = [manifest("web.json", exe_sha256=[DIGEST.upper()])]
    assert identities_of(match_manifests(loaded, evidence(exe_sha256=DIGEST), NOW))


def test_container_id_selector_matches() -> None:
    loaded = [manifest("web.json", container_id=CONTAINER_ID.upper())]
    assert identities_of(match_manifests(loaded, evidence(), NOW))


@pytest.mark.parametrize(
    ("selectors", "observed", "matches"),
    [
        ({"systemd_unit": "agent.service"}, {"systemd_unit": "agent.service"}, True),
        ({"systemd_unit": "agent.service"}, {"systemd_unit": "other.service"}, False),
        ({"uid": 1000}, {}, True),
        ({"uid": 0}, {}, False),
        ({"uid": 0}, {"uid": 1000, "euid": 0}, False),
        ({"uid": 0}, {"uid": 0, "euid": 1000}, True),
        ({"systemd_unit": "agent.service", "uid": 1000}, {"systemd_unit": "agent.service"}, True),
        ({"systemd_unit": "agent.service", "uid": 0}, {"systemd_unit": "agent.service"}, False),
    ],
    ids=["unit", "other_unit", "uid", "other_uid", "euid_not_used", "real_uid_used",
         "unit_and_uid", "unit_other_uid"],
)
def test_host_selectors(selectors: dict[str, Any], observed: dict[str, Any], matches: bool) -> None:
    loaded = [host_manifest("host.json", **selectors)]
    result = match_manifests(loaded, evidence(pod_uid=None, container_id=None, **observed), NOW)
    assert isinstance(result, tuple) is matches
    if not matches:
        assert denial_of(result).reason is Reason.NO_MANIFEST_FOR_WORKLOAD


def test_same_id_merges() -> None:
    loaded = [
        manifest("b.json", x509_svid_ttl=900, dns_names=["b.shop"], not_after=FUTURE),
        manifest("a.json", x509_svid_ttl=300, dns_names=["a.shop", "b.shop"], hint="web",
                 image_digest="sha256:" + "e" * 64),
        manifest("c.json", exe_sha256=[OTHER_DIGEST]),
    ]
    result = identities_of(match_manifests(loaded, evidence(), NOW))
    assert len(result) == 1
    merged = result[0]
    assert merged.manifest_files == ("a.json", "b.json")
    assert merged.x509_svid_ttl == 300
    assert merged.dns_names == ("a.shop", "b.shop")
    assert merged.hint == "web"
    assert merged.not_after == datetime(2030, 6, 1, 12, 30, tzinfo=UTC)
    assert merged.image_digest == "sha256:" + "e" * 64


def test_different_ids_ordered_by_file() -> None:
    loaded = [
        manifest("30-web.json"),
        manifest("10-api.json", spiffe_id="spiffe://cluster.local/ns/shop/sa/api",
                 service_account="api"),
        manifest("20-web.json"),
    ]
    result = identities_of(match_manifests(loaded, evidence(), NOW))
    assert [i.spiffe_id for i in result] == [
        "spiffe://cluster.local/ns/shop/sa/api",
        "spiffe://cluster.local/ns/shop/sa/web",
    ]
    assert result[1].manifest_files == ("20-web.json", "30-web.json")


def test_expired_one_of_two() -> None:
    loaded = [manifest("a.json", not_after=PAST), manifest("b.json", x509_svid_ttl=60)]
    result = identities_of(match_manifests(loaded, evidence(), NOW))
    assert result[0].manifest_files == ("b.json",)
    assert result[0].not_after is None


def test_expiry_moves_with_time() -> None:
    loaded = [manifest("a.json", not_after=FUTURE)]
    assert identities_of(match_manifests(loaded, evidence(), NOW))
    later = NOW + timedelta(hours=1)
    assert denial_of(match_manifests(loaded, evidence(), later)).reason is Reason.MANIFEST_EXPIRED


def test_explain_lists_each_file() -> None:
    loaded = [
        manifest("a.json"),
        manifest("b.json", pod_uid=OTHER_POD_UID),
        manifest("c.json", exe_sha256=[OTHER_DIGEST]),
        manifest("d.json", container_id="d" * 64),
        manifest("e.json", not_after=PAST),
    ]
    verdicts = explain_manifests(loaded, evidence(), NOW)
    assert [(v.file, v.matched, v.reason) for v in verdicts] == [
        ("a.json", True, None),
        ("b.json", False, Reason.NO_MANIFEST_FOR_WORKLOAD),
        ("c.json", False, Reason.EXE_HASH_MISMATCH),
        ("d.json", False, Reason.SELECTOR_MISMATCH),
        ("e.json", False, Reason.MANIFEST_EXPIRED),
    ]
    assert OTHER_POD_UID in verdicts[1].detail
    assert POD_UID in verdicts[1].detail


@pytest.mark.parametrize(
    ("overrides", "accepted"),
    [
        ({}, True),
        ({"namespace": "billing"}, False),
        ({"service_account": "api"}, False),
        ({"spiffe_id": "spiffe://cluster.local/ns/shop/sa/admin"}, False),
        ({"spiffe_id": "spiffe://cluster.local/ns/billing/sa/api", "namespace": "billing",
          "service_account": "api"}, True),
    ],
    ids=["same", "other_namespace", "other_service_account", "other_id", "both_changed"],
)
def test_namespace_service_account_check(overrides: dict[str, Any], accepted: bool) -> None:
    # A manifest whose SPIFFE ID disagrees with its namespace and service account never
    # loads, so it can never grant that ID to a pod.
    if not accepted:
        with pytest.raises(ManifestSchemaError) as caught:
            manifest("web.json", **overrides)
        assert caught.value.reason == "spiffe_id_template_mismatch"
        return
    result = identities_of(match_manifests([manifest("web.json", **overrides)], evidence(), NOW))
    namespace = overrides.get("namespace", "shop")
    account = overrides.get("service_account", "web")
    assert result[0].spiffe_id == f"spiffe://cluster.local/ns/{namespace}/sa/{account}"
