"""/metrics over a real gate: the counters match a scripted run of low, held, approved, denied and
blocked calls; every gate has its own registry; labels never carry ids, tokens or arguments."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from prometheus_client.parser import text_string_to_metric_families

from mcp_gate.health import Probes, serve_admin
from mcp_gate.metrics import GateMetrics
from mcp_gate.server import FrontServer
from mcp_gate.testing import eventually, running_gate
from tests.slack_helpers import slack_gate
from tests.test_api import hold, make_config

pytestmark = pytest.mark.anyio

BOB = {"Authorization": "Bearer tok-bob"}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


@asynccontextmanager
async def gate_with_admin(config: Path) -> AsyncIterator[tuple[FrontServer, httpx2.AsyncClient, Client]]:
    async with running_gate(config) as front, anyio.create_task_group() as tg:
        port = await tg.start(serve_admin, Probes(front.gateway), "127.0.0.1", 0)
        async with (
            httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
            Client(front.server, mode="legacy") as agent,
        ):
            yield front, http, agent
        tg.cancel_scope.cancel()


async def scrape(http: httpx2.AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


async def test_the_counters_match_a_scripted_run_of_low_held_approved_denied_and_blocked_calls(
    tmp_path: Path,
) -> None:
    low, approved, denied = 3, 2, 1
    async with gate_with_admin(make_config(tmp_path)) as (front, http, agent):
        for i in range(low):
            result = await agent.call_tool("notes__echo", {"text": f"hello {i}"})
            assert not result.is_error
        async with anyio.create_task_group() as tg:
            for i in range(approved):
                held = await hold(tg, front, agent, "notes__write_note", {"name": f"n{i}", "text": "x"})
                during = await scrape(http)
                assert value(during, "mcp_gate_held_requests") == 1
                assert value(during, "mcp_gate_oldest_held_request_expires_in_seconds") > 0
                approve = await http.post(f"/v1/requests/{held.request.id}/approve", json={}, headers=BOB)
                assert approve.status_code == 200, approve.text
                assert not (await held.outcome()).is_error
            for i in range(denied):
                held = await hold(tg, front, agent, "notes__write_note", {"name": f"d{i}", "text": "x"})
                deny = await http.post(
                    f"/v1/requests/{held.request.id}/deny", json={"reason": "not today"}, headers=BOB
                )
                assert deny.status_code == 200, deny.text
                assert (await held.outcome()).is_error
        blocked = await agent.call_tool("notes__purge_notes", {})
        assert blocked.is_error
        unknown = await agent.call_tool("notes__no_such_tool", {"secret": "hunter2"})
        assert unknown.is_error
        assert (await http.get("/v1/requests")).status_code == 401  # no approver token

        after = await scrape(http)
        calls = "mcp_gate_tool_calls_total"
        assert value(after, calls, server="notes", tier="low", outcome="run") == low
        assert value(after, calls, server="notes", tier="high", outcome="held") == approved
        assert value(after, calls, server="notes", tier="high", outcome="denied") == denied
        assert value(after, calls, server="notes", tier="blocked", outcome="blocked") == 1
        assert value(after, calls, server="none", tier="none", outcome="refused") == 1
        total = sum(v for (name, _), v in after.items() if name == calls)
        assert total == low + approved + denied + 2
        decisions = value(after, "mcp_gate_decision_seconds_count", tier="high", channel="api")
        assert decisions == approved + denied
        ran = low + approved
        assert value(after, "mcp_gate_downstream_call_seconds_count", server="notes") == ran
        assert value(after, "mcp_gate_call_overhead_seconds_count", server="notes") == ran + denied + 1
        assert value(after, "mcp_gate_held_requests") == 0
        assert value(after, "mcp_gate_refused_tokens_total", listener="approver", reason="missing") == 1
        assert value(after, "mcp_gate_downstream_up", server="notes") == 1
        assert value(after, "mcp_gate_evidence_batch_size_count") > 0
        assert value(after, "mcp_gate_evidence_write_failures_total") == 0
        # Bounded labels: no request id, correlation id, token or argument value in any series.
        label_values = {v for (_, labels), _ in after.items() for _, v in labels}
        assert not label_values & {"no_such_tool", "notes__no_such_tool", "hunter2", "tok-bob", "x"}
        assert not any(len(v) >= 26 for v in label_values)  # request and correlation ids are long


async def test_each_gate_counts_in_its_own_registry() -> None:
    first, second = GateMetrics(), GateMetrics()
    first.call("notes", "low", "run")
    assert (
        value(
            samples(first.exposition().decode()),
            "mcp_gate_tool_calls_total",
            server="notes",
            tier="low",
            outcome="run",
        )
        == 1
    )
    assert (
        value(
            samples(second.exposition().decode()),
            "mcp_gate_tool_calls_total",
            server="notes",
            tier="low",
            outcome="run",
        )
        == 0
    )


async def test_a_downstream_restart_is_counted_once(tmp_path: Path) -> None:
    async with gate_with_admin(make_config(tmp_path)) as (front, http, agent):
        ds = front.gateway.downstreams["notes"]
        await agent.call_tool("notes__crash", {})

        async def restarted() -> bool:
            return ds.connects >= 2 and ds.state == "up"

        await eventually(restarted, what="the notes server to be restarted")
        first = await scrape(http)
        again = await scrape(http)
    assert value(first, "mcp_gate_downstream_restarts_total", server="notes") == 1
    assert value(again, "mcp_gate_downstream_restarts_total", server="notes") == 1


async def test_a_gate_with_metrics_off_counts_nothing_and_still_serves_calls(tmp_path: Path) -> None:
    metrics = GateMetrics(enabled=False)
    async with running_gate(make_config(tmp_path), metrics=metrics) as front:
        assert front.gateway.store.commit_observer is None
        async with Client(front.server, mode="legacy") as agent:
            assert not (await agent.call_tool("notes__echo", {"text": "hi"})).is_error
    scraped = samples(metrics.exposition().decode())
    assert value(scraped, "mcp_gate_tool_calls_total", server="notes", tier="low", outcome="run") == 0
    assert value(scraped, "mcp_gate_evidence_batch_size_count") == 0


async def test_slack_post_failures_and_retries_are_counted_and_readyz_names_slack(tmp_path: Path) -> None:
    async with slack_gate(tmp_path) as s:
        probes = Probes(s.gate, slack_connected=lambda: s.channel.link is not None)
        async with anyio.create_task_group() as tg:
            port = await tg.start(serve_admin, probes, "127.0.0.1", 0)
            async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                ready = (await http.get("/readyz")).json()
                assert ready["checks"]["slack"] == "connected" and ready["status"] == "ready"
                s.fake.fail(503)
                s.call("notes__write_note", {"name": "plan", "text": "ship"})
                request = await s.held()
                await s.wait_record(lambda r: r["event_type"] == "slack.post_failed" and r["attempt"] == 2)
                s.fake.restore()
                await s.posted(request.id)
                scraped = await scrape(http)
            tg.cancel_scope.cancel()
    assert value(scraped, "mcp_gate_channel_post_failures_total", channel="slack") >= 2
    assert value(scraped, "mcp_gate_channel_post_retries_total", channel="slack") >= 2


async def test_the_checkpoint_age_is_served_once_the_gate_signs_checkpoints(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.write_text(config.read_text() + "\n[evidence]\ncheckpoint_every_records = 1\n")
    made = subprocess.run(
        [sys.executable, "-m", "mcp_gate", "keys", "init", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    async with gate_with_admin(config) as (front, http, agent):
        assert not (await agent.call_tool("notes__echo", {"text": "hi"})).is_error
        scraped = await scrape(http)
    assert ("mcp_gate_checkpoint_age_seconds", frozenset()) in scraped
    assert 0 <= value(scraped, "mcp_gate_checkpoint_age_seconds") < 3600
