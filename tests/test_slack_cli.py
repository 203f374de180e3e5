"""`mcp-gate slack test`, the Slack line of `mcp-gate check`, and `mcp-gate serve` taking Slack clicks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters

from mcp_gate.channels.slack_blocks import ACTION_APPROVE
from mcp_gate.config import load_config
from mcp_gate.fake_slack import FakeSlack
from tests.slack_helpers import ENV, fake_slack, make_config, stored_records


def mcp_gate(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "MCP_GATE_CONFIG"} | env
    return subprocess.run(
        [sys.executable, "-m", "mcp_gate", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
    )


def test_slack_test_reports_auth_scopes_channel_and_socket_mode_and_posts_a_test_message(
    tmp_path: Path,
) -> None:
    fake = fake_slack()
    with fake.running():
        config = make_config(tmp_path, fake)
        done = mcp_gate("slack", "test", "--config", str(config), env=ENV)
        posted = fake.calls_to("chat.postMessage")
        opened = fake.calls_to("apps.connections.open")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["ok", "tokens"],
        ["ok", "auth"],
        ["ok", "scopes"],
        ["ok", "channel"],
        ["ok", "socket"],
    ]
    assert "bot mcp-gate in team T0TEAM" in lines[1]
    assert [c.params["channel"] for c in posted] == ["C0APPROVE"] and len(opened) == 1
    assert fake.bot_token not in done.stdout + done.stderr and "checking Slack" in done.stderr


def test_slack_test_names_what_is_missing_and_exits_1(tmp_path: Path) -> None:
    fake = FakeSlack(channels=set(), scopes=("chat:write",))
    with fake.running():
        config = make_config(tmp_path, fake)
        done = mcp_gate(
            "slack", "test", "--config", str(config), "--json", env={**ENV, "TEST_SLACK_APP": "xapp-wrong"}
        )
    assert done.returncode == 1
    found = {f["what"]: f for f in json.loads(done.stdout)}
    assert not found["scopes"]["ok"] and "missing users:read, users:read.email" in found["scopes"]["detail"]
    assert (
        not found["channel C0APPROVE"]["ok"] and "channel_not_found" in found["channel C0APPROVE"]["detail"]
    )
    assert not found["socket mode"]["ok"] and "invalid_auth" in found["socket mode"]["detail"]
    assert found["auth"]["ok"]


def test_slack_test_recommends_a_history_scope_without_failing_for_it(tmp_path: Path) -> None:
    fake = fake_slack()
    fake.scopes = ("chat:write", "users:read", "users:read.email")
    with fake.running():
        config = make_config(tmp_path, fake)
        done = mcp_gate("slack", "test", "--config", str(config), "--json", env=ENV)
    found = {f["what"]: f for f in json.loads(done.stdout)}
    assert done.returncode == 0, done.stdout + done.stderr
    assert found["scopes"]["ok"] and "add channels:history / groups:history" in found["scopes"]["detail"]


def test_slack_test_without_the_token_in_the_environment_is_one_clear_failure(tmp_path: Path) -> None:
    fake = fake_slack()
    with fake.running():
        config = make_config(tmp_path, fake)
        done = mcp_gate("slack", "test", "--config", str(config), env={"TEST_SLACK_APP": "xapp-1"})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "FAIL  tokens" in done.stdout and "TEST_SLACK_BOT is not set" in done.stdout


def test_check_reports_a_revoked_slack_token_in_one_line_and_exits_1(tmp_path: Path) -> None:
    fake = fake_slack()
    fake.revoked = True
    with fake.running():
        config = make_config(tmp_path, fake)
        done = mcp_gate("check", "--config", str(config), env=ENV)
        posted = fake.calls_to("chat.postMessage", ok_only=False)
    assert done.returncode == 1
    [line] = [line for line in done.stdout.splitlines() if line.startswith("slack:")]
    assert (
        line == "slack: PROBLEM: auth: auth.test failed: token_revoked (check the bot token, $TEST_SLACK_BOT)"
    )
    assert posted == []  # check never posts


def test_check_says_slack_is_fine_when_it_is(tmp_path: Path) -> None:
    fake = fake_slack()
    with fake.running():
        config = make_config(tmp_path, fake)
        done = mcp_gate("check", "--config", str(config), env=ENV)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "slack: ok: bot mcp-gate in team T0TEAM; socket mode" in done.stdout


def test_serve_without_the_slack_token_is_a_one_line_error(tmp_path: Path) -> None:
    fake = fake_slack()
    with fake.running():
        config = make_config(tmp_path, fake)
        done = mcp_gate("serve", "--config", str(config), env={"TEST_SLACK_APP": "xapp-1"})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"mcp-gate: error: {config}: slack.bot_token_env: environment variable TEST_SLACK_BOT is not set "
        "(it should hold the Slack bot_token)"
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_mcp_gate_serve_posts_a_held_call_to_slack_and_runs_it_when_approved_there(
    tmp_path: Path, mode: str
) -> None:
    fake = fake_slack()
    with fake.running():
        config = make_config(tmp_path, fake)
        gate = StdioServerParameters(
            command=sys.executable,
            args=["-m", "mcp_gate", "serve", "--config", str(config)],
            env={**ENV, "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        )
        async with Client(gate, mode=mode) as agent, anyio.create_task_group() as tg:
            box: list[types.CallToolResult] = []

            async def call() -> None:
                box.append(await agent.call_tool("notes__write_note", {"name": "plan", "text": "ship"}))

            tg.start_soon(call)
            posted = await fake.wait_for(lambda: fake.calls_to("chat.postMessage"), timeout=30)
            await fake.wait_for(lambda: fake.connected, timeout=30)
            blocks = (
                json.loads(posted[0].params["blocks"])
                if isinstance(posted[0].params["blocks"], str)
                else posted[0].params["blocks"]
            )
            request_id = next(b["block_id"] for b in blocks if b["type"] == "actions").split(":")[1]
            envelope = fake.send_envelope(fake.block_actions("U0BOB", ACTION_APPROVE, request_id))
            await fake.wait_for(lambda: fake.acked(envelope))
            await fake.wait_for(lambda: box, timeout=30)
            await fake.wait_for(lambda: fake.updates)
    assert not box[0].is_error
    assert (tmp_path / "notes" / "plan").read_text() == "ship"
    records = await stored_records(load_config(config, ENV))
    decided = [r for r in records if r["event_type"] == "approval.decided"]
    assert [(r["approver"], r["channel"]) for r in decided] == [("bob", "slack")]
