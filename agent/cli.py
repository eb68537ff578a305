"""Command-line entry point: ``attest-agent COMMAND ...``.

Each command lives in its own module under agent.commands and exposes
``register(subparsers)``, which adds its parser and sets ``handler`` to a function that
takes the parsed arguments and returns the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

COMMAND_MODULES: tuple[str, ...] = (
    "agent.commands.run",
    "agent.commands.api",
    "agent.commands.healthcheck",
    "agent.commands.inspect",
    "agent.commands.manifest",
    "agent.commands.ca",
    "agent.commands.explain",
    "agent.commands.attest",
    "agent.commands.drift",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attest-agent",
        description="SPIFFE Workload API and Envoy SDS agent with process attestation.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if not sys.platform.startswith("linux"):
        print("attest-agent runs on Linux only: it reads /proc and SO_PEERCRED.", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        if args.command is None:
            # With no command at all, run the agent with its defaults.
            return main(["run"])
        parser.print_help()
        return 2
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
