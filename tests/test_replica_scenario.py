"""Three `mcp-gate serve --http` replicas on one PostgreSQL database, as a team runs them: agents on
one replica, decisions through another's API and through the CLI pointed at the database, a storm
of approvals spread over all three, and a 2026-07-28 client whose calls land on different
replicas. The evidence verifies after each, with no gap in its sequence."""

from __future__ import annotations

import itertools
import sys
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_gate.storage.postgres import PostgresStore
from mcp_gate.testing import eventually, within
from tests import pg_helpers
from tests.replica_helpers import (
    AGENT_TOKEN,
    APPROVER_TOKEN,
    Replica,
    agent,
    api,
    executions,
    pending,
    replica,
    replica_config,
    text_of,
)
from tests.test_replicas import audit_verifies

pytestmark = pytest.mark.anyio

postgres_database = pg_helpers.postgres_database
postgres_url = pg_helpers.postgres_url


async def gapless(url: str) -> list[dict[str, Any]]:
    """Every record, after checking that seq runs 1..n without a gap."""
    async with await PostgresStore.open(url, create=False) as store:
        found = await store.records()
    assert [r.seq for r in found] == list(range(1, len(found) + 1))
    return [dict(r.body) for r in found]


async def cli(config: Path, *args: str) -> tuple[int, str, str]:
    done = await anyio.run_process(
        [sys.executable, "-m", "mcp_gate", *args, "--config", str(config)],
        env={"MCP_GATE_TOKEN": APPROVER_TOKEN, "PATH": "/usr/bin:/bin"},
        check=False,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


@asynccontextmanager
async def three(config: Path) -> AsyncIterator[tuple[Replica, Replica, Replica]]:
    async with replica(config, "a") as a, replica(config, "b") as b, replica(config, "c") as c:
        yield a, b, c


# Three gate processes with a downstream each on a machine of two cores, fifty concurrent API
# requests and CLI processes: minutes, not the default one.
@pytest.mark.timeout(300)
async def test_three_replicas_decide_at_b_and_by_the_cli_and_fifty_concurrent_approvals_run_a_call_once(
    tmp_path: Path, postgres_url: str
) -> None:
    config = replica_config(tmp_path, postgres_url, lease_seconds=15)
    async with three(config) as (a, b, c), agent(a) as client, anyio.create_task_group() as tg:
        results: dict[str, types.CallToolResult] = {}

        async def call(name: str) -> None:
            results[name] = await client.call_tool("ops__deploy", {"name": name, "seconds": 0})

        # Decided through B's API.
        tg.start_soon(call, "first")
        [first] = await eventually(lambda: pending(b), what="the first held call at B")
        await api(b, "POST", f"/requests/{first['id']}/approve", {})
        await eventually(lambda: results.get("first"), what="the first call to return at A")
        # Decided by the CLI pointed at the database (no replica's API involved).
        tg.start_soon(call, "second")
        [second] = await eventually(lambda: pending(c), what="the second held call")
        code, out, err = await cli(config, "approve", second["id"])
        assert code == 0, err
        await eventually(lambda: results.get("second"), what="the second call to return at A")
        # Fifty approvals of one request at once, spread over the three APIs.
        tg.start_soon(call, "storm")
        [storm] = await eventually(lambda: pending(a), what="the storm's held call")
        answers: list[Any] = []

        async def approve(at: Replica) -> None:
            answers.append(await api(at, "POST", f"/requests/{storm['id']}/approve", {}))

        async with anyio.create_task_group() as storm_tg:
            for _, at in zip(range(50), itertools.cycle((a, b, c)), strict=False):
                storm_tg.start_soon(approve, at)
        await within(
            eventually(lambda: results.get("storm"), what="the storm's call to return"), what="the storm"
        )
        assert len(answers) == 50
        accepted = [x for x in answers if isinstance(x, dict) and "request" in x]
        assert len(accepted) == 1, answers[:3]  # one vote counted; the rest refused (already decided)
    assert all(not r.is_error for r in results.values()), {k: text_of(v) for k, v in results.items()}
    assert sorted(executions(config)) == ["first", "second", "storm"]
    records = await gapless(postgres_url)
    kinds = [r["event_type"] for r in records]
    assert kinds.count("call.executed") == 3 and kinds.count("call.released") == 3
    assert kinds.count("approval.decided") == 3
    await audit_verifies(config)


class RoundRobin:
    """A load balancer that sends each new TCP connection to the next replica in turn (and so,
    with a client that opens a connection per request, each request)."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.served = [0] * len(ports)
        self._next = itertools.cycle(range(len(ports)))
        self.port = 0

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener:
            task_status.started()
            await listener.serve(self._handle)

    async def _handle(self, client: Any) -> None:
        index = next(self._next)
        self.served[index] += 1
        async with (
            client,
            await anyio.connect_tcp("127.0.0.1", self.ports[index]) as upstream,
            anyio.create_task_group() as tg,
        ):

            async def pump(source: Any, sink: Any) -> None:
                try:
                    async for chunk in source:
                        await sink.send(chunk)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(pump, client, upstream)
            tg.start_soon(pump, upstream, client)


# Two gate processes with a downstream each, then three held calls decided one after another.
@pytest.mark.timeout(180)
async def test_a_2026_07_28_client_whose_requests_land_on_different_replicas_is_served_by_each(
    tmp_path: Path, postgres_url: str
) -> None:
    config = replica_config(tmp_path, postgres_url, lease_seconds=15)
    async with replica(config, "a") as a, replica(config, "b") as b, anyio.create_task_group() as tg:
        ports = [urllib.parse.urlsplit(r.mcp_url).port or 0 for r in (a, b)]
        balancer = RoundRobin(ports)
        await tg.start(balancer.serve)
        # No keep-alive: every request is a new connection, so the balancer alternates them.
        http = httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {AGENT_TOKEN}", "Connection": "close"},
            timeout=90,
            limits=httpx2.Limits(max_keepalive_connections=0),
        )
        url = f"http://127.0.0.1:{balancer.port}/mcp"
        async with http, Client(streamable_http_client(url, http_client=http), mode="auto") as client:
            assert client.protocol_version == "2026-07-28"  # stateless: no session to stick to
            tools = await client.list_tools()
            assert [t.name for t in tools.tools] == ["ops__deploy"]
            results: dict[str, types.CallToolResult] = {}

            async def call(name: str) -> None:
                results[name] = await client.call_tool("ops__deploy", {"name": name, "seconds": 0})

            for name in ("one", "two", "three"):
                async with anyio.create_task_group() as calls:
                    calls.start_soon(call, name)
                    [held] = await eventually(lambda: pending(a), what=f"the call {name} held")
                    await api(b, "POST", f"/requests/{held['id']}/approve", {})
                    await eventually(lambda: results.get(name), what=f"the call {name} to return")  # noqa: B023
                assert not results[name].is_error and text_of(results[name]) == f"deployed {name}"
        tg.cancel_scope.cancel()
    assert all(balancer.served), balancer.served  # both replicas served this client's requests
    assert executions(config) == ["one", "two", "three"]
    await gapless(postgres_url)
    await audit_verifies(config)
