"""Both HTTP listeners over real sockets: header and body deadlines, the connection cap, body
limits enforced while the body streams, the Host/Origin guard, OAuth probes and listChanged."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest

from mcp_gate.channels.api import serve_api
from mcp_gate.testing import (
    NOTES_MANIFEST,
    approver_table,
    notes_server,
    notes_server_table,
    running_gate,
    write_config,
)

pytestmark = pytest.mark.anyio

TOKEN = "agent-token-limits-0123"
AGENT = (
    f'[agents.ci-bot]\ntoken_sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"\n'
    'owner = "carol@example.com"\n'
)
WAIT = 20.0  # generous: how long a test waits for the server before calling it stuck


def make_config(tmp_path: Path, http: str = "") -> Path:
    return write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        approvers={"bob": approver_table("bob@example.com", ["sre"], "tok-bob")},
        extra=AGENT + "\n[http]\n" + http,
    )


@asynccontextmanager
async def listening(config: Path, which: str) -> AsyncIterator[int]:
    """The agent front ("mcp") or the approvers' API ("admin") of a real gate, on a free port."""
    notes = notes_server(config.parent.parent / "notes")
    async with running_gate(config, servers={"notes": notes}) as front, anyio.create_task_group() as tg:
        if which == "mcp":
            port = await tg.start(front.serve_http, "127.0.0.1", 0)
        else:
            port = await tg.start(serve_api, front.gateway, "127.0.0.1", 0)
        try:
            yield port
        finally:
            tg.cancel_scope.cancel()


async def read_all(stream: anyio.abc.ByteStream) -> bytes:
    """Everything the server sends until it closes the connection (fails if it never does)."""
    data = b""
    with anyio.fail_after(WAIT):
        while True:
            try:
                data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return data


async def exchange(port: int, raw: bytes) -> bytes:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(raw)
        return await read_all(stream)


def request(method: str, path: str, *, host: str = "127.0.0.1", token: str = TOKEN, extra: str = "") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Connection: close\r\n{extra}\r\n"
    ).encode()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


@pytest.mark.parametrize("which", ["mcp", "admin"])
async def test_a_connection_with_half_sent_headers_is_closed_after_the_header_timeout(
    tmp_path: Path, which: str
) -> None:
    config = make_config(tmp_path, "header_timeout = 0.3\n")
    async with listening(config, which) as port, await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        assert await read_all(stream) == b""


@pytest.mark.parametrize(("which", "path"), [("mcp", "/mcp"), ("admin", "/v1/requests/K7Q2M9XA/deny")])
async def test_a_body_that_does_not_arrive_in_time_gets_408(tmp_path: Path, which: str, path: str) -> None:
    token = TOKEN if which == "mcp" else "tok-bob"
    head = request(
        "POST", path, token=token, extra="Content-Type: application/json\r\nContent-Length: 100\r\n"
    )
    async with listening(make_config(tmp_path, "body_timeout = 0.3\n"), which) as port:
        response = await exchange(port, head + b'{"reason": ')
    assert status_of(response) == 408
    assert b"did not arrive within 0.3 s" in response


@pytest.mark.parametrize(("which", "path"), [("mcp", "/mcp"), ("admin", "/v1/requests/K7Q2M9XA/deny")])
async def test_a_streamed_body_over_the_limit_gets_413_before_it_ends(
    tmp_path: Path, which: str, path: str
) -> None:
    token = TOKEN if which == "mcp" else "tok-bob"
    head = request(
        "POST",
        path,
        token=token,
        extra="Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
    )
    chunk = b"400\r\n" + b" " * 1024 + b"\r\n"
    limits = "max_body_bytes = 2048\nadmin_max_body_bytes = 2048\n"
    async with listening(make_config(tmp_path, limits), which) as port:
        # Three chunks and no final one: the limit must be applied while the body is still coming.
        response = await exchange(port, head + chunk * 3)
    assert status_of(response) == 413
    assert b"over 2048 bytes" in response


async def test_an_admin_body_with_a_declared_length_over_the_limit_is_refused_unread(tmp_path: Path) -> None:
    head = request(
        "POST",
        "/v1/requests/K7Q2M9XA/deny",
        token="tok-bob",
        extra=f"Content-Type: application/json\r\nContent-Length: {60 * 1024 * 1024}\r\n",
    )
    async with listening(make_config(tmp_path), "admin") as port:
        response = await exchange(port, head)
    assert status_of(response) == 413


async def test_connections_past_the_cap_get_503(tmp_path: Path) -> None:
    config = make_config(tmp_path, "max_connections = 2\nheader_timeout = 30\n")
    async with listening(config, "mcp") as port:
        held = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(2)]
        try:
            for stream in held:
                await stream.send(b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            response = await exchange(port, request("GET", "/.well-known/oauth-authorization-server"))
        finally:
            for stream in held:
                await stream.aclose()
        assert status_of(response) == 503
        # The held ones gone, the server answers again.
        response = await exchange(port, request("GET", "/.well-known/oauth-authorization-server"))
        assert status_of(response) == 404


@pytest.mark.parametrize("which", ["mcp", "admin"])
async def test_a_foreign_host_or_origin_is_refused_and_a_configured_host_is_served(
    tmp_path: Path, which: str
) -> None:
    path, token = ("/mcp", TOKEN) if which == "mcp" else ("/v1/requests", "tok-bob")
    ok = 400 if which == "mcp" else 200  # a GET on /mcp with no session: past every guard
    config = make_config(tmp_path, 'allowed_hosts = ["gate.example.com"]\n')
    accept = "Accept: application/json, text/event-stream\r\n"
    async with listening(config, which) as port:
        evil_host = await exchange(port, request("GET", path, host="evil.example", token=token, extra=accept))
        evil_origin = await exchange(
            port, request("GET", path, token=token, extra=accept + "Origin: http://evil.example\r\n")
        )
        configured = await exchange(
            port, request("GET", path, host=f"gate.example.com:{port}", token=token, extra=accept)
        )
        loopback = await exchange(
            port,
            request(
                "GET",
                path,
                host=f"localhost:{port}",
                token=token,
                extra=accept + "Origin: http://localhost\r\n",
            ),
        )
    assert status_of(evil_host) == 421
    assert b"allowed_hosts" in evil_host
    assert status_of(evil_origin) == 403
    assert status_of(configured) == ok, configured
    assert status_of(loopback) == ok, loopback


async def test_oauth_metadata_probes_get_a_404_that_says_the_gate_uses_bearer_tokens(tmp_path: Path) -> None:
    async with listening(make_config(tmp_path), "mcp") as port:
        for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-authorization-server"):
            response = await exchange(port, request("GET", path, token="not-a-token"))
            assert status_of(response) == 404
            assert b"this gate uses bearer tokens" in response


async def test_initialize_over_http_announces_that_the_tool_list_changes(tmp_path: Path) -> None:
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"},
            },
        }
    ).encode()
    head = request(
        "POST",
        "/mcp",
        extra="Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
        f"Content-Length: {len(body)}\r\n",
    )
    config = make_config(tmp_path)
    async with listening(config, "mcp") as port, await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(head + body)
        data = b""
        with anyio.fail_after(WAIT):
            while b'"result"' not in data or not data.rstrip().endswith(b"}"):
                data += await stream.receive()
    line = next(x for x in data.split(b"\n") if b'"result"' in x)
    result = json.loads(line[line.index(b"{") :])["result"]
    assert result["capabilities"]["tools"]["listChanged"] is True


async def test_serving_on_a_non_loopback_address_warns_and_keeps_the_host_check(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    command = [sys.executable, "-m", "mcp_gate", "serve", "--config", str(config), "--http", "0.0.0.0:0"]
    async with await anyio.open_process(command) as process:
        assert process.stderr is not None
        seen = b""
        try:
            with anyio.fail_after(60):
                while b"/mcp" not in seen:
                    seen += await process.stderr.receive()
            port = int(seen.split(b"http://0.0.0.0:")[1].split(b"/")[0])
            evil = await exchange(port, request("GET", "/mcp", host="evil.example"))
        finally:
            process.terminate()
    text = seen.decode()
    assert "warning: --http 0.0.0.0 is not a loopback address" in text
    assert "allowed_hosts" in text
    assert status_of(evil) == 421
