"""`mcp-gate demo`: a scripted agent drives a real gate in front of the example notes server."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp import Client, StdioServerParameters

__all__ = ["EXAMPLES", "run_demo", "write_demo_config"]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


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


def _step(number: int, text: str) -> None:
    print(f"\n== {number}. {text}", flush=True)


def _show(result: types.CallToolResult) -> None:
    text = " ".join(c.text for c in result.content if isinstance(c, types.TextContent))
    label = "TOOL ERROR" if result.is_error else "result"
    print(f"   {label}: {text}", flush=True)


def _gate(config: Path) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_gate", "serve", "--config", str(config)], env={}
    )


def _cli(*args: str) -> None:
    print(f"   $ mcp-gate {' '.join(args)}", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "mcp_gate", *args], capture_output=True, text=True, check=False
    )
    for line in (done.stdout + done.stderr).strip().splitlines():
        print(f"   {line}", flush=True)


async def _agent(config: Path, calls: list[tuple[str, dict[str, Any]]]) -> None:
    async with Client(_gate(config), mode="legacy") as gate:
        for name, arguments in calls:
            print(f"   agent calls {name} {arguments}", flush=True)
            _show(await gate.call_tool(name, arguments))


async def _list(config: Path) -> None:
    async with Client(_gate(config), mode="legacy") as gate:
        for tool in (await gate.list_tools()).tools:
            tier = (tool.meta or {}).get("io.github.mcp-gate/tier", "?")
            print(f"   {tool.name:<22} {tier:<9} {tool.description}", flush=True)


def run_demo(*, keep: bool = False) -> int:
    if not (EXAMPLES / "notes_server.py").exists():
        print(
            f"mcp-gate: error: the demo needs the examples/ folder of a source checkout ({EXAMPLES})",
            file=sys.stderr,
        )
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="mcp-gate-demo-"))
    try:
        config = write_demo_config(workdir)
        print(f"mcp-gate demo: a gate in front of the example notes server (files in {workdir})")
        print("The agent below is the MCP SDK's client, talking to `mcp-gate serve` over stdio.")

        _step(
            1, "The agent lists tools: every tool is namespaced and tiered; purge_notes is blocked and hidden"
        )
        anyio.run(_list, config)

        _step(2, "Low-risk calls pass straight through")
        anyio.run(
            _agent, config, [("notes__echo", {"text": "hello through the gate"}), ("notes__list_notes", {})]
        )

        _step(3, "High-risk and critical calls need a human: refused, with the tier and the reason")
        anyio.run(
            _agent,
            config,
            [
                ("notes__write_note", {"name": "todo", "text": "ship it"}),
                ("notes__delete_note", {"name": "archive/2025"}),
                ("notes__purge_notes", {}),
            ],
        )

        _step(4, "The server changes read_note's description (a rug pull): the gate quarantines it")
        config = write_demo_config(workdir, variant="2")
        anyio.run(_agent, config, [("notes__read_note", {"name": "todo"})])
        print("   (the agent still sees the reviewed description, never the new one)")

        _step(5, "An operator reviews the change and accepts the new pin; the tool works again")
        _cli("tools", "accept", "notes__read_note", "--config", str(config))
        anyio.run(_agent, config, [("notes__read_note", {"name": "missing"})])

        _step(6, "Every call left evidence: a hash chain an auditor can verify")
        _cli("audit", "verify", "--config", str(config))
        print("\nDone. Try `mcp-gate check --config <your gate.toml>` next; see README.md.")
        return 0
    finally:
        if keep:
            print(f"(kept {workdir})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
