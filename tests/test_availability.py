"""Approver availability: `mcp-gate away` / `back` (CLI and API), sealed marks read back by the
engine; a request whose every eligible approver is away says so (show, pending, check, /metrics);
escalation notices skip approvers who are away; being away never changes who may decide."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mcp_gate.approvals import Refusal
from mcp_gate.availability import AWAY, BACK, availability_from
from mcp_gate.health import Probes, serve_admin
from mcp_gate.seals import seal
from mcp_gate.testing import FakeClock
from tests.test_cli_approvals import WRITE, cli, gate, make_config, one_line, outcome, text_of
from tests.test_escalation import escalating_gate, of_type

pytestmark = pytest.mark.anyio

KEY = b"k" * 32
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def mark(
    kind: str, approver: str, at: datetime, *, until: datetime | None = None, sealed: bool = True
) -> dict:
    body = {"event_type": kind, "approver": approver, "ts": at.isoformat().replace("+00:00", "Z")}
    if kind == AWAY:
        body["until"] = until.isoformat().replace("+00:00", "Z") if until else None
    return seal(KEY, body) if sealed else body


def test_the_latest_sealed_mark_wins_and_an_absence_ends_at_its_until() -> None:
    hour = timedelta(hours=1)
    bodies = [
        mark(AWAY, "bob", NOW - 3 * hour),
        mark(BACK, "bob", NOW - 2 * hour),
        mark(AWAY, "carol", NOW - hour, until=NOW + hour),
        mark(AWAY, "dave", NOW - 2 * hour, until=NOW - hour),  # over already
        mark(AWAY, "erin", NOW - hour, sealed=False),  # a row nobody sealed counts for nothing
        mark(AWAY, "frank", NOW - hour),
    ]
    present = availability_from(KEY, bodies, NOW)
    assert sorted(present.away) == ["carol", "frank"]
    assert present.away["carol"].until == NOW + hour and present.away["frank"].until is None
    assert availability_from(KEY, bodies, NOW + 2 * hour).away.keys() == {"frank"}


async def test_away_and_back_from_the_cli_and_a_request_that_says_nobody_available_is_left(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path)
    c = ("--config", str(config))
    async with gate(config) as agent:
        request, done, box = await agent.held("notes__write_note", WRITE)
        away = await cli("away", "--for", "8h", "--note", "on leave", *c)
        listed = await cli("approvers", "list", "--json", *c)
        shown = await cli("show", request.id, *c)
        pending = await cli("pending", "--json", *c)
        checked = await cli("check", *c, token=None)
        # Being away changes who is told, never who may decide: bob still may.
        approved = await cli("approve", request.id, *c)
        result = await outcome(done, box)
        back = await cli("back", *c)
        again = await cli("back", *c)
        after = await cli("approvers", "list", "--json", *c)
        records = [dict(r.body) for r in await agent.front.gateway.store.records(event_type=AWAY)]
    assert away.code == 0, away
    assert (
        away.stdout.startswith("bob is away until 20") and "notices go to the other approvers" in away.stdout
    )
    by_name = {a["name"]: a for a in json.loads(listed.stdout)}
    assert by_name["bob"]["away"]["note"] == "on leave" and by_name["frank"]["away"] is None
    assert "nobody who may decide this request is available: bob (away until" in shown.stdout
    [view] = json.loads(pending.stdout)
    assert view["availability"]["eligible"] == ["bob"]  # alice made the call (owner), frank is finance
    assert view["availability"]["nobody_available"] is True
    assert checked.code == 0, checked
    assert "approvals: high calls made for alice@example.com need 1 approver(s), but of those who may" in (
        checked.stdout
    )
    assert approved.code == 0 and not result.is_error, text_of(result)
    assert back.stdout.strip() == "bob is back: notices reach you again"
    assert again.stdout.strip() == "bob was not marked away"
    assert all(a["away"] is None for a in json.loads(after.stdout))
    [recorded] = records
    assert (recorded["approver"], recorded["note"], recorded["channel"]) == ("bob", "on leave", "cli")
    assert recorded["seal"]


async def test_a_bad_absence_is_one_line_and_records_nothing(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    c = ("--config", str(config))
    async with gate(config) as agent:
        past = await cli("away", "--until", "2020-01-01T00:00Z", *c)
        naive = await cli("away", "--until", "2030-01-01T00:00", *c)
        both = await cli("away", "--until", "2030-01-01T00:00Z", "--for", "1h", *c)
        garbled = await cli("away", "--for", "soon", *c)
        nobody = await cli("away", "--for", "1h", *c, token="not-a-token")
        records = await agent.front.gateway.store.records(event_type=AWAY)
    one_line(past, 2, "that time has passed")
    one_line(naive, 2, "give a time zone")
    one_line(both, 2, "not both")
    one_line(garbled, 2, "is not a duration")
    one_line(nobody, 2, "no approver's token")
    assert records == []


async def test_the_api_marks_away_and_back_and_refuses_a_past_or_double_end(tmp_path: Path) -> None:
    from mcp_gate.channels.api import serve_api

    config = make_config(tmp_path)
    async with gate(config) as agent, anyio.create_task_group() as tg:
        port = await tg.start(serve_api, agent.front.gateway, "127.0.0.1", 0)
        base = f"http://127.0.0.1:{port}/v1"
        headers = {"Authorization": "Bearer tok-frank"}
        async with httpx2.AsyncClient(timeout=30, headers=headers) as http:
            past = await http.post(f"{base}/approvers/me/away", json={"until": "2020-01-01T00:00:00Z"})
            both = await http.post(
                f"{base}/approvers/me/away", json={"until": "2030-01-01T00:00:00Z", "for": "1h"}
            )
            away = await http.post(f"{base}/approvers/me/away", json={"for": "2h", "note": "travel"})
            listed = await http.get(f"{base}/approvers")
            back = await http.post(f"{base}/approvers/me/back")
            anonymous = await http.get(f"{base}/approvers", headers={"Authorization": "Bearer nope"})
        tg.cancel_scope.cancel()
    assert past.status_code == 400 and "not in the future" in past.json()["error"]
    assert both.status_code == 400 and "not both" in both.json()["error"]
    assert away.status_code == 200 and away.json()["away"]["approver"] == "frank"
    frank = next(a for a in listed.json()["approvers"] if a["name"] == "frank")
    assert frank["away"]["note"] == "travel" and frank["groups"] == ["finance"]
    assert back.json() == {"outcome": "back", "approver": "frank"}
    assert anonymous.status_code == 401


def gauge(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        if family.name == name:
            return float(family.samples[0].value)
    raise AssertionError(f"{name} not served")


async def test_metrics_count_a_request_whose_every_eligible_approver_is_away(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    c = ("--config", str(config))
    async with gate(config) as agent, anyio.create_task_group() as tg:
        port = await tg.start(serve_admin, Probes(agent.front.gateway), "127.0.0.1", 0)
        request, done, box = await agent.held("notes__write_note", WRITE)
        async with httpx2.AsyncClient(timeout=30) as http:
            attended = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            assert (await cli("away", *c)).code == 0
            unattended = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            assert (await cli("back", *c)).code == 0
            again = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        await cli("deny", request.id, "--reason", "done", *c)
        await outcome(done, box)
        tg.cancel_scope.cancel()
    assert gauge(attended, "mcp_gate_unattended_held_requests") == 0
    assert gauge(attended, "mcp_gate_unattended_held_request_expires_in_seconds") == float("inf")
    assert gauge(unattended, "mcp_gate_unattended_held_requests") == 1
    assert 0 < gauge(unattended, "mcp_gate_unattended_held_request_expires_in_seconds") <= 15 * 60
    assert gauge(again, "mcp_gate_unattended_held_requests") == 0


async def test_an_escalation_notice_skips_an_approver_who_is_away(tmp_path: Path) -> None:
    from mcp_gate.availability import mark_away

    clock = FakeClock()
    async with escalating_gate(tmp_path, clock) as s:
        await mark_away(s.gate.engine, s.config.approvers["dave"], until=None, note=None, channel="test")
        box = s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        await s.posted(request.id)
        clock.advance(minutes=11)
        notice = await s.wait_record(lambda r: r["event_type"] == "slack.escalation_notified", "its notice")
        # dave is away but may still decide once the request is his group's.
        late = await s.gate.engine.decide(request.id, s.config.approvers["dave"], "approve", channel="test")
        await s.fake.wait_for(lambda: box)
        records = await s.records()
        posted = [m for m in s.fake.messages.values() if "Escalated" in str(m.get("text"))]
    assert notice["approvers"] == ["carol"]  # dave is away, alice made the call
    [message] = posted
    assert "U0DAVE" not in message["text"]
    assert not isinstance(late, Refusal) and not box[0].is_error
    assert len(of_type(records, "approval.escalated")) == 1
