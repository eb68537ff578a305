"""Prometheus alert rules in deploy/alerts.yaml: syntax, metric names and firing behaviour."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.telemetry.metrics import EXPORTED_NAMES

ALERTS = Path(__file__).resolve().parent.parent / "deploy" / "alerts.yaml"
METRIC_NAME = re.compile(r"\battest_agent_[a-z0-9_]+\b")
PROMTOOL = shutil.which("promtool")


def load_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def require_promtool() -> str:
    if PROMTOOL is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return PROMTOOL


def test_expressions_name_exported_metrics() -> None:
    rules = load_rules()

    assert rules, "deploy/alerts.yaml has no rules"
    for rule in rules:
        names = set(METRIC_NAME.findall(rule["expr"]))
        assert names, f"{rule['alert']} uses no attest_agent_ metric"
        assert names <= set(EXPORTED_NAMES), f"{rule['alert']}: {names - set(EXPORTED_NAMES)}"


def test_required_alerts_present() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in load_rules()}

    assert "attest_agent_intermediate_ca_expiry_seconds < 12 * 3600" in exprs.values()
    assert any("attest_agent_earliest_svid_expiry_seconds < 12 * 3600" in e for e in exprs.values())
    assert any("attest_agent_attestations_total" in e for e in exprs.values())
    assert any("attest_agent_manifest_load_errors_total" in e for e in exprs.values())


def test_every_rule_has_summary_and_severity() -> None:
    for rule in load_rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


def test_promtool_check_rules() -> None:
    promtool = require_promtool()

    result = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)],
        capture_output=True, text=True, timeout=60, check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout


# Unit tests for `promtool test rules`, evaluated once a minute. Node "bad" shows each
# problem and node "good" the healthy counterpart, which must not alert.
ALERT_CASES: list[dict[str, Any]] = [
    {
        "interval": "1m",
        "input_series": [
            {"series": 'attest_agent_intermediate_ca_expiry_seconds{instance="bad"}',
             "values": "40000-60x20"},
            {"series": 'attest_agent_intermediate_ca_expiry_seconds{instance="good"}',
             "values": "90000-60x20"},
            # A 1 h SVID with 10 minutes left missed its rotation at 30 minutes.
            {"series": 'attest_agent_earliest_svid_expiry_seconds{instance="bad"}',
             "values": "600-1x20"},
            {"series": 'attest_agent_svid_min_remaining_lifetime_ratio{instance="bad"}',
             "values": "0.16x20"},
            # A 1 h SVID that rotates on time: under 12 h left, but half its life left.
            {"series": 'attest_agent_earliest_svid_expiry_seconds{instance="good"}',
             "values": "1800x20"},
            {"series": 'attest_agent_svid_min_remaining_lifetime_ratio{instance="good"}',
             "values": "0.5x20"},
            {"series": 'attest_agent_attestations_total'
                       '{instance="bad",result="denied",reason="exe_hash_mismatch"}',
             "values": "0+60x20"},
            {"series": 'attest_agent_attestations_total'
                       '{instance="good",result="success",reason="none"}',
             "values": "0+600x20"},
            {"series": 'attest_agent_manifest_load_errors_total{instance="bad"}',
             "values": "0 0 0 0 0 1 1 1 1 1 1 1"},
            {"series": 'attest_agent_manifest_load_errors_total{instance="good"}',
             "values": "0x11"},
            {"series": 'attest_agent_sds_nacks_total{instance="bad"}',
             "values": "0 0 2 2 2 2 2 2"},
            {"series": 'attest_agent_sds_nacks_total{instance="good"}',
             "values": "0x7"},
        ],
        "alert_rule_test": [
            {"eval_time": "10m", "alertname": "AttestAgentIntermediateCAExpiringSoon",
             "exp_alerts": [{"exp_labels": {"severity": "critical", "instance": "bad"}}]},
            {"eval_time": "2m", "alertname": "AttestAgentIntermediateCAExpiringSoon",
             "exp_alerts": []},
            {"eval_time": "10m", "alertname": "AttestAgentSvidExpiringSoon",
             "exp_alerts": [{"exp_labels": {"severity": "critical", "instance": "bad"}}]},
            {"eval_time": "15m", "alertname": "AttestAgentAttestationFailures",
             "exp_alerts": [{"exp_labels": {
                 "severity": "warning", "instance": "bad", "result": "denied"}}]},
            {"eval_time": "6m", "alertname": "AttestAgentManifestLoadErrors",
             "exp_alerts": [{"exp_labels": {"severity": "warning", "instance": "bad"}}]},
            {"eval_time": "3m", "alertname": "AttestAgentSdsNacks",
             "exp_alerts": [{"exp_labels": {"severity": "warning", "instance": "bad"}}]},
        ],
    },
]


def rules_without_annotations(directory: Path) -> Path:
    """Copy alerts.yaml without annotations, which promtool would otherwise compare."""
    document = yaml.safe_load(ALERTS.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    path = directory / "alerts.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def run_promtool_tests(
    tmp_path: Path, cases: list[dict[str, Any]],
) -> subprocess.CompletedProcess[str]:
    promtool = require_promtool()
    rules = rules_without_annotations(tmp_path)
    test_file = tmp_path / "alerts_test.yaml"
    test_file.write_text(yaml.safe_dump({
        "rule_files": [str(rules)], "evaluation_interval": "1m", "tests": cases,
    }))
    return subprocess.run(
        [promtool, "test", "rules", str(test_file)],
        capture_output=True, text=True, timeout=120, check=False,
    )


def test_alerts_fire_only_for_bad_node(tmp_path: Path) -> None:
    result = run_promtool_tests(tmp_path, ALERT_CASES)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_detects_wrong_expectation(tmp_path: Path) -> None:
    # A control: the harness must fail when an expected alert does not fire.
    case = {
        "interval": "1m",
        "input_series": [
            {"series": 'attest_agent_intermediate_ca_expiry_seconds{instance="good"}',
             "values": "90000x20"},
        ],
        "alert_rule_test": [
            {"eval_time": "10m", "alertname": "AttestAgentIntermediateCAExpiringSoon",
             "exp_alerts": [{"exp_labels": {"severity": "critical", "instance": "good"}}]},
        ],
    }

    result = run_promtool_tests(tmp_path, [case])

    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr
