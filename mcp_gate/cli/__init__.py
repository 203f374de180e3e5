"""The `mcp-gate` command: the parser, built from each command module's `add_commands`, and `main`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from mcp_gate import __version__
from mcp_gate.cli import approvers, audit, console, demo, gate, login, policy, slack, store, teams
from mcp_gate.cli._common import EXIT_FAILED, EXIT_USAGE, progress
from mcp_gate.errors import ApiUnreachable, DecisionRefused, GateError, StoreError, StoreUnreachable
from mcp_gate.logs import configure_logging

__all__ = ["build_parser", "main"]

_EXAMPLES = """\
examples:
  mcp-gate import ~/.config/Claude/claude_desktop_config.json >> gate.toml
  mcp-gate check --config gate.toml
  mcp-gate manifests copy time --to tool_manifests
  mcp-gate serve --config gate.toml
  mcp-gate tools accept notes__read_note
  mcp-gate policy test
  mcp-gate policy explain notes delete_note --args '{"name": "archive/2020"}'
  MCP_GATE_TOKEN=... mcp-gate pending
  MCP_GATE_TOKEN=... mcp-gate approve K7Q2M9XA --note "checked the diff"
  mcp-gate audit verify
  mcp-gate keys init
  mcp-gate audit export --since 2026-11-01 --until 2026-12-01 --out evidence.tar.gz
  mcp-gate audit verify --bundle evidence.tar.gz --pubkey KEY
  mcp-gate audit report --since 2026-11-01 --out report.html
  mcp-gate slack test
  mcp-gate teams test --endpoint https://gate.example.com
  mcp-gate demo

exit status: 0 ok, 1 a check failed (server down, evidence tampered, decision refused), 2 bad input
"""


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; `--help` lists the commands in the order they are registered here."""
    parser = argparse.ArgumentParser(
        prog="mcp-gate",
        description="An MCP server that guards what AI agents do: agents connect to the gate, the gate "
        "connects to their tool servers, tiers every tool, and records every call as evidence.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mcp-gate {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    gate.add_commands(sub)
    audit.add_audit_commands(sub)
    approvers.add_commands(sub)
    login.add_commands(sub)
    console.add_commands(sub)
    audit.add_key_commands(sub)
    policy.add_commands(sub)
    slack.add_commands(sub)
    store.add_commands(sub)
    teams.add_commands(sub)
    demo.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging("text", verbose=args.verbose)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        code = func(args)
    except DecisionRefused as exc:
        progress(f"mcp-gate: refused: {exc}", error=True)
        code = EXIT_FAILED
    except GateError as exc:
        progress(f"mcp-gate: error: {exc}", error=True)
        # A database the config names that is not there is the config's to fix, like a bad file.
        failed = isinstance(exc, StoreError | ApiUnreachable) and not isinstance(exc, StoreUnreachable)
        code = EXIT_FAILED if failed else EXIT_USAGE
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
