"""Real `mcp-gate serve --http` replicas on one PostgreSQL database, for the multi-replica tests: a
config with `[store]`, an HTTP agent and an approver, a downstream that counts its executions, a
replica process and the addresses it announces."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_gate.testing import approver_table, eventually, write_config

AGENT_TOKEN = "tok-agent-replicas"
APPROVER_TOKEN = "tok-bob"
BOB = "U0BOB"  # bob's Slack user

# A downstream whose `deploy` appends its name to $COUNT_FILE (one line per execution, so a test
# can count them) and then waits `seconds` before answering: a call can be caught mid-execution.
COUNTER_SERVER = """
import os, sys, time
from pathlib import Path
import anyio
import mcp_types as types
from mcp.server import Server

COUNT = Path(os.environ["COUNT_FILE"])
TOOL = types.Tool(
    name="deploy",
    description="Deploy one thing.",
    input_schema={
        "type": "object",
        "properties": {"name": {"type": "string"}, "seconds": {"type": "number"}},
        "required": ["name"],
    },
)

async def on_list_tools(ctx, params):
    return types.ListToolsResult(tools=[TOOL])

async def on_call_tool(ctx, params):
    args = params.arguments or {}
    with COUNT.open("a") as f:
        f.write(str(args["name"]) + "\\n")
    if os.environ.get("TIMES_FILE"):  # benchmarks: when each call reached the downstream
        with open(os.environ["TIMES_FILE"], "a") as f:
            f.write(f"{args['name']} {time.time()}\\n")
    await anyio.sleep(float(args.get("seconds", 0)))
    return types.CallToolResult(content=[types.TextContent(type="text", text="deployed " + args["name"])])

server = Server("counter", on_list_tools=on_list_tools, on_call_tool=on_call_tool)

async def main():
    from mcp.server.stdio import stdio_server
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())

anyio.run(main)
"""

MANIFEST = """
server = "ops"
default = "high"

[[rule]]
tools = ["deploy"]
tier = "high"
reason = "a deployment changes production"
"""


def replica_config(
    directory: Path,
    url: str,
    *,
    lease_seconds: float = 2,
    tail: str = "",
    bob: Mapping[str, Any] | None = None,
) -> Path:
    """gate.toml for every replica: the database, an HTTP agent, the approver bob (Slack user
    U0BOB, and `bob`'s keys), the counter; `tail` adds sections (a [slack] table)."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "counter_server.py"
    script.write_text(COUNTER_SERVER)
    digest = hashlib.sha256(AGENT_TOKEN.encode()).hexdigest()
    return write_config(
        directory / "gate",
        servers={
            "ops": {
                "command": sys.executable,
                "args": [str(script)],
                "env": {"COUNT_FILE": str(directory / "executions"), "TIMES_FILE": str(directory / "times")},
            }
        },
        manifests={"ops": MANIFEST},
        approvers={
            "bob": {
                **approver_table("bob@example.com", ["sre"], APPROVER_TOKEN),
                "slack_user": "U0BOB",
                **(bob or {}),
            }
        },
        tiers={"high": {"approvals": 1, "groups": ["sre"]}},
        approvals={"hold_seconds": 60, "progress_seconds": 1},
        extra=(
            f'[agents.bot]\nowner = "bot@example.com"\ntoken_sha256 = "{digest}"\n'
            f"[store]\nurl = {json.dumps(url)}\nlease_seconds = {lease_seconds}\n" + tail
        ),
    )


def executions(config: Path) -> list[str]:
    """The names the counter executed, one per execution, in order."""
    counted = config.parent.parent / "executions"
    return counted.read_text().splitlines() if counted.exists() else []


@dataclass
class Replica:
    process: subprocess.Popen[bytes]
    mcp_url: str
    api_url: str
    stderr: Path

    def kill(self) -> None:
        """SIGKILL: no clean stop, no lease given back, no marker removed."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")


@asynccontextmanager
async def replica(config: Path, name: str, **extra_env: str) -> AsyncIterator[Replica]:
    """One `mcp-gate serve --http 127.0.0.1:0 --admin 127.0.0.1:0` process on the config's
    database, once it says where it serves; stopped with SIGINT (if still alive) on exit."""
    stderr = config.parent / f"{name}.stderr.log"
    env = {k: v for k, v in os.environ.items() if k not in ("MCP_GATE_CONFIG", "MCP_GATE_TOKEN")}
    env.update(extra_env)
    command = [sys.executable, "-m", "mcp_gate", "serve", "--config", str(config)]
    command += ["--http", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
    with stderr.open("w") as err:
        # Popen returns at once; the test then waits for the announcement without blocking the loop.
        process = subprocess.Popen(  # noqa: ASYNC220
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env
        )
    try:

        def announced() -> tuple[str, str] | None:
            text = stderr.read_text(errors="replace")
            if process.poll() is not None:
                raise AssertionError(f"replica {name} exited {process.returncode}:\n{text}")
            mcp = re.search(r"serving streamable HTTP on (\S+)", text)
            api = re.search(r"approver API on (\S+)", text)
            return (mcp.group(1), api.group(1)) if mcp and api else None

        mcp_url, api_url = await eventually(announced, what=f"replica {name} to serve", timeout=60)
        yield Replica(process, mcp_url, api_url, stderr)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)


@asynccontextmanager
async def agent(rep: Replica, *, mode: str = "legacy") -> AsyncIterator[Client]:
    """An MCP client over streamable HTTP to one replica, as the agent `bot`."""
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {AGENT_TOKEN}"}, timeout=90)
        )
        client = await stack.enter_async_context(
            Client(streamable_http_client(rep.mcp_url, http_client=http), mode=mode)  # type: ignore[arg-type]
        )
        yield client


@dataclass
class Call:
    """An agent's call running in the background: its result, once it returns."""

    done: anyio.Event
    box: list[types.CallToolResult]

    async def result(self) -> types.CallToolResult:
        await self.done.wait()
        return self.box[0]


def deploy(client: Client, tg: anyio.abc.TaskGroup, name: str = "api") -> Call:
    """`ops__deploy` called in the background (a high call: it is held)."""
    call = Call(anyio.Event(), [])

    async def run() -> None:
        call.box.append(await client.call_tool("ops__deploy", {"name": name, "seconds": 0}))
        call.done.set()

    tg.start_soon(run)
    return call


async def api(rep: Replica, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """The approvers' API of one replica, as bob."""
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {APPROVER_TOKEN}"}, timeout=30) as http:
        response = await http.request(method, rep.api_url + path, json=body)
        assert response.status_code < 500, response.text
        return response.json()


async def pending(rep: Replica) -> list[dict[str, Any]]:
    found = await api(rep, "GET", "/requests")
    requests = found["requests"] if isinstance(found, dict) else found
    return [r for r in requests if r["state"] == "pending"]


def text_of(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


class CuttableProxy:
    """A TCP proxy in this test's event loop between one gate and PostgreSQL, to stage a database
    outage for that gate alone (the shared server itself is never stopped): `cut` closes every
    connection through it and refuses new ones, `restore` lets them through again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.cut_off = False
        self._streams: set[Any] = set()

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener:
            task_status.started()
            await listener.serve(self._handle)

    async def _handle(self, client: Any) -> None:
        async with client:
            if self.cut_off:
                return
            try:
                upstream = await anyio.connect_tcp(*self.target)
            except OSError:
                return
            async with upstream, anyio.create_task_group() as tg:
                self._streams.update({client, upstream})

                async def pump(source: Any, sink: Any) -> None:
                    try:
                        async for chunk in source:
                            await sink.send(chunk)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(pump, client, upstream)
                tg.start_soon(pump, upstream, client)
            self._streams.discard(client)
            self._streams.discard(upstream)

    async def cut(self) -> None:
        self.cut_off = True
        for stream in list(self._streams):
            await stream.aclose()
        self._streams.clear()

    def restore(self) -> None:
        self.cut_off = False

    def url(self, url: str) -> str:
        """`url` (a test database's) reaching PostgreSQL through this proxy."""
        parts = urllib.parse.urlsplit(url)
        return parts._replace(netloc=f"{parts.username}@127.0.0.1:{self.port}").geturl()


def through(config: Path, url: str, name: str) -> Path:
    """A copy of gate.toml beside it (same data_dir, manifests and keys) whose [store] url is `url`."""
    text = config.read_text()
    start = text.index("[store]")
    copy = config.with_name(f"{name}.toml")
    store = re.sub(r"^url = .*$", lambda _: f"url = {json.dumps(url)}", text[start:], count=1, flags=re.M)
    copy.write_text(text[:start] + store)
    return copy
