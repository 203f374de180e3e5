"""Held calls: a risky call waits for the right approvers, then runs exactly once, or says why not."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from mcp_gate.approvals import ApprovalRequest, Approved, Denied, Pending, Refusal
from mcp_gate.config import load_config
from mcp_gate.errors import ConfigError
from mcp_gate.gateway import Gateway
from mcp_gate.server import FrontServer
from mcp_gate.storage.sqlite import SQLiteStore
from mcp_gate.testing import (
    NOTES_MANIFEST,
    FakeClock,
    MemoryStore,
    approver_table,
    eventually,
    notes_server,
    notes_server_table,
    running_gate,
    write_config,
)

pytestmark = pytest.mark.anyio

APPROVERS = {
    "bob": approver_table("bob@example.com", ["sre"], "tok-bob"),
    "carol": approver_table("carol@example.com", ["security", "sre"], "tok-carol"),
    "dave": approver_table("dave@example.com", ["security"], "tok-dave"),
    # The requester's owner (alice@example.com) under a second account: an alias of the same person.
    "alice": {
        **approver_table("alice@corp.example", ["sre", "security"], "tok-alice"),
        "aliases": ["Alice@Example.com"],
    },
    "frank": approver_table("frank@example.com", ["finance"], "tok-frank"),
}
TIERS = {
    "high": {"approvals": 1, "groups": ["sre", "security"]},
    "critical": {"approvals": 2, "groups": ["security"]},
}


def text_of(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def make_config(tmp_path: Path, *, hold_seconds: float = 30, variant: str = "1", **approvals: Any) -> Path:
    return write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes", variant=variant)},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        approvers=APPROVERS,
        tiers=TIERS,
        approvals={"hold_seconds": hold_seconds, "progress_seconds": 0.05, **approvals},
    )


def notes_gate(config: Path, **options: Any) -> AbstractAsyncContextManager[FrontServer]:
    """`config`'s gate with the notes server in this process. gate.toml still names the stdio one,
    so an engine or CLI in another process computes the same policy."""
    notes = notes_server(config.parent.parent / "notes")
    return running_gate(config, servers={"notes": notes}, **options)


async def records(config: Path) -> list[dict[str, Any]]:
    async with await SQLiteStore.open(config.parent / "data" / "gate.db") as store:
        return [dict(r.body) for r in await store.records()]


async def wait_for_request(gate: Gateway, count: int = 1) -> ApprovalRequest:
    async def enough() -> list[ApprovalRequest] | None:
        pending = await gate.engine.pending()
        return pending if len(pending) >= count else None

    return (await eventually(enough, what=f"{count} pending approval request(s)"))[-1]


async def decide(gate: Gateway, request_id: str, who: str, verdict: str = "approve", **kw: Any) -> Any:
    return await gate.engine.decide(request_id, gate.config.approvers[who], verdict, channel="test", **kw)  # type: ignore[arg-type]


async def in_background(
    tg: anyio.abc.TaskGroup, call: Callable[[], Awaitable[types.CallToolResult]]
) -> list[Any]:
    box: list[Any] = []

    async def run() -> None:
        box.append(await call())

    tg.start_soon(run)
    return box


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_held_call_runs_once_when_an_eligible_approver_approves_it(tmp_path: Path, mode: str) -> None:
    config = make_config(tmp_path)
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    async with notes_gate(config) as front, Client(front.server, mode=mode) as agent:
        async with anyio.create_task_group() as tg:
            box = await in_background(
                tg,
                lambda: agent.call_tool(
                    "notes__write_note", {"name": "plan", "text": "ship"}, progress_callback=on_progress
                ),
            )
            request = await wait_for_request(front.gateway)
            assert not (tmp_path / "notes" / "plan").exists()
            await eventually(lambda: messages, what="a progress notification while the call is held")
            outcome = await decide(front.gateway, request.id, "bob", note="looks fine")
            assert isinstance(outcome, Approved)
        [result] = box
    assert not result.is_error and text_of(result) == "wrote plan"
    assert (tmp_path / "notes" / "plan").read_text() == "ship"
    assert (
        f"request {request.id}" in messages[0]
        and "waiting for 1 approval from sre or security" in messages[0]
    )
    story = [r for r in await records(config) if r["correlation_id"] == request.correlation_id]
    kinds = [r["event_type"] for r in story]
    assert kinds == [
        "call.requested",
        "policy.decided",
        "approval.requested",
        "approval.decided",
        "call.released",
        "call.executed",
    ]
    decided = story[3]
    assert decided["approver"] == "bob" and decided["note"] == "looks fine" and decided["channel"] == "test"
    assert decided["shown"]["args_sha256"] == story[0]["args_sha256"]
    assert story[-1]["request_id"] == request.id


async def test_a_denial_reaches_the_agent_with_the_approvers_reason_and_nothing_runs(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with notes_gate(config) as front, Client(front.server, mode="legacy") as agent:
        async with anyio.create_task_group() as tg:
            box = await in_background(
                tg, lambda: agent.call_tool("notes__write_note", {"name": "x", "text": "y"})
            )
            request = await wait_for_request(front.gateway)
            assert isinstance(
                await decide(front.gateway, request.id, "carol", "deny", note="not today"), Denied
            )
        [result] = box
    assert result.is_error and "denied by carol: not today" in text_of(result)
    assert not (tmp_path / "notes" / "x").exists()


async def test_nobody_approves_their_own_call_through_an_alias_and_the_attempt_is_recorded(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, hold_seconds=0.2)
    async with notes_gate(config) as front, Client(front.server, mode="legacy") as agent:
        await agent.call_tool("notes__write_note", {"name": "x", "text": "y"})
        request = await wait_for_request(front.gateway)
        by_alias = await decide(front.gateway, request.id, "alice")
        wrong_group = await decide(front.gateway, request.id, "frank")
        still = await front.gateway.engine.get(request.id)
    assert isinstance(by_alias, Refusal) and by_alias.code == "self-approval"
    assert isinstance(wrong_group, Refusal) and wrong_group.code == "not-eligible"
    assert still.state == "pending" and still.votes == ()
    refused = [r for r in await records(config) if r["event_type"] == "approval.refused"]
    assert [(r["approver"], r["code"]) for r in refused] == [
        ("alice", "self-approval"),
        ("frank", "not-eligible"),
    ]


async def test_a_critical_call_needs_two_distinct_approvers_from_its_groups(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with notes_gate(config) as front, Client(front.server, mode="legacy") as agent:
        async with anyio.create_task_group() as tg:
            box = await in_background(
                tg, lambda: agent.call_tool("notes__delete_note", {"name": "archive/q1"})
            )
            request = await wait_for_request(front.gateway)
            assert request.tier == "critical" and request.required == 2
            assert isinstance(await decide(front.gateway, request.id, "bob"), Refusal)  # sre only
            first = await decide(front.gateway, request.id, "carol")
            again = await decide(front.gateway, request.id, "carol")
            assert isinstance(first, Pending) and isinstance(again, Refusal) and again.code == "duplicate"
            assert not box
            second = await decide(front.gateway, request.id, "dave")
            assert isinstance(second, Approved)
        [result] = box
    # The note did not exist: the downstream ran (once) and reported its own error.
    assert "No such file" in text_of(result)
    executed = [r for r in await records(config) if r["event_type"] == "call.executed"]
    assert len(executed) == 1 and executed[0]["request_id"] == request.id


async def test_after_the_hold_budget_the_call_is_pending_and_an_identical_call_joins_it_and_runs_once(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, hold_seconds=0.2)
    args = {"name": "later", "text": "v1"}
    async with notes_gate(config) as front, Client(front.server, mode="legacy") as agent:
        first = await agent.call_tool("notes__write_note", args)
        assert first.is_error and "Call again with the same arguments" in text_of(first)
        [request] = await front.gateway.engine.pending()
        second = await agent.call_tool("notes__write_note", args)
        assert [r.id for r in await front.gateway.engine.pending()] == [request.id]  # joined, not a new one
        assert f"request {request.id}" in text_of(second)
        other = await agent.call_tool("notes__write_note", {"name": "later", "text": "v2"})
        assert other.is_error
        assert len(await front.gateway.engine.pending()) == 2  # other arguments: another request
        assert isinstance(await decide(front.gateway, request.id, "bob"), Approved)
        ran = await agent.call_tool("notes__write_note", args)
        assert not ran.is_error and (tmp_path / "notes" / "later").read_text() == "v1"
        again = await agent.call_tool("notes__write_note", args)
        assert again.is_error and "waiting for 1 approval" in text_of(again)  # used once; asks anew
    recorded = await records(config)
    kinds = [r["event_type"] for r in recorded]
    assert kinds.count("call.executed") == 1 and kinds.count("approval.joined") == 2
    # The story of the call that ran includes the request an earlier call made and bob's decision.
    [executed] = [r for r in recorded if r["event_type"] == "call.executed"]
    shown = await anyio.run_process(
        [
            sys.executable,
            "-m",
            "mcp_gate",
            "audit",
            "show",
            executed["correlation_id"],
            "--config",
            str(config),
        ]
    )
    story = " ".join(shown.stdout.decode().split())
    assert "approval.requested" in story and "by=bob verdict=approve" in story and "call.executed" in story


async def test_expiry_is_enforced_at_decision_time_to_the_millisecond(tmp_path: Path) -> None:
    clock = FakeClock()
    config = make_config(tmp_path, hold_seconds=0.2, expires="10m")
    async with notes_gate(config, clock=clock) as front, Client(front.server, mode="legacy") as agent:
        await agent.call_tool("notes__write_note", {"name": "x", "text": "y"})
        request = await wait_for_request(front.gateway)
        clock.moment = request.expires_at + timedelta(milliseconds=1)
        late = await decide(front.gateway, request.id, "bob")
        stored = await front.gateway.engine.get(request.id)
    assert isinstance(late, Refusal) and late.code == "expired"
    assert stored.state == "expired"
    kinds = [r["event_type"] for r in await records(config)]
    assert "approval.expired" in kinds and "approval.refused" in kinds


async def test_expiry_is_enforced_at_release_time(tmp_path: Path) -> None:
    clock = FakeClock()
    config = make_config(tmp_path, hold_seconds=0.2, expires="10m")
    args = {"name": "x", "text": "y"}
    async with notes_gate(config, clock=clock) as front, Client(front.server, mode="legacy") as agent:
        await agent.call_tool("notes__write_note", args)
        request = await wait_for_request(front.gateway)
        clock.moment = request.expires_at - timedelta(milliseconds=1)
        assert isinstance(await decide(front.gateway, request.id, "bob"), Approved)
        clock.moment = request.expires_at
        late = await agent.call_tool("notes__write_note", args)
    assert late.is_error and "expired" in text_of(late)
    assert not (tmp_path / "notes" / "x").exists()


async def test_an_approval_not_yet_executed_can_be_revoked(tmp_path: Path) -> None:
    config = make_config(tmp_path, hold_seconds=0.2)
    args = {"name": "x", "text": "y"}
    async with (
        notes_gate(config, store=MemoryStore()) as front,
        Client(front.server, mode="legacy") as agent,
    ):
        await agent.call_tool("notes__write_note", args)
        request = await wait_for_request(front.gateway)
        await decide(front.gateway, request.id, "bob")
        revoked = await front.gateway.engine.revoke(request.id, front.gateway.config.approvers["carol"])
        assert not isinstance(revoked, Refusal)
        result = await agent.call_tool("notes__write_note", args)
    assert result.is_error and "revoked by carol" in text_of(result)
    assert not (tmp_path / "notes" / "x").exists()


async def test_an_approval_is_void_when_the_policy_changed_before_release(tmp_path: Path) -> None:
    config = make_config(tmp_path, hold_seconds=0.2)
    args = {"name": "x", "text": "y"}
    async with notes_gate(config) as front, Client(front.server, mode="legacy") as agent:
        await agent.call_tool("notes__write_note", args)
        request = await wait_for_request(front.gateway)
        await decide(front.gateway, request.id, "bob")
    manifest = config.parent / "tool_manifests" / "notes.toml"
    manifest.write_text(manifest.read_text().replace("the old text is lost", "the old text is gone"))
    async with notes_gate(config) as front, Client(front.server, mode="legacy") as agent:
        result = await agent.call_tool("notes__write_note", args)
    assert result.is_error and "void" in text_of(result) and "policy changed" in text_of(result)
    assert not (tmp_path / "notes" / "x").exists()


async def test_a_grant_lets_the_same_requester_run_the_tool_without_holding_until_it_is_revoked(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, hold_seconds=0.2)
    async with notes_gate(config) as front, Client(front.server, mode="legacy") as agent:
        await agent.call_tool("notes__write_note", {"name": "a", "text": "1"})
        request = await wait_for_request(front.gateway)
        await decide(front.gateway, request.id, "bob", grant_for=timedelta(minutes=30))
        covered = await agent.call_tool("notes__write_note", {"name": "b", "text": "2"})
        [grant] = await front.gateway.engine.grants()
        await front.gateway.engine.revoke_grant(grant.id, front.gateway.config.approvers["bob"])
        after = await agent.call_tool("notes__write_note", {"name": "c", "text": "3"})
        critical = await agent.call_tool("notes__delete_note", {"name": "archive/b"})
    assert text_of(covered) == "wrote b"
    assert after.is_error and "waiting for 1 approval" in text_of(after)
    assert critical.is_error and "waiting for 2 approvals" in text_of(critical)
    released = [r for r in await records(config) if r["event_type"] == "call.released" and "grant_id" in r]
    assert [r["grant_id"] for r in released] == [grant.id]


async def test_no_grant_is_given_for_a_critical_call(tmp_path: Path) -> None:
    config = make_config(tmp_path, hold_seconds=0.2)
    async with (
        notes_gate(config, store=MemoryStore()) as front,
        Client(front.server, mode="legacy") as agent,
    ):
        await agent.call_tool("notes__delete_note", {"name": "archive/a"})
        request = await wait_for_request(front.gateway)
        refused = await decide(front.gateway, request.id, "carol", grant_for=timedelta(minutes=30))
        grants = await front.gateway.engine.grants()
    assert isinstance(refused, Refusal) and refused.code == "no-grant"
    assert grants == []


async def test_a_requester_with_too_many_pending_requests_is_refused_clearly(tmp_path: Path) -> None:
    config = make_config(tmp_path, hold_seconds=0.1, max_pending=2)
    async with (
        notes_gate(config, store=MemoryStore()) as front,
        Client(front.server, mode="legacy") as agent,
    ):
        for name in ("a", "b"):
            await agent.call_tool("notes__write_note", {"name": name, "text": "x"})
        third = await agent.call_tool("notes__write_note", {"name": "c", "text": "x"})
    assert third.is_error and "already has 2 approval requests pending" in text_of(third)


async def test_a_client_that_cancels_a_held_call_leaves_the_request_pending_and_recorded(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path)
    async with notes_gate(config) as front, Client(front.server, mode="legacy") as agent:
        with anyio.move_on_after(1.0):
            await agent.call_tool("notes__write_note", {"name": "x", "text": "y"})
        request = await wait_for_request(front.gateway)

        async def deferred_records() -> list[dict[str, Any]]:
            return [r for r in await records(config) if r["event_type"] == "call.deferred"]

        await eventually(deferred_records, what="a call.deferred record", interval=0.02)
        assert (await front.gateway.engine.get(request.id)).state == "pending"
    deferred = [r for r in await records(config) if r["event_type"] == "call.deferred"]
    assert deferred[0]["request_id"] == request.id and "cancelled" in deferred[0]["why"]


async def test_fifty_concurrent_decisions_on_one_request_give_one_decision_each_and_one_execution(
    tmp_path: Path,
) -> None:
    many = {f"ap{i}": approver_table(f"ap{i}@example.com", ["sre"], f"tok-{i}") for i in range(50)}
    config = write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        approvers=many,
        tiers={"high": {"approvals": 2, "groups": ["sre"]}},
        approvals={"hold_seconds": 30},
    )
    loaded = load_config(config, {})
    db = config.parent / "data" / "gate.db"
    async with notes_gate(config) as front, Client(front.server, mode="legacy") as agent:
        async with anyio.create_task_group() as tg:
            box = await in_background(
                tg, lambda: agent.call_tool("notes__write_note", {"name": "n", "text": "x"})
            )
            request = await wait_for_request(front.gateway)
            outcomes: list[Any] = []

            async def approve_from_own_connection(name: str) -> None:
                # Each decision through its own store connection, as separate CLI processes would.
                from mcp_gate.holds import ApprovalEngine

                async with await SQLiteStore.open(db) as store:
                    engine = ApprovalEngine(
                        store,
                        front.gateway.clock,
                        loaded.approval_settings,
                        front.gateway.events,
                        front.gateway.engine.key,
                    )
                    verdict = "deny" if name in ("ap7", "ap33") else "approve"
                    outcomes.append(
                        await engine.decide(request.id, loaded.approvers[name], verdict, channel="race")
                    )
                    outcomes.append(
                        await engine.decide(request.id, loaded.approvers[name], verdict, channel="race")
                    )

            async with anyio.create_task_group() as racers:
                for name in many:
                    racers.start_soon(approve_from_own_connection, name)
        [result] = box
    settled = [o for o in outcomes if not isinstance(o, Refusal)]
    assert 1 <= len(settled) <= 2  # at most: one approval then the quorum, or one denial
    final = await SQLiteStore.open(db)
    async with final:
        stored = await final.read(lambda tx: tx.get_request(request.id))
    assert stored is not None
    assert len({v.approver for v in stored.votes}) == len(stored.votes)  # one decision per approver
    lines = (tmp_path / "notes" / "n").read_text().splitlines() if (tmp_path / "notes" / "n").exists() else []
    if stored.state in ("executed",):
        assert lines == ["x"] and not result.is_error
    else:
        assert stored.state == "denied" and lines == [] and result.is_error


DECIDER = """
import sys, anyio
from mcp_gate.config import load_config
from mcp_gate.errors import ConfigError
from mcp_gate.runtime import open_engine

async def main(config, request_id, names):
    loaded = load_config(__import__("pathlib").Path(config), {})
    async with open_engine(loaded) as engine:
        async with anyio.create_task_group() as tg:
            for name in names.split(","):
                verdict = "deny" if name in ("ap7", "ap33") else "approve"
                approver = loaded.approvers[name]
                tg.start_soon(lambda a=approver, v=verdict: engine.decide(request_id, a, v, channel="proc"))

anyio.run(main, *sys.argv[1:])
"""


async def test_fifty_decisions_from_ten_separate_processes_give_one_decision_each_and_at_most_one_execution(
    tmp_path: Path,
) -> None:
    many = {f"ap{i}": approver_table(f"ap{i}@example.com", ["sre"], f"tok-{i}") for i in range(50)}
    config = write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        approvers=many,
        tiers={"high": {"approvals": 2, "groups": ["sre"]}},
        approvals={"hold_seconds": 60},
    )
    async with notes_gate(config) as front, Client(front.server, mode="legacy") as agent:
        async with anyio.create_task_group() as tg:
            box = await in_background(
                tg, lambda: agent.call_tool("notes__write_note", {"name": "n", "text": "x"})
            )
            request = await wait_for_request(front.gateway)
            names = list(many)
            batches = [",".join(names[i : i + 5]) for i in range(0, 50, 5)]
            async with anyio.create_task_group() as procs:
                for batch in batches:
                    procs.start_soon(
                        anyio.run_process,
                        [sys.executable, "-c", DECIDER, str(config), request.id, batch],
                    )
        [result] = box
        stored = await front.gateway.engine.get(request.id)
    assert len({v.approver for v in stored.votes}) == len(stored.votes)
    recorded = await records(config)
    decided = [r for r in recorded if r["event_type"] == "approval.decided"]
    refused = [r for r in recorded if r["event_type"] == "approval.refused"]
    assert len(decided) + len(refused) == 50 and len(decided) == len(stored.votes)
    executed = [r for r in recorded if r["event_type"] == "call.executed"]
    note = tmp_path / "notes" / "n"
    if stored.state == "executed":
        assert len(executed) == 1 and note.read_text() == "x" and not result.is_error
    else:
        assert stored.state == "denied" and executed == [] and not note.exists() and result.is_error


async def test_a_manifest_rule_can_name_its_own_approver_groups(tmp_path: Path) -> None:
    manifest = NOTES_MANIFEST.read_text().replace(
        'tier = "high"\nreason = "replaces a note\'s whole text; the old text is lost"',
        'tier = "high"\nreason = "replaces a note\'s whole text; the old text is lost"\napprovers = ["dba"]',
    )
    assert 'approvers = ["dba"]' in manifest
    config = write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": manifest},
        approvers={**APPROVERS, "erin": approver_table("erin@example.com", ["dba"], "tok-erin")},
        tiers=TIERS,
        approvals={"hold_seconds": 0.2},
    )
    async with notes_gate(config) as front, Client(front.server, mode="legacy") as agent:
        await agent.call_tool("notes__write_note", {"name": "x", "text": "y"})
        request = await wait_for_request(front.gateway)
        assert request.groups == ("dba",)
        sre = await decide(front.gateway, request.id, "carol")
        dba = await decide(front.gateway, request.id, "erin")
    assert isinstance(sre, Refusal) and sre.code == "not-eligible"
    assert isinstance(dba, Approved)


async def test_a_manifest_rule_naming_a_group_nobody_is_in_is_a_config_error(tmp_path: Path) -> None:
    manifest = NOTES_MANIFEST.read_text().replace(
        'tier = "blocked"\n', 'tier = "blocked"\napprovers = ["ghosts"]\n'
    )
    config = write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": manifest},
        approvers=APPROVERS,
    )
    with pytest.raises(ConfigError) as caught:
        async with notes_gate(config):
            pass
    assert "notes.toml: rule[8].approvers: no approver" in str(caught.value) and "'ghosts'" in str(
        caught.value
    )


async def test_a_grant_is_refused_where_it_would_stand_in_for_more_than_one_approval_or_too_long(
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        approvers=APPROVERS,
        tiers={"high": {"approvals": 2, "groups": ["sre"]}},
        approvals={"hold_seconds": 0.2},
    )
    async with notes_gate(config) as front, Client(front.server, mode="legacy") as agent:
        await agent.call_tool("notes__write_note", {"name": "x", "text": "y"})
        request = await wait_for_request(front.gateway)
        quorum = await decide(front.gateway, request.id, "bob", grant_for=timedelta(minutes=30))
        assert isinstance(quorum, Refusal) and quorum.code == "no-grant" and "needs 2 approvals" in quorum.why
        assert (await front.gateway.engine.get(request.id)).votes == ()  # the refused decision left no vote
        assert await front.gateway.engine.grants() == []


async def test_a_grant_does_not_cover_a_call_that_falls_under_another_rule(tmp_path: Path) -> None:
    manifest = NOTES_MANIFEST.read_text().replace(
        '[[rule]]\ntools = ["write_note"]',
        '[[rule]]\ntools = ["write_note"]\nwhen = { "/name" = { glob = "db/**" } }\ntier = "high"\n'
        'reason = "writes a database note"\napprovers = ["dba"]\n\n[[rule]]\ntools = ["write_note"]',
    )
    config = write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": manifest},
        approvers={**APPROVERS, "erin": approver_table("erin@example.com", ["dba"], "tok-erin")},
        tiers=TIERS,
        approvals={"hold_seconds": 0.2},
    )
    async with notes_gate(config) as front, Client(front.server, mode="legacy") as agent:
        await agent.call_tool("notes__write_note", {"name": "a", "text": "1"})
        request = await wait_for_request(front.gateway)
        long = await decide(front.gateway, request.id, "bob", grant_for=timedelta(hours=25))
        assert isinstance(long, Refusal) and long.code == "no-grant"
        await decide(front.gateway, request.id, "bob", grant_for=timedelta(minutes=30))
        plain = await agent.call_tool("notes__write_note", {"name": "b", "text": "2"})
        dba = await agent.call_tool("notes__write_note", {"name": "db/users", "text": "3"})
    assert text_of(plain) == "wrote b"
    assert dba.is_error and "waiting for 1 approval from dba" in text_of(dba)
    assert not (tmp_path / "notes" / "db" / "users").exists()


async def test_a_release_that_finds_the_approval_revoked_meanwhile_reports_the_revocation(
    tmp_path: Path,
) -> None:
    # The interleaving a held call can meet: it read "approved", then a revocation committed
    # before its release transaction. The release must say "revoked", not fail.
    from mcp_gate.approvals import Revoked

    config = make_config(tmp_path, hold_seconds=0.2)
    async with notes_gate(config) as front, Client(front.server, mode="legacy") as agent:
        await agent.call_tool("notes__write_note", {"name": "x", "text": "y"})
        request = await wait_for_request(front.gateway)
        engine = front.gateway.engine
        await decide(front.gateway, request.id, "bob")
        await engine.revoke(request.id, front.gateway.config.approvers["carol"])
        outcome = await engine.store.transact(
            lambda tx: engine._release(tx, request.id, request.binding, "late-call")
        )
        stored = await engine.get(request.id)
    assert isinstance(outcome, Revoked) and outcome.by == "carol"
    assert stored.state == "revoked" and stored.reported
    assert not (tmp_path / "notes" / "x").exists()


async def test_a_grant_ends_when_the_policy_changes(tmp_path: Path) -> None:
    config = make_config(tmp_path, hold_seconds=0.2)
    async with notes_gate(config) as front, Client(front.server, mode="legacy") as agent:
        await agent.call_tool("notes__write_note", {"name": "a", "text": "1"})
        request = await wait_for_request(front.gateway)
        await decide(front.gateway, request.id, "bob", grant_for=timedelta(minutes=30))
        assert text_of(await agent.call_tool("notes__write_note", {"name": "b", "text": "2"})) == "wrote b"
    manifest = config.parent / "tool_manifests" / "notes.toml"
    manifest.write_text(manifest.read_text().replace("the old text is lost", "the old text is gone"))
    async with notes_gate(config) as front, Client(front.server, mode="legacy") as agent:
        after = await agent.call_tool("notes__write_note", {"name": "c", "text": "3"})
    assert after.is_error and "waiting for 1 approval" in text_of(after)
    assert not (tmp_path / "notes" / "c").exists()


def _agent_table(token: str, owner: str, **more: Any) -> str:
    lines = [f'token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"', f'owner = "{owner}"']
    lines += [f"{key} = {value!r}" for key, value in more.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.timeout(60)
async def test_each_requester_holds_for_its_own_budget_so_a_client_with_a_timeout_gets_call_again_first(
    tmp_path: Path,
) -> None:
    # The Inspector CLIs give up on a call after 60 s and progress does not reset that; neither
    # does the SDK's read timeout. A requester whose budget is below its client's timeout gets
    # "call again" with the request id; one left at the gate-wide budget keeps holding for it.
    config = write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        approvers=APPROVERS,
        tiers=TIERS,
        approvals={"hold_seconds": 30, "progress_seconds": 0.05},
        requester={"hold_seconds": 0.5},
        extra="[agents.inspector]\n"
        + _agent_table("tok-inspector", "erin@example.com", hold_seconds=0.5)
        + "[agents.sdk]\n"
        + _agent_table("tok-sdk", "gina@example.com"),
    )
    loaded = load_config(config, {})
    assert loaded.requester.hold_seconds == 0.5
    assert loaded.agents["inspector"].hold_seconds == 0.5 and loaded.agents["sdk"].hold_seconds is None

    @asynccontextmanager
    async def over_http(url: str, token: str, timeout: float) -> AsyncIterator[Client]:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30.0))
        client = Client(
            streamable_http_client(url, http_client=http), mode="legacy", read_timeout_seconds=timeout
        )
        async with http, client:
            yield client

    async with notes_gate(config) as front, anyio.create_task_group() as tg:
        port = await tg.start(front.serve_http, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{port}/mcp"
        async with Client(front.server, mode="legacy", read_timeout_seconds=60) as stdio_agent:
            local = await stdio_agent.call_tool("notes__write_note", {"name": "a", "text": "x"})
        async with over_http(url, "tok-inspector", 60) as inspector:
            remote = await inspector.call_tool("notes__write_note", {"name": "b", "text": "x"})
        async with over_http(url, "tok-sdk", 3) as sdk:
            with pytest.raises(MCPError) as timed_out:
                await sdk.call_tool("notes__write_note", {"name": "c", "text": "x"})
        pending = {r.binding.agent: r for r in await front.gateway.engine.pending()}
        tg.cancel_scope.cancel()
    for result, agent in ((local, "test-agent"), (remote, "inspector")):
        assert result.is_error
        assert f"request {pending[agent].id}" in text_of(result)
        assert "Call again with the same arguments" in text_of(result)
    # The requester at the gate-wide budget (30 s) was still held when its client gave up at 3 s.
    assert timed_out.value.error.code == types.REQUEST_TIMEOUT
    assert "sdk" in pending and not (tmp_path / "notes" / "c").exists()
