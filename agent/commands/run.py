"""The ``attest-agent run`` command: start the agent in the foreground.

Settings come from ``--config FILE`` (TOML) with the flags below taking precedence.
With no arguments the agent runs with a development CA and paths under
/tmp/attest-agent/, and logs where everything is.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from agent import log
from agent.config import LOG_LEVELS, load_settings
from agent.errors import AgentError


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``run`` parser."""
    parser = subparsers.add_parser(
        "run",
        help="run the agent (the default command)",
        description="Serve the SPIFFE Workload API and Envoy SDS on a Unix socket. "
        "Flags override the config file.",
    )
    parser.add_argument("--config", type=Path, help="TOML settings file")
    parser.add_argument(
        "--socket", dest="socket_path", type=Path,
        help="public socket path (default /tmp/attest-agent/public/api.sock)",
    )
    parser.add_argument(
        "--state-dir", type=Path, help="directory for the CA and internal socket (mode 0700)"
    )
    parser.add_argument("--manifests-dir", type=Path, help="directory of signed manifests")
    parser.add_argument(
        "--manifest-key", dest="manifest_keys", type=Path, action="append",
        help="PEM public key trusted to sign manifests; repeat for several keys",
    )
    parser.add_argument("--trust-domain", help="trust domain (default cluster.local)")
    parser.add_argument("--log-level", choices=LOG_LEVELS, type=str.upper, help="log level")
    parser.add_argument(
        "--health-address",
        help="host:port of the HTTP /live, /ready and /metrics endpoint "
        '(default 127.0.0.1:8081; "" turns it off)',
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Load settings, run the agent until SIGTERM and return the exit status."""
    # Imported here so that client commands do not load the server's dependencies.
    from agent.server import run as run_server  # noqa: PLC0415

    overrides = {
        "socket_path": args.socket_path,
        "state_dir": args.state_dir,
        "manifests_dir": args.manifests_dir,
        "manifest_keys": args.manifest_keys,
        "trust_domain": args.trust_domain,
        "log_level": args.log_level,
        "health_address": args.health_address,
    }
    try:
        settings = load_settings(args.config, overrides)
    except AgentError as error:
        print(f"attest-agent: {error}", file=sys.stderr)
        return 2
    log.configure(settings.log_level)
    try:
        asyncio.run(run_server(settings))
    except AgentError as error:
        print(f"attest-agent: cannot start: {error}", file=sys.stderr)
        return 1
    return 0
