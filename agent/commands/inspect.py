"""The `attest-agent inspect PID` command: show the evidence the agent sees for a process.

It attests the process directly (no running agent needed) and prints one JSON object
with the keys pid, uid, gid, exe_sha256, pod_uid, container_id, systemd_unit and
start_time (null where absent). When attestation fails it prints the denial's reason
code and sentence on stderr and exits with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from agent import log
from agent.attest.attestor import Attestor
from agent.attest.evidence import Evidence


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``inspect`` parser."""
    parser = subparsers.add_parser(
        "inspect",
        help="print the evidence the agent collects for a running process",
        description=(
            "Attest a running process as the agent would and print the evidence as JSON. "
            "Run it in the agent's PID namespace (the host's) and as root."
        ),
    )
    parser.add_argument("pid", type=int, metavar="PID", help="process id to attest")
    parser.add_argument(
        "--proc-root",
        type=Path,
        default=Path("/proc"),
        help="procfs mount to read (default: /proc)",
    )
    parser.add_argument(
        "--max-exe-size",
        type=int,
        default=None,
        metavar="BYTES",
        help="deny executables larger than this many bytes (default: no limit)",
    )
    parser.set_defaults(handler=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    """Attest ``args.pid``; print evidence and return 0, or print the denial and return 1."""
    # The denial is printed below, so the attestor's own warning would only repeat it.
    log.configure("ERROR")
    attestor = Attestor(args.proc_root, max_exe_size=args.max_exe_size)
    result = asyncio.run(attestor.attest_pid(args.pid))
    if isinstance(result, Evidence):
        print(json.dumps(result.as_json_dict()))
        return 0
    print(f"attest-agent inspect: {result.reason.value}: {result.message}", file=sys.stderr)
    return 1
