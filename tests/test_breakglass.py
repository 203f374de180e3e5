"""Break-glass: `mcp-gate breakglass` releases one held call without its approvals, for an operator in
the configured groups only, never on their own request, once; it is sealed evidence, every approver
of the tier is told in Slack, and `audit report` shows it first."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_gate import runtime
from mcp_gate.approvals import Refusal
from mcp_gate.breakglass import break_glass
from mcp_gate.config import BreakGlassSettings, load_config
from mcp_gate.errors import ConfigError
from mcp_gate.evidence import VerifyReport
from mcp_gate.report import build_report, render_html
from mcp_gate.testing import eventually, notes_server_table, within, write_config
from tests.slack_helpers import env, slack_gate, stored_records

pytestmark = pytest.mark.anyio

# alice (the requester's owner) is in security, so in the break-glass group; bob is not; frank is.
TAIL = '\n[breakglass]\ngroups = ["finance", "security"]\n'


def environment(token: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("MCP_GATE_CONFIG", "MCP_GATE_TOKEN")}
    return {**base, **env(), "MCP_GATE_TOKEN": token}


async def breakglass(config: Path, request_id: str, token: str, *extra: str) -> tuple[int, str, str]:
    done = await anyio.run_process(
        [sys.executable, "-m", "mcp_gate", "breakglass", request_id, "--config", str(config), *extra],
        env=environment(token),
        check=False,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def of_type(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in records if r["event_type"] == kind]


async def test_breakglass_is_refused_for_the_own_request_and_outside_the_group_then_releases_once(
    tmp_path: Path,
) -> None:
    async with slack_gate(tmp_path, tail=TAIL) as s:
        box = s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        await s.posted(request.id)
        config = s.config.path
        reason = ("--reason", "prod is down and the fix must land now")

        own = await breakglass(config, request.id, "tok-alice", *reason)
        outside = await breakglass(config, request.id, "tok-bob", *reason)
        no_reason = await breakglass(config, request.id, "tok-frank", "--reason", "  ")
        assert not box and not (tmp_path / "notes" / "plan").exists()

        used = await breakglass(config, request.id, "tok-frank", *reason)
        await s.fake.wait_for(lambda: box)
        again = await breakglass(config, request.id, "tok-frank", *reason)
        notice = await s.wait_record(lambda r: r["event_type"] == "slack.breakglass_notified")
        records = await s.records()
        posted = [m for m in s.fake.messages.values() if "Break-glass" in str(m.get("text"))]
        verified = await s.gate.store.verify()

    assert own[0] == 1 and "nobody releases their own calls" in own[2] and "Traceback" not in own[2]
    assert outside[0] == 1 and "bob may not break glass" in outside[2]
    assert no_reason[0] == 2 and "--reason" in no_reason[2]
    assert used[0] == 0, used
    assert f"request {request.id}" in used[1] and "released by break-glass" in used[1]
    assert again[0] == 1 and "not pending" in again[2]
    assert not box[0].is_error and (tmp_path / "notes" / "plan").read_text() == "ship"

    [use] = of_type(records, "breakglass.used")
    assert (use["operator"], use["reason"], use["request_id"]) == (
        "frank",
        "prod is down and the fix must land now",
        request.id,
    )
    assert use["seal"] and use["notify"] == ["bob", "carol", "dave"]  # the tier's approvers, not alice
    refused = [(r["operator"], r["code"]) for r in of_type(records, "breakglass.refused")]
    assert refused == [("alice", "own-request"), ("bob", "not-allowed"), ("frank", "not-pending")]
    [released] = of_type(records, "call.released")
    assert released["approvers"] == [] and released["breakglass"] == {"by": "frank", "reason": use["reason"]}
    assert len(of_type(records, "call.executed")) == 1 and verified.ok
    # every approver of the tier is told, by mention, in the request's channel
    assert notice["approvers"] == ["bob", "carol", "dave"] and notice["channels"] == ["C0APPROVE"]
    assert set(notice["slack_users"]) == {"U0BOB", "U0DAVE"}  # carol has no configured Slack user
    [message] = posted
    assert "<@U0BOB>" in message["text"] and "<@U0DAVE>" in message["text"]
    assert "frank" in message["text"] and "prod is down" in message["text"]

    cfg = load_config(config, env())
    with runtime.open_log_reader(cfg) as reader:
        verdict = VerifyReport(ok=True, records=0, head_hash="", first_bad_seq=None, problem=None)
        report = build_report(reader, since=None, until=None, gate="g", verified=verdict)
    [row] = report["breakglass"]
    assert (row["request_id"], row["by"], row["tool"], row["notified"]) == (
        request.id,
        "frank",
        "write_note",
        ["bob", "carol", "dave"],
    )
    assert report["unapproved_calls"]["count"] == 0  # released by a recorded break-glass, not unapproved
    assert [r["code"] for r in report["breakglass_refused"]] == ["own-request", "not-allowed", "not-pending"]
    page = render_html(report)
    assert page.index("id='breakglass'") < page.index("<h2>Verification</h2>")


async def test_breakglass_is_off_unless_configured_and_its_groups_must_exist(tmp_path: Path) -> None:
    async with slack_gate(tmp_path) as s:
        s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        off = await breakglass(s.config.path, request.id, "tok-frank", "--reason", "now")
        async with runtime.open_engine(s.config) as engine:
            direct = await break_glass(
                engine,
                request.id,
                s.config.approvers["frank"],
                "now",
                settings=BreakGlassSettings(),
                approvers=s.config.approvers,
                channel="test",
            )
        pending = await s.gate.engine.pending()
    assert off[0] == 1 and "break-glass is off" in off[2]
    assert isinstance(direct, Refusal) and direct.code == "breakglass-off"
    assert [r.id for r in pending] == [request.id]
    assert not of_type(await stored_records(s.config), "breakglass.used")

    config = write_config(
        tmp_path / "bad",
        servers={"notes": notes_server_table(tmp_path)},
        extra='[breakglass]\ngroups = ["nobody"]\n',
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config, os.environ)
    assert "breakglass.groups" in str(caught.value) and "nobody" in str(caught.value)


async def test_a_breakglass_row_without_its_sealed_record_releases_nothing(tmp_path: Path) -> None:
    """Setting the request to approved by hand is not break-glass: the release finds no sealed record."""
    async with slack_gate(tmp_path, tail=TAIL, hold_seconds=30) as s:
        box = s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        await s.gate.store.transact(lambda tx: tx.set_request_state(request.id, "approved"))
        await within(eventually(lambda: box, what="the held call to return"), what="the call")
    assert box[0].is_error and not (tmp_path / "notes" / "plan").exists()
