"""A replica cut off from PostgreSQL (a TCP proxy in the test between it and the shared server, cut
and restored; the server itself keeps running for everyone else): calls fail closed with a line an
LLM can act on, held calls stay held, the CLI says what is wrong in one line, the gate recovers by
itself, and a result that comes back after the replica's lease was taken over is recorded as late."""

from __future__ import annotations

import sys
import urllib.parse
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest

from mcp_gate.testing import eventually, within
from tests import pg_helpers
from tests.replica_helpers import (
    APPROVER_TOKEN,
    CuttableProxy,
    agent,
    api,
    executions,
    pending,
    replica,
    replica_config,
    text_of,
    through,
)
from tests.test_replicas import audit_verifies, records

pytestmark = pytest.mark.anyio

postgres_database = pg_helpers.postgres_database
postgres_url = pg_helpers.postgres_url


def proxy_for(url: str) -> CuttableProxy:
    parts = urllib.parse.urlsplit(url)
    return CuttableProxy(parts.hostname or "127.0.0.1", parts.port or 5432)


async def of_type(url: str, event_type: str) -> list[dict[str, Any]] | None:
    found = [r for r in await records(url) if r["event_type"] == event_type]
    return found or None


# Two gate processes, then a lease (2 s) lapsing during the cut and a 20 s downstream call.
@pytest.mark.timeout(180)
async def test_a_result_coming_back_after_the_replicas_lease_was_taken_over_is_recorded_as_late(
    tmp_path: Path, postgres_url: str
) -> None:
    config = replica_config(tmp_path, postgres_url)
    proxy = proxy_for(postgres_url)
    async with anyio.create_task_group() as proxies:
        await proxies.start(proxy.serve)
        cut_config = through(config, proxy.url(postgres_url), "gate-a")
        async with replica(cut_config, "a") as a, replica(config, "b") as b:
            async with agent(a) as client, anyio.create_task_group() as tg:
                box: list[types.CallToolResult] = []
                done = anyio.Event()

                async def call() -> None:
                    box.append(await client.call_tool("ops__deploy", {"name": "slow", "seconds": 20}))
                    done.set()

                tg.start_soon(call)
                [request] = await eventually(lambda: pending(b), what="the held call at B's API")
                await api(b, "POST", f"/requests/{request['id']}/approve", {})
                await eventually(lambda: executions(config) or None, what="the call to reach the downstream")
                await proxy.cut()  # A can no longer renew its lease, nor record the result
                [unknown] = await eventually(
                    lambda: of_type(postgres_url, "call.outcome_unknown"),
                    what="B to take over A's call",
                    timeout=60,
                )
                proxy.restore()
                await within(done.wait(), what="the call to finish at A", timeout=60)
            [late] = await eventually(
                lambda: of_type(postgres_url, "call.late_result"), what="A's late result", timeout=30
            )
            await eventually(
                lambda: "took over its calls in flight" in a.log() or None, what="A to say it was taken over"
            )
        proxies.cancel_scope.cancel()
    assert not box[0].is_error and text_of(box[0]) == "deployed slow"  # it did run, once
    assert late["outcome_unknown_event_id"] == unknown["event_id"]
    assert late["result_event_type"] == "call.executed"
    assert late["correlation_id"] == unknown["correlation_id"]
    assert late["recovered_by"] == unknown["recovered_by"] != unknown["replica"]
    kinds = [r["event_type"] for r in await records(postgres_url)]
    assert "call.executed" not in kinds and kinds.count("call.outcome_unknown") == 1
    assert executions(config) == ["slow"]
    await audit_verifies(config)


@pytest.mark.timeout(180)  # a gate process, an outage, a CLI process and a recovery
async def test_while_the_database_is_unreachable_calls_fail_closed_held_calls_stay_held_and_the_gate_recovers(
    tmp_path: Path, postgres_url: str
) -> None:
    config = replica_config(tmp_path, postgres_url)
    proxy = proxy_for(postgres_url)
    async with anyio.create_task_group() as proxies:
        await proxies.start(proxy.serve)
        cut_config = through(config, proxy.url(postgres_url), "gate-a")
        async with replica(cut_config, "a") as a, agent(a) as held_agent, anyio.create_task_group() as tg:
            box: list[types.CallToolResult] = []
            done = anyio.Event()

            async def held_call() -> None:
                box.append(await held_agent.call_tool("ops__deploy", {"name": "held", "seconds": 0}))
                done.set()

            tg.start_soon(held_call)
            [request] = await eventually(lambda: pending(a), what="the held call")
            await proxy.cut()
            async with agent(a) as other:
                refused = await other.call_tool("ops__deploy", {"name": "during", "seconds": 0})
            assert refused.is_error
            assert "the evidence store is unreachable; nothing was run; try again later" in text_of(refused)
            done_cli = await anyio.run_process(
                [sys.executable, "-m", "mcp_gate", "pending", "--config", str(cut_config)],
                env={"MCP_GATE_TOKEN": APPROVER_TOKEN, "PATH": "/usr/bin:/bin"},
                check=False,
            )
            err = done_cli.stderr.decode()
            assert done_cli.returncode == 2, err
            assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
            assert "127.0.0.1" in err and "postgres@" in err  # names the store, never a password
            assert not done.is_set()  # the held call is still held
            proxy.restore()
            # Decided through the database directly: the held call at A wakes and runs once.
            decided = await api(a, "POST", f"/requests/{request['id']}/approve", {})
            assert decided["request"]["state"] in ("approved", "executing", "executed"), decided
            await within(done.wait(), what="the held call to run after the outage", timeout=60)
        proxies.cancel_scope.cancel()
    assert not box[0].is_error and text_of(box[0]) == "deployed held"
    assert executions(config) == ["held"]
    kinds = [r["event_type"] for r in await records(postgres_url)]
    assert kinds.count("call.executed") == 1
    await audit_verifies(config)
