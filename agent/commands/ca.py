"""The `attest-agent ca` command."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: "argparse._SubParsersAction[Any]") -> None:
    """Add the command's parser. TODO: not implemented yet."""
