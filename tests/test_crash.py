"""The kill-point crash harness: a real `mcp-gate serve` is killed with SIGKILL at every named point
of the call path (tests/crash/launch.py arms the point), started again on the same data dir, and
checked: no call ran twice, no approved call was lost, an interrupted call is outcome_unknown and
never re-run, the seq has no gaps and `audit verify` passes. docs/crash-points.md lists the points."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters

from mcp_gate.fake_slack import FakeSlack
from mcp_gate.storage.sqlite import SQLiteStore
from mcp_gate.testing import approver_table, eventually, notes_server_table, write_config
from tests.slack_helpers import env as slack_env
from tests.slack_helpers import fake_slack, slack_table

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = ROOT / "tests" / "crash" / "launch.py"

# The tier of append_note follows the note's name, so one manifest serves every scenario; each
# execution appends one line to the note: the downstream counts its executions in the file.
MANIFEST = """
server = "notes"
default = "high"
[[rule]]
tools = ["echo", "list_notes", "read_note", "sleep"]
tier = "low"
reason = "reads"
[[rule]]
tools = ["append_note"]
when = { "/name" = { glob = "low*" } }
tier = "low"
reason = "a low note"
[[rule]]
tools = ["append_note"]
when = { "/name" = { glob = "two*" } }
tier = "critical"
reason = "a note two approvers must agree on"
[[rule]]
tools = ["append_note"]
tier = "high"
reason = "a note one approver must agree on"
"""


@dataclass
class World:
    config: Path
    notes: Path
    info: Path
    extra_env: dict[str, str]

    @property
    def data(self) -> Path:
        return self.config.parent / "data"

    def executions(self, name: str) -> int:
        path = self.notes / name
        return len(path.read_text().splitlines()) if path.exists() else 0

    def info_lines(self) -> list[tuple[str, str]]:
        if not self.info.exists():
            return []
        return [tuple(line.split(" ", 1)) for line in self.info.read_text().splitlines()]  # type: ignore[misc]

    def info_value(self, key: str) -> str | None:
        values = [v for k, v in self.info_lines() if k == key]
        return values[-1] if values else None


def make_world(tmp_path: Path, *, extra: str = "", env: dict[str, str] | None = None) -> World:
    config = write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": MANIFEST},
        approvers={
            "bob": approver_table("bob@example.com", ["sre"], "tok-bob"),
            "carol": approver_table("carol@example.com", ["sre"], "tok-carol"),
        },
        tiers={"high": {"approvals": 1, "groups": ["sre"]}, "critical": {"approvals": 2, "groups": ["sre"]}},
        approvals={"hold_seconds": 60, "progress_seconds": 1},
        extra=extra,
    )
    return World(config, tmp_path / "notes", tmp_path / "crash-info", env or {})


def mcp_gate(world: World, *args: str, crash: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **world.extra_env, "MCP_GATE_CRASH_INFO": str(world.info)}
    if crash is not None:
        env["MCP_GATE_CRASH_AT"] = crash
    return subprocess.run(
        [sys.executable, str(LAUNCHER), *args, "--config", str(world.config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@dataclass
class Gate:
    agent: Client
    api: str


@asynccontextmanager
async def gate(world: World, crash: str | None = None) -> AsyncIterator[Gate]:
    """A real `mcp-gate serve` over stdio with its approver API on a free port; `crash` arms a point."""
    world.info.unlink(missing_ok=True)
    env = {**os.environ, **world.extra_env, "MCP_GATE_CRASH_INFO": str(world.info)}
    if crash is not None:
        env["MCP_GATE_CRASH_AT"] = crash
    params = StdioServerParameters(
        command=sys.executable,
        args=[str(LAUNCHER), "serve", "--config", str(world.config), "--admin", "127.0.0.1:0"],
        env=env,
    )
    async with Client(params, mode="legacy") as agent:
        port = await eventually(lambda: world.info_value("admin_port"), what="the approver API's port")
        yield Gate(agent, f"http://127.0.0.1:{port}")


async def decide(api: str, token: str, request_id: str, verdict: str = "approve") -> httpx2.Response:
    body = {} if verdict == "approve" else {"reason": "no"}
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=20) as http:
        return await http.post(f"{api}/v1/requests/{request_id}/{verdict}", json=body)


async def pending(api: str) -> list[dict[str, Any]]:
    async with httpx2.AsyncClient(headers={"Authorization": "Bearer tok-bob"}, timeout=20) as http:
        answer = (await http.get(f"{api}/v1/requests")).json()
    return list(answer["requests"])


async def first_pending(api: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = await eventually(lambda: pending(api), what="a pending request", timeout=30)
    return found[0]


def text_of(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def records(world: World) -> list[dict[str, Any]]:
    async with await SQLiteStore.open(world.data / "gate.db") as store:
        return [dict(r.body) for r in await store.records()]


async def call_until_killed(agent: Client, name: str, arguments: dict[str, Any]) -> None:
    try:
        result = await agent.call_tool(name, arguments)
    except Exception:  # the gate was killed under this call: the SDK reports the closed connection
        return
    raise AssertionError(f"the call finished although the gate was to be killed: {text_of(result)}")


async def crashed(world: World, point: str) -> None:
    await eventually(lambda: world.info_value("crashed") == point, what=f"the gate to die at {point}")


async def check_log(world: World) -> list[dict[str, Any]]:
    """The invariants every point shares: gapless seq, `audit verify` passes."""
    bodies = await records(world)
    assert [b["seq"] for b in bodies] == list(range(1, len(bodies) + 1))
    verified = mcp_gate(world, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    return bodies


async def records_of(world: World, kind: str) -> list[dict[str, Any]]:
    return [b for b in await records(world) if b["event_type"] == kind]


def kinds_for(bodies: list[dict[str, Any]], correlation_id: str) -> list[str]:
    return [b["event_type"] for b in bodies if b.get("correlation_id") == correlation_id]


def unclean(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [b for b in bodies if b["event_type"] == "gate.unclean_stop"]


# -- the scenarios: each drives a gate to its point, then checks the restarted gate ------------------


async def held_then_killed(
    world: World,
    point: str,
    note: str,
    voters: tuple[str, ...],
    ready: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """A held append_note; once `ready`, `voters` vote through the gate's API; the gate dies at `point`."""
    async with gate(world, crash=point) as g, anyio.create_task_group() as tg:
        tg.start_soon(call_until_killed, g.agent, "notes__append_note", {"name": note, "text": "x"})
        if voters:
            request = await first_pending(g.api)
            if ready is not None:
                await ready()
            for voter in voters:
                try:
                    answer = await decide(g.api, f"tok-{voter}", request["id"])
                    assert answer.status_code == 200, answer.text
                except httpx2.HTTPError:
                    break  # the gate died while answering this vote
        await crashed(world, point)


async def resend_and_finish(world: World, note: str, approvers: tuple[str, ...]) -> str:
    """After the restart: the agent calls again; open requests are decided; the call runs once."""
    async with gate(world) as g:
        async with anyio.create_task_group() as tg:
            box: list[types.CallToolResult] = []

            async def call() -> None:
                box.append(await g.agent.call_tool("notes__append_note", {"name": note, "text": "x"}))

            tg.start_soon(call)
            if approvers:
                request = await first_pending(g.api)
                for voter in approvers:
                    if voter not in {v.get("approver") for v in request.get("votes", [])}:
                        assert (await decide(g.api, f"tok-{voter}", request["id"])).status_code == 200
        return text_of(box[0])


async def scenario_after_call_requested(world: World) -> None:
    await held_then_killed(world, "after_call_requested", "high-a", ())
    bodies = await check_log(world)
    assert not [b for b in bodies if b["event_type"] == "approval.requested"]  # the hold never began
    assert world.executions("high-a") == 0
    assert await resend_and_finish(world, "high-a", ("bob",)) == "appended to high-a"
    assert world.executions("high-a") == 1
    assert unclean(await check_log(world))


async def scenario_after_hold_persisted(world: World) -> None:
    await held_then_killed(world, "after_hold_persisted", "high-b", ())
    async with gate(world) as g:  # the request is still decidable after the restart
        request = await first_pending(g.api)
    bodies = await check_log(world)
    [cut] = unclean(bodies)
    assert [c["request_id"] for c in cut["held_calls_cut_off"]] == [request["id"]]
    assert await resend_and_finish(world, "high-b", ("bob",)) == "appended to high-b"
    assert world.executions("high-b") == 1
    await check_log(world)


async def scenario_after_vote(world: World) -> None:
    await held_then_killed(world, "after_vote", "two-c", ("bob",))
    assert world.executions("two-c") == 0
    async with gate(world) as g:
        request = await first_pending(g.api)
        assert [v["approver"] for v in request["votes"]] == ["bob"]  # the first vote survived
    assert await resend_and_finish(world, "two-c", ("carol",)) == "appended to two-c"
    assert world.executions("two-c") == 1
    await check_log(world)


async def scenario_after_deciding_vote(world: World) -> None:
    await held_then_killed(world, "after_deciding_vote", "high-d", ("bob",))
    assert world.executions("high-d") == 0  # approved, but the held call died with the gate
    async with gate(world) as g:  # the restart does not run it on its own
        assert (await first_pending(g.api))["state"] == "approved"
    assert world.executions("high-d") == 0
    assert await resend_and_finish(world, "high-d", ()) == "appended to high-d"
    assert world.executions("high-d") == 1
    await check_log(world)


async def in_flight_is_unknown(world: World, note: str, *, at_most: int) -> None:
    """After the restart: the interrupted call is call.outcome_unknown once, and is not re-run."""
    before = world.executions(note)
    assert before <= at_most
    async with gate(world) as g:
        assert text_of(await g.agent.call_tool("notes__echo", {"text": "up"})) == "up"  # recovered
    bodies = await check_log(world)
    unknown = [b for b in bodies if b["event_type"] == "call.outcome_unknown"]
    assert len(unknown) == 1, unknown
    correlation = unknown[0]["correlation_id"]
    assert "call.executed" not in kinds_for(bodies, correlation)
    assert world.executions(note) == before  # never re-run by the restart
    request_id = unknown[0].get("request_id")
    if request_id is not None:
        async with gate(world) as g:  # its approval is used up: a new call asks anew
            assert request_id not in {r["id"] for r in await pending(g.api)}


async def scenario_after_in_flight(world: World) -> None:
    await held_then_killed(world, "after_in_flight", "high-e", ("bob",))
    await in_flight_is_unknown(world, "high-e", at_most=0)


async def low_then_killed(world: World, point: str, note: str) -> None:
    async with gate(world, crash=point) as g:
        await call_until_killed(g.agent, "notes__append_note", {"name": note, "text": "x"})
        await crashed(world, point)


async def scenario_after_in_flight_low(world: World) -> None:
    await low_then_killed(world, "after_in_flight", "low-f")
    await in_flight_is_unknown(world, "low-f", at_most=0)


async def scenario_after_request_written(world: World) -> None:
    await low_then_killed(world, "after_request_written", "low-g")
    await in_flight_is_unknown(world, "low-g", at_most=1)  # the downstream may have run it


async def scenario_after_result(world: World) -> None:
    await low_then_killed(world, "after_result", "low-h")
    assert world.executions("low-h") == 1
    await in_flight_is_unknown(world, "low-h", at_most=1)


async def scenario_after_outcome(world: World) -> None:
    await low_then_killed(world, "after_outcome", "low-i")
    async with gate(world) as g:
        assert text_of(await g.agent.call_tool("notes__echo", {"text": "up"})) == "up"
    bodies = await check_log(world)
    assert world.executions("low-i") == 1
    assert not [b for b in bodies if b["event_type"] == "call.outcome_unknown"]
    assert [b["event_type"] for b in bodies].count("call.executed") == 2  # the note and the echo


async def scenario_inside_group_commit(world: World) -> None:
    names = [f"low-j{i}" for i in range(8)]
    async with gate(world, crash="inside_group_commit") as g:
        for _ in range(20):  # waves of concurrent calls until two writes share one commit
            if world.info_value("crashed"):
                break
            async with anyio.create_task_group() as tg:
                for name in names:
                    tg.start_soon(_call_quietly, g.agent, name)
        await crashed(world, "inside_group_commit")
    async with gate(world) as g:
        assert text_of(await g.agent.call_tool("notes__echo", {"text": "up"})) == "up"
    bodies = await check_log(world)
    executed = {b["correlation_id"] for b in bodies if b["event_type"] == "call.executed"}
    requested = {b["correlation_id"]: b for b in bodies if b["event_type"] == "call.requested"}
    unknown = {b["correlation_id"] for b in bodies if b["event_type"] == "call.outcome_unknown"}
    ran = sum(world.executions(name) for name in names)
    # Every execution has its call.requested (nothing ran unrecorded) and at most one outcome.
    assert ran <= len(
        [c for c in requested if requested[c].get("args", {}).get("name", "").startswith("low-j")]
    )
    assert ran >= len(executed - {c for c, b in requested.items() if b.get("tool") == "echo"})
    assert not executed & unknown


async def _call_quietly(agent: Client, name: str) -> None:
    with contextlib.suppress(Exception):  # the gate died under it
        await agent.call_tool("notes__append_note", {"name": name, "text": "x"})


SCENARIOS: dict[str, Callable[[World], Awaitable[None]]] = {
    "after_call_requested": scenario_after_call_requested,
    "after_hold_persisted": scenario_after_hold_persisted,
    "after_vote": scenario_after_vote,
    "after_deciding_vote": scenario_after_deciding_vote,
    "after_in_flight": scenario_after_in_flight,
    "after_in_flight_low": scenario_after_in_flight_low,
    "after_request_written": scenario_after_request_written,
    "after_result": scenario_after_result,
    "after_outcome": scenario_after_outcome,
    "inside_group_commit": scenario_inside_group_commit,
}


@pytest.mark.timeout(90)  # two to four gate starts with a downstream each, plus `audit verify`
@pytest.mark.parametrize("point", list(SCENARIOS))
async def test_a_gate_killed_at_this_point_loses_nothing_and_runs_nothing_twice(
    point: str, tmp_path: Path
) -> None:
    await SCENARIOS[point](make_world(tmp_path))


def signing_world(tmp_path: Path) -> World:
    world = make_world(tmp_path, extra="[evidence]\ncheckpoint_every_records = 3\n")
    made = mcp_gate(world, "keys", "init")
    assert made.returncode == 0, made.stderr
    return world


async def scenario_while_signing(world: World) -> None:
    async with gate(world):  # the first start writes the signed head of the empty log
        pass
    async with gate(world, crash="while_signing") as g:
        for i in range(10):
            if world.info_value("crashed"):
                break
            await _call_quietly(g.agent, f"low-k{i}")
        await crashed(world, "while_signing")
    async with gate(world) as g:  # the head was written, its checkpoint row not committed: it starts
        assert text_of(await g.agent.call_tool("notes__echo", {"text": "up"})) == "up"
    await check_log(world)
    assert all(world.executions(f"low-k{i}") <= 1 for i in range(10))


async def scenario_during_export(world: World) -> None:
    async with gate(world) as g:
        assert text_of(await g.agent.call_tool("notes__append_note", {"name": "low-l", "text": "x"}))
    partial = world.config.parent / "bundle"
    died = mcp_gate(world, "audit", "export", "--out", str(partial), crash="during_export")
    assert died.returncode == -9, died.stderr
    pubkey = mcp_gate(world, "keys", "show").stdout.strip().splitlines()[-1]
    refused = mcp_gate(world, "audit", "verify", "--bundle", str(partial), "--pubkey", pubkey)
    assert refused.returncode == 1, (
        refused.stdout + refused.stderr
    )  # an unsigned, half-written bundle never passes for a whole one
    await check_log(world)
    whole = world.config.parent / "bundle-2"
    assert mcp_gate(world, "audit", "export", "--out", str(whole)).returncode == 0
    checked = mcp_gate(world, "audit", "verify", "--bundle", str(whole), "--pubkey", pubkey)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.timeout(90)  # gate starts with a downstream each, plus `audit verify`
@pytest.mark.parametrize("point", ["while_signing", "during_export"])
async def test_a_gate_with_a_signing_key_killed_at_this_point_restarts_and_verifies(
    point: str, tmp_path: Path
) -> None:
    world = signing_world(tmp_path)
    await {"while_signing": scenario_while_signing, "during_export": scenario_during_export}[point](world)


@contextlib.contextmanager
def slack_world(tmp_path: Path) -> Iterator[tuple[World, FakeSlack]]:
    fake = fake_slack()
    with fake.running():
        yield make_world(tmp_path, extra=slack_table(fake, mode="http"), env=slack_env()), fake


async def scenario_during_slack_post(world: World, fake: FakeSlack) -> None:
    await held_then_killed(world, "during_slack_post", "high-m", ())
    [posted] = fake.calls_to("chat.postMessage")  # Slack shows it; the gate never recorded that
    async with gate(world) as g:  # the request is still decidable, and decided once
        request = await first_pending(g.api)
        assert fake.message_for(request["id"]) is not None
    assert await resend_and_finish(world, "high-m", ("bob",)) == "appended to high-m"
    assert world.executions("high-m") == 1
    await check_log(world)


async def scenario_during_slack_update(world: World, fake: FakeSlack) -> None:
    async def posted() -> object:  # a vote before the post would show in the post itself
        return await eventually(lambda: records_of(world, "slack.posted"), what="the Slack post recorded")

    await held_then_killed(world, "during_slack_update", "two-n", ("bob",), ready=posted)  # 1 vote of 2
    updates = len(fake.calls_to("chat.update"))
    assert updates >= 1  # Slack shows the vote; the gate never recorded that it does
    async with gate(world) as g:  # the restart renders it again: an update is idempotent
        await fake.wait_for(lambda: len(fake.calls_to("chat.update")) > updates, what="the update again")
        request = await first_pending(g.api)
        assert [v["approver"] for v in request["votes"]] == ["bob"]
    assert await resend_and_finish(world, "two-n", ("carol",)) == "appended to two-n"
    assert world.executions("two-n") == 1
    await check_log(world)


@pytest.mark.timeout(90)  # gate starts with a downstream each, a fake Slack, `audit verify`
@pytest.mark.parametrize("point", ["during_slack_post", "during_slack_update"])
async def test_a_gate_killed_while_talking_to_slack_loses_no_decision_and_runs_nothing_twice(
    point: str, tmp_path: Path
) -> None:
    scenarios = {
        "during_slack_post": scenario_during_slack_post,
        "during_slack_update": scenario_during_slack_update,
    }
    with slack_world(tmp_path) as (world, fake):
        await scenarios[point](world, fake)


@pytest.mark.timeout(90)  # as above
async def test_a_slack_message_posted_as_the_gate_died_shows_the_decision_taken_after_the_restart(
    tmp_path: Path,
) -> None:
    with slack_world(tmp_path) as (world, fake):
        await held_then_killed(world, "during_slack_post", "high-o", ())
        [orphan] = fake.calls_to("chat.postMessage")
        async with gate(world) as g:
            request = await first_pending(g.api)
            # Found by its metadata while the dead gate's lease still holds: nothing is posted again.
            [adopted] = await eventually(lambda: records_of(world, "slack.posted"), what="the adoption")
            assert adopted["recovered"] is True and adopted["request_id"] == request["id"]
            assert (await decide(g.api, "tok-bob", request["id"])).status_code == 200
            await fake.wait_for(
                lambda: "Approved" in str(fake.message_for(request["id"])), what="the orphan to show it"
            )
        assert fake.calls_to("chat.postMessage") == [orphan]
        channel, ts, _ = fake.message_for(request["id"]) or ("", "", {})
        assert (channel, ts) == (adopted["channel"], adopted["message_ts"])
        await check_log(world)
