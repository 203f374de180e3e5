"""Hostile tool arguments and JSON-RPC from an agent: a real gate answers each with a tool error or
runs the call, never crashes, keeps serving, and still blocks what its policy blocks, within the
stated depth and line limits (docs/limits.md)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx2
import mcp_types as types
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from mcp_gate.offering import MAX_ARGUMENT_DEPTH
from mcp_gate.server import MAX_STDIO_LINE_BYTES
from mcp_gate.testing import NOTES_MANIFEST, notes_server_table, running_gate, write_config

FUZZ = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

TOKEN = "fuzz-agent-token-7d1e"
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
INITIALIZED = b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n'


def nested(depth: int, leaf: Any = 1) -> Any:
    """`depth` levels of alternating objects and arrays around `leaf`, built without recursion."""
    value = leaf
    for level in range(depth):
        value = {"k": value} if level % 2 else [value]
    return value


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["\ud800", "\udfff x", "\x00", "\u202e"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
# The SDK's client refuses to serialize much past 200 levels, and its stdio server's JSON parser
# past about 200: deeper values never reach the gate (see the raw stdio test below).
hostile = (
    json_values
    | st.integers(min_value=1, max_value=150).map(nested)
    | st.integers(min_value=1, max_value=300_000).map(lambda n: "x" * n)
)


def text_of(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def sendable(agent: tuple[Any, Client, str], value: Any) -> bool:
    """The SDK's stdio client cannot write a lone surrogate (its own writer fails, and closes the
    connection): those reach the gate as JSON escapes in the raw stdio test below instead."""
    if agent[2] == "memory":
        return True
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


def depth_of(value: Any) -> int:
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


@pytest.fixture(scope="module")
def gate_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-agent")
    return write_config(
        root / "gate",
        servers={"notes": notes_server_table(root / "notes")},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        approvals={"hold_seconds": 0.2},
        extra=f'[agents.fuzzer]\ntoken_sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"\n'
        'owner = "carol@example.com"\n',
    )


@asynccontextmanager
async def http_gate(config: Path) -> AsyncIterator[str]:
    async with running_gate(config) as front, anyio.create_task_group() as tg:
        port = await tg.start(front.serve_http, "127.0.0.1", 0)
        try:
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            tg.cancel_scope.cancel()


@pytest.fixture(scope="module", params=["memory", "stdio-legacy", "stdio-auto", "http-legacy", "http-auto"])
def agent(request: pytest.FixtureRequest, gate_config: Path) -> Iterator[tuple[Any, Client, str]]:
    """One real gate per transport for the whole module, driven from sync Hypothesis tests
    through a blocking portal (one gate per example would take minutes)."""
    with anyio.from_thread.start_blocking_portal() as portal, ExitStack() as stack:
        if request.param == "memory":
            front = stack.enter_context(portal.wrap_async_context_manager(running_gate(gate_config)))
            target: Any = front.server
            mode = "auto"
        elif request.param.startswith("http-"):
            url = stack.enter_context(portal.wrap_async_context_manager(http_gate(gate_config)))
            headers = {"Authorization": f"Bearer {TOKEN}"}
            http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0))
            stack.enter_context(portal.wrap_async_context_manager(http))
            target = streamable_http_client(url, http_client=http)
            mode = request.param.removeprefix("http-")
        else:
            target = StdioServerParameters(
                command=sys.executable, args=["-m", "mcp_gate", "serve", "--config", str(gate_config)]
            )
            mode = request.param.removeprefix("stdio-")
        client = stack.enter_context(portal.wrap_async_context_manager(Client(target, mode=mode)))
        yield portal, client, request.param


def call(agent: tuple[Any, Client, str], name: str, arguments: dict[str, Any]) -> types.CallToolResult:
    portal, client, _ = agent
    result: types.CallToolResult = portal.call(lambda: client.call_tool(name, arguments))
    return result


@FUZZ
@given(value=hostile)
def test_hostile_arguments_run_or_are_refused_and_the_gate_keeps_serving(
    agent: tuple[Any, Client, str], value: Any
) -> None:
    assume(sendable(agent, value))
    result = call(agent, "notes__echo", {"text": "ok", "extra": value})
    if result.is_error:
        assert text_of(result).startswith("invalid arguments for notes__echo: ")
    else:
        assert text_of(result) == "ok"
    if depth_of(value) + 1 > MAX_ARGUMENT_DEPTH:
        assert result.is_error
        assert f"nested deeper than {MAX_ARGUMENT_DEPTH} levels" in text_of(result)
    assert text_of(call(agent, "notes__echo", {"text": "alive"})) == "alive"


@FUZZ
@given(value=hostile)
def test_a_blocked_tool_stays_blocked_whatever_its_arguments(
    agent: tuple[Any, Client, str], value: Any
) -> None:
    assume(sendable(agent, value))
    result = call(agent, "notes__purge_notes", {"extra": value})
    assert result.is_error
    assert "blocked" in text_of(result) or text_of(result).startswith("invalid arguments")


def test_a_held_tier_still_holds_after_hostile_calls(agent: tuple[Any, Client, str]) -> None:
    call(agent, "notes__echo", {"text": "ok", "extra": nested(MAX_ARGUMENT_DEPTH + 10)})
    held = call(agent, "notes__write_note", {"name": "a", "text": "b"})
    assert held.is_error and "high" in text_of(held)


# -- raw JSON-RPC over stdio --------------------------------------------------------------------


def serve(config: Path, data: bytes) -> subprocess.CompletedProcess[bytes]:
    """Run `mcp-gate serve` on stdio with `data` as its whole stdin (closed right after it)."""
    return subprocess.run(
        [sys.executable, "-m", "mcp_gate", "serve", "--config", str(config)],
        input=data,
        capture_output=True,
        timeout=50,
        check=False,
    )


def exchange(
    config: Path, data: bytes, wanted: set[Any], *, unreadable: int = 0
) -> tuple[dict[Any, dict[str, Any]], bytes, list[dict[str, Any]]]:
    """Write `data` to a stdio gate and read its answers until every id in `wanted` has one and
    `unreadable` answers with id null have come; then close stdin (a gate that reads EOF stops,
    cancelling calls still running)."""

    async def run() -> tuple[dict[Any, dict[str, Any]], bytes, list[dict[str, Any]]]:
        cmd = [sys.executable, "-m", "mcp_gate", "serve", "--config", str(config)]
        found: dict[Any, dict[str, Any]] = {}
        nulls: list[dict[str, Any]] = []
        async with await anyio.open_process(cmd) as proc:
            assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
            await proc.stdin.send(data)
            buffer = b""
            with anyio.fail_after(50):
                while not wanted <= set(found) or len(nulls) < unreadable:
                    buffer += await proc.stdout.receive()
                    *complete, buffer = buffer.split(b"\n")
                    for message in messages(b"\n".join(complete)):
                        if message.get("id") is None and "error" in message:
                            nulls.append(message)
                        else:
                            found[message.get("id")] = message
            await proc.stdin.aclose()
            await proc.wait()
            stderr = b"".join([chunk async for chunk in proc.stderr])
        return found, stderr, nulls

    return anyio.run(run)


def echo(request_id: int, text: str) -> bytes:
    params = {"name": "notes__echo", "arguments": {"text": text}}
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}).encode()


def answers(stdout: bytes) -> dict[Any, dict[str, Any]]:
    return {message.get("id"): message for message in messages(stdout)}


def messages(stdout: bytes) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in stdout.splitlines()]  # everything on stdout is JSON-RPC


def test_hostile_json_rpc_lines_on_stdin_leave_the_gate_serving_without_a_traceback(
    gate_config: Path,
) -> None:
    deep = b'{"a":' * 5000 + b"[" * 5000 + b"]" * 5000 + b"}" * 5000
    hostile_lines = [
        b"\xff\xfe\xfd not utf-8 at all",
        b"this is not json",
        b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"notes__echo","arguments":'
        + deep
        + b"}}",
        b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"notes__echo",'
        b'"arguments":{"text":"' + b"x" * 10 + b'\xc3\x28"}}}',
        b'{"jsonrpc":"2.0","id":4,"id":5,"method":"tools/list","method":"tools/call",'
        b'"params":{"name":"notes__echo","arguments":{"text":"dup","text":"licate"}}}',
        b'{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"notes__echo",'
        b'"arguments":{"text":"n","extra":NaN}}}',
        b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"notes__echo",'
        b'"arguments":{"text":"n","big":1' + b"0" * 5000 + b"}}}",
        b'{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"notes__echo",'
        b'"arguments":{"text":"\\ud800"}}}',
    ]
    data = json.dumps(INITIALIZE).encode() + b"\n" + INITIALIZED
    data += b"".join(line + b"\n" for line in hostile_lines) + echo(9, "alive") + b"\n"
    found, stderr, unreadable = exchange(gate_config, data, {3, 5, 6, 9}, unreadable=5)
    assert b"Traceback" not in stderr
    assert found[9]["result"]["content"][0]["text"] == "alive"
    # Bytes that are not UTF-8 are read as U+FFFD, as the SDK reads them: the call runs.
    assert found[3]["result"]["content"][0]["text"] == "x" * 10 + "\ufffd("
    # Duplicate keys: the last one wins, as in every JSON parser the gate's wire uses.
    assert found[5]["result"]["content"][0]["text"] == "licate"
    # NaN passes the SDK's JSON parser; the gate refuses it as a tool error (I-JSON).
    assert found[6]["result"]["isError"] is True
    assert "not valid JSON values" in found[6]["result"]["content"][0]["text"]
    # The SDK's parser refuses bytes that are not JSON, nesting past about 200 levels, a number past
    # its range and an escaped lone surrogate: the gate answers each with a parse error and id null
    # (JSON-RPC 2.0: the id of an unparseable line cannot be known), never runs it, and serves on.
    assert not {2, 7, 8} & set(found)
    assert len(unreadable) == 5
    for answer in unreadable:
        assert answer["error"]["code"] == -32700
        assert answer["error"]["message"].startswith("Parse error: ")
        assert "not json" not in answer["error"]["message"]  # the line itself is not echoed


def test_json_that_is_not_a_json_rpc_message_gets_invalid_request_with_its_id(gate_config: Path) -> None:
    lines = [
        b'{"jsonrpc":"2.0","id":11}',
        b'{"jsonrpc":"2.0","id":"twelve","method":13}',
        b'[{"jsonrpc":"2.0","id":14,"method":"tools/list"}]',
        b'{"jsonrpc":"2.0","id":true,"result":{}, "error":{}}',
        b"42",
    ]
    data = json.dumps(INITIALIZE).encode() + b"\n" + INITIALIZED
    data += b"".join(line + b"\n" for line in lines) + echo(9, "alive") + b"\n"
    found, stderr, unreadable = exchange(gate_config, data, {9, 11, "twelve"}, unreadable=3)
    assert b"Traceback" not in stderr
    assert found[9]["result"]["content"][0]["text"] == "alive"
    for request_id in (11, "twelve"):
        assert found[request_id]["error"] == {
            "code": -32600,
            "message": "Invalid Request: not a JSON-RPC 2.0 message",
        }
    # A batch (MCP has none), a bool id and a bare number: no usable id, so null.
    assert [answer["error"]["code"] for answer in unreadable] == [-32600] * 3


@pytest.mark.parametrize(
    "line",
    [b"x" * (20 * 1024 * 1024) + b"\n", b"[" * (64 * 1024 * 1024)],
    ids=["20 MiB line", "64 MiB without a newline"],
)
def test_a_stdin_line_past_the_limit_closes_the_connection_with_one_line(
    gate_config: Path, line: bytes
) -> None:
    data = json.dumps(INITIALIZE).encode() + b"\n" + INITIALIZED
    done = serve(gate_config, data + line + echo(3, "after") + b"\n")
    assert 3 not in answers(done.stdout)
    assert done.returncode == 2
    assert done.stderr.decode().splitlines()[-1] == (
        f"mcp-gate: error: a JSON-RPC message on stdin is longer than {MAX_STDIO_LINE_BYTES} bytes, "
        "the limit; closing the connection"
    )
    assert b"Traceback" not in done.stderr


def test_a_line_just_within_the_limit_is_read(gate_config: Path) -> None:
    padding = MAX_STDIO_LINE_BYTES - len(echo(2, "")) - 1
    data = json.dumps(INITIALIZE).encode() + b"\n" + INITIALIZED + echo(2, " " * padding) + b"\n"
    found, stderr, _ = exchange(gate_config, data, {2})
    assert b"Traceback" not in stderr and b"error:" not in stderr
    result = found[2]["result"]
    assert result["isError"] is True and "the limit is 262144" in result["content"][0]["text"]


@pytest.mark.anyio
async def test_unreadable_http_bodies_get_a_json_rpc_error_and_the_front_keeps_serving(
    gate_config: Path,
) -> None:
    """Over HTTP the SDK answers an unreadable body itself: 400 with -32700 for a body that is not
    JSON, 400 with -32602 for JSON that is not a message (the SDK's code for it)."""
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    deep = b"[" * 5000 + b"]" * 5000
    async with http_gate(gate_config) as url, httpx2.AsyncClient(headers=headers, timeout=30.0) as http:
        for body, code in [
            (b"\xff\xfe not json", -32700),
            (deep, -32700),
            (b'{"jsonrpc":"2.0","id":3}', -32602),
        ]:
            response = await http.post(url, content=body)
            assert response.status_code == 400
            assert response.json()["error"]["code"] == code
        async with Client(streamable_http_client(url, http_client=http)) as client:
            result = await client.call_tool("notes__echo", {"text": "alive"})
            assert text_of(result) == "alive"
