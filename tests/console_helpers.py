"""A real gate with the console on its admin listener, and an HTTP client that logs in like a browser."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import mcp_types as types
from mcp import Client

from mcp_gate import runtime
from mcp_gate.approvals import ApprovalRequest
from mcp_gate.console import build_console
from mcp_gate.health import Probes, serve_admin
from mcp_gate.server import FrontServer
from mcp_gate.storage.sqlite import SQLiteStore
from mcp_gate.testing import (
    NOTES_MANIFEST,
    approver_table,
    eventually,
    notes_server,
    notes_server_table,
    running_gate,
    within,
    write_config,
)

APPROVERS = {
    "bob": approver_table("bob@example.com", ["sre"], "tok-bob"),
    "carol": approver_table("carol@example.com", ["security"], "tok-carol"),
    "alice": approver_table("alice@example.com", ["sre"], "tok-alice"),  # the requester's owner
    "frank": approver_table("frank@example.com", ["finance"], "tok-frank"),
}
TIERS = {
    "high": {"approvals": 1, "groups": ["sre", "security"]},
    "critical": {"approvals": 2, "groups": ["sre", "security"]},
}
CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')


def make_config(tmp_path: Path, *, console: str = "", hold_seconds: float = 30) -> Path:
    return write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        approvers=APPROVERS,
        tiers=TIERS,
        approvals={"hold_seconds": hold_seconds},
        extra=f"[console]\n{console}\n",
    )


@dataclass
class Gate:
    front: FrontServer
    agent: Client
    base: str  # http://127.0.0.1:PORT
    config: Path
    tg: anyio.abc.TaskGroup

    async def hold(self, name: str, args: dict[str, Any]) -> HeldCall:
        """Start an agent call in the background and return once its approval request exists."""
        engine = self.front.gateway.engine
        known = {r.id for r in await engine.pending()}
        held = HeldCall()

        async def call() -> None:
            held.result = await self.agent.call_tool(name, args)
            held.done.set()

        self.tg.start_soon(call)

        async def fresh() -> list[ApprovalRequest]:
            return [r for r in await engine.pending() if r.id not in known]

        held.request = (await eventually(fresh, what="a new pending approval request"))[0]
        return held

    async def evidence(self) -> list[dict[str, Any]]:
        async with await SQLiteStore.open(self.config.parent / "data" / "gate.db") as store:
            return [dict(r.body) for r in await store.records()]


@dataclass
class HeldCall:
    request: ApprovalRequest = field(init=False)
    done: anyio.Event = field(default_factory=anyio.Event)
    result: types.CallToolResult | None = None

    async def outcome(self) -> types.CallToolResult:
        await within(self.done.wait(), what=f"the held call of request {self.request.id} to return")
        assert self.result is not None
        return self.result


def text_of(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


@asynccontextmanager
async def gate_with_console(config: Path) -> AsyncIterator[Gate]:
    notes = notes_server(config.parent.parent / "notes")
    async with running_gate(config, servers={"notes": notes}) as front, anyio.create_task_group() as tg:
        gate = front.gateway
        report = partial(runtime.evidence_report, gate.config)
        console = build_console(gate.engine, gate.config, runtime.console_key(gate.config), report=report)
        port = await tg.start(partial(serve_admin, Probes(gate), "127.0.0.1", 0, console=console))
        async with Client(front.server, mode="legacy") as agent, anyio.create_task_group() as calls:
            yield Gate(front, agent, f"http://127.0.0.1:{port}", config, calls)
            calls.cancel_scope.cancel()  # calls still held end before the agent's connection
        tg.cancel_scope.cancel()


class Browserless:
    """An HTTP client that keeps cookies and reads CSRF tokens from pages, as a browser would."""

    def __init__(self, base: str) -> None:
        self.http = httpx2.AsyncClient(base_url=base, timeout=30, follow_redirects=False)
        self.csrf: str | None = None

    async def __aenter__(self) -> Browserless:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def get(self, path: str) -> httpx2.Response:
        response = await self.http.get(path)
        found = CSRF.search(response.text)
        if found:
            self.csrf = found.group(1)
        return response

    async def post(self, path: str, data: dict[str, str], *, csrf: bool = True) -> httpx2.Response:
        body = dict(data)
        if csrf and self.csrf is not None:
            body.setdefault("csrf", self.csrf)
        return await self.http.post(path, data=body)

    async def login(self, token: str) -> httpx2.Response:
        await self.get("/console/login")
        response = await self.post("/console/login/token", {"token": token})
        assert response.status_code == 303, response.text
        await self.get("/console/pending")
        return response
