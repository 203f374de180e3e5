"""`mcp-gate demo`: a scripted agent drives a real gate in front of the example notes server."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any, TextIO

import anyio
import mcp_types as types
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from mcp_gate.gateway import CORRELATION_META_KEY
from mcp_gate.store import SQLiteStore

__all__ = ["EXAMPLES", "run_demo", "write_demo_config"]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
_WIDTH = 100


def write_demo_config(directory: Path, *, variant: str = "1") -> Path:
    """Write a gate.toml for the notes server into `directory`; return its path."""
    notes = directory / "notes"
    config = directory / "gate.toml"
    config.write_text(
        f"""[gate]
name = "demo"
data_dir = "data"
manifests = {str(EXAMPLES / "tool_manifests")!r}

[requester]
agent = "demo-agent"
owner = "alice@example.com"

[servers.notes]
command = {sys.executable!r}
args = [{str(EXAMPLES / "notes_server.py")!r}]
env = {{ NOTES_DIR = {str(notes)!r}, NOTES_VARIANT = {variant!r} }}
""",
        encoding="utf-8",
    )
    return config


def _say(text: str = "") -> None:
    print(text, flush=True)


def _step(number: int, text: str) -> None:
    _say(f"\n== {number}. {text}")


def _wrapped(label: str, text: str) -> None:
    first = f"   {label}: "
    _say(textwrap.fill(text, _WIDTH, initial_indent=first, subsequent_indent=" " * len(first)))


def _show(result: types.CallToolResult) -> None:
    text = " ".join(c.text for c in result.content if isinstance(c, types.TextContent))
    _wrapped("REFUSED" if result.is_error else "result", ", ".join(text.strip().splitlines()))


def _cli(*args: str) -> None:
    """Run `mcp-gate ARGS` and show what an operator would see (progress lines left out)."""
    _say(f"   $ mcp-gate {' '.join(args)}")
    done = subprocess.run(
        [sys.executable, "-m", "mcp_gate", *args], capture_output=True, text=True, check=False
    )
    output = done.stdout if done.returncode == 0 else done.stdout + done.stderr
    for line in output.strip().splitlines():
        indent = line[: len(line) - len(line.lstrip())]
        if not indent:  # a heading line: keep it whole
            _say(f"   {line}")
            continue
        _say(textwrap.fill(line.strip(), _WIDTH, initial_indent="   " + indent, subsequent_indent=" " * 10))


class _Agent:
    """The MCP SDK's client, talking to `mcp-gate serve` over stdio; the gate's stderr goes to a log."""

    def __init__(self, config: Path, log: TextIO) -> None:
        self._params = StdioServerParameters(
            command=sys.executable, args=["-m", "mcp_gate", "serve", "--config", str(config)], env={}
        )
        self._log = log

    def _client(self) -> Client:
        return Client(stdio_client(self._params, errlog=self._log), mode="legacy")

    def call(self, *calls: tuple[str, dict[str, Any]]) -> list[types.CallToolResult]:
        async def run() -> list[types.CallToolResult]:
            results: list[types.CallToolResult] = []
            async with self._client() as gate:
                for name, arguments in calls:
                    _say(f"   agent calls {name} {arguments}")
                    result = await gate.call_tool(name, arguments)
                    _show(result)
                    results.append(result)
            return results

        return anyio.run(run)

    def list_tools(self) -> list[types.Tool]:
        async def run() -> list[types.Tool]:
            async with self._client() as gate:
                return (await gate.list_tools()).tools

        return anyio.run(run)


async def _held_description(config: Path) -> str:
    async with await SQLiteStore.open(config.parent / "data" / "gate.db") as store:
        pin = await store.get_pin("notes", "read_note")
    held = None if pin is None else pin.drifted_definition
    return str((held or {}).get("description", "?"))


def _print_tools(tools: list[types.Tool]) -> None:
    for tool in tools:
        tier = (tool.meta or {}).get("io.github.mcp-gate/tier", "?")
        _say(f"   {tool.name:<22} {tier:<9} {tool.description}")


def run_demo(*, keep: bool = False) -> int:
    if not (EXAMPLES / "notes_server.py").exists():
        print(
            f"mcp-gate: error: the demo needs the examples/ folder of a source checkout ({EXAMPLES})",
            file=sys.stderr,
        )
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="mcp-gate-demo-"))
    try:
        with (workdir / "gate.log").open("a", encoding="utf-8") as log:
            return _run(workdir, log)
    finally:
        if keep:
            _say(f"(kept {workdir}; the gate's own log is gate.log there)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(workdir: Path, log: TextIO) -> int:
    notes = workdir / "notes"
    notes.mkdir()
    (notes / "welcome").write_text("Notes live here; the agent may read them but not rewrite them.\n")
    config = write_demo_config(workdir)
    agent = _Agent(config, log)
    _say("mcp-gate demo: a gate in front of the example notes server")
    _say("The agent is the MCP SDK's client, talking to `mcp-gate serve` over stdio.")

    _step(1, "The agent lists tools: each is namespaced and tiered; purge_notes is blocked, so not listed")
    _print_tools(agent.list_tools())

    _step(2, "Low-risk calls pass straight through")
    agent.call(
        ("notes__echo", {"text": "hello through the gate"}),
        ("notes__list_notes", {}),
        ("notes__read_note", {"name": "welcome"}),
    )

    _step(3, "Riskier calls are refused, with tier and reason; holding them for approval comes later")
    refused, *_ = agent.call(
        ("notes__write_note", {"name": "welcome", "text": "gone"}),
        ("notes__delete_note", {"name": "archive/2025"}),
        ("notes__purge_notes", {}),
    )

    _step(4, "Each call leaves its whole story in the evidence log, under one correlation id")
    correlation_id = str((refused.meta or {}).get(CORRELATION_META_KEY, "?"))
    _cli("audit", "show", correlation_id, "--config", str(config))

    _step(5, "The server changes read_note's description (a rug pull): the gate quarantines the tool")
    config = write_demo_config(workdir, variant="2")
    read_note = next(t for t in agent.list_tools() if t.name == "notes__read_note")
    _say(f"   the agent still sees the reviewed description: {read_note.description!r}")
    agent.call(("notes__read_note", {"name": "welcome"}))
    _wrapped("held for review", repr(anyio.run(_held_description, config)))

    _step(6, "Accepting trusts the new definition, so a person reviews it first (the demo accepts anyway)")
    _cli("tools", "accept", "notes__read_note", "--config", str(config))
    agent.call(("notes__read_note", {"name": "welcome"}))

    _step(7, "An auditor verifies the hash chain over every record")
    _cli("audit", "verify", "--config", str(config))
    _say(
        "\nDone. Next: `mcp-gate import` your client's mcpServers JSON, then `mcp-gate check`; see README.md."
    )
    return 0
