"""Suite-wide pytest settings.

Hypothesis runs without per-example deadlines or the too-slow health check: CI machines
have two cores shared with real agent, Envoy and client processes, so generation speed
says nothing about the code under test.

With ATTEST_AGENT_FORBID_SKIPS=1 (set by .ci/run, which runs as root with writable
cgroups), a skipped test counts as a failure, so a missing privilege or tool cannot
silently turn an integration test into a pass.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "shared-machine",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("shared-machine")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None]:
    outcome = yield
    report = outcome.get_result()
    # An expected failure (xfail) is reported as skipped too; it stays visible as xfailed.
    expected_failure = hasattr(report, "wasxfail")
    forbid_skips = os.environ.get("ATTEST_AGENT_FORBID_SKIPS") == "1"
    if report.skipped and not expected_failure and forbid_skips:
        report.outcome = "failed"
        report.longrepr = f"skipped under ATTEST_AGENT_FORBID_SKIPS=1: {report.longrepr}"
