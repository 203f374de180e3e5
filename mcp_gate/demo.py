"""`mcp-gate demo`: a scripted agent drives a real gate in front of the example notes server."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio
import mcp_types as types
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from mcp_gate import runtime
from mcp_gate.approvals import ApprovalRequest
from mcp_gate.config import load_config
from mcp_gate.datadir import gate_db

__all__ = ["EXAMPLES", "run_demo", "write_demo_config"]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
_WIDTH = 100


APPROVERS = {
    "alice": ("alice@example.com", ["sre"]),  # the human the demo agent acts for
    "bob": ("bob@example.com", ["sre"]),
    "carol": ("carol@example.com", ["security", "sre"]),
    "dave": ("dave@example.com", ["security"]),
}


def demo_tokens() -> dict[str, str]:
    return {name: secrets.token_urlsafe(24) for name in APPROVERS}


def write_demo_config(directory: Path, tokens: dict[str, str], *, variant: str = "1") -> Path:
    """Write a gate.toml for the notes server into `directory`; return its path."""
    notes = directory / "notes"
    config = directory / "gate.toml"
    approvers = "".join(
        f"\n[approvers.{name}]\nemail = {email!r}\ngroups = {groups!r}\n"
        f"token_sha256 = {hashlib.sha256(tokens[name].encode()).hexdigest()!r}\n"
        for name, (email, groups) in APPROVERS.items()
    )
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

[tiers]
high = {{ approvals = 1, groups = ["sre", "security"] }}
critical = {{ approvals = 2, groups = ["security"] }}

[approvals]
hold_seconds = 120
progress_seconds = 2
"""
        + approvers,
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


def _cli(*args: str, token: tuple[str, str] | None = None) -> None:
    """Run `mcp-gate ARGS` (as `token`'s approver) and show what an operator would see."""
    who = f"MCP_GATE_TOKEN=<{token[0]}'s token> " if token else ""
    _say(f"   $ {who}mcp-gate {' '.join(a if ' ' not in a else repr(a) for a in args)}")
    env = {**os.environ, "MCP_GATE_TOKEN": token[1]} if token else None
    done = subprocess.run(
        [sys.executable, "-m", "mcp_gate", *args], capture_output=True, text=True, check=False, env=env
    )
    output = done.stdout if done.returncode == 0 else done.stdout + done.stderr
    for line in output.strip().splitlines():
        indent = line[: len(line) - len(line.lstrip())]
        if not indent:  # a heading line: keep it whole
            _say(f"   {line}")
            continue
        _say(textwrap.fill(line.strip(), _WIDTH, initial_indent="   " + indent, subsequent_indent=" " * 10))


def _output(*args: str) -> str:
    """What `mcp-gate ARGS` prints, for the demo's own use."""
    done = subprocess.run(
        [sys.executable, "-m", "mcp_gate", *args], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


class _Agent:
    """The MCP SDK's client, talking to `mcp-gate serve` over stdio; the gate's stderr goes to a log."""

    def __init__(self, config: Path, log: TextIO) -> None:
        self._params = StdioServerParameters(
            command=sys.executable, args=["-m", "mcp_gate", "serve", "--config", str(config)], env={}
        )
        self._log = log

    def _client(self) -> Client:
        return Client(stdio_client(self._params, errlog=self._log), mode="legacy")

    def session(self) -> Client:
        """One open session with the gate, for calls that stay held across several steps."""
        return self._client()

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
    async with runtime.read_gate_store(load_config(config, os.environ)) as store:
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
    (notes / "archive").mkdir()
    (notes / "archive" / "2025").write_text("last year's decisions, kept for retention\n")
    tokens = demo_tokens()
    config = write_demo_config(workdir, tokens)
    agent = _Agent(config, log)
    _say("mcp-gate demo: a gate in front of the example notes server")
    _say("The agent is the MCP SDK's client, talking to `mcp-gate serve` over stdio, on behalf of")
    _say("alice@example.com. Approvers bob, carol and dave decide from another process with the CLI.")

    _say("The gate signs checkpoints of its evidence log with a key made for the demo:")
    _cli("keys", "init", "--config", str(config))
    pubkey = _output("keys", "show", "--config", str(config))

    _step(1, "The agent lists tools: each is namespaced and tiered; purge_notes is blocked, so not listed")
    _print_tools(agent.list_tools())

    _step(2, "Low-risk calls pass straight through")
    agent.call(
        ("notes__echo", {"text": "hello through the gate"}),
        ("notes__list_notes", {}),
        ("notes__read_note", {"name": "welcome"}),
    )

    held = anyio.run(_approvals, agent, config, tokens)

    _step(7, "Each call leaves its whole story in the evidence log: request, decision, release, result")
    _cli("audit", "show", held, "--config", str(config))

    _step(8, "The server changes read_note's description (a rug pull): the gate quarantines the tool")
    config = write_demo_config(workdir, tokens, variant="2")
    read_note = next(t for t in agent.list_tools() if t.name == "notes__read_note")
    _say(f"   the agent still sees the reviewed description: {read_note.description!r}")
    agent.call(("notes__read_note", {"name": "welcome"}))
    _wrapped("held for review", repr(anyio.run(_held_description, config)))

    _step(9, "Accepting trusts the new definition, so a person reviews it first (the demo accepts anyway)")
    _cli("tools", "accept", "notes__read_note", "--config", str(config))
    agent.call(("notes__read_note", {"name": "welcome"}))

    _step(10, "An auditor checks the log and a signed export of it, with only the public key")
    _cli("audit", "verify", "--config", str(config))
    bundle = workdir / "evidence.tar.gz"
    _cli("audit", "export", "--config", str(config), "--out", str(bundle))
    _cli("audit", "verify", "--bundle", str(bundle), "--pubkey", pubkey)
    _say(
        "\nDone. Next: `mcp-gate import` your client's mcpServers JSON, then `mcp-gate check`; see README.md."
    )
    return 0


@dataclass
class _Answer:
    """The answer to a call the demo's agent left waiting, and when it came."""

    result: types.CallToolResult | None = None
    done: anyio.Event = field(default_factory=anyio.Event)


async def _approvals(agent: _Agent, config: Path, tokens: dict[str, str]) -> str:
    """Steps 3-6: calls held until approvers decide from another process. Returns a correlation id."""
    cfg = str(config)

    async def cli(*args: str, who: str | None = None) -> None:
        token = (who, tokens[who]) if who else None
        await anyio.to_thread.run_sync(lambda: _cli(*args, "--config", cfg, token=token))

    async with agent.session() as gate, anyio.create_task_group() as tg:

        async def held(name: str, arguments: dict[str, Any], box: _Answer) -> None:
            box.result = await gate.call_tool(name, arguments)
            box.done.set()

        async def hold(name: str, arguments: dict[str, Any]) -> tuple[ApprovalRequest, _Answer]:
            _say(f"   agent calls {name} {arguments}   (the call waits)")
            box = _Answer()
            tg.start_soon(held, name, arguments, box)
            return await _wait_for_request(config, name), box

        async def outcome(box: _Answer) -> types.CallToolResult:
            with anyio.fail_after(60):
                await box.done.wait()
            assert box.result is not None
            _say("   the agent's call returns:")
            _show(box.result)
            return box.result

        _step(3, "A high-risk call is held until an eligible approver approves that exact call")
        request, box = await hold("notes__write_note", {"name": "plan", "text": "ship on Friday"})
        await cli("pending", who="bob")
        await cli("approve", request.id, "--note", "fine, it is a new note", who="bob")
        await outcome(box)

        _step(4, "Nobody approves their own call: alice is an approver, but the agent acts for her")
        second, box = await hold("notes__write_note", {"name": "welcome", "text": "gone"})
        await cli("approve", second.id, who="alice")

        _step(5, "A denial ends the request; the agent gets the approver's reason")
        await cli("deny", second.id, "--reason", "welcome is kept as it is", who="carol")
        await outcome(box)

        _step(6, "A critical call (deleting an archived note) needs two distinct approvers from security")
        critical, box = await hold("notes__delete_note", {"name": "archive/2025"})
        await cli("approve", critical.id, who="bob")
        await cli("approve", critical.id, who="carol")
        await cli("approve", critical.id, who="dave")
        await outcome(box)
        tg.cancel_scope.cancel()
    return request.correlation_id


async def _wait_for_request(config: Path, name: str) -> ApprovalRequest:
    server, _, tool = name.partition("__")
    loaded = load_config(config, os.environ)
    with anyio.fail_after(60):
        while True:
            if gate_db(loaded.data_dir).exists():
                async with runtime.read_gate_store(loaded) as store:
                    found = await store.read(lambda tx: tx.requests(states=("pending",)))
                for request in found:
                    if (request.binding.server, request.binding.tool) == (server, tool):
                        return request
            await anyio.sleep(0.05)
