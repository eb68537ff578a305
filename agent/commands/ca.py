"""The `attest-agent ca` command: create an offline root and node intermediates.

``ca init`` writes root.pem and root.key (mode 0600). ``ca issue-intermediate`` reads
them and writes intermediate.pem, intermediate.key (mode 0600) and bundle.pem, the
three files the agent's [ca] settings point to. Both exit 0 on success and 1 with a
message on stderr when a CA error occurs.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.ca.errors import CAError
from agent.ca.issuing import (
    BUNDLE,
    INTERMEDIATE_CERT,
    INTERMEDIATE_KEY,
    ROOT_CERT,
    ROOT_KEY,
    init_root,
    issue_intermediate,
)
from agent.ca.keys import KEY_TYPES

_DURATION_PART = re.compile(r"(\d+)([dhms])")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> timedelta:
    """Parse a duration such as 24h, 90m, 1h30m, 7d or plain seconds (3600)."""
    if text.isdigit():
        seconds = int(text)
    else:
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(number + unit for number, unit in parts) != text:
            raise argparse.ArgumentTypeError(
                f"invalid duration {text!r}: use a number with d, h, m or s, such as 24h or 1h30m"
            )
        seconds = sum(int(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: it must be positive")
    return timedelta(seconds=seconds)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `ca init` and `ca issue-intermediate`."""
    parser = subparsers.add_parser("ca", help="create an offline root CA and node intermediate CAs")
    actions = parser.add_subparsers(dest="ca_command", metavar="ACTION", required=True)

    init = actions.add_parser("init", help="create a root CA (root.pem, root.key)")
    init.add_argument("--trust-domain", required=True, help="trust domain, e.g. example.org")
    init.add_argument("--out", required=True, type=Path, help="directory to write into")
    init.add_argument("--key-type", choices=KEY_TYPES, default="ec-p256", help="root key type")
    init.add_argument(
        "--ttl",
        type=parse_duration,
        default=parse_duration("8760h"),
        help="root lifetime, e.g. 8760h or 365d (default 365d)",
    )
    init.add_argument("--force", action="store_true", help="overwrite an existing root.key")
    init.set_defaults(handler=run_init)

    issue = actions.add_parser(
        "issue-intermediate",
        help="create a node intermediate CA (intermediate.pem, intermediate.key, bundle.pem)",
    )
    issue.add_argument("--root", required=True, type=Path, help="directory made by `ca init`")
    issue.add_argument("--node", required=True, help="node name, written into the subject")
    issue.add_argument("--out", required=True, type=Path, help="directory to write into")
    issue.add_argument(
        "--ttl",
        type=parse_duration,
        default=parse_duration("24h"),
        help="intermediate lifetime, capped at the root's expiry (default 24h)",
    )
    issue.add_argument(
        "--key-type", choices=KEY_TYPES, default="ec-p256", help="intermediate key type"
    )
    issue.set_defaults(handler=run_issue_intermediate)


def run_init(args: argparse.Namespace) -> int:
    """Handle `ca init`."""
    out: Path = args.out
    if (out / ROOT_KEY).exists() and not args.force:
        print(
            f"attest-agent ca init: {out / ROOT_KEY} already exists; pass --force to replace "
            "the root (every intermediate issued from it stops being trusted)",
            file=sys.stderr,
        )
        return 1
    try:
        root = init_root(out, args.trust_domain, args.key_type, args.ttl, datetime.now(UTC))
    except CAError as error:
        print(f"attest-agent ca init: {error}", file=sys.stderr)
        return 1
    print(f"wrote {out / ROOT_CERT} and {out / ROOT_KEY} (mode 0600)")
    print(f"root CA for spiffe://{args.trust_domain} valid until {root.not_valid_after_utc}")
    return 0


def run_issue_intermediate(args: argparse.Namespace) -> int:
    """Handle `ca issue-intermediate`."""
    out: Path = args.out
    now = datetime.now(UTC)
    try:
        material = issue_intermediate(
            args.root, args.node, out, key_type=args.key_type, lifetime=args.ttl, now=now
        )
    except CAError as error:
        print(f"attest-agent ca issue-intermediate: {error}", file=sys.stderr)
        return 1
    # Certificates store whole seconds, so allow one second of rounding.
    if material.not_after < now + args.ttl - timedelta(seconds=1):
        print(f"note: lifetime capped at the root's expiry, {material.not_after}", file=sys.stderr)
    for name in (INTERMEDIATE_CERT, INTERMEDIATE_KEY, BUNDLE):
        print(f"wrote {out / name}")
    print(f"intermediate CA for node {args.node!r} valid until {material.not_after}")
    return 0
