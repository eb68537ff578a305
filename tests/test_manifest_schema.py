"""Manifest schema: strict decoding, keys, selectors and the SPIFFE ID template."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from agent.errors import ConfigError
from agent.manifests import (
    DEFAULT_SPIFFE_ID_TEMPLATE,
    ManifestSchemaError,
    check_spiffe_id_template,
    parse_manifest,
)
from agent.manifests.jsondecode import MAX_MANIFEST_BYTES, nesting_depth
from tests.test_manifest_support import DIGEST, POD_UID, TRUST_DOMAIN, pod_manifest


def parse(data: bytes | dict[str, Any], template: str = DEFAULT_SPIFFE_ID_TEMPLATE) -> Any:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return parse_manifest(raw, file="web.json", trust_domain=TRUST_DOMAIN,
                          spiffe_id_template=template)


def test_pod_manifest_parses() -> None:
    manifest = parse(pod_manifest(
        exe_sha256=[f"sha256:{DIGEST.upper()}", "B" * 64],
        pod_uid=POD_UID.upper(),
        not_after="2030-01-31T12:00:00+02:00",
        x509_svid_ttl=600,
        dns_names=["Web.Shop.svc", "*.example.org"],
        hint="primary",
        container_id="D" * 64,
        image_digest="sha256:" + "e" * 64,
    ))
    assert manifest.file == "web.json"
    assert manifest.spiffe_id == "spiffe://cluster.local/ns/shop/sa/web"
    assert manifest.exe_sha256 == frozenset({DIGEST, "b" * 64})
    assert manifest.pod_uid == POD_UID
    assert manifest.namespace == "shop"
    assert manifest.service_account == "web"
    assert manifest.not_after == datetime(2030, 1, 31, 10, 0, tzinfo=UTC)
    assert manifest.x509_svid_ttl == 600
    assert manifest.dns_names == ("web.shop.svc", "*.example.org")
    assert manifest.hint == "primary"
    assert manifest.container_id == "d" * 64
    assert manifest.image_digest == "sha256:" + "e" * 64
    assert len(manifest.sha256) == 64


@pytest.mark.parametrize(
    "document",
    [
        {"spiffe_id": "spiffe://cluster.local/host/nginx", "exe_sha256": [DIGEST],
         "systemd_unit": "nginx.service"},
        {"spiffe_id": "spiffe://cluster.local/host/uid-0", "exe_sha256": [DIGEST], "uid": 0},
        {"spiffe_id": "spiffe://cluster.local/host/both", "exe_sha256": [DIGEST],
         "systemd_unit": "backup@daily.timer", "uid": 34},
    ],
    ids=["systemd_unit", "uid", "unit_and_uid"],
)
def test_host_manifest_parses(document: dict[str, Any]) -> None:
    manifest = parse(document)
    assert manifest.pod_uid is None
    assert manifest.spiffe_id == document["spiffe_id"]


BAD_DOCUMENTS: list[tuple[str, bytes | dict[str, Any], str, str | None]] = [
    ("not_utf8", b'{"spiffe_id": "\xff"}', "invalid_utf8", None),
    ("truncated", b'{"spiffe_id": ', "invalid_json", None),
    ("trailing_comma", b'{"uid": 1,}', "invalid_json", None),
    ("nan", b'{"uid": NaN}', "invalid_json", None),
    ("huge_int", b'{"uid": ' + b"9" * 5000 + b"}", "invalid_json", None),
    ("bom", b"\xef\xbb\xbf{}", "invalid_json", None),
    ("too_deep", b'{"hint": ' + b"[" * 20 + b"]" * 20 + b"}", "too_deep", None),
    ("very_deep", b"[" * 100000 + b"]" * 100000, "too_large", None),
    ("list", b"[]", "not_an_object", None),
    ("string", b'"x"', "not_an_object", None),
    ("duplicate", b'{"uid": 1, "uid": 2}', "duplicate_key", "uid"),
    ("nested_duplicate", b'{"hint": {"a": 1, "a": 2}}', "duplicate_key", "a"),
    ("unknown", pod_manifest(podUID=POD_UID), "unknown_key", "podUID"),
    ("unknown_typo", pod_manifest(exe_sha265=[DIGEST]), "unknown_key", "exe_sha265"),
    ("missing_id", pod_manifest(spiffe_id=None), "missing_key", "spiffe_id"),
    ("id_not_string", pod_manifest(spiffe_id=5), "invalid_value", "spiffe_id"),
    ("bad_id", pod_manifest(spiffe_id="spiffe://cluster.local/ns//sa/web"),
     "invalid_spiffe_id", "spiffe_id"),
    ("upper_td", pod_manifest(spiffe_id="spiffe://Cluster.local/ns/shop/sa/web"),
     "invalid_spiffe_id", "spiffe_id"),
    ("other_td", pod_manifest(spiffe_id="spiffe://example.org/ns/shop/sa/web"),
     "wrong_trust_domain", "spiffe_id"),
    ("missing_digest", pod_manifest(exe_sha256=None), "missing_key", "exe_sha256"),
    ("empty_digests", pod_manifest(exe_sha256=[]), "invalid_value", "exe_sha256"),
    ("digest_string", pod_manifest(exe_sha256=DIGEST), "invalid_value", "exe_sha256"),
    ("short_digest", pod_manifest(exe_sha256=["ab"]), "invalid_value", "exe_sha256"),
    ("md5_prefix", pod_manifest(exe_sha256=["md5:" + DIGEST]), "invalid_value", "exe_sha256"),
    ("no_selector", {"spiffe_id": "spiffe://cluster.local/x", "exe_sha256": [DIGEST]},
     "missing_selector", None),
    ("pod_and_unit", pod_manifest(systemd_unit="web.service"),
     "conflicting_selectors", "systemd_unit"),
    ("bad_pod_uid", pod_manifest(pod_uid="not-a-uuid"), "invalid_value", "pod_uid"),
    ("braced_pod_uid", pod_manifest(pod_uid="{" + POD_UID + "}"), "invalid_value", "pod_uid"),
    ("missing_namespace", pod_manifest(namespace=None), "missing_key", "namespace"),
    ("missing_sa", pod_manifest(service_account=None), "missing_key", "service_account"),
    ("namespace_without_pod",
     {"spiffe_id": "spiffe://cluster.local/x", "exe_sha256": [DIGEST], "uid": 1,
      "namespace": "shop"}, "unexpected_key", "namespace"),
    ("bad_namespace", pod_manifest(namespace="Shop"), "invalid_value", "namespace"),
    ("template_mismatch", pod_manifest(service_account="api"),
     "spiffe_id_template_mismatch", "spiffe_id"),
    ("uid_bool", pod_manifest(pod_uid=None, namespace=None, service_account=None,
                              spiffe_id="spiffe://cluster.local/x", uid=True),
     "invalid_value", "uid"),
    ("uid_negative", pod_manifest(uid=-1), "invalid_value", "uid"),
    ("uid_string", pod_manifest(uid="1000"), "invalid_value", "uid"),
    ("unit_no_type", {"spiffe_id": "spiffe://cluster.local/x", "exe_sha256": [DIGEST],
                      "systemd_unit": "nginx"}, "invalid_value", "systemd_unit"),
    ("not_after_no_zone", pod_manifest(not_after="2030-01-01T00:00:00"),
     "invalid_value", "not_after"),
    ("not_after_date_only", pod_manifest(not_after="2030-01-01"), "invalid_value", "not_after"),
    ("not_after_bad_month", pod_manifest(not_after="2030-13-01T00:00:00Z"),
     "invalid_value", "not_after"),
    ("ttl_zero", pod_manifest(x509_svid_ttl=0), "invalid_value", "x509_svid_ttl"),
    ("ttl_float", pod_manifest(x509_svid_ttl=1.5), "invalid_value", "x509_svid_ttl"),
    ("dns_not_list", pod_manifest(dns_names="web"), "invalid_value", "dns_names"),
    ("dns_bad", pod_manifest(dns_names=["web_1.example"]), "invalid_value", "dns_names"),
    ("hint_control", pod_manifest(hint="a\nb"), "invalid_value", "hint"),
    ("container_short", pod_manifest(container_id="abc"), "invalid_value", "container_id"),
    ("image_no_algo", pod_manifest(image_digest="e" * 64), "invalid_value", "image_digest"),
]


@pytest.mark.parametrize(
    ("data", "reason", "key"),
    [case[1:] for case in BAD_DOCUMENTS],
    ids=[case[0] for case in BAD_DOCUMENTS],
)
def test_bad_manifest(data: bytes | dict[str, Any], reason: str, key: str | None) -> None:
    with pytest.raises(ManifestSchemaError) as caught:
        parse(data)
    assert caught.value.reason == reason
    assert caught.value.key == key
    assert caught.value.file == "web.json"
    assert "web.json" in str(caught.value)
    if key is not None:
        assert repr(key) in str(caught.value)


def test_unknown_key_suggests_name() -> None:
    with pytest.raises(ManifestSchemaError) as caught:
        parse(pod_manifest(podUID=POD_UID))
    assert "did you mean 'pod_uid'?" in str(caught.value)


def test_template_mismatch_shows_expected() -> None:
    with pytest.raises(ManifestSchemaError) as caught:
        parse(pod_manifest(namespace="billing"))
    assert "expected 'spiffe://cluster.local/ns/billing/sa/web'" in str(caught.value)


def test_custom_template() -> None:
    template = "spiffe://{trust_domain}/k8s/{namespace}/{service_account}"
    manifest = parse(pod_manifest(spiffe_id="spiffe://cluster.local/k8s/shop/web"), template)
    assert manifest.spiffe_id == "spiffe://cluster.local/k8s/shop/web"
    with pytest.raises(ManifestSchemaError) as caught:
        parse(pod_manifest(), template)
    assert caught.value.reason == "spiffe_id_template_mismatch"


@pytest.mark.parametrize(
    "template",
    ["", "spiffe://{trust_domain}/fixed", "spiffe://{trust_domain}/ns/{namespace}",
     "spiffe://{trust_domain}/{namespace}/{service_account}/{pod}", "spiffe://{td/{namespace}"],
    ids=["empty", "no_fields", "no_service_account", "unknown_field", "unbalanced"],
)
def test_bad_template_rejected(template: str) -> None:
    with pytest.raises(ConfigError):
        check_spiffe_id_template(template)
    with pytest.raises(ConfigError):
        parse(pod_manifest(), template)


def test_size_limit() -> None:
    document = pod_manifest(hint="x")
    raw = json.dumps(document).encode()
    padded = raw[:-1] + b" " * (MAX_MANIFEST_BYTES - len(raw)) + b"}"
    assert len(padded) == MAX_MANIFEST_BYTES
    assert parse(padded).hint == "x"
    with pytest.raises(ManifestSchemaError) as caught:
        parse(padded + b" ")
    assert caught.value.reason == "too_large"


def test_nesting_ignores_strings() -> None:
    assert nesting_depth('{"a": "[[[[{{{{\\"[[["}') == 1
    assert nesting_depth('[[{"a": []}]]') == 4


def test_trust_domain_with_scheme() -> None:
    raw = json.dumps(pod_manifest()).encode()
    manifest = parse_manifest(raw, file="web.json", trust_domain="spiffe://cluster.local",
                              spiffe_id_template=DEFAULT_SPIFFE_ID_TEMPLATE)
    assert manifest.spiffe_id == "spiffe://cluster.local/ns/shop/sa/web"
