"""The person at the agent confirms medium calls and justifies high ones, in both protocol eras."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
import pytest
from mcp import Client

from mcp_gate.desk import request_view
from mcp_gate.gateway import Gateway
from mcp_gate.server import FrontServer
from mcp_gate.storage.sqlite import SQLiteStore
from mcp_gate.testing import (
    NOTES_MANIFEST,
    MemoryStore,
    ScriptedAsker,
    accept,
    approver_table,
    eventually,
    justify,
    notes_server,
    notes_server_table,
    running_gate,
    write_config,
)

pytestmark = pytest.mark.anyio

MODES = ["legacy", "auto"]
APPEND = {"name": "todo", "text": "buy milk"}
WRITE = {"name": "plan", "text": "ship it"}


def make_config(
    tmp_path: Path,
    *,
    tiers: dict[str, Any] | None = None,
    hold_seconds: float = 30,
) -> Path:
    return write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        approvers={"bob": approver_table("bob@example.com", [], "tok-bob")},
        tiers=tiers,
        approvals={"hold_seconds": hold_seconds, "progress_seconds": 0.05},
    )


def text_of(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def records(config: Path) -> list[dict[str, Any]]:
    async with await SQLiteStore.open(config.parent / "data" / "gate.db") as store:
        return [dict(r.body) for r in await store.records()]


@asynccontextmanager
async def gate(config: Path, **options: Any) -> AsyncIterator[FrontServer]:
    """The gate of `config` with the notes server in this process (gate.toml still names the stdio
    one, so the CLI beside it computes the same policy)."""
    notes = notes_server(config.parent.parent / "notes")
    async with running_gate(config, servers={"notes": notes}, **options) as front:
        yield front


def answer(action: str, content: dict[str, Any] | None = None) -> types.ElicitResult:
    return types.ElicitResult(action=action, content=content)  # type: ignore[arg-type]


def story_of(rows: list[dict[str, Any]], correlation_id: str) -> list[str]:
    return [r["event_type"] for r in rows if r["correlation_id"] == correlation_id]


@pytest.mark.parametrize("mode", MODES)
async def test_a_confirmed_medium_call_runs_once_and_the_owner_is_recorded_as_the_decider(
    tmp_path: Path, mode: str
) -> None:
    config = make_config(tmp_path)
    person = ScriptedAsker(accept(confirm=True, reason="on my list"))
    async with gate(config) as front, person.client(front.server, mode=mode) as agent:
        result = await agent.call_tool("notes__append_note", APPEND)
    assert not result.is_error and text_of(result) == "appended to todo"
    assert (tmp_path / "notes" / "todo").read_text() == "buy milk\n"
    [question] = person.asked
    assert isinstance(question, types.ElicitRequestFormParams)
    assert "notes__append_note" in question.message and "Tier medium" in question.message
    assert "buy milk" in question.message and "test-agent" in question.message
    assert set(question.requested_schema["properties"]) == {"confirm", "reason"}
    rows = await records(config)
    [decided] = [r for r in rows if r["event_type"] == "confirm.decided"]
    assert decided["channel"] == "elicitation" and decided["decider"] == "alice@example.com"
    assert decided["verdict"] == "approve" and decided["reason"] == "on my list"
    expected = ["call.requested", "policy.decided", "confirm.decided", "call.executed"]
    if mode == "auto":  # the retry is a second tools/call, told as part of the same story
        expected = ["call.requested", "policy.decided", "confirm.asked", "call.resumed", "confirm.decided",
                    "call.executed"]  # fmt: skip
        assert decided["era"] == "2026-07-28"
    assert story_of(rows, decided["correlation_id"]) == expected
    assert [r["event_type"] for r in rows].count("call.executed") == 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("action", "content", "says"),
    [
        ("decline", None, "alice@example.com declined to confirm it when asked in their client (no reason"),
        ("accept", {"confirm": False, "reason": "no"}, "when asked in their client: no."),
        ("cancel", None, "dismissed or not answered in time (cancelled)"),
        ("accept", {"confirm": "yes"}, "declined to confirm it"),  # only a real true is a yes
    ],
)  # fmt: skip
async def test_anything_but_a_yes_refuses_the_call_and_is_recorded_as_a_decision(
    tmp_path: Path, mode: str, action: str, content: dict[str, Any] | None, says: str
) -> None:
    config = make_config(tmp_path)
    person = ScriptedAsker(answer(action, content))
    async with gate(config) as front, person.client(front.server, mode=mode) as agent:
        result = await agent.call_tool("notes__append_note", APPEND)
    assert result.is_error and says in text_of(result)
    assert not (tmp_path / "notes" / "todo").exists()
    rows = await records(config)
    [decided] = [r for r in rows if r["event_type"] == "confirm.decided"]
    assert decided["verdict"] == "deny" and decided["channel"] == "elicitation"
    assert story_of(rows, decided["correlation_id"])[-2:] == ["confirm.decided", "call.refused"]
    assert "call.executed" not in [r["event_type"] for r in rows]


async def in_background(
    tg: anyio.abc.TaskGroup, call: Callable[[], Awaitable[types.CallToolResult]]
) -> list[types.CallToolResult]:
    box: list[types.CallToolResult] = []

    async def run() -> None:
        box.append(await call())

    tg.start_soon(run)
    return box


async def wait_for_request(gate: Gateway) -> Any:
    return (await eventually(gate.engine.pending, what="a pending approval request"))[-1]


@pytest.mark.parametrize("mode", MODES)
async def test_a_client_without_elicitation_has_its_medium_call_wait_for_an_approver(
    tmp_path: Path, mode: str
) -> None:
    config = make_config(tmp_path, hold_seconds=0.3)
    async with gate(config, store=MemoryStore()) as front, Client(front.server, mode=mode) as agent:
        waiting = await agent.call_tool("notes__append_note", APPEND)
        assert waiting.is_error and "cannot be asked to confirm notes__append_note" in text_of(waiting)
        assert "waits for an approver" in text_of(waiting) and "1 approval" in text_of(waiting)
        request = await wait_for_request(front.gateway)
        assert request.tier == "medium" and request.required == 1
        await front.gateway.engine.decide(
            request.id, front.gateway.config.approvers["bob"], "approve", channel="test"
        )
        result = await agent.call_tool("notes__append_note", APPEND)
    assert not result.is_error and (tmp_path / "notes" / "todo").read_text() == "buy milk\n"


@pytest.mark.parametrize("mode", MODES)
async def test_a_client_without_elicitation_is_refused_a_medium_call_when_the_fallback_is_deny(
    tmp_path: Path, mode: str
) -> None:
    config = make_config(tmp_path, tiers={"medium_fallback": "deny"})
    async with gate(config) as front, Client(front.server, mode=mode) as agent:
        result = await agent.call_tool("notes__append_note", APPEND)
        assert await front.gateway.engine.pending() == []
    assert result.is_error and 'medium_fallback = "deny"' in text_of(result)
    assert "declared no MCP elicitation support" in text_of(result)
    assert not (tmp_path / "notes" / "todo").exists()
    calls = [r["event_type"] for r in await records(config) if not r["event_type"].startswith("gate.")]
    assert calls[-1] == "call.refused"


@pytest.mark.parametrize("mode", MODES)
async def test_a_justification_is_asked_first_and_shown_to_approvers_but_never_approves_the_call(
    tmp_path: Path, mode: str
) -> None:
    config = make_config(tmp_path, tiers={"high": {"approvals": 1, "ask_justification": True}})
    # The person at the agent says yes to everything; a high call still needs somebody else.
    person = ScriptedAsker(accept(justification="the plan\x1b[31m is outdated", confirm=True))
    async with gate(config) as front, person.client(front.server, mode=mode) as agent:
        async with anyio.create_task_group() as tg:
            box = await in_background(tg, lambda: agent.call_tool("notes__write_note", WRITE))
            request = await wait_for_request(front.gateway)
            assert not (tmp_path / "notes" / "plan").exists()
            assert request.justification == "the plan[31m is outdated"  # control characters dropped
            view = request_view(request, front.gateway.clock.now())
            assert view["justification"] == "the plan[31m is outdated"
            await front.gateway.engine.decide(
                request.id, front.gateway.config.approvers["bob"], "approve", channel="test"
            )
        [result] = box
    assert not result.is_error and (tmp_path / "notes" / "plan").read_text() == "ship it"
    [question] = person.asked
    assert isinstance(question, types.ElicitRequestFormParams)
    assert "Why is it needed?" in question.message and "someone other than you" in question.message
    assert list(question.requested_schema["properties"]) == ["justification"]
    rows = await records(config)
    [requested] = [r for r in rows if r["event_type"] == "approval.requested"]
    assert requested["justification"] == "the plan[31m is outdated"
    [decided] = [r for r in rows if r["event_type"] == "confirm.decided"]
    assert decided["kind"] == "justification" and decided["outcome"] == "justified"
    assert [r["event_type"] for r in rows if r["event_type"].startswith("approval.")] == [
        "approval.requested",
        "approval.decided",
    ]


@pytest.mark.parametrize("mode", MODES)
async def test_an_identical_call_joining_a_justified_request_is_not_asked_again(
    tmp_path: Path, mode: str
) -> None:
    config = make_config(
        tmp_path, tiers={"high": {"approvals": 1, "ask_justification": True}}, hold_seconds=0.3
    )
    # Asked once only: the script has one answer, and a second question would fail the test.
    person = ScriptedAsker(justify("needed for the release"))
    async with gate(config) as front, person.client(front.server, mode=mode) as agent:
        first = await agent.call_tool("notes__write_note", WRITE)
        assert first.is_error and "was not run yet" in text_of(first)
        request = await wait_for_request(front.gateway)
        await front.gateway.engine.decide(
            request.id, front.gateway.config.approvers["bob"], "approve", channel="test"
        )
        second = await agent.call_tool("notes__write_note", WRITE)
    assert not second.is_error and text_of(second) == "wrote plan"
    assert len(person.asked) == 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("action", ["decline", "cancel"])
async def test_declining_to_justify_cancels_the_request_before_any_approver_sees_it(
    tmp_path: Path, mode: str, action: str
) -> None:
    config = make_config(tmp_path, tiers={"high": {"approvals": 1, "ask_justification": True}})
    async with gate(config) as front, ScriptedAsker(answer(action)).client(front.server, mode=mode) as agent:
        result = await agent.call_tool("notes__write_note", WRITE)
        assert await front.gateway.engine.pending() == []
    assert result.is_error and "notes__write_note was not sent to approvers" in text_of(result)
    rows = await records(config)
    assert "approval.requested" not in [r["event_type"] for r in rows]
    [decided] = [r for r in rows if r["event_type"] == "confirm.decided"]
    assert decided["kind"] == "justification" and decided["verdict"] == "deny"


async def test_without_ask_justification_a_high_call_goes_straight_to_approvers(tmp_path: Path) -> None:
    config = make_config(tmp_path, hold_seconds=0.2)
    person = ScriptedAsker()  # expects no question: one would fail the test
    async with gate(config) as front, person.client(front.server, mode="legacy") as agent:
        result = await agent.call_tool("notes__write_note", WRITE)
        [request] = await front.gateway.engine.pending()
    assert result.is_error and person.asked == [] and request.justification is None


async def test_approvers_read_the_justification_in_the_cli_pending_and_show_output(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, tiers={"high": {"approvals": 1, "ask_justification": True}}, hold_seconds=0.2
    )
    person = ScriptedAsker(justify("release notes are due today"))
    env = {k: v for k, v in os.environ.items() if k not in ("MCP_GATE_CONFIG", "MCP_GATE_TOKEN")}
    env["MCP_GATE_TOKEN"] = "tok-bob"

    async def cli(*args: str) -> str:
        done = await anyio.run_process(
            [sys.executable, "-m", "mcp_gate", *args, "--config", str(config)], env=env, check=False
        )
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode()

    async with gate(config) as front, person.client(front.server) as agent:
        held = await agent.call_tool("notes__write_note", WRITE)
        [request] = await front.gateway.engine.pending()
        pending = await cli("pending")
        shown = await cli("show", request.id)
        as_json = json.loads(await cli("show", request.id, "--json"))
    assert held.is_error and "was not run yet" in text_of(held)
    assert "requester says: release notes are due today" in pending
    assert "requester's justification (their own words): release notes are due today" in shown
    assert as_json["justification"] == "release notes are due today"
