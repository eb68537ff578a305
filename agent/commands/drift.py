"""The ``attest-agent drift`` command: list the agent's callers and whether each still matches.

It sends a drift request to the running agent's root-only admin socket, and the agent
re-attests every caller with an open connection before it responds. Exit status: 0
when every caller that has an identity still matches, 1 when any drifted (for a
nightly job to alert on), and 2 when the agent cannot be reached or the settings are
invalid.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent.admin.client import admin_request
from agent.admin.drift import DRIFTED
from agent.config import load_settings
from agent.errors import AgentError

EXIT_MATCH = 0
EXIT_DRIFTED = 1
EXIT_UNREACHABLE = 2


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``drift`` parser."""
    parser = subparsers.add_parser(
        "drift",
        help="list the agent's callers and whether each still matches its manifests",
        description="Re-attest every caller of the running agent and report drift. Exits 0 "
        "when all match, 1 when any drifted, 2 when the agent is unreachable.",
    )
    parser.add_argument(
        "--admin-socket", type=Path,
        help="admin socket path (default: admin_socket from --config, else "
        "<state_dir>/admin/admin.sock of the default settings)",
    )
    parser.add_argument("--config", type=Path, help="the agent's TOML settings file")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--timeout", type=float, default=30.0,
        help="seconds to wait for the report (default 30)",
    )
    parser.set_defaults(handler=drift)


def drift(args: argparse.Namespace) -> int:
    """Fetch the drift report, print it and return 0, 1 or 2 (see the module docstring)."""
    try:
        path = args.admin_socket or load_settings(args.config).admin_socket_path
        report = admin_request(path, "drift", args.timeout)
    except AgentError as error:
        print(f"attest-agent drift: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if "error" in report:
        print(f"attest-agent drift: the agent returned an error: {report['error']}",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    callers: list[dict[str, Any]] = report.get("callers", [])
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(callers)
    drifted = any(caller.get("status") == DRIFTED for caller in callers)
    return EXIT_DRIFTED if drifted else EXIT_MATCH


def _print_table(callers: list[dict[str, Any]]) -> None:
    if not callers:
        print("no callers")
        return
    print(f"{'PID':>8}  {'STATUS':<12} {'STREAMS':<16} {'EXE SHA-256':<16} SPIFFE IDS / REASON")
    for caller in callers:
        streams = ",".join(f"{api}={count}" for api, count in caller["streams"].items()) or "-"
        evidence = caller.get("current_evidence") or caller.get("evidence") or {}
        digest = str(evidence.get("exe_sha256") or "-")[:16]
        ids = " ".join(held["spiffe_id"] for held in caller["identities"]) or "-"
        reason = caller.get("reason")
        detail = f"  ({reason}: {caller.get('detail')})" if reason else ""
        print(f"{caller['pid']:>8}  {caller['status']:<12} {streams:<16} {digest:<16} "
              f"{ids}{detail}")
