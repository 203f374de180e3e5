"""OpenTelemetry spans of real calls, seen through the SDK's in-memory exporter: one span per call
with its correlation id, tier and outcome, children for its steps, the agent's traceparent
honoured, and no argument value anywhere; off unless the OTEL_* variables ask."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mcp_gate.config import tracing_settings
from mcp_gate.errors import ConfigError
from mcp_gate.testing import NOTES_MANIFEST, notes_server_table, running_gate, write_config
from mcp_gate.tracing import Tracing
from tests.test_api import hold

pytestmark = pytest.mark.anyio

ARGUMENT = "a-very-particular-argument-value"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def make_config(tmp_path: Path) -> Path:
    digest = hashlib.sha256(b"tok-agent").hexdigest()
    return write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        approvers={"bob": {"email": "bob@example.com", "groups": ["sre"], "token_sha256": "0" * 64}},
        tiers={"high": {"approvals": 1, "groups": ["sre"]}},
        extra=f'[agents.bot]\nowner = "bot@example.com"\ntoken_sha256 = "{digest}"\n',
    )


def traced() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider), exporter


def children(spans: tuple[ReadableSpan, ...], parent: ReadableSpan) -> list[str]:
    assert parent.context is not None
    return [s.name for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def no_argument_anywhere(spans: tuple[ReadableSpan, ...]) -> None:
    values: list[Any] = [v for s in spans for v in (s.attributes or {}).values()]
    assert not any(ARGUMENT in str(v) for v in values)


async def test_a_call_is_one_span_with_its_correlation_id_tier_and_outcome_and_a_child_per_step(
    tmp_path: Path,
) -> None:
    tracing, exporter = traced()
    async with running_gate(make_config(tmp_path)) as front:
        front.gateway.tracing = tracing
        async with Client(front.server, mode="legacy") as agent:
            result = await agent.call_tool("notes__echo", {"text": ARGUMENT})
        assert not result.is_error
        records = await front.gateway.store.records(event_type="call.requested")
    spans = exporter.get_finished_spans()
    [call] = [s for s in spans if s.name == "mcp_gate.call"]
    attributes = dict(call.attributes or {})
    assert attributes["mcp_gate.correlation_id"] == records[-1].correlation_id
    assert attributes["mcp_gate.tier"] == "low" and attributes["mcp_gate.outcome"] == "run"
    assert attributes["mcp_gate.server"] == "notes" and attributes["mcp_gate.tool"] == "notes__echo"
    steps = children(spans, call)
    assert steps.count("mcp_gate.evidence_write") == 2  # requested + decided, then executed
    assert {"mcp_gate.policy", "mcp_gate.downstream_call"} <= set(steps)
    no_argument_anywhere(spans)


async def test_a_held_call_has_a_hold_span_and_a_denied_one_ends_in_error(tmp_path: Path) -> None:
    tracing, exporter = traced()
    async with running_gate(make_config(tmp_path)) as front:
        front.gateway.tracing = tracing
        async with Client(front.server, mode="legacy") as agent, anyio.create_task_group() as tg:
            held = await hold(tg, front, agent, "notes__write_note", {"name": "n", "text": ARGUMENT})
            bob = front.gateway.config.approvers["bob"]
            await front.gateway.engine.decide(held.request.id, bob, "deny", channel="api", note="no")
            assert (await held.outcome()).is_error
    spans = exporter.get_finished_spans()
    [call] = [s for s in spans if s.name == "mcp_gate.call"]
    assert (call.attributes or {})["mcp_gate.outcome"] == "denied"
    assert not call.status.is_ok
    assert "mcp_gate.hold" in children(spans, call)
    no_argument_anywhere(spans)


async def test_an_http_agents_traceparent_is_the_parent_of_the_call_span(tmp_path: Path) -> None:
    tracing, exporter = traced()
    async with running_gate(make_config(tmp_path)) as front, anyio.create_task_group() as tg:
        front.gateway.tracing = tracing
        port = await tg.start(front.serve_http, "127.0.0.1", 0)
        headers = {"Authorization": "Bearer tok-agent", "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
        http = httpx2.AsyncClient(headers=headers, timeout=30)
        url = f"http://127.0.0.1:{port}/mcp"
        async with http, Client(streamable_http_client(url, http_client=http), mode="legacy") as agent:
            assert not (await agent.call_tool("notes__echo", {"text": "hi"})).is_error
        tg.cancel_scope.cancel()
    [call] = [s for s in exporter.get_finished_spans() if s.name == "mcp_gate.call"]
    assert call.context is not None and call.parent is not None
    assert format(call.context.trace_id, "032x") == TRACE_ID
    assert format(call.parent.span_id, "016x") == PARENT_ID


def test_traces_are_off_unless_the_otel_variables_ask_for_them() -> None:
    assert tracing_settings({}) is None
    assert tracing_settings({"OTEL_SERVICE_NAME": "x"}) is None
    console = tracing_settings({"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "gate-a"})
    assert console is not None and console.exporter == "console" and console.service_name == "gate-a"
    otlp = tracing_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert otlp is not None and otlp.exporter == "otlp" and otlp.endpoint == "http://collector:4318"
    assert (
        tracing_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"})
        is None
    )
    assert (
        tracing_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"})
        is None
    )
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER"):
        tracing_settings({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_the_runtime_builds_a_provider_only_when_tracing_is_asked_for() -> None:
    from mcp_gate import runtime
    from mcp_gate.config import TracingSettings

    assert not runtime.gate_tracing(None).on
    tracing = runtime.gate_tracing(TracingSettings("console", None, "mcp-gate test"))
    assert tracing.on and tracing.provider is not None
    resource = tracing.provider.resource  # the SDK's provider
    assert resource.attributes["service.name"] == "mcp-gate test"
    tracing.provider.shutdown()
