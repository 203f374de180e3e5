"""The approver commands of `mcp-gate`, run as real subprocesses against a running gate."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import mcp_types as types
import pytest
from mcp import Client

from mcp_gate.approvals import ApprovalRequest
from mcp_gate.channels.api import serve_api
from mcp_gate.server import FrontServer
from mcp_gate.storage.sqlite import SQLiteStore
from mcp_gate.testing import (
    NOTES_MANIFEST,
    approver_table,
    eventually,
    notes_server,
    notes_server_table,
    running_gate,
    within,
    write_config,
)

pytestmark = pytest.mark.anyio

APPROVERS = {
    "bob": approver_table("bob@example.com", ["sre"], "tok-bob"),
    "alice": approver_table("alice@example.com", ["sre"], "tok-alice"),  # the requester's owner
    "frank": approver_table("frank@example.com", ["finance"], "tok-frank"),
}
TIERS = {"high": {"approvals": 1, "groups": ["sre"]}, "critical": {"approvals": 2, "groups": ["sre"]}}
WRITE = {"name": "todo", "text": "from the agent"}


def make_config(
    tmp_path: Path,
    *,
    hold_seconds: float = 30,
    approvers: dict[str, Any] | None = None,
    extra: str = "",
) -> Path:
    return write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        approvers={**APPROVERS, **(approvers or {})},
        tiers=TIERS,
        approvals={"hold_seconds": hold_seconds},
        extra=extra,
    )


def text_of(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


@dataclass
class Done:
    code: int
    stdout: str
    stderr: str


def environment(token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MCP_GATE_CONFIG", "MCP_GATE_TOKEN")}
    if token is not None:
        env["MCP_GATE_TOKEN"] = token
    return env


async def cli(*args: str, token: str | None = "tok-bob") -> Done:
    done = await anyio.run_process(
        [sys.executable, "-m", "mcp_gate", *args], env=environment(token), check=False
    )
    return Done(done.returncode, done.stdout.decode(), done.stderr.decode())


def one_line(done: Done, code: int, *fragments: str) -> str:
    assert "Traceback" not in done.stderr
    assert done.code == code, done
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


class Agent:
    """An agent connected to a running gate, whose calls can be left held in the background."""

    def __init__(self, front: FrontServer, client: Client, tg: anyio.abc.TaskGroup) -> None:
        self.front, self.client, self.tg = front, client, tg

    async def held(self, name: str, args: dict[str, Any]) -> tuple[ApprovalRequest, anyio.Event, list[Any]]:
        known = {r.id for r in await self.front.gateway.engine.pending()}
        done = anyio.Event()
        box: list[Any] = []

        async def call() -> None:
            box.append(await self.client.call_tool(name, args))
            done.set()

        self.tg.start_soon(call)

        async def fresh() -> list[ApprovalRequest]:
            return [r for r in await self.front.gateway.engine.pending() if r.id not in known]

        return (await eventually(fresh, what=f"the approval request of {name}"))[0], done, box


@asynccontextmanager
async def gate(config: Path) -> AsyncIterator[Agent]:
    notes = notes_server(config.parent.parent / "notes")  # gate.toml names the stdio one, for the CLI
    async with (
        running_gate(config, servers={"notes": notes}) as front,
        Client(front.server, mode="legacy") as client,
        anyio.create_task_group() as tg,
    ):
        yield Agent(front, client, tg)
        tg.cancel_scope.cancel()


async def outcome(done: anyio.Event, box: list[Any]) -> types.CallToolResult:
    await within(done.wait(), what="the held call to return")
    result: types.CallToolResult = box[0]
    return result


async def evidence(config: Path, event_type: str) -> list[dict[str, Any]]:
    async with await SQLiteStore.open(config.parent / "data" / "gate.db") as store:
        return [dict(r.body) for r in await store.records(event_type=event_type)]


async def test_approving_from_another_process_through_the_database_releases_the_held_call(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path)
    async with gate(config) as agent:
        request, done, box = await agent.held("notes__write_note", WRITE)
        approved = await cli("approve", request.id.lower(), "--note", "checked", "--config", str(config))
        result = await outcome(done, box)
    assert approved.code == 0, approved
    assert approved.stdout.strip() == (
        f"approved {request.id} (1 of 1): notes__write_note by test-agent for alice@example.com"
    )
    assert not result.is_error, text_of(result)
    assert (tmp_path / "notes" / "todo").read_text() == "from the agent"
    [decided] = await evidence(config, "approval.decided")
    assert (decided["approver"], decided["channel"], decided["note"]) == ("bob", "cli", "checked")
    [started] = await evidence(config, "gate.started")
    assert decided["policy_sha256"] == started["policy_sha256"]


async def test_a_denial_from_the_cli_reaches_the_agent_with_its_reason(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with gate(config) as agent:
        request, done, box = await agent.held("notes__write_note", WRITE)
        missing = await cli("deny", request.id, "--config", str(config))
        empty = await cli("deny", request.id, "--reason", "  ", "--config", str(config))
        denied = await cli("deny", request.id, "--reason", "use plans instead", "--config", str(config))
        result = await outcome(done, box)
    assert missing.code == 2 and "--reason" in missing.stderr
    one_line(empty, 2, "--reason")
    assert denied.code == 0, denied
    assert denied.stdout.strip().startswith(f"denied {request.id}: notes__write_note")
    assert result.is_error and "use plans instead" in text_of(result)
    assert not (tmp_path / "notes" / "todo").exists()


async def test_pending_show_and_grants_print_json_a_script_can_read_and_text_a_person_can(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, hold_seconds=0.2)
    token_file = tmp_path / "bob.token"
    token_file.write_text("tok-bob\n")
    token_file.chmod(0o600)
    c = ("--config", str(config))
    async with gate(config) as agent:
        await agent.client.call_tool("notes__echo", {"text": "warming up"})
        await agent.client.call_tool("notes__write_note", WRITE)
        pending_json = await cli("pending", "--json", *c)
        pending_text = await cli("pending", *c)
        [request] = json.loads(pending_json.stdout)
        shown_json = await cli("show", request["id"], "--json", *c)
        shown_text = await cli("show", request["id"], *c)
        granted = await cli(
            "approve", request["id"], "--for", "30m", "--json", "--token-file", str(token_file), *c
        )
        grants = await cli("grants", "--json", *c)
        rerun = await agent.client.call_tool("notes__write_note", {"name": "todo", "text": "second"})
        grant_id = json.loads(grants.stdout)[0]["id"]
        revoked = await cli("revoke", grant_id, *c)
        grants_after = await cli("grants", "--json", *c)
        grants_all = await cli("grants", "--all", *c)
    assert request["name"] == "notes__write_note" and request["tier"] == "high"
    assert request["requester"] == {"agent": "test-agent", "owner": "alice@example.com"}
    assert request["quorum"] == "0 of 1 approvals"
    assert re.search(
        rf"^{request['id']}\s+high\s+notes__write_note\s+test-agent for alice@example.com",
        pending_text.stdout,
        re.M,
    )
    assert "0 of 1 approvals; expires in 14m" in pending_text.stdout
    shown = json.loads(shown_json.stdout)
    assert shown["args"] == WRITE and shown["args_sha256"] == request["args_sha256"]
    assert [c["name"] for c in shown["recent_calls"]] == ["notes__echo", "notes__write_note"]
    assert '"text": "from the agent"' in shown_text.stdout and request["args_sha256"] in shown_text.stdout
    assert "recent calls by test-agent" in shown_text.stdout
    outcome_json = json.loads(granted.stdout)
    assert outcome_json["outcome"] == "approved" and outcome_json["grant"]["id"] == grant_id
    assert not rerun.is_error and (tmp_path / "notes" / "todo").read_text() == "second"
    assert revoked.code == 0 and revoked.stdout.startswith(f"revoked grant {grant_id}")
    assert json.loads(grants_after.stdout) == []
    assert f"{grant_id}  notes__write_note" in grants_all.stdout and "revoked by bob" in grants_all.stdout


async def test_refused_decisions_exit_1_with_the_reason_on_one_line(tmp_path: Path) -> None:
    config = make_config(tmp_path, hold_seconds=0.2)
    async with gate(config) as agent:
        await agent.client.call_tool("notes__write_note", WRITE)
        [request] = await agent.front.gateway.engine.pending()
        own = await cli("approve", request.id, "--config", str(config), token="tok-alice")
        ineligible = await cli("approve", request.id, "--config", str(config), token="tok-frank")
        unknown = await cli("approve", "ZZZZZZZZ", "--config", str(config))
        assert (await agent.front.gateway.engine.get(request.id)).votes == ()
    one_line(own, 1, "refused", "nobody approves their own calls")
    one_line(ineligible, 1, "refused", "needs a member of sre")
    one_line(unknown, 2, "ZZZZZZZZ")
    refused = await evidence(config, "approval.refused")
    assert [(r["approver"], r["code"], r["channel"]) for r in refused] == [
        ("alice", "self-approval", "cli"),
        ("frank", "not-eligible", "cli"),
    ]


async def test_without_a_valid_approver_token_every_approver_command_exits_2_with_one_line(
    tmp_path: Path,
) -> None:
    config = str(make_config(tmp_path))
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    empty.chmod(0o600)
    loose = tmp_path / "loose.token"
    loose.write_text("tok-bob\n")
    loose.chmod(0o644)
    for command in (["pending"], ["approve", "K7Q2M9XA"], ["grants"], ["revoke", "K7Q2M9XA"]):
        one_line(
            await cli(*command, "--config", config, token=None), 2, "no approver token", "MCP_GATE_TOKEN"
        )
    one_line(
        await cli("approve", "K7Q2M9XA", "--config", config, token="tok-nobody"), 2, "no approver's token"
    )
    one_line(await cli("pending", "--token-file", str(empty), "--config", config), 2, "the file is empty")
    one_line(
        await cli("pending", "--token-file", str(loose), "--config", config, token=None),
        2,
        "readable by others (mode 0644)",
        "chmod 600",
    )
    one_line(await cli("approve", "K7Q2M9XA", "--for", "ever", "--config", config), 2, "--for")


async def test_a_token_from_approvers_token_works_once_its_line_is_in_the_config(tmp_path: Path) -> None:
    made = await cli("approvers", "token", "erin", token=None)
    assert made.code == 0, made
    token, line = made.stdout.strip().splitlines()
    assert line == f'token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"'
    assert "does not edit" in made.stderr and token not in made.stderr
    other = await cli("approvers", "token", "erin", token=None)
    assert other.stdout.splitlines()[0] != token
    one_line(await cli("approvers", "token", "no spaces", token=None), 2, "approvers token")

    digest = line.split('"')[1]
    config = make_config(
        tmp_path, approvers={"erin": {"email": "erin@example.com", "groups": ["sre"], "token_sha256": digest}}
    )
    async with gate(config) as agent:
        request, done, box = await agent.held("notes__write_note", WRITE)
        approved = await cli("approve", request.id, "--config", str(config), token=token)
        result = await outcome(done, box)
    assert approved.code == 0 and approved.stdout.startswith(f"approved {request.id}")
    assert not result.is_error
    [decided] = await evidence(config, "approval.decided")
    assert decided["approver"] == "erin"
    stored = b"".join(p.read_bytes() for p in (tmp_path / "gate" / "data").rglob("*") if p.is_file())
    assert token.encode() not in stored


async def test_with_admin_configured_the_cli_decides_through_the_api(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with gate(config) as agent, anyio.create_task_group() as tg:
        port = await tg.start(serve_api, agent.front.gateway, "127.0.0.1", 0)
        # The gate already runs; [admin] only tells the CLI where its API listens.
        with config.open("a") as f:
            f.write(f'\n[admin]\nlisten = "127.0.0.1:{port}"\n')
        request, done, box = await agent.held("notes__write_note", WRITE)
        listed = await cli("pending", "--json", "--api", f"http://127.0.0.1:{port}/v1")
        refused = await cli("approve", request.id, "--via", "api", "--config", str(config), token="tok-alice")
        wrong = await cli("pending", "--config", str(config), token="tok-nobody")
        approved = await cli("approve", request.id, "--config", str(config))
        result = await outcome(done, box)
        tg.cancel_scope.cancel()
    assert [r["id"] for r in json.loads(listed.stdout)] == [request.id]
    one_line(refused, 1, "refused", "nobody approves their own calls")
    one_line(wrong, 2, "refused the token")
    assert approved.code == 0 and approved.stdout.startswith(f"approved {request.id} (1 of 1)")
    assert not result.is_error
    decided = await evidence(config, "approval.decided")
    assert [(d["approver"], d["channel"]) for d in decided] == [("bob", "api")]


async def test_auto_falls_back_to_the_database_when_the_configured_api_is_not_listening(
    tmp_path: Path,
) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()  # now a port nobody listens on
    config = make_config(tmp_path, extra=f'\n[admin]\nlisten = "127.0.0.1:{port}"\n')
    async with gate(config) as agent:
        request, done, box = await agent.held("notes__write_note", WRITE)
        forced = await cli("approve", request.id, "--via", "api", "--config", str(config))
        approved = await cli("approve", request.id, "--config", str(config))
        result = await outcome(done, box)
    one_line(forced, 1, "cannot reach the approver API")
    assert approved.code == 0 and not result.is_error
    [decided] = await evidence(config, "approval.decided")
    assert decided["channel"] == "cli"


async def test_serve_with_admin_serves_the_api_next_to_the_gate_and_stops_with_it(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    command = [sys.executable, "-m", "mcp_gate", "serve", "--config", str(config), "--admin", "127.0.0.1:0"]
    async with await anyio.open_process(command, env=environment(None)) as process:
        assert process.stderr is not None and process.stdin is not None
        seen = b""
        with anyio.fail_after(30):
            while (found := re.search(rb"approver API on (http://\S+/v1)", seen)) is None:
                seen += await process.stderr.receive()
        url = found.group(1).decode()
        async with httpx2.AsyncClient(timeout=30) as http:
            ok = await http.get(f"{url}/requests", headers={"Authorization": "Bearer tok-bob"})
            anonymous = await http.get(f"{url}/requests")
        await process.stdin.aclose()  # the agent hangs up: the gate and its API stop
        with anyio.fail_after(30):
            code = await process.wait()
    assert ok.status_code == 200 and ok.json() == {"requests": []}
    assert anonymous.status_code == 401
    assert code == 0


def test_serve_refuses_a_non_loopback_admin_address_unless_the_config_allows_it(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "mcp_gate", "serve", "--config", str(config), "--admin", "0.0.0.0:0"],
        capture_output=True,
        text=True,
        env=environment(None),
        timeout=60,
        check=False,
    )
    one_line(Done(done.returncode, done.stdout, done.stderr), 2, "--admin", "0.0.0.0 is not a loopback")


async def test_pending_shows_the_redacted_arguments_capped_and_json_gives_them_whole(tmp_path: Path) -> None:
    config = make_config(tmp_path, hold_seconds=0.2)
    c = ("--config", str(config))
    secret = "sk_live_51HcY3bKj2XGq8Zz0aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789abcdef"
    long_text = f"use {secret} then " + "word " * 200
    async with gate(config) as agent:
        await agent.client.call_tool("notes__write_note", {"name": "todo", "text": long_text})
        pending_text = await cli("pending", *c)
        pending_json = await cli("pending", "--json", *c)
    [request] = json.loads(pending_json.stdout)
    [line] = [x for x in pending_text.stdout.splitlines() if x.strip().startswith("args: ")]
    assert line.startswith('    args: {"name": "todo", "text": "use [redacted] then word word')
    assert re.search(r" \[cut \d+ characters\]$", line) and len(line) < 220
    whole = request["args"]
    assert whole["name"] == "todo" and whole["text"].startswith("use [redacted] then word")
    assert len(json.dumps(whole)) > 250  # whole, as stored (itself cut at 256 per string)
    assert secret not in pending_text.stdout and secret not in pending_json.stdout
