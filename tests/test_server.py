"""The agent-facing server over real transports: stdio subprocesses and streamable HTTP, both eras."""

from __future__ import annotations

import hashlib
import json
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
import uvicorn
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from mcp_gate.storage.sqlite import SQLiteStore
from mcp_gate.testing import (
    NOTES_MANIFEST,
    NOTES_SERVER,
    eventually,
    notes_server,
    notes_server_table,
    running_gate,
    write_config,
)

pytestmark = pytest.mark.anyio

MODES = ["legacy", "auto"]
TOKEN = "agent-token-Zq8v1c0ffee"


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    },
}


def text_of(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def gate_process(config: Path) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_gate", "serve", "--config", str(config)]
    )


@pytest.fixture
def notes_config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        approvals={"hold_seconds": 0.3},
        extra=f'[agents.ci-bot]\ntoken_sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"\n'
        'owner = "carol@example.com"\n',
    )


async def records(config: Path) -> list[dict[str, Any]]:
    async with await SQLiteStore.open(config.parent / "data" / "gate.db") as store:
        return [dict(r.body) for r in await store.records()]


@pytest.mark.parametrize("mode", MODES)
async def test_the_gate_serves_a_real_stdio_client_in_both_protocol_eras(
    notes_config: Path, mode: str
) -> None:
    async with Client(gate_process(notes_config), mode=mode) as agent:
        expected_era = "2025-11-25" if mode == "legacy" else "2026-07-28"
        assert agent.protocol_version == expected_era
        tools = agent.server_capabilities.tools
        assert tools is not None and tools.list_changed is True
        names = {t.name for t in (await agent.list_tools()).tools}
        assert {"notes__echo", "notes__write_note"} <= names
        assert text_of(await agent.call_tool("notes__echo", {"text": "over stdio"})) == "over stdio"
        refused = await agent.call_tool("notes__write_note", {"name": "a", "text": "b"})
        assert refused.is_error and "high" in text_of(refused)
    kinds = [r["event_type"] for r in await records(notes_config)]
    assert kinds.count("call.executed") == 1 and kinds.count("call.deferred") == 1


async def test_malformed_json_rpc_on_stdin_gets_errors_and_the_gate_keeps_serving(notes_config: Path) -> None:
    lines = [
        b"this is not json\n",
        b'{"jsonrpc": "2.0", "id": 99, "method": 12}\n',
        json.dumps(INITIALIZE).encode() + b"\n",
        b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n',
        b'{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "notes__echo"}}\n',
        b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"notes__echo","arguments":{"text":"alive"}}}\n',
    ]
    cmd = [sys.executable, "-m", "mcp_gate", "serve", "--config", str(notes_config)]
    answers: dict[Any, dict[str, Any]] = {}
    async with await anyio.open_process(cmd) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        for line in lines:
            await proc.stdin.send(line)
        buffer = b""
        with anyio.fail_after(60):
            while 3 not in answers:
                buffer += await proc.stdout.receive()
                *complete, buffer = buffer.split(b"\n")
                for raw in complete:
                    message = json.loads(raw)  # everything on stdout is JSON-RPC
                    answers[message.get("id")] = message
        await proc.stdin.aclose()
        proc.terminate()
    assert "result" in answers[1]
    assert answers[2]["result"]["isError"] is True
    assert "'text' is a required property" in answers[2]["result"]["content"][0]["text"]
    assert answers[3]["result"]["content"][0]["text"] == "alive"


async def test_arguments_that_are_not_an_object_are_refused_with_a_reason_and_recorded(
    notes_config: Path,
) -> None:
    calls = {2: [1, 2], 3: "text=hi", 4: 7}
    lines = [json.dumps(INITIALIZE), '{"jsonrpc":"2.0","method":"notifications/initialized"}']
    lines += [
        json.dumps(
            {
                "jsonrpc": "2.0",
                "id": i,
                "method": "tools/call",
                "params": {"name": "notes__echo", "arguments": a},
            }
        )
        for i, a in calls.items()
    ]
    cmd = [sys.executable, "-m", "mcp_gate", "serve", "--config", str(notes_config)]
    answers: dict[Any, dict[str, Any]] = {}
    async with await anyio.open_process(cmd) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        await proc.stdin.send("".join(line + "\n" for line in lines).encode())
        buffer = b""
        with anyio.fail_after(50):
            while not set(calls) <= set(answers):
                buffer += await proc.stdout.receive()
                *complete, buffer = buffer.split(b"\n")
                for raw in complete:
                    message = json.loads(raw)
                    answers[message.get("id")] = message
        await proc.stdin.aclose()
    for i, kind in [(2, "list"), (3, "str"), (4, "int")]:
        result = answers[i]["result"]
        assert result["isError"] is True
        assert f"arguments must be a JSON object, not {kind}" in result["content"][0]["text"]
    refused = [r for r in await records(notes_config) if r["event_type"] == "call.refused"]
    assert len(refused) == 3 and all(r["tool"] == "echo" for r in refused)
    assert all("must be a JSON object" in r["error"] for r in refused)


@pytest.mark.parametrize("mode", MODES)
async def test_progress_from_the_downstream_reaches_the_agent_through_the_gate(
    notes_config: Path, mode: str
) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    notes = notes_server(notes_config.parent.parent / "notes")
    async with (
        running_gate(notes_config, servers={"notes": notes}) as front,
        Client(front.server, mode=mode) as agent,
    ):
        result = await agent.call_tool("notes__sleep", {"seconds": 0.2}, progress_callback=on_progress)
    assert text_of(result) == "slept"
    assert [p for p, _, _ in seen] == [float(i) for i in range(1, 11)]
    assert seen[-1][2] == "slept 10/10"


async def test_a_client_that_cancels_a_call_cancels_the_downstream_work_and_it_is_recorded(
    notes_config: Path,
) -> None:
    notes = notes_server(notes_config.parent.parent / "notes")
    async with (
        running_gate(notes_config, servers={"notes": notes}) as front,
        Client(front.server, mode="legacy") as agent,
    ):
        with anyio.move_on_after(0.5):
            await agent.call_tool("notes__sleep", {"seconds": 20})

        async def failed_recorded() -> bool:
            return any(r["event_type"] == "call.failed" for r in await records(notes_config))

        await eventually(failed_recorded, what="the cancelled call's call.failed record", interval=0.05)
        assert text_of(await agent.call_tool("notes__echo", {"text": "next"})) == "next"
    failed = [r for r in await records(notes_config) if r["event_type"] == "call.failed"]
    assert failed[0]["tool"] == "sleep" and "cancelled" in failed[0]["error"]


async def test_modern_clients_hear_about_tool_changes_through_a_listen_subscription(
    notes_config: Path,
) -> None:
    async with running_gate(notes_config) as front, Client(front.server, mode="auto") as agent:
        async with agent.listen(tools_list_changed=True) as subscription:
            crashed = await agent.call_tool("notes__crash", {})
            assert crashed.is_error
            with anyio.fail_after(30):
                async for _event in subscription:
                    break
        await eventually(  # the respawned server's tools are reconciled just after it is up
            lambda: "notes__echo" in {t.name for t in front.gateway.offering.list_tools()},
            what="the respawned server's tools",
            timeout=30,
            interval=0.05,
        )
        assert "notes__echo" in {t.name for t in (await agent.list_tools()).tools}


# -- streamable HTTP --------------------------------------------------------------------------


@asynccontextmanager
async def http_gate(config: Path) -> AsyncIterator[str]:
    async with running_gate(config) as front, anyio.create_task_group() as tg:
        port = await tg.start(front.serve_http, "127.0.0.1", 0)
        try:
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            tg.cancel_scope.cancel()


def http_client(url: str, token: str | None) -> Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0))
    return Client(streamable_http_client(url, http_client=http), mode="legacy")


@pytest.mark.parametrize("mode", MODES)
async def test_over_http_the_requester_is_the_agent_whose_bearer_token_was_presented(
    notes_config: Path, mode: str
) -> None:
    async with http_gate(notes_config) as url:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=httpx2.Timeout(30.0))
        async with http, Client(streamable_http_client(url, http_client=http), mode=mode) as agent:
            tools = agent.server_capabilities.tools
            assert tools is not None and tools.list_changed is True
            assert text_of(await agent.call_tool("notes__echo", {"text": "via http"})) == "via http"
    executed = [r for r in await records(notes_config) if r["event_type"] == "call.requested"]
    assert executed[-1]["requester"] == {"agent": "ci-bot", "owner": "carol@example.com"}
    assert executed[-1]["transport"] == "http"
    stored = b"".join(p.read_bytes() for p in (notes_config.parent / "data").rglob("*") if p.is_file())
    assert TOKEN.encode() not in stored


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-token", "Basic Zm9vOmJhcg==", "Bearer", f"Bearer {TOKEN}x"]
)
async def test_an_http_request_without_a_valid_bearer_token_gets_401(
    notes_config: Path, authorization: str | None
) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    async with http_gate(notes_config) as url, httpx2.AsyncClient() as http:
        response = await http.post(url, json=body, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_downstream_over_streamable_http_is_served_with_its_configured_headers(
    tmp_path: Path,
) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("notes_server", NOTES_SERVER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seen_headers: list[str] = []
    inner = module.build_server(tmp_path / "notes").streamable_http_app(host="127.0.0.1")

    async def recording_app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen_headers.extend(v.decode() for k, v in scope["headers"] if k == b"x-api-key")
        await inner(scope, receive, send)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    downstream = uvicorn.Server(uvicorn.Config(recording_app, log_level="warning", lifespan="on"))
    config = write_config(
        tmp_path / "gate",
        servers={
            "remote": {"url": f"http://127.0.0.1:{port}/mcp", "headers": {"X-Api-Key": "${REMOTE_KEY}"}}
        },
        manifests={"remote": NOTES_MANIFEST.read_text().replace('server = "notes"', 'server = "remote"')},
    )
    monkey_env = {"REMOTE_KEY": "k-123"}
    from mcp_gate.config import load_config

    loaded = load_config(config, monkey_env)
    async with anyio.create_task_group() as tg:
        tg.start_soon(downstream.serve, [sock])
        async with running_gate(loaded) as front, Client(front.server, mode="legacy") as agent:
            assert text_of(await agent.call_tool("remote__echo", {"text": "remote"})) == "remote"
        downstream.should_exit = True
    sock.close()
    assert seen_headers and set(seen_headers) == {"k-123"}


@pytest.mark.parametrize("mode", MODES)
async def test_over_http_progress_reaches_an_agent_that_asked_for_it(notes_config: Path, mode: str) -> None:
    """On the wire the gate relays progress only to a request carrying a progress token (one that
    carries none would have every notification dropped); this one asks, and hears every step."""
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with http_gate(notes_config) as url:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=httpx2.Timeout(30.0))
        async with http, Client(streamable_http_client(url, http_client=http), mode=mode) as agent:
            asked = await agent.call_tool("notes__sleep", {"seconds": 0.2}, progress_callback=on_progress)
            not_asked = await agent.call_tool("notes__sleep", {"seconds": 0.2})
    assert text_of(asked) == text_of(not_asked) == "slept"
    assert seen == [float(i) for i in range(1, 11)]
