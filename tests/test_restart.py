"""Restart safety: the gate process is killed (SIGKILL) at the worst moments and started again."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters

from mcp_gate.approvals import ApprovalRequest, Approved
from mcp_gate.config import load_config
from mcp_gate.runtime import open_engine
from mcp_gate.storage.sqlite import SQLiteStore
from mcp_gate.testing import (
    NOTES_MANIFEST,
    approver_table,
    eventually,
    notes_server_table,
    write_config,
)

pytestmark = pytest.mark.anyio

# `sleep` is high here, so a slow call can be approved and then interrupted mid-execution.
MANIFEST = NOTES_MANIFEST.read_text().replace(
    'tools = ["sleep", "crash"]\ntier = "low"', 'tools = ["sleep"]\ntier = "high"'
)


def text_of(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    assert NOTES_MANIFEST.read_text() != MANIFEST
    return write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": MANIFEST},
        approvers={"bob": approver_table("bob@example.com", ["sre"], "tok-bob")},
        approvals={"hold_seconds": 60, "progress_seconds": 1},
    )


@asynccontextmanager
async def gate_process(config: Path, pid_file: Path) -> AsyncIterator[Client]:
    """The real gate over stdio; its pid is written to `pid_file` (exec keeps the pid)."""
    launcher = (
        "import os, sys; "
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
        f"os.execv(sys.executable, [sys.executable, '-m', 'mcp_gate', 'serve', '--config', {str(config)!r}])"
    )
    async with Client(
        StdioServerParameters(command=sys.executable, args=["-c", launcher]), mode="legacy"
    ) as agent:
        yield agent


def kill(pid_file: Path) -> None:
    os.kill(int(pid_file.read_text()), signal.SIGKILL)


async def wait_for(config: Path, predicate: Any, what: str) -> Any:
    loaded = load_config(config, {})

    async def probe() -> Any:
        if not (loaded.data_dir / "gate.db").exists():
            return None
        async with open_engine(loaded) as engine:
            return await predicate(engine)

    return await eventually(probe, what=what, timeout=30, interval=0.05)


async def pending_request(config: Path) -> ApprovalRequest:
    async def first(engine: Any) -> ApprovalRequest | None:
        pending = await engine.pending()
        return pending[0] if pending else None

    found: ApprovalRequest = await wait_for(config, first, "a pending request")
    return found


async def approve(config: Path, request_id: str) -> None:
    loaded = load_config(config, {})
    async with open_engine(loaded) as engine:
        assert isinstance(
            await engine.decide(request_id, loaded.approvers["bob"], "approve", channel="cli"), Approved
        )


async def events(config: Path) -> list[dict[str, Any]]:
    async with await SQLiteStore.open(config.parent / "data" / "gate.db") as store:
        return [dict(r.body) for r in await store.records()]


async def call_until_killed(agent: Client, name: str, arguments: dict[str, Any]) -> None:
    try:
        await agent.call_tool(name, arguments)
    except Exception:  # the gate is killed under this call: the SDK reports the closed connection
        return
    raise AssertionError("the call finished although the gate was killed")


async def test_a_pending_request_survives_a_killed_gate_and_can_still_be_decided(
    config: Path, tmp_path: Path
) -> None:
    pid = tmp_path / "pid"
    args = {"name": "survivor", "text": "kept"}
    async with gate_process(config, pid) as agent, anyio.create_task_group() as tg:
        tg.start_soon(call_until_killed, agent, "notes__write_note", args)
        request = await pending_request(config)
        kill(pid)
    await approve(config, request.id)
    async with gate_process(config, pid) as agent:
        result = await agent.call_tool("notes__write_note", args)
    assert text_of(result) == "wrote survivor"
    assert (tmp_path / "notes" / "survivor").read_text() == "kept"


async def test_an_approved_call_does_not_run_on_restart_but_only_when_the_agent_sends_it_again(
    config: Path, tmp_path: Path
) -> None:
    pid = tmp_path / "pid"
    args = {"name": "later", "text": "v"}
    async with gate_process(config, pid) as agent, anyio.create_task_group() as tg:
        tg.start_soon(call_until_killed, agent, "notes__write_note", args)
        request = await pending_request(config)
        kill(pid)
    await approve(config, request.id)
    async with gate_process(config, pid) as agent:
        assert "notes__echo" in {t.name for t in (await agent.list_tools()).tools}  # up, recovered
        assert not (tmp_path / "notes" / "later").exists()
        result = await agent.call_tool("notes__write_note", args)
    assert text_of(result) == "wrote later"
    kinds = [e["event_type"] for e in await events(config)]
    assert kinds.count("call.executed") == 1


async def test_a_call_killed_mid_execution_is_recorded_as_outcome_unknown_and_never_rerun(
    config: Path, tmp_path: Path
) -> None:
    pid = tmp_path / "pid"
    async with gate_process(config, pid) as agent, anyio.create_task_group() as tg:
        tg.start_soon(call_until_killed, agent, "notes__sleep", {"seconds": 30})
        request = await pending_request(config)
        await approve(config, request.id)

        async def executing(engine: Any) -> bool:
            return bool((await engine.get(request.id)).state == "executing")

        await wait_for(config, executing, "the call to start")
        kill(pid)
    async with gate_process(config, pid) as agent:
        assert "notes__echo" in {t.name for t in (await agent.list_tools()).tools}
    recorded = await events(config)
    unknown = [e for e in recorded if e["event_type"] == "call.outcome_unknown"]
    assert len(unknown) == 1 and unknown[0]["request_id"] == request.id
    assert unknown[0]["correlation_id"] != request.correlation_id or unknown[0]["tool"] == "sleep"
    released = [e for e in recorded if e["event_type"] == "call.released"]
    assert len(released) == 1  # started once, never again
    loaded = load_config(config, {})
    async with open_engine(loaded) as engine:
        assert (await engine.get(request.id)).state == "outcome_unknown"


async def test_a_second_gate_on_the_same_data_leaves_the_first_ones_calls_in_flight_alone(
    config: Path, tmp_path: Path
) -> None:
    from mcp_gate.testing import running_gate

    low_sleep = config.parent / "tool_manifests" / "notes.toml"
    low_sleep.write_text(NOTES_MANIFEST.read_text())  # sleep is low again: it runs at once
    async with running_gate(config) as first, Client(first.server, mode="legacy") as agent:
        async with anyio.create_task_group() as tg:
            box: list[types.CallToolResult] = []

            async def slow() -> None:
                box.append(await agent.call_tool("notes__sleep", {"seconds": 1.5}))

            tg.start_soon(slow)

            async def in_flight(engine: Any) -> bool:
                return bool(await engine.store.read(lambda tx: tx.inflight()))

            await wait_for(config, in_flight, "the call to start")
            async with running_gate(config):  # e.g. `mcp-gate check` beside a serving gate
                pass
        assert text_of(box[0]) == "slept"
    kinds = [e["event_type"] for e in await events(config)]
    assert "call.outcome_unknown" not in kinds and kinds.count("call.executed") == 1


async def test_a_gate_started_while_another_still_serves_never_recovers_its_calls(
    config: Path, tmp_path: Path
) -> None:
    from mcp_gate.testing import running_gate

    (config.parent / "tool_manifests" / "notes.toml").write_text(NOTES_MANIFEST.read_text())
    first_may_exit = anyio.Event()

    async def first_gate(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        async with running_gate(config):
            task_status.started()
            await first_may_exit.wait()

    async with anyio.create_task_group() as tg:
        await tg.start(first_gate)  # the first gate, holding the lock from the start
        async with running_gate(config) as second, Client(second.server, mode="legacy") as agent:
            box: list[types.CallToolResult] = []

            async def slow() -> None:
                box.append(await agent.call_tool("notes__sleep", {"seconds": 1.5}))

            async with anyio.create_task_group() as calls:
                calls.start_soon(slow)

                async def in_flight(engine: Any) -> bool:
                    return bool(await engine.store.read(lambda tx: tx.inflight()))

                await wait_for(config, in_flight, "the call to start")
                first_may_exit.set()  # the first gate leaves while the second still serves
                await anyio.sleep(0.1)
                async with running_gate(config):  # a third: it must not take the call for a crash
                    pass
        assert text_of(box[0]) == "slept"
    kinds = [e["event_type"] for e in await events(config)]
    assert "call.outcome_unknown" not in kinds and kinds.count("call.executed") == 1


async def test_a_killed_gate_is_told_apart_from_a_clean_stop_and_its_cut_off_held_calls_are_named(
    config: Path, tmp_path: Path
) -> None:
    pid = tmp_path / "pid"
    async with gate_process(config, pid) as agent:  # a clean run: started, then stopped
        assert text_of(await agent.call_tool("notes__echo", {"text": "hi"})) == "hi"
    async with gate_process(config, pid) as agent, anyio.create_task_group() as tg:
        tg.start_soon(call_until_killed, agent, "notes__write_note", {"name": "cut", "text": "off"})
        request = await pending_request(config)
        kill(pid)
    async with gate_process(config, pid) as agent:  # the restart notices the kill
        assert text_of(await agent.call_tool("notes__echo", {"text": "again"})) == "again"
    async with gate_process(config, pid):  # and a start after a clean stop notices nothing
        pass
    records = await events(config)
    life = [
        (r["event_type"], r.get("run"), r.get("how")) for r in records if r["event_type"].startswith("gate.")
    ]
    runs = [run for kind, run, _ in life if kind == "gate.started"]
    assert len(runs) == 4 and len(set(runs)) == 4
    assert life == [
        ("gate.started", runs[0], None),
        ("gate.stopped", runs[0], "clean"),
        ("gate.started", runs[1], None),  # killed: no stop of its own
        ("gate.started", runs[2], None),
        ("gate.unclean_stop", runs[1], None),
        ("gate.stopped", runs[2], "clean"),
        ("gate.started", runs[3], None),
        ("gate.stopped", runs[3], "clean"),
    ]
    [unclean] = [r for r in records if r["event_type"] == "gate.unclean_stop"]
    [cut_off] = unclean["held_calls_cut_off"]
    assert (cut_off["request_id"], cut_off["tool"], cut_off["state"]) == (request.id, "write_note", "pending")
