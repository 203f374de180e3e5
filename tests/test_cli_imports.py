"""The approvers' commands start light: they never load the SDK's server or client, the call path,
the channels or the HTTP servers, only the config, the store and the approval engine.

Each command runs as a real subprocess under `python -X importtime`, which lists every module the
process imported; the test asserts on that list, not on how long it took."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import anyio
import pytest

from tests.test_cli_approvals import WRITE, environment, gate, make_config

pytestmark = pytest.mark.anyio

# What a short command has no use for: the SDK (its server and client, and the types they share),
# the call path built on it, the channels and console, the HTTP stack, vendor clients.
HEAVY = (
    "mcp",
    "mcp_types",
    "mcp_gate.gateway",
    "mcp_gate.downstream",
    "mcp_gate.offering",
    "mcp_gate.server",
    "mcp_gate.health",
    "mcp_gate.channels",
    "mcp_gate.console",
    "starlette",
    "uvicorn",
    "jsonschema",
    "slack_sdk",
    "jwt",
    "prometheus_client",
    "jinja2",
    "detect_secrets",  # the redaction reads its patterns from secret_patterns.py
    "requests",
)
_IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$")


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


async def imported(*args: str, token: str | None = "tok-bob") -> tuple[set[str], str]:
    """The modules `mcp-gate ARGS` imported, and what it printed."""
    done = await anyio.run_process(
        [sys.executable, "-X", "importtime", "-m", "mcp_gate", *args], env=environment(token), check=False
    )
    stderr = done.stderr.decode()
    modules = {m.group(1) for line in stderr.splitlines() if (m := _IMPORT_LINE.match(line))}
    messages = "\n".join(line for line in stderr.splitlines() if not _IMPORT_LINE.match(line))
    assert "Traceback" not in messages, messages
    assert modules, "no -X importtime lines: the check would pass vacuously"
    return modules, done.stdout.decode()


async def test_version_and_help_import_no_command_s_modules(tmp_path: Path) -> None:
    for args in (["--version"], ["--help"]):
        modules, out = await imported(*args)
        assert "mcp-gate" in out
        assert heavy(modules) == [], args
        # Nor the config, the store or the secret detectors: only the parser is built.
        unused = {"mcp_gate.config", "mcp_gate.storage", "mcp_gate.runtime", "pydantic"}
        assert unused.isdisjoint(modules), args


async def test_the_approvers_commands_over_the_database_load_no_sdk_call_path_or_channel(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path)
    async with gate(config) as agent:
        request, _, _ = await agent.held("notes__write_note", WRITE)
        other, _, _ = await agent.held("notes__delete_note", {"name": "old"})
    c = ["--config", str(config)]  # the gate has stopped; its requests stay open in the data dir
    commands = [
        ["pending", *c],
        ["show", request.id, *c],
        ["approve", request.id, "--note", "checked", *c],
        ["deny", other.id, "--reason", "not today", *c],
        ["grants", *c],
        ["away", "--for", "1h", *c],
        ["back", *c],
        ["approvers", "list", *c],
    ]
    for args in commands:
        modules, out = await imported(*args)
        assert heavy(modules) == [], args
        assert "mcp_gate.holds" in modules or args[0] == "approvers", args  # it did use the engine
    # And the commands did their work: one request approved (it runs when the agent calls again),
    # the other denied and so no longer open.
    _, out = await imported("pending", "--json", *c)
    assert [(r["id"], r["state"]) for r in json.loads(out)] == [(request.id, "approved")]


async def test_a_command_that_serves_still_loads_the_call_path(tmp_path: Path) -> None:
    """The check above would pass if importtime listed nothing useful; `tools` starts the gate."""
    config = make_config(tmp_path)
    modules, out = await imported("tools", "--config", str(config))
    assert {"mcp.client", "mcp_gate.gateway", "mcp_gate.downstream"} <= modules
    assert "notes__write_note" in out
