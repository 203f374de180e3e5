"""Helpers our own tests use (and users' tests can): write a gate.toml, run a real gate in memory
(`running_gate(config, store=MemoryStore(), servers={"notes": in_memory_server({...})})` keeps its
state and its downstreams in this process), answer its questions from a script (`ScriptedAsker`),
move time by hand (`FakeClock`) and wait for things without sleeping (`eventually`, `within`)."""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import inspect
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import anyio
import mcp_types as types
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.server import Server
from mcp.server.mcpserver import Context, MCPServer

from mcp_gate import runtime
from mcp_gate.clock import Clock
from mcp_gate.config import GateConfig, load_config
from mcp_gate.downstream import InProcessServer
from mcp_gate.metrics import GateMetrics
from mcp_gate.questions import CONFIRM_KEY, JUSTIFY_KEY
from mcp_gate.server import FrontServer
from mcp_gate.storage.base import Store
from mcp_gate.storage.memory import MemoryStore

__all__ = [
    "EXAMPLES",
    "NOTES_MANIFEST",
    "NOTES_SERVER",
    "FakeClock",
    "InMemoryServer",
    "MemoryStore",
    "ScriptError",
    "ScriptedAsker",
    "ToolCall",
    "WaitTimeout",
    "accept",
    "approver_table",
    "cancel",
    "confirm",
    "decline",
    "eventually",
    "in_memory_server",
    "justify",
    "notes_server",
    "notes_server_table",
    "refuse",
    "running_gate",
    "within",
    "write_config",
]


T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A test waited past its deadline: the message says what for, and what it saw last."""


async def eventually(
    probe: Callable[[], T | Awaitable[T]], *, what: str, timeout: float = 20.0, interval: float = 0.01
) -> T:
    """Poll `probe` (plain or async) until it returns something truthy, and return that.

    After `timeout` seconds, WaitTimeout names `what` was awaited and the last value seen, so a
    stuck test says why instead of hanging."""
    last: Any = None
    try:
        with anyio.fail_after(timeout):
            while True:
                found = probe()
                last = await found if inspect.isawaitable(found) else found
                if last:
                    return last  # type: ignore[no-any-return]
                await anyio.sleep(interval)
    except TimeoutError:
        raise WaitTimeout(f"gave up after {timeout:g}s waiting for {what}; last saw {last!r:.300}") from None


async def within(awaitable: Awaitable[T], *, what: str, timeout: float = 20.0) -> T:
    """Await `awaitable` for at most `timeout` seconds; WaitTimeout naming `what` after that."""
    try:
        with anyio.fail_after(timeout):
            return await awaitable
    except TimeoutError:
        raise WaitTimeout(f"gave up after {timeout:g}s waiting for {what}") from None


class FakeClock:
    """A clock that moves only when told to: expiry tests without sleeps."""

    def __init__(self, start: datetime | None = None) -> None:
        self.moment = start or datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.moment

    def advance(self, **delta: float) -> None:
        self.moment += timedelta(**delta)


def approver_table(email: str, groups: list[str], token: str) -> dict[str, Any]:
    """An [approvers.NAME] table whose API token is `token`."""
    return {"email": email, "groups": groups, "token_sha256": hashlib.sha256(token.encode()).hexdigest()}


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NOTES_SERVER = EXAMPLES / "notes_server.py"
NOTES_MANIFEST = EXAMPLES / "tool_manifests" / "notes.toml"


def _toml_value(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def notes_server_table(notes_dir: Path, *, variant: str = "1", test_tools: bool = True) -> dict[str, Any]:
    """A [servers.*] table that runs the example notes server with this Python over stdio."""
    env = {"NOTES_DIR": str(notes_dir), "NOTES_VARIANT": variant}
    if test_tools:
        env["NOTES_TEST_TOOLS"] = "1"
    return {"command": sys.executable, "args": [str(NOTES_SERVER)], "env": env}


def write_config(
    directory: Path,
    *,
    servers: Mapping[str, Mapping[str, Any]],
    manifests: Mapping[str, str] | None = None,
    name: str = "test-gate",
    owner: str = "alice@example.com",
    approvers: Mapping[str, Mapping[str, Any]] | None = None,
    tiers: Mapping[str, Any] | None = None,
    approvals: Mapping[str, Any] | None = None,
    requester: Mapping[str, Any] | None = None,
    extra: str = "",
) -> Path:
    """Write gate.toml (and manifests, given as server -> TOML text) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest_dir = directory / "tool_manifests"
    manifest_dir.mkdir(exist_ok=True)
    for server, text in (manifests or {}).items():
        (manifest_dir / f"{server}.toml").write_text(text, encoding="utf-8")
    lines = [
        "[gate]",
        f"name = {json.dumps(name)}",
        'data_dir = "data"',
        'manifests = "tool_manifests"',
        "",
        "[requester]",
        'agent = "test-agent"',
        f"owner = {json.dumps(owner)}",
        *(f"{key} = {_toml_value(value)}" for key, value in (requester or {}).items()),
        "",
    ]
    tables: dict[str, Mapping[str, Any]] = {}
    if tiers:
        tables["tiers"] = tiers
    if approvals:
        tables["approvals"] = approvals
    tables |= {f"approvers.{name}": table for name, table in (approvers or {}).items()}
    for header, table in tables.items():
        lines.append(f"[{header}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())
        lines.append("")
    for server, table in servers.items():
        lines.append(f"[servers.{server}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())
        lines.append("")
    path = directory / "gate.toml"
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


@asynccontextmanager
async def running_gate(
    config: GateConfig | Path,
    *,
    clock: Clock | None = None,
    store: Store | None = None,
    servers: Mapping[str, InProcessServer] | None = None,
    startup_timeout: float = 60.0,
    metrics: GateMetrics | None = None,
) -> AsyncIterator[FrontServer]:
    """A real gate with its downstreams connected; connect `mcp.Client(front.server)` to it.

    `servers` are SDK servers in this process (`in_memory_server(...)`, `notes_server(...)`, or
    any `mcp.server.Server`/`MCPServer`), served under their names in place of the command or URL
    gate.toml gives them, or added to it: no subprocess, the gate's own connection path."""
    if isinstance(config, Path):
        config = load_config(config, os.environ)
    async with runtime.open_gate(
        config, clock=clock, store=store, servers=servers, startup_timeout=startup_timeout, metrics=metrics
    ) as gate:
        yield FrontServer(gate)


# -- the person at the agent ----------------------------------------------------------------------


def accept(**content: Any) -> types.ElicitResult:
    """The person fills the form in and submits it with `content`."""
    return types.ElicitResult(action="accept", content=content)


def decline() -> types.ElicitResult:
    """The person says no without filling the form in."""
    return types.ElicitResult(action="decline")


def cancel() -> types.ElicitResult:
    """The person dismisses the question (or lets it time out)."""
    return types.ElicitResult(action="cancel")


def confirm(reason: str | None = None) -> types.ElicitResult:
    """Yes to the gate's confirm question ("Run this call?"), with an optional reason."""
    return accept(**{CONFIRM_KEY: True}, **({"reason": reason} if reason is not None else {}))


def refuse(reason: str | None = None) -> types.ElicitResult:
    """No to the gate's confirm question, submitted through the form, with an optional reason."""
    return accept(**{CONFIRM_KEY: False}, **({"reason": reason} if reason is not None else {}))


def justify(text: str) -> types.ElicitResult:
    """An answer to the gate's justification question ("Why is this needed?")."""
    return accept(**{JUSTIFY_KEY: text})


class ScriptError(AssertionError):
    """The gate asked the person at the agent something other than the script says: one question
    too many, or fewer questions than the script answers."""


def _describe(params: types.ElicitRequestParams) -> str:
    message = " ".join(params.message.split())
    return repr(message if len(message) <= 400 else message[:397] + "...")


def _describe_answer(answer: types.ElicitResult) -> str:
    return answer.action + (f" {answer.content}" if answer.content else "")


class ScriptedAsker:
    """The person at the agent, answering the questions put to their client from a script, in order.

    Pass it as the SDK client's `elicitation_callback` (or connect with `asker.client(...)`, which
    also checks the script on a clean exit). Every question is kept in `asked`. A question past the
    end of the script raises ScriptError; the SDK may turn that into an error answer for the gate,
    so `check()` (run by `client()` on exit) raises it again where the test sees it. `always(answer)`
    answers every question alike; `ScriptedAsker()` expects no question at all."""

    def __init__(self, *answers: types.ElicitResult, forever: types.ElicitResult | None = None) -> None:
        self.asked: list[types.ElicitRequestParams] = []
        self._script: collections.deque[types.ElicitResult] = collections.deque(answers)
        self._scripted = len(answers)
        self._forever = forever
        self._overrun: ScriptError | None = None

    @classmethod
    def always(cls, answer: types.ElicitResult) -> ScriptedAsker:
        """Answer every question with `answer`, however many come."""
        return cls(forever=answer)

    @property
    def messages(self) -> list[str]:
        """The text of each question asked, in order."""
        return [params.message for params in self.asked]

    async def __call__(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult:
        self.asked.append(params)
        if self._script:
            return self._script.popleft()
        if self._forever is not None:
            return self._forever
        error = ScriptError(
            f"question {len(self.asked)} was not in the script, which answers {self._scripted}: "
            f"{_describe(params)}"
        )
        if self._overrun is None:
            self._overrun = error
        raise error

    def check(self) -> None:
        """ScriptError if a question came past the end of the script, or a scripted answer was left."""
        if self._overrun is not None:
            raise self._overrun
        if self._script:
            left = ", ".join(_describe_answer(answer) for answer in self._script)
            raise ScriptError(
                f"{len(self._script)} of {self._scripted} scripted answers were never asked for ({left}); "
                f"asked {len(self.asked)}: {[_describe(p) for p in self.asked]}"
            )

    @asynccontextmanager
    async def client(self, server: Any, **options: Any) -> AsyncIterator[Client]:
        """`mcp.Client(server, elicitation_callback=self, **options)`, checked on a clean exit."""
        try:
            async with Client(server, elicitation_callback=self, **options) as agent:
                yield agent
        except BaseException as exc:
            # Whatever the overrun caused (a refused call, an error out of the client's task
            # group), the script's own message is the one worth reading first.
            if self._overrun is not None:
                raise self._overrun from exc
            raise
        self.check()


# -- downstreams in this process ------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    """One call that reached an in-memory downstream: the tool and its arguments as received."""

    tool: str
    arguments: dict[str, Any]


class InMemoryServer(MCPServer):
    """A downstream MCP server made of Python functions, living in the test's process.

    `calls` lists every tool call that reached it, in order: what the gate let through."""

    def __init__(self, name: str) -> None:
        super().__init__(name, version="1.0")
        self.calls: list[ToolCall] = []

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> types.CallToolResult | types.InputRequiredResult:
        self.calls.append(ToolCall(name, dict(arguments)))
        return await super().call_tool(name, arguments, context)

    def called(self, tool: str) -> list[dict[str, Any]]:
        """The arguments of each call of `tool` that reached this server."""
        return [call.arguments for call in self.calls if call.tool == tool]


def in_memory_server(
    tools: Mapping[str, Callable[..., Any]],
    *,
    name: str = "in-memory",
    annotations: Mapping[str, types.ToolAnnotations | Mapping[str, Any]] | None = None,
) -> InMemoryServer:
    """A downstream serving each function in `tools` under its key, for `running_gate(servers=...)`.

    The SDK derives each tool's input schema from the function's signature and its description
    from the docstring; a parameter typed `mcp.server.mcpserver.Context` receives the request
    context (to elicit or report progress). `annotations` gives tools their hints, as
    `ToolAnnotations` or a mapping like `{"destructiveHint": True}`."""
    hints = dict(annotations or {})
    unknown = sorted(set(hints) - set(tools))
    if unknown:
        raise ValueError(f"annotations name tools the server does not have: {unknown}")
    server = InMemoryServer(name)
    for tool, fn in tools.items():
        given = hints.get(tool)
        annotated = given if isinstance(given, types.ToolAnnotations) or given is None else None
        if annotated is None and given is not None:
            annotated = types.ToolAnnotations.model_validate(dict(given))
        server.add_tool(fn, name=tool, annotations=annotated)
    return server


def _examples_module(path: Path) -> ModuleType:
    name = f"_mcp_gate_examples_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"{path}: cannot load it (the examples ship with the source tree)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def notes_server(
    notes_dir: Path, *, variant: str = "1", test_tools: bool = True, ask_tool: bool = False
) -> Server[Any]:
    """The example notes server (examples/notes_server.py) in this process: the same tools as
    `notes_server_table` runs over stdio, keeping its notes under `notes_dir`. Its `crash` tool
    fails the call here instead of ending the process, so a test of a dying server needs stdio."""
    built: Server[Any] = _examples_module(NOTES_SERVER).build_server(
        notes_dir, variant=variant, test_tools=test_tools, ask_tool=ask_tool, in_process=True
    )
    return built
