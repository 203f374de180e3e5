"""The gate in front of real downstream servers, driven by the SDK's client in both protocol eras."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import sys
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client

from mcp_gate.gateway import CORRELATION_META_KEY
from mcp_gate.server import FrontServer
from mcp_gate.storage.sqlite import SQLiteStore
from mcp_gate.testing import (
    NOTES_MANIFEST,
    NOTES_SERVER,
    approver_table,
    eventually,
    notes_server,
    notes_server_table,
    running_gate,
    within,
    write_config,
)

pytestmark = pytest.mark.anyio

MODES = ["legacy", "auto"]


def text_of(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


@pytest.fixture
def notes_config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        approvals={"hold_seconds": 0.3},
    )


def gate(config: Path, *, variant: str = "1", **options: Any) -> AbstractAsyncContextManager[FrontServer]:
    """`config`'s gate with the notes server in this process instead of over stdio."""
    notes = notes_server(config.parent.parent / "notes", variant=variant)
    return running_gate(config, servers={"notes": notes}, **options)


async def story(config_path: Path) -> list[dict[str, Any]]:
    async with await SQLiteStore.open(config_path.parent / "data" / "gate.db") as store:
        return [dict(r.body) for r in await store.records()]


@pytest.mark.parametrize("mode", MODES)
async def test_tools_are_namespaced_with_schemas_and_annotations_unchanged_and_blocked_tools_hidden(
    notes_config: Path, mode: str
) -> None:
    spec = importlib.util.spec_from_file_location("notes_server", NOTES_SERVER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    direct = {t.name: t for t in module.tools("1", True)}
    async with gate(notes_config) as front, Client(front.server, mode=mode) as agent:
        listed = {t.name: t for t in (await agent.list_tools()).tools}
    assert "notes__purge_notes" not in listed
    assert "notes__read_note" in listed and "notes__echo" in listed
    for name, tool in listed.items():
        original = direct[name.removeprefix("notes__")]
        assert tool.input_schema == original.input_schema
        assert tool.annotations == original.annotations
        assert tool.description == original.description
    assert listed["notes__read_note"].meta is not None
    assert listed["notes__read_note"].meta["io.github.mcp-gate/tier"] == "low"


@pytest.mark.parametrize("mode", MODES)
async def test_a_low_tier_call_runs_and_leaves_requested_decided_executed_evidence(
    notes_config: Path, mode: str
) -> None:
    async with gate(notes_config) as front, Client(front.server, mode=mode) as agent:
        result = await agent.call_tool("notes__echo", {"text": "hi"})
        assert not result.is_error
        assert text_of(result) == "hi"
        report = await front.gateway.store.verify()
    assert report.ok
    calls = [r for r in await story(notes_config) if r["event_type"].startswith(("call.", "policy."))]
    assert [r["event_type"] for r in calls] == ["call.requested", "policy.decided", "call.executed"]
    assert len({r["correlation_id"] for r in calls}) == 1
    assert calls[0]["requester"] == {"agent": "test-agent", "owner": "alice@example.com"}
    assert calls[1]["tier"] == "low"
    assert calls[2]["is_error"] is False and calls[2]["result_sha256"]


@pytest.mark.parametrize("mode", MODES)
async def test_a_high_tier_call_without_a_decision_comes_back_pending_with_its_tier_and_reason_and_never_runs(
    notes_config: Path, tmp_path: Path, mode: str
) -> None:
    async with gate(notes_config) as front, Client(front.server, mode=mode) as agent:
        result = await agent.call_tool("notes__write_note", {"name": "todo", "text": "x"})
        pending = await front.gateway.engine.pending()
    assert result.is_error
    message = text_of(result)
    assert "high" in message and "1 approval" in message and "replaces a note's whole text" in message
    assert len(pending) == 1 and pending[0].state == "pending"
    assert f"request {pending[0].id}" in message
    assert "Call again with the same arguments" in message
    assert not (tmp_path / "notes" / "todo").exists()
    assert result.meta is not None
    correlation_id = result.meta[CORRELATION_META_KEY]
    records = [r for r in await story(notes_config) if r["correlation_id"] == correlation_id]
    assert [r["event_type"] for r in records] == [
        "call.requested",
        "policy.decided",
        "approval.requested",
        "call.deferred",
    ]


async def test_an_argument_condition_raises_the_tier_for_matching_arguments_only(notes_config: Path) -> None:
    async with gate(notes_config) as front, Client(front.server, mode="legacy") as agent:
        archived = await agent.call_tool("notes__delete_note", {"name": "archive/2025"})
        plain = await agent.call_tool("notes__delete_note", {"name": "todo"})
    assert "critical" in text_of(archived) and "2 approvals" in text_of(archived)
    assert "high" in text_of(plain)


@pytest.mark.parametrize(
    ("name", "arguments", "expected"),
    [
        ("notes__nope", {}, "unknown tool"),
        ("nope", {}, "unknown tool"),
        ("notes__purge_notes", {}, "blocked by policy"),
        ("notes__echo", {}, "'text' is a required property"),
        ("notes__echo", {"text": 5}, "at /text: the value is not of type 'string'"),
        ("notes__read_note", {"name": "sk-LIVE-5ecret/../x!"}, "at /name: the value does not match"),
        ("notes__read_note", {"name": {"api_key": "sk-LIVE-5ecret"}}, "at /name: the value is not of type"),
        ("notes__echo", {"text": "x", "extra": 1}, "Additional properties"),
        ("notes__echo", {"text": "x" * 300_000}, "the limit is"),
    ],
)
async def test_bad_input_from_the_agent_gets_a_clear_tool_error_and_the_gate_keeps_serving(
    notes_config: Path, name: str, arguments: dict[str, Any], expected: str
) -> None:
    async with gate(notes_config) as front, Client(front.server, mode="legacy") as agent:
        bad = await agent.call_tool(name, arguments)
        good = await agent.call_tool("notes__echo", {"text": "still here"})
    assert bad.is_error and expected in text_of(bad)
    assert "sk-LIVE" not in text_of(bad)
    assert text_of(good) == "still here"
    calls = [r for r in await story(notes_config) if not r["event_type"].startswith("gate.")]
    assert calls[-1]["event_type"] == "call.executed"


async def test_a_downstream_that_dies_mid_call_fails_that_call_is_restarted_and_its_tools_come_back(
    notes_config: Path,
) -> None:
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with (
        running_gate(notes_config) as front,
        Client(front.server, mode="legacy", message_handler=on_message) as agent,
    ):
        first_pid_connects = front.gateway.downstreams["notes"].connects
        crashed = await agent.call_tool("notes__crash", {})
        assert crashed.is_error
        assert "connection closed" in text_of(crashed) and "not retried" in text_of(crashed)
        await within(changed.wait(), what="a tools/list_changed after the crash", timeout=30)
        await eventually(
            lambda: front.gateway.downstreams["notes"].state == "up" and front.gateway.offering.offered,
            what="the respawned notes server to be up with its tools",
            timeout=30,
            interval=0.05,
        )
        assert front.gateway.downstreams["notes"].connects == first_pid_connects + 1
        again = await agent.call_tool("notes__echo", {"text": "back"})
        assert text_of(again) == "back"
    records = await story(notes_config)
    failed = [r for r in records if r["event_type"] == "call.failed"]
    assert len(failed) == 1 and failed[0]["tool"] == "crash"
    assert failed[0]["outcome"] == "unknown"  # sent, then the connection broke: it may have run
    # Never re-run: exactly one request for the crash call.
    assert sum(1 for r in records if r["event_type"] == "call.requested" and r["tool"] == "crash") == 1


async def test_a_downstream_that_never_starts_does_not_stop_the_others(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "gate",
        servers={
            "notes": notes_server_table(tmp_path / "notes"),
            "broken": {"command": str(tmp_path / "no-such-binary")},
            "dies": {"command": sys.executable, "args": ["-c", "import sys; print('boom', file=sys.stderr)"]},
        },
        manifests={"notes": NOTES_MANIFEST.read_text()},
    )
    async with (
        running_gate(config, startup_timeout=20) as front,
        Client(front.server, mode="legacy") as agent,
    ):
        assert text_of(await agent.call_tool("notes__echo", {"text": "ok"})) == "ok"
        broken = front.gateway.downstreams["broken"]
        assert broken.state == "down" and broken.last_error is not None
        assert "command not found" in broken.last_error
        dies = front.gateway.downstreams["dies"]
        assert dies.state == "down" and dies.last_error is not None and "boom" in dies.last_error
        refused = await agent.call_tool("broken__anything", {})
        quiet = await agent.call_tool("dies__anything", {})
    assert refused.is_error and "not available" in text_of(refused)
    # The agent learns the server is down, never what the server printed on its stderr.
    assert quiet.is_error and "not available" in text_of(quiet) and "boom" not in text_of(quiet)


async def test_a_changed_tool_definition_is_quarantined_until_accepted(tmp_path: Path) -> None:
    def config(variant: str) -> Path:
        return write_config(
            tmp_path / "gate",
            servers={"notes": notes_server_table(tmp_path / "notes", variant=variant)},
            manifests={"notes": NOTES_MANIFEST.read_text()},
        )

    async with gate(config("1"), variant="1") as front, Client(front.server, mode="legacy") as agent:
        assert (await agent.call_tool("notes__read_note", {"name": "x"})).content != []
    async with gate(config("2"), variant="2") as front, Client(front.server, mode="legacy") as agent:
        listed = {t.name: t for t in (await agent.list_tools()).tools}
        assert "id_rsa" not in (listed["notes__read_note"].description or "")
        refused = await agent.call_tool("notes__read_note", {"name": "x"})
        assert refused.is_error and "quarantined" in text_of(refused)
        assert "mcp-gate tools accept notes__read_note" in text_of(refused)
        store = front.gateway.store
        await store.accept_drift("notes", "read_note", events=[front.gateway.event("tool.accepted", None)])
        accepted = await agent.call_tool("notes__read_note", {"name": "x"})
        assert "quarantined" not in text_of(accepted)
    kinds = [r["event_type"] for r in await story(config("2"))]
    assert "tool.pinned" in kinds and "tool.drifted" in kinds and "tool.accepted" in kinds


async def test_an_evidence_write_failure_means_the_call_does_not_run(
    notes_config: Path, tmp_path: Path
) -> None:
    db = notes_config.parent / "data" / "gate.db"
    store = await SQLiteStore.open(db, busy_timeout=0.1)
    async with (
        store,
        gate(notes_config, store=store) as front,
        Client(front.server, mode="legacy") as agent,
    ):
        assert text_of(await agent.call_tool("notes__echo", {"text": "warm"})) == "warm"
        blocker = sqlite3.connect(db, timeout=0.1)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            result = await agent.call_tool("notes__append_note", {"name": "must-not-exist", "text": "x"})
        finally:
            blocker.rollback()
            blocker.close()
    assert result.is_error and "could not write its evidence" in text_of(result)
    assert not (tmp_path / "notes" / "must-not-exist").exists()


async def test_a_real_third_party_server_from_pypi_works_behind_the_gate(tmp_path: Path) -> None:
    manifest = (
        Path(__file__).resolve().parent.parent / "mcp_gate" / "tool_manifests" / "time.toml"
    ).read_text()
    config = write_config(
        tmp_path / "gate",
        servers={
            "time": {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}
        },
        manifests={"time": manifest},
    )
    async with running_gate(config) as front, Client(front.server, mode="auto") as agent:
        names = {t.name for t in (await agent.list_tools()).tools}
        assert "time__get_current_time" in names
        result = await agent.call_tool("time__get_current_time", {"timezone": "Europe/Paris"})
    assert not result.is_error
    assert json.loads(text_of(result))["timezone"] == "Europe/Paris"


RUNTIME_MANIFEST = """
server = "notes"
default = "high"

[[rule]]
tools = ["read_note"]
tier = "high"
reason = "held in this test"

[[rule]]
tools = ["read_*", "echo", "change_tools"]
tier = "low"
reason = "reads"
"""


def runtime_config(tmp_path: Path, extra: str = "") -> Path:
    return write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": RUNTIME_MANIFEST},
        approvers={"bob": approver_table("bob@example.com", ["sre"], "tok-bob")},
        approvals={"hold_seconds": 30, "progress_seconds": 0.05},
        extra=extra,
    )


async def test_a_tool_added_at_runtime_is_quarantined_until_accepted_even_where_a_low_glob_matches(
    tmp_path: Path,
) -> None:
    config = runtime_config(tmp_path)
    async with gate(config) as front, Client(front.server, mode="legacy") as agent:
        changed = await agent.call_tool("notes__change_tools", {"extra": ["read_secrets"], "notify": True})
        assert text_of(changed) == "changed"
        await eventually(lambda: "notes__read_secrets" in front.gateway.offering.offered, what="the new tool")
        listed = {t.name: t for t in (await agent.list_tools()).tools}
        assert "Read something" not in (listed["notes__read_secrets"].description or "")
        refused = await agent.call_tool("notes__read_secrets", {})
        assert refused.is_error and "new tool" in text_of(refused)
        assert "mcp-gate tools accept notes__read_secrets" in text_of(refused)
        store = front.gateway.store
        await store.accept_drift("notes", "read_secrets", events=[front.gateway.event("tool.accepted", None)])
        assert text_of(await agent.call_tool("notes__read_secrets", {})) == "ran read_secrets"
    kinds = [r["event_type"] for r in await story(config)]
    assert "tool.new" in kinds and "call.refused" in kinds


async def test_a_tool_first_seen_after_a_restart_of_an_already_pinned_server_is_new(tmp_path: Path) -> None:
    config = runtime_config(tmp_path)
    async with running_gate(config) as front:  # the first listing: pinned as served, for review
        assert not any(t.quarantined for t in front.gateway.offering.offered.values())
    table = notes_server_table(tmp_path / "notes")
    table["env"] = {**table["env"], "NOTES_EXTRA_TOOLS": "read_later"}
    restarted = write_config(
        tmp_path / "gate",
        servers={"notes": table},
        manifests={"notes": RUNTIME_MANIFEST},
        approvers={"bob": approver_table("bob@example.com", ["sre"], "tok-bob")},
    )
    async with running_gate(restarted) as front, Client(front.server, mode="legacy") as agent:
        assert front.gateway.offering.offered["notes__read_later"].quarantined
        assert not front.gateway.offering.offered["notes__echo"].quarantined
        refused = await agent.call_tool("notes__read_later", {})
    assert refused.is_error and "new tool" in text_of(refused)


async def test_with_new_tools_trusted_a_runtime_tool_is_pinned_as_seen(tmp_path: Path) -> None:
    config = runtime_config(tmp_path, extra='[pins]\nnew_tools = "trust"\n')
    async with gate(config) as front, Client(front.server, mode="legacy") as agent:
        await agent.call_tool("notes__change_tools", {"extra": ["read_more"], "notify": True})
        await eventually(lambda: "notes__read_more" in front.gateway.offering.offered, what="the new tool")
        assert text_of(await agent.call_tool("notes__read_more", {})) == "ran read_more"


async def test_a_definition_changed_without_list_changed_is_caught_before_an_approved_call_runs(
    tmp_path: Path,
) -> None:
    config = runtime_config(tmp_path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "x").write_text("the note")
    async with gate(config) as front, Client(front.server, mode="legacy") as agent:
        results: list[types.CallToolResult] = []

        async def held_call() -> None:
            results.append(await agent.call_tool("notes__read_note", {"name": "x"}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(held_call)
            pending = await eventually(front.gateway.engine.pending, what="the held read_note")
            # The server changes read_note and tells nobody.
            silent = await agent.call_tool("notes__change_tools", {"variant": "2", "notify": False})
            assert text_of(silent) == "changed"
            approver = front.gateway.config.approvers["bob"]
            await front.gateway.engine.decide(pending[0].id, approver, "approve", channel="test")
        refused = results[0]
        assert refused.is_error and "the note" not in text_of(refused)
        assert "quarantined" in text_of(refused) and "just before running it" in text_of(refused)
        assert front.gateway.offering.offered["notes__read_note"].quarantined
    records = await story(config)
    assert any(r["event_type"] == "tool.drifted" and r["tool"] == "read_note" for r in records)
    refusals = [r for r in records if r["event_type"] == "call.refused" and r["tool"] == "read_note"]
    assert len(refusals) == 1 and "quarantined" in refusals[0]["error"]
    assert not [r for r in records if r["event_type"] == "call.executed" and r["tool"] == "read_note"]


@pytest.mark.parametrize("mode", MODES)
async def test_tools_say_task_support_is_forbidden_in_2025_and_carry_no_execution_in_2026(
    tmp_path: Path, mode: str
) -> None:
    table = notes_server_table(tmp_path / "notes")
    table["env"] = {**table["env"], "NOTES_TASKS": "1"}  # echo declares taskSupport "optional"
    config = write_config(
        tmp_path / "gate", servers={"notes": table}, manifests={"notes": NOTES_MANIFEST.read_text()}
    )
    async with running_gate(config) as front, Client(front.server, mode=mode) as agent:
        downstream = front.gateway.downstreams["notes"].tools["echo"]
        assert downstream.execution is not None and downstream.execution.task_support == "optional"
        echo = {t.name: t for t in (await agent.list_tools()).tools}["notes__echo"]
        era = agent.protocol_version
    if era == "2025-11-25":
        # The gate cannot run a call as a task, so it never promises one.
        assert echo.execution is not None and echo.execution.task_support == "forbidden"
    else:
        assert era == "2026-07-28" and echo.execution is None  # the era's Tool has no such field
