"""Shared set-up of the Teams tests: a gate before the notes server, a fake Bot Framework, the channel."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import Client

from mcp_gate.approvals import ApprovalRequest
from mcp_gate.channels.teams import MESSAGES_PATH, TeamsChannel, TeamsSecrets
from mcp_gate.clock import Clock
from mcp_gate.config import GateConfig, load_config
from mcp_gate.fake_teams import FakeTeams
from mcp_gate.gateway import Gateway
from mcp_gate.testing import (
    NOTES_MANIFEST,
    approver_table,
    eventually,
    notes_server_table,
    running_gate,
    write_config,
)

CONVERSATION = "19:approvals@thread.tacv2"
BOB = "b0b00000-0000-4000-8000-000000000001"
CAROL = "ca401000-0000-4000-8000-000000000002"
DAVE = "da4e0000-0000-4000-8000-000000000003"
ALICE = "a11ce000-0000-4000-8000-000000000004"  # the requester's owner, as an approver
FRANK = "f4a4c000-0000-4000-8000-000000000005"  # an approver of another group
EVE = "e4e00000-0000-4000-8000-000000000006"  # in the tenant, mapped to no approver
GINA = "6a4a0000-0000-4000-8000-000000000007"  # an approver mapped by her email, not her object id

APPROVERS = {
    "bob": {**approver_table("bob@example.com", ["sre"], "tok-bob"), "teams_user": BOB},
    "carol": {**approver_table("carol@example.com", ["security", "sre"], "tok-carol"), "teams_user": CAROL},
    "dave": {**approver_table("dave@example.com", ["security"], "tok-dave"), "teams_user": DAVE},
    "alice": {
        **approver_table("alice@corp.example", ["sre", "security"], "tok-alice"),
        "aliases": ["alice@example.com"],
        "teams_user": [ALICE],
    },
    "frank": {**approver_table("frank@example.com", ["finance"], "tok-frank"), "teams_user": FRANK},
    "gina": approver_table("gina@example.com", ["sre"], "tok-gina"),
}
TIERS = {
    "high": {"approvals": 1, "groups": ["sre", "security"]},
    "critical": {"approvals": 2, "groups": ["security"]},
}
PASSWORD_ENV = "TEST_TEAMS_PASSWORD"


def teams_table(fake: FakeTeams, **extra: str) -> str:
    values = {
        "app_id": fake.app_id,
        "tenant_id": fake.tenant_id,
        "app_password_env": PASSWORD_ENV,
        "service_url": fake.service_url,
        "conversation": CONVERSATION,
        "listen": "127.0.0.1:0",
        "openid_metadata": fake.metadata_url,
        "token_url": fake.token_url,
        **extra,
    }
    return "[channels.teams]\n" + "".join(f'{k} = "{v}"\n' for k, v in values.items())


def make_config(
    tmp_path: Path, fake: FakeTeams, *, tail: str = "", tiers: dict[str, Any] | None = None, **approvals: Any
) -> Path:
    return write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        approvers=APPROVERS,
        tiers=tiers or TIERS,
        approvals={"hold_seconds": 60, "progress_seconds": 0.5, **approvals},
        extra=teams_table(fake) + tail,
    )


def env(fake: FakeTeams) -> dict[str, str]:
    return {PASSWORD_ENV: fake.app_password}


def card_text(card: dict[str, Any]) -> str:
    """Every piece of text a card shows, joined."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("text", "title", "label"):
                if isinstance(node.get(key), str):
                    found.append(node[key])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(card.get("body"))
    return "\n".join(found)


def verbs(card: dict[str, Any]) -> list[str]:
    return [a["verb"] for a in card.get("actions", []) if a["type"] == "Action.Execute"]


@dataclass
class TeamsGate:
    fake: FakeTeams
    config: GateConfig
    gate: Gateway
    channel: TeamsChannel
    agent: Client
    tg: anyio.abc.TaskGroup
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}{MESSAGES_PATH}"

    def call(self, name: str, args: dict[str, Any]) -> list[types.CallToolResult]:
        box: list[types.CallToolResult] = []

        async def run() -> None:
            box.append(await self.agent.call_tool(name, args))

        self.tg.start_soon(run)
        return box

    async def held(self, count: int = 1) -> ApprovalRequest:
        async def enough() -> list[ApprovalRequest] | None:
            pending = await self.gate.engine.pending()
            return pending if len(pending) >= count else None

        pending = await eventually(enough, what=f"{count} pending approval request(s)")
        return pending[-1]

    async def posted(self, request_id: str) -> tuple[str, str, dict[str, Any]]:
        found: tuple[str, str, dict[str, Any]] = await self.fake.wait_for(
            lambda: self.fake.card_for(request_id)
        )
        return found

    async def showing(self, request_id: str, text: str) -> dict[str, Any]:
        def card() -> dict[str, Any] | None:
            found = self.fake.card_for(request_id)
            return found[2] if found is not None and text in card_text(found[2]) else None

        shown: dict[str, Any] = await self.fake.wait_for(card)
        return shown

    async def send(self, activity: dict[str, Any], token: str | None = None) -> httpx2.Response:
        """POST an activity to the gate's messaging endpoint as the Bot Connector does."""
        token = self.fake.token() if token is None else token
        headers = {"authorization": f"Bearer {token}"} if token else {}
        async with httpx2.AsyncClient(timeout=20) as client:
            return await client.post(self.endpoint, json=activity, headers=headers)

    async def click(self, user: str, verb: str, request_id: str, **data: Any) -> dict[str, Any]:
        """An Action.Execute click on the request's card; the gate's invoke response body."""
        response = await self.send(self.fake.invoke(user, verb, {"request_id": request_id, **data}))
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    async def records(self) -> list[dict[str, Any]]:
        return [dict(r.body) for r in await self.gate.store.records()]

    async def wait_record(
        self, predicate: Callable[[dict[str, Any]], bool], what: str = "a matching evidence record"
    ) -> dict[str, Any]:
        async def found() -> dict[str, Any] | None:
            return next((r for r in await self.records() if predicate(r)), None)

        return await eventually(found, what=what, interval=0.02)


@asynccontextmanager
async def teams_gate(
    tmp_path: Path,
    *,
    fake: FakeTeams | None = None,
    clock: Clock | None = None,
    tail: str = "",
    tiers: dict[str, Any] | None = None,
    **approvals: Any,
) -> AsyncIterator[TeamsGate]:
    fake = fake or FakeTeams(conversations={CONVERSATION})
    with fake.running():
        path = make_config(tmp_path, fake, tail=tail, tiers=tiers, **approvals)
        config = load_config(path, env(fake))
        async with (
            running_gate(config, clock=clock) as front,
            Client(front.server, mode="legacy") as agent,
            anyio.create_task_group() as tg,
        ):
            channel = TeamsChannel(
                front.gateway, TeamsSecrets.read(config, env(fake)), backoff=0.05, max_backoff=0.5, poll=0.02
            )
            port = await tg.start(channel.run)
            yield TeamsGate(fake, config, front.gateway, channel, agent, tg, port)
            tg.cancel_scope.cancel()
