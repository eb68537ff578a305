"""The reference pages docs/configuration.md and docs/manifests.md against the code.

Every config key, manifest key and denial reason must be documented, and the examples
in the pages must load with the agent's own parsers.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from agent.config import Settings, load_settings
from agent.denial import Reason
from agent.manifests.schema import DEFAULT_SPIFFE_ID_TEMPLATE, KNOWN_KEYS, parse_manifest

DOCS = Path(__file__).resolve().parent.parent / "docs"
CONFIGURATION = (DOCS / "configuration.md").read_text()
MANIFESTS = (DOCS / "manifests.md").read_text()


def config_keys() -> list[str]:
    """Return each config key as the doc names it: ``[ca] cert`` for the [ca] table."""
    names = [field.name for field in dataclasses.fields(Settings)]
    return [f"[ca] {name[3:]}" if name.startswith("ca_") else name for name in names]


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


@pytest.mark.parametrize("key", config_keys())
def test_config_key_documented(key: str) -> None:
    # The [ca] keys share one section, "### [ca] cert, key, bundle".
    heading = "### [ca] cert, key, bundle" if key.startswith("[ca]") else f"### {key}\n"
    assert f"| `{key}` |" in CONFIGURATION
    assert heading in CONFIGURATION


def test_config_example_loads(tmp_path: Path) -> None:
    blocks = code_blocks(CONFIGURATION, "toml")
    assert len(blocks) == 1
    path = tmp_path / "agent.toml"
    path.write_text(blocks[0])

    settings = load_settings(path)
    document = tomllib.loads(blocks[0])

    top_level = {key for key in config_keys() if not key.startswith("[ca]")}
    assert set(document) - {"ca"} == top_level
    assert set(document["ca"]) == {"cert", "key", "bundle"}
    assert settings.trust_domain == "prod.example.org"
    assert len(settings.manifest_keys) == 2


@pytest.mark.parametrize("reason", [reason.value for reason in Reason])
def test_reason_documented(reason: str) -> None:
    assert f"| `{reason}` |" in MANIFESTS


@pytest.mark.parametrize("key", sorted(KNOWN_KEYS))
def test_manifest_key_documented(key: str) -> None:
    assert f"| `{key}` |" in MANIFESTS


def test_manifest_examples_parse() -> None:
    blocks = code_blocks(MANIFESTS, "json")
    assert len(blocks) == 2
    for index, block in enumerate(blocks):
        manifest = parse_manifest(
            block.encode(), file=f"example-{index}.json", trust_domain="cluster.local",
            spiffe_id_template=DEFAULT_SPIFFE_ID_TEMPLATE,
        )
        assert manifest.spiffe_id.startswith("spiffe://cluster.local/")
