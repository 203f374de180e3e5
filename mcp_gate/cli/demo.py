"""`mcp-gate demo`: the entry to the scripted demo, which lives in `mcp_gate.demo`."""

from __future__ import annotations

import argparse
from typing import Any

from mcp_gate.cli._common import subcommand

__all__ = ["add_commands"]


def cmd_demo(args: argparse.Namespace) -> int:
    from mcp_gate.demo import run_demo

    return run_demo(keep=args.keep)


def add_commands(sub: Any) -> None:
    p = subcommand(
        sub,
        "demo",
        "run the guided demo against the example notes server",
        "A scripted agent drives a real gate in front of the example notes server (about 10 s).",
    )
    p.add_argument("--keep", action="store_true", help="keep the demo's temporary directory")
    p.set_defaults(func=cmd_demo)
