"""Shared set-up of the Slack tests: a gate in front of the notes server, a fake Slack, the channel."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp import Client

from mcp_gate.approvals import ApprovalRequest
from mcp_gate.channels.slack import SlackChannel, SlackSecrets
from mcp_gate.clock import Clock
from mcp_gate.config import GateConfig, load_config
from mcp_gate.fake_slack import FakeSlack
from mcp_gate.gateway import Gateway
from mcp_gate.storage.sqlite import SQLiteStore
from mcp_gate.testing import (
    NOTES_MANIFEST,
    approver_table,
    eventually,
    notes_server,
    notes_server_table,
    running_gate,
    write_config,
)

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
ENV = {"TEST_SLACK_BOT": "xoxb-fake-bot-token", "TEST_SLACK_APP": "xapp-fake-app-token"}

APPROVERS = {
    "bob": {**approver_table("bob@example.com", ["sre"], "tok-bob"), "slack_user": "U0BOB"},
    "carol": approver_table("carol@example.com", ["security", "sre"], "tok-carol"),  # mapped by email
    "dave": {**approver_table("dave@example.com", ["security"], "tok-dave"), "slack_user": "U0DAVE"},
    # The requester's owner (alice@example.com) as an approver under her corp account.
    "alice": {
        **approver_table("alice@corp.example", ["sre", "security"], "tok-alice"),
        "aliases": ["alice@example.com"],
        "slack_user": ["U0ALICE"],
    },
    "frank": {**approver_table("frank@example.com", ["finance"], "tok-frank"), "slack_user": "U0FRANK"},
}
TIERS = {
    "high": {"approvals": 1, "groups": ["sre", "security"]},
    "critical": {"approvals": 2, "groups": ["security"]},
}


def fake_slack() -> FakeSlack:
    fake = FakeSlack(channels={"C0APPROVE", "C0CRIT"})
    fake.add_user("U0BOB", "bob@example.com")
    fake.add_user("U0CAROL", "Carol@Example.com")
    fake.add_user("U0DAVE", "dave@example.com")
    fake.add_user("U0ALICE", "alice@corp.example")
    fake.add_user("U0ALICE2", "alice@example.com")  # her second Slack account, not configured anywhere
    fake.add_user("U0FRANK", "frank@example.com")
    fake.add_user("U0EVE", "eve@example.com")  # in the workspace, not an approver
    fake.add_user("U0BOT", "bot@example.com", is_bot=True)
    fake.add_user("U0GUEST", "carol@example.com", team_id="T0OTHER")  # Slack Connect: another workspace
    return fake


def slack_table(fake: FakeSlack, *, mode: str = "socket", **extra: str) -> str:
    lines = [
        "[slack]",
        f'team_id = "{fake.team_id}"',
        'channel = "C0APPROVE"',
        f'api_url = "{fake.api_url}"',
        'bot_token_env = "TEST_SLACK_BOT"',
        f'mode = "{mode}"',
    ]
    if mode == "socket":
        lines.append('app_token_env = "TEST_SLACK_APP"')
    else:
        lines += ['signing_secret_env = "TEST_SLACK_SECRET"', 'listen = "127.0.0.1:0"']
    lines += [f'{k} = "{v}"' for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def make_config(
    tmp_path: Path, fake: FakeSlack, *, mode: str = "socket", tail: str = "", **approvals: Any
) -> Path:
    return write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        approvers=APPROVERS,
        tiers=TIERS,
        approvals={"hold_seconds": 60, "progress_seconds": 0.5, **approvals},
        extra=slack_table(fake, mode=mode) + tail,
    )


def env() -> dict[str, str]:
    return {**ENV, "TEST_SLACK_SECRET": SIGNING_SECRET}


@dataclass
class SlackGate:
    fake: FakeSlack
    config: GateConfig
    gate: Gateway
    channel: SlackChannel
    agent: Client
    tg: anyio.abc.TaskGroup
    port: int | None

    def call(self, name: str, args: dict[str, Any]) -> list[types.CallToolResult]:
        """Start an agent call in the background; its result lands in the returned list."""
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
            lambda: self.fake.message_for(request_id)
        )
        return found

    async def showing(self, request_id: str, text: str) -> dict[str, Any]:
        """Wait until the request's message shows `text` in its status line; return the message."""

        def status() -> dict[str, Any] | None:
            found = self.fake.message_for(request_id)
            if found is None:
                return None
            return found[2] if text in status_line(found[2]) else None

        message: dict[str, Any] = await self.fake.wait_for(status)
        return message

    async def click(self, user: str, action: str, request_id: str, **kw: Any) -> str:
        """A Socket Mode click; returns the envelope id once the gate acknowledged it."""
        envelope = self.fake.send_envelope(self.fake.block_actions(user, action, request_id, **kw))
        await self.fake.wait_for(lambda: self.fake.acked(envelope))
        return envelope

    async def records(self) -> list[dict[str, Any]]:
        return [dict(r.body) for r in await self.gate.store.records()]

    async def wait_record(
        self, predicate: Callable[[dict[str, Any]], bool], what: str = "a matching evidence record"
    ) -> dict[str, Any]:
        async def found() -> dict[str, Any] | None:
            return next((r for r in await self.records() if predicate(r)), None)

        return await eventually(found, what=what, interval=0.02)


def status_line(message: dict[str, Any]) -> str:
    for block in message["blocks"]:
        if str(block.get("block_id", "")).startswith("status:"):
            return str(block["elements"][0]["text"])
    return ""


def buttons(message: dict[str, Any]) -> list[str]:
    return [e["action_id"] for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]]


@asynccontextmanager
async def slack_gate(
    tmp_path: Path,
    *,
    fake: FakeSlack | None = None,
    mode: str = "socket",
    clock: Clock | None = None,
    mcp_mode: str = "legacy",
    tail: str = "",
    **approvals: Any,
) -> AsyncIterator[SlackGate]:
    fake = fake or fake_slack()
    with fake.running():
        path = make_config(tmp_path, fake, mode=mode, tail=tail, **approvals)
        config = load_config(path, env())
        notes = notes_server(tmp_path / "notes")  # in this process: these tests are about Slack
        async with (
            running_gate(config, clock=clock, servers={"notes": notes}) as front,
            Client(front.server, mode=mcp_mode) as agent,
            anyio.create_task_group() as tg,
        ):
            channel = SlackChannel(
                front.gateway, SlackSecrets.read(config, env()), backoff=0.05, max_backoff=0.5, poll=0.02
            )
            port = await tg.start(channel.run)
            if mode == "socket":
                await fake.wait_for(lambda: fake.connected)
            yield SlackGate(fake, config, front.gateway, channel, agent, tg, port)
            tg.cancel_scope.cancel()


async def stored_records(config: GateConfig) -> list[dict[str, Any]]:
    async with await SQLiteStore.open(config.data_dir / "gate.db") as store:
        return [dict(r.body) for r in await store.records()]
