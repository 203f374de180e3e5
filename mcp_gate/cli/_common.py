"""What every `mcp-gate` command module shares: exit codes, --config, output, sub-parsers, addresses.

The leaf of the CLI package: it imports no other CLI module, so the command modules import it and
never each other's private helpers.

Every command module is imported to build the parser, so each imports at its top only what is
cheap (the standard library, this module, `errors`, the pure core) and the rest (the config, the
store, the SDK, the channels) in the commands that use it: `mcp-gate --version`, `pending` and
`approve` start without loading the call path (tests/test_cli_imports.py)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcp_gate.errors import GateError

if TYPE_CHECKING:
    from mcp_gate.config import GateConfig

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "add_config",
    "api_url",
    "host_port",
    "is_loopback",
    "load_config_from_args",
    "log_json",
    "progress",
    "say",
    "subcommand",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def load_config_from_args(args: argparse.Namespace) -> GateConfig:
    from mcp_gate.config import load_config, resolve_config_path

    return load_config(resolve_config_path(args.config, os.environ, Path.cwd()), os.environ)


def add_config(p: argparse.ArgumentParser, *, default: Any = None) -> None:
    p.add_argument(
        "--config",
        metavar="PATH",
        default=default,
        help="gate.toml to use (default: $MCP_GATE_CONFIG, else ./gate.toml)",
    )


def say(text: str = "") -> None:
    print(text, flush=True)


_json_logs = False


def log_json(on: bool) -> None:
    """With JSON logs (`serve --log-format json`), stderr carries only JSON lines: progress too."""
    global _json_logs
    _json_logs = on


def progress(text: str, *, error: bool = False) -> None:
    if _json_logs:
        logging.getLogger("mcp_gate.cli").log(logging.ERROR if error else logging.INFO, "%s", text)
        return
    print(text, file=sys.stderr, flush=True)


def subcommand(sub: Any, name: str, summary: str, description: str | None = None) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=summary, description=description or summary)
    return parser


def host_port(text: str, option: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise GateError(f"{option}: expected HOST:PORT such as 127.0.0.1:8765, got {text!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_url(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::"):  # listening everywhere: reach it on this machine
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return f"http://[{host}]:{port}/v1" if ":" in host else f"http://{host}:{port}/v1"
