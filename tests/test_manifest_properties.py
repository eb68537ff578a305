"""Property tests: the manifest parser raises only ManifestSchemaError on any input."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.manifests import DEFAULT_SPIFFE_ID_TEMPLATE, Manifest, ManifestSchemaError
from agent.manifests import parse_manifest as parse_manifest_bytes
from tests.test_manifest_support import pod_manifest

KEYS = ["spiffe_id", "exe_sha256", "pod_uid", "systemd_unit", "uid", "namespace",
        "service_account", "not_after", "x509_svid_ttl", "dns_names", "hint",
        "container_id", "image_digest", "podUID"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def parse_manifest(data: bytes) -> Manifest | None:
    try:
        return parse_manifest_bytes(data, file="p.json", trust_domain="cluster.local",
                                    spiffe_id_template=DEFAULT_SPIFFE_ID_TEMPLATE)
    except ManifestSchemaError as error:
        assert error.reason
        assert error.file == "p.json"
        return None


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    parse_manifest(data)


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(KEYS), json_values, max_size=8))
def test_random_documents(document: dict[str, Any]) -> None:
    parse_manifest(json.dumps(document).encode())


@settings(max_examples=300)
@given(st.sampled_from(KEYS), json_values)
def test_one_key_replaced(key: str, value: Any) -> None:
    # Starting from a valid manifest, any single change either parses or is rejected.
    document = pod_manifest(**{key: value})
    manifest = parse_manifest(json.dumps(document).encode())
    if manifest is not None:
        assert manifest.spiffe_id.startswith("spiffe://cluster.local/")
        assert manifest.exe_sha256


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=400), st.integers(min_value=0, max_value=4))
def test_mutated_bytes(position: int, bit: int) -> None:
    raw = bytearray(json.dumps(pod_manifest(hint="h")).encode())
    raw[position % len(raw)] ^= 1 << bit
    parse_manifest(bytes(raw))
