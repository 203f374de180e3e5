"""Helpers our own tests use (and users' tests can): write a gate.toml, run a real gate in memory
(`running_gate(config, store=MemoryStore())` keeps even its state in memory)."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import anyio

from mcp_gate import runtime
from mcp_gate.clock import Clock
from mcp_gate.config import GateConfig, load_config
from mcp_gate.metrics import GateMetrics
from mcp_gate.server import FrontServer
from mcp_gate.storage.base import Store
from mcp_gate.storage.memory import MemoryStore

__all__ = [
    "EXAMPLES",
    "NOTES_MANIFEST",
    "NOTES_SERVER",
    "FakeClock",
    "MemoryStore",
    "WaitTimeout",
    "approver_table",
    "eventually",
    "notes_server_table",
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
    startup_timeout: float = 60.0,
    metrics: GateMetrics | None = None,
) -> AsyncIterator[FrontServer]:
    """A real gate with its downstreams connected; connect `mcp.Client(front.server)` to it."""
    if isinstance(config, Path):
        config = load_config(config, os.environ)
    async with runtime.open_gate(
        config, clock=clock, store=store, startup_timeout=startup_timeout, metrics=metrics
    ) as gate:
        yield FrontServer(gate)
