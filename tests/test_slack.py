"""Slack as an approval channel: a held call is posted, a verified teammate decides, the message follows."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client

from mcp_gate.channels.slack import SlackChannel, SlackSecrets
from mcp_gate.channels.slack_api import SlackApi
from mcp_gate.channels.slack_blocks import (
    ACTION_APPROVE,
    ACTION_APPROVE_FOR,
    ACTION_DENY,
    metadata_request_id,
    request_metadata,
)
from mcp_gate.channels.slack_outbox import LEASE
from mcp_gate.clock import utc_iso
from mcp_gate.config import load_config
from mcp_gate.desk import Desk
from mcp_gate.fake_slack import FakeSlack
from mcp_gate.runtime import open_engine
from mcp_gate.storage.base import SlackMessage
from mcp_gate.testing import FakeClock, eventually, running_gate
from tests.slack_helpers import buttons, env, fake_slack, make_config, slack_gate, status_line

pytestmark = pytest.mark.anyio


def text_of(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def of_type(records: list[dict[str, Any]], kind: str, request_id: str | None = None) -> list[dict[str, Any]]:
    return [
        r
        for r in records
        if r["event_type"] == kind and (request_id is None or r.get("request_id") == request_id)
    ]


@pytest.mark.parametrize("mcp_mode", ["legacy", "auto"])
async def test_an_approve_click_in_slack_runs_the_held_call_and_the_message_shows_who_approved(
    tmp_path: Path, mcp_mode: str
) -> None:
    async with slack_gate(tmp_path, mcp_mode=mcp_mode) as s:
        box = s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        channel, _, message = await s.posted(request.id)
        assert channel == "C0APPROVE"
        assert buttons(message) == [ACTION_APPROVE, ACTION_DENY, ACTION_APPROVE_FOR]
        assert all(
            e["value"] == request.id
            for b in message["blocks"]
            if b["type"] == "actions"
            for e in b["elements"]
        )
        assert not (tmp_path / "notes" / "plan").exists()
        await s.click("U0BOB", ACTION_APPROVE, request.id)
        done = await s.showing(request.id, "the call ran")
        await s.fake.wait_for(lambda: box)
        records = await s.records()
    assert not box[0].is_error and text_of(box[0]) == "wrote plan"
    assert (tmp_path / "notes" / "plan").read_text() == "ship"
    assert buttons(done) == []
    assert "*Approved* (1 of 1 approvals: <@U0BOB> (bob))" in status_line(
        done
    ) and "via slack" in status_line(done)
    [decided] = of_type(records, "approval.decided", request.id)
    assert decided["approver"] == "bob" and decided["channel"] == "slack"
    [posted] = of_type(records, "slack.posted", request.id)
    assert posted["channel"] == "C0APPROVE" and posted["correlation_id"] == request.correlation_id


async def test_a_deny_click_asks_for_a_reason_and_the_agent_and_the_message_get_it(tmp_path: Path) -> None:
    async with slack_gate(tmp_path) as s:
        box = s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        await s.posted(request.id)
        await s.click("U0BOB", ACTION_DENY, request.id)
        [view] = await s.fake.wait_for(lambda: s.fake.views)
        assert view["view"]["private_metadata"] == request.id
        assert (await s.gate.engine.get(request.id)).state == "pending"  # nothing decided by the click alone
        envelope = s.fake.send_envelope(
            s.fake.view_submission("U0BOB", request.id, "  not <@U0EVE> during the freeze ")
        )
        await s.fake.wait_for(lambda: s.fake.acked(envelope))
        done = await s.showing(request.id, "Denied")
        await s.fake.wait_for(lambda: box)
    assert box[0].is_error and "denied by bob: not <@U0EVE> during the freeze" in text_of(box[0])
    assert not (tmp_path / "notes" / "plan").exists()
    assert buttons(done) == []
    assert "not &lt;@U0EVE&gt; during the freeze" in status_line(
        done
    )  # the note is shown, never as a mention


async def test_a_critical_call_needs_two_slack_approvals_and_the_message_shows_the_progress(
    tmp_path: Path,
) -> None:
    async with slack_gate(tmp_path) as s:
        (tmp_path / "notes" / "archive").mkdir(parents=True)
        (tmp_path / "notes" / "archive" / "2025").write_text("kept")
        box = s.call("notes__delete_note", {"name": "archive/2025"})
        request = await s.held()
        _, _, message = await s.posted(request.id)
        assert ACTION_APPROVE_FOR not in buttons(message)  # critical: no grants
        await s.click("U0CAROL", ACTION_APPROVE, request.id)
        halfway = await s.showing(request.id, "1 of 2 approvals")
        assert "1 of 2 approvals: <@U0CAROL> (carol)" in status_line(halfway)
        assert buttons(halfway)[:2] == [ACTION_APPROVE, ACTION_DENY]
        assert (tmp_path / "notes" / "archive" / "2025").exists()
        await s.click("U0DAVE", ACTION_APPROVE, request.id)
        done = await s.showing(request.id, "the call ran")
        await s.fake.wait_for(lambda: box)
    assert not box[0].is_error and not (tmp_path / "notes" / "archive" / "2025").exists()
    assert "2 of 2 approvals: <@U0CAROL> (carol), <@U0DAVE> (dave)" in status_line(done)


@pytest.mark.parametrize("user", ["U0ALICE", "U0ALICE2"])
async def test_the_requesters_owner_cannot_approve_in_slack_through_either_of_her_accounts(
    tmp_path: Path, user: str
) -> None:
    async with slack_gate(tmp_path) as s:
        s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        await s.posted(request.id)
        await s.click(user, ACTION_APPROVE, request.id)
        [ephemeral] = await s.fake.wait_for(lambda: s.fake.ephemerals)
        records = await s.records()
        assert (await s.gate.engine.get(request.id)).state == "pending"
    assert ephemeral["user"] == user and ephemeral["channel"] == "C0APPROVE"
    assert ephemeral["text"].startswith("You cannot decide this:")
    assert of_type(records, "approval.decided") == []
    # U0ALICE is mapped by slack_user; U0ALICE2's email is an alias of the same approver: both are
    # alice, who acts for the owner, and the engine refuses her as it does in every channel.
    [refused] = of_type(records, "approval.refused", request.id)
    assert (
        refused["code"] == "self-approval"
        and refused["channel"] == "slack"
        and refused["approver"] == "alice"
    )
    assert "nobody approves their own calls" in ephemeral["text"]


@pytest.mark.parametrize(
    ("user", "team", "why"),
    [
        ("U0EVE", None, "(eve@example.com) is not an approver of this gate"),
        ("U0NOBODY", None, "could not look up your Slack account (user_not_found)"),
        ("U0BOT", None, "bots and apps cannot decide"),
        ("U0GUEST", None, "your Slack workspace (T0OTHER) is not the one this gate trusts (T0TEAM)"),
        ("U0CAROL", "T0OTHER", "your Slack workspace (T0OTHER) is not the one this gate trusts"),
        ("U0FRANK", None, "it needs a member of sre, security"),
    ],
)
async def test_unmapped_foreign_bot_and_ineligible_slack_users_are_told_why_and_nothing_is_decided(
    tmp_path: Path, user: str, team: str | None, why: str
) -> None:
    async with slack_gate(tmp_path) as s:
        s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        await s.posted(request.id)
        await s.click(user, ACTION_APPROVE, request.id, team_id=team)
        [ephemeral] = await s.fake.wait_for(lambda: s.fake.ephemerals)
        records = await s.records()
        assert (await s.gate.engine.get(request.id)).state == "pending"
    assert why in ephemeral["text"] and ephemeral["user"] == user
    assert of_type(records, "approval.decided") == []
    attempts = of_type(records, "slack.refused", request.id) + of_type(
        records, "approval.refused", request.id
    )
    assert len(attempts) == 1  # the attempt is recorded, in the request's story
    assert attempts[0]["correlation_id"] == request.correlation_id


async def test_a_redelivered_socket_mode_envelope_makes_no_second_decision(tmp_path: Path) -> None:
    async with slack_gate(tmp_path) as s:
        s.call("notes__delete_note", {"name": "archive/old"})  # critical: one approval leaves it open
        request = await s.held()
        await s.posted(request.id)
        payload = s.fake.block_actions("U0CAROL", ACTION_APPROVE, request.id)
        first = s.fake.send_envelope(payload, envelope_id="env-same")
        await s.fake.wait_for(lambda: s.fake.acked(first))
        await s.showing(request.id, "1 of 2 approvals")
        s.fake.send_envelope(payload, envelope_id="env-same", retry=1)
        await s.fake.wait_for(lambda: len([a for a in s.fake.acks if a["envelope_id"] == "env-same"]) == 2)
        # A later, different click proves the worker went past the re-delivery.
        await s.click("U0EVE", ACTION_APPROVE, request.id)
        await s.fake.wait_for(lambda: s.fake.ephemerals)
        records = await s.records()
    assert len(of_type(records, "approval.decided", request.id)) == 1
    assert of_type(records, "approval.refused", request.id) == []  # not even a "duplicate" refusal


async def test_approve_for_30_minutes_creates_a_grant_that_runs_the_next_identical_call_at_once(
    tmp_path: Path,
) -> None:
    async with slack_gate(tmp_path) as s:
        box = s.call("notes__write_note", {"name": "plan", "text": "one"})
        request = await s.held()
        await s.posted(request.id)
        await s.click("U0BOB", ACTION_APPROVE_FOR, request.id)
        await s.fake.wait_for(lambda: box)
        second = await s.agent.call_tool("notes__write_note", {"name": "plan", "text": "two"})
        records = await s.records()
    assert not box[0].is_error and not second.is_error
    [grant] = of_type(records, "grant.created", request.id)
    assert grant["duration"] == "30m" and grant["approver"] == "bob"


async def test_slack_down_then_back_keeps_the_call_held_and_posts_it_when_slack_returns(
    tmp_path: Path,
) -> None:
    async with slack_gate(tmp_path) as s:
        s.fake.fail(503)
        box = s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        failed = await s.wait_record(lambda r: r["event_type"] == "slack.post_failed")
        assert failed["request_id"] == request.id and failed["status"] == 503
        await s.wait_record(lambda r: r["event_type"] == "slack.post_failed" and r["attempt"] == 2)
        assert box == [] and not (tmp_path / "notes" / "plan").exists()
        s.fake.restore()
        await s.posted(request.id)
        await s.click("U0BOB", ACTION_APPROVE, request.id)
        await s.fake.wait_for(lambda: box)
        records = await s.records()
    assert not box[0].is_error
    [posted] = of_type(records, "slack.posted", request.id)
    assert posted["attempts"] >= 3
    assert all(f["retry_in_seconds"] > 0 for f in of_type(records, "slack.post_failed", request.id))


async def test_a_rate_limited_post_waits_for_retry_after_before_it_is_tried_again(tmp_path: Path) -> None:
    async with slack_gate(tmp_path) as s:
        s.fake.fail(429, times=1, retry_after=1)
        s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        await s.posted(request.id)
        records = await s.records()
        posts = s.fake.calls_to("chat.postMessage", ok_only=False)
    [failed] = of_type(records, "slack.post_failed", request.id)
    assert failed["status"] == 429 and failed["error"] == "ratelimited" and failed["retry_in_seconds"] >= 1
    assert [c.status for c in posts] == [429, 200]  # honoured: one retry, not a burst


async def test_a_decision_made_with_the_cli_in_another_process_updates_the_slack_message(
    tmp_path: Path,
) -> None:
    async with slack_gate(tmp_path) as s:
        box = s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        await s.posted(request.id)
        async with open_engine(s.config) as engine:  # its own SQLite connection, as the CLI has
            await Desk(engine, channel="cli").approve(
                request.id, s.config.approvers["carol"], note="via terminal"
            )
        done = await s.showing(request.id, "the call ran")
        await s.fake.wait_for(lambda: box)
    assert (
        buttons(done) == [] and "carol via cli" in status_line(done) and "via terminal" in status_line(done)
    )


async def test_a_revoked_approval_updates_the_slack_message(tmp_path: Path) -> None:
    async with slack_gate(tmp_path) as s:
        s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        await s.posted(request.id)
        async with open_engine(s.config) as engine:
            await engine.revoke(request.id, s.config.approvers["dave"])
        done = await s.showing(request.id, "Revoked")
    assert buttons(done) == [] and "*Revoked* by dave" in status_line(done)


async def test_an_expired_request_updates_the_slack_message_and_a_late_click_is_refused(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    async with slack_gate(tmp_path, clock=clock, expires="5m") as s:
        box = s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        await s.posted(request.id)
        clock.advance(minutes=6)
        done = await s.showing(request.id, "Expired")
        await s.fake.wait_for(lambda: box)
        await s.click("U0BOB", ACTION_APPROVE, request.id)
        [ephemeral] = await s.fake.wait_for(lambda: s.fake.ephemerals)
    assert box[0].is_error and "expired" in text_of(box[0])
    assert buttons(done) == [] and "the call did not run" in status_line(done)
    assert "is expired, not pending" in ephemeral["text"]
    assert not (tmp_path / "notes" / "plan").exists()


async def test_a_request_that_cannot_be_posted_before_it_expires_expires_and_says_so(tmp_path: Path) -> None:
    clock = FakeClock()
    async with slack_gate(tmp_path, clock=clock, expires="5m") as s:
        s.fake.revoked = True  # the bot token was revoked: every post fails
        box = s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        failed = await s.wait_record(lambda r: r["event_type"] == "slack.post_failed")
        clock.advance(minutes=6)
        await s.fake.wait_for(lambda: box)
        given_up = await s.wait_record(lambda r: r["event_type"] == "slack.not_posted")
    assert failed["error"] == "token_revoked"
    assert box[0].is_error and "expired" in text_of(box[0]) and not (tmp_path / "notes" / "plan").exists()
    assert given_up["request_id"] == request.id and given_up["state"] == "expired"
    assert given_up["last_error"] == "token_revoked"


async def test_a_tier_channel_override_is_used_and_a_wrong_one_falls_back_to_the_default(
    tmp_path: Path,
) -> None:
    tail = '[slack.tiers]\ncritical = "C0CRIT"\nhigh = "C0GONE"\n'
    async with slack_gate(tmp_path, tail=tail) as s:
        s.call("notes__delete_note", {"name": "archive/old"})
        critical = await s.held()
        s.call("notes__write_note", {"name": "plan", "text": "ship"})
        high = await s.held(2)
        critical_channel, _, _ = await s.posted(critical.id)
        high_channel, _, _ = await s.posted(high.id)
    assert critical_channel == "C0CRIT" and high_channel == "C0APPROVE"


async def test_no_token_reaches_the_evidence_log_or_slack_messages(tmp_path: Path) -> None:
    async with slack_gate(tmp_path) as s:
        s.fake.fail(429, times=1, retry_after=1)
        s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        await s.posted(request.id)
        await s.click("U0EVE", ACTION_APPROVE, request.id)
        await s.fake.wait_for(lambda: s.fake.ephemerals)
        records = await s.records()
        sent = repr(s.fake.messages) + repr(s.fake.ephemerals)
    everything = repr(records) + sent
    assert s.fake.bot_token not in everything and s.fake.app_token not in everything
    assert "xoxb-" not in everything


async def test_a_malformed_envelope_is_acknowledged_and_ignored_and_the_gate_keeps_serving(
    tmp_path: Path,
) -> None:
    async with slack_gate(tmp_path) as s:
        box = s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        await s.posted(request.id)
        for payload in [
            {"type": "block_actions"},
            {"type": "block_actions", "user": "U0BOB", "actions": "approve"},
            {"type": "view_submission", "user": {"id": "U0BOB"}, "view": {"callback_id": 7}},
            {"type": "shortcut", "user": {"id": "U0BOB"}},
        ]:
            envelope = s.fake.send_envelope(payload)
            await s.fake.wait_for(lambda envelope=envelope: s.fake.acked(envelope))
        await s.click("U0BOB", ACTION_APPROVE, request.id)
        await s.fake.wait_for(lambda: box)
        records = await s.records()
    assert not box[0].is_error
    assert len(of_type(records, "approval.decided")) == 1 and of_type(records, "slack.refused") == []


async def test_hostile_socket_mode_frames_decide_nothing_and_the_link_keeps_working(tmp_path: Path) -> None:
    async with slack_gate(tmp_path) as s:
        box = s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        await s.posted(request.id)
        click = {
            "type": "block_actions",
            "user": {"id": "U0BOB"},
            "actions": [{"action_id": ACTION_APPROVE, "value": request.id}],
        }
        for frame in [
            "not json",
            b"\xff\xfe binary",
            "[]",
            '"a string"',
            json.dumps({"type": "interactive", "payload": click}),  # no envelope_id
            json.dumps({"envelope_id": 7, "type": "interactive", "payload": click}),
            json.dumps({"envelope_id": "e1", "type": "interactive", "payload": "approve"}),
            json.dumps({"envelope_id": "e2", "type": ["interactive"], "payload": click}),
            # 8 MB: slack_sdk's reader recursed once per 1 KiB read, so 1 MB killed the session
            json.dumps({"envelope_id": "e3", "type": "interactive", "payload": {"x": "y" * 8_000_000}}),
            "[" * 100_000,
        ]:
            s.fake.send_frame(frame)
        assert (await s.gate.engine.get(request.id)).state == "pending"
        await s.click("U0BOB", ACTION_APPROVE, request.id)  # the same link still takes a real click
        await s.fake.wait_for(lambda: box)
        records = await s.records()
    assert not box[0].is_error
    assert len(of_type(records, "approval.decided")) == 1


async def test_someone_who_may_not_decide_is_refused_at_the_deny_click_before_any_reason_is_asked(
    tmp_path: Path,
) -> None:
    async with slack_gate(tmp_path) as s:
        s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        await s.posted(request.id)
        await s.click(
            "U0FRANK", ACTION_DENY, request.id
        )  # frank is in finance; the tier needs sre or security
        [ephemeral] = await s.fake.wait_for(lambda: s.fake.ephemerals)
        records = await s.records()
        assert (await s.gate.engine.get(request.id)).state == "pending"
    assert s.fake.views == [] and "it needs a member of sre, security" in ephemeral["text"]
    [refused] = of_type(records, "slack.refused", request.id)
    assert refused["approver"] == "frank" and refused["code"] == "not-eligible"


async def test_two_slack_channels_sharing_one_store_post_each_request_once(tmp_path: Path) -> None:
    async with slack_gate(tmp_path) as s:
        second = SlackChannel(s.gate, SlackSecrets.read(s.config, env()), backoff=0.05, poll=0.02)
        await s.tg.start(second.run)  # a second gate process on the same file does the same
        s.call("notes__write_note", {"name": "plan", "text": "ship"})
        s.call("notes__write_note", {"name": "other", "text": "ship"})
        await s.held(2)
        first, later = await s.gate.engine.pending()
        await s.posted(first.id)
        await s.posted(later.id)
        await s.click("U0BOB", ACTION_APPROVE, first.id)
        await s.showing(first.id, "Approved")
        posts = s.fake.calls_to("chat.postMessage")
        records = await s.records()
    assert len(posts) == 2
    assert sorted(r["request_id"] for r in of_type(records, "slack.posted")) == sorted([first.id, later.id])


async def test_the_requesters_justification_is_shown_in_the_slack_message(tmp_path: Path) -> None:
    from dataclasses import replace

    async with slack_gate(tmp_path) as s:
        s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        justified = replace(request, justification="the release needs it <!channel>")
        message = await s.channel.outbox.render(justified, {})
        plain = await s.channel.outbox.render(request, {})
    literal = [
        e.get("text", "")
        for b in message["blocks"]
        if b["type"] == "rich_text"
        for part in b["elements"]
        for e in part.get("elements", [])
    ]
    assert any("the release needs it <!channel>" in t for t in literal)  # quoted literally, no mention
    assert not any(str(b.get("block_id", "")).startswith("why:") for b in plain["blocks"])


@asynccontextmanager
async def died_while_posting(
    tmp_path: Path, fake: FakeSlack, *, posted: bool = True
) -> AsyncIterator[tuple[SlackChannel, str]]:
    """A held request whose message a gate posted (with its metadata) and died before recording:
    the store holds only the claim (with `posted=False`, it died before the post reached Slack).
    Yields a channel whose wall clock is past that claim's lease."""
    with fake.running():
        config = load_config(make_config(tmp_path, fake), env())
        async with (
            running_gate(config) as front,
            Client(front.server, mode="legacy") as agent,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(agent.call_tool, "notes__write_note", {"name": "plan", "text": "ship"})
            [request] = await eventually(front.gateway.engine.pending, what="the held request")
            secrets = SlackSecrets.read(config, env())
            if posted:
                dead = SlackChannel(front.gateway, secrets)
                message = {**await dead.outbox.render(request, {}), "metadata": request_metadata(request.id)}
                await SlackApi(secrets.bot_token, fake.api_url).post_message("C0APPROVE", message)
            claim = SlackMessage(request.id, "C0APPROVE", lease_until=utc_iso(datetime.now(UTC) + LEASE))
            await front.gateway.store.transact(lambda tx: tx.save_slack_message(claim))
            later = datetime.now(UTC) + LEASE + timedelta(seconds=1)
            yield SlackChannel(front.gateway, secrets, wall=lambda: later), request.id
            tg.cancel_scope.cancel()


# Who else may post a message with the request's metadata: metadata is anyone's to set.
LOOK_ALIKES = {
    "a person": {"user": "U0EVE"},
    "another app": {"user": "U0OTHERBOT", "bot_id": "B0OTHER", "app_id": "A0OTHER"},
}


async def test_a_message_posted_before_a_crash_is_found_after_the_lease_and_not_posted_twice(
    tmp_path: Path,
) -> None:
    fake = fake_slack()
    async with died_while_posting(tmp_path, fake) as (channel, request_id):
        [orphan] = fake.calls_to("chat.postMessage")
        assert await channel.outbox.sync() == 1  # the adoption
        assert await channel.outbox.sync() == 1  # the update of what it shows
        assert await channel.outbox.sync() == 0
        records = [dict(r.body) for r in await channel.gate.store.records()]
    assert fake.calls_to("chat.postMessage") == [orphan]
    [posted] = of_type(records, "slack.posted", request_id)
    found = fake.message_for(request_id)
    assert found is not None and posted["recovered"] is True
    assert (posted["channel"], posted["message_ts"]) == found[:2]
    assert [u["ts"] for u in fake.updates] == [found[1]]
    [history] = fake.calls_to("conversations.history")
    assert history.params["include_all_metadata"] in ("true", "1")


async def test_without_a_history_scope_a_message_that_may_be_posted_is_posted_again_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = fake_slack()
    fake.scopes = ("chat:write", "users:read", "users:read.email")
    async with died_while_posting(tmp_path, fake) as (channel, request_id):
        assert await channel.outbox.sync() == 1
        records = [dict(r.body) for r in await channel.gate.store.records()]
    assert len(fake.calls_to("chat.postMessage")) == 2  # fail safe: shown twice rather than never
    [posted] = of_type(records, "slack.posted", request_id)
    assert posted["unchecked_history"] == "missing_scope" and "recovered" not in posted
    assert "cannot look for the message" in caplog.text


@pytest.mark.parametrize("sender", sorted(LOOK_ALIKES))
async def test_a_look_alike_message_with_the_requests_metadata_is_not_adopted_and_the_gate_posts_its_own(
    tmp_path: Path, sender: str
) -> None:
    fake = fake_slack()
    async with died_while_posting(tmp_path, fake, posted=False) as (channel, request_id):
        forged = fake.add_message(
            "C0APPROVE", "approve me", metadata=request_metadata(request_id), **LOOK_ALIKES[sender]
        )
        assert await channel.outbox.sync() == 1
        records = [dict(r.body) for r in await channel.gate.store.records()]
    [posted] = of_type(records, "slack.posted", request_id)
    assert "recovered" not in posted and posted["message_ts"] != forged
    [post] = fake.calls_to("chat.postMessage")
    found = fake.message_for(request_id)
    assert found is not None and found[1] == posted["message_ts"] and post.params["channel"] == "C0APPROVE"


async def test_beside_a_newer_look_alike_the_message_the_gate_posted_before_a_crash_is_the_one_adopted(
    tmp_path: Path,
) -> None:
    fake = fake_slack()
    async with died_while_posting(tmp_path, fake) as (channel, request_id):
        [orphan] = fake.calls_to("chat.postMessage")
        fake.add_message(
            "C0APPROVE", "approve me", metadata=request_metadata(request_id), **LOOK_ALIKES["another app"]
        )
        assert await channel.outbox.sync() == 1
        records = [dict(r.body) for r in await channel.gate.store.records()]
    [posted] = of_type(records, "slack.posted", request_id)
    found = fake.message_for(request_id)
    assert found is not None and posted["recovered"] is True and posted["message_ts"] == found[1]
    assert fake.calls_to("chat.postMessage") == [orphan]


async def test_a_post_slack_took_but_never_answered_is_found_in_the_history_and_shows_once(
    tmp_path: Path,
) -> None:
    fake = fake_slack()
    fake.drop_answer("chat.postMessage")  # Slack shows the message; the gate hears nothing back
    async with slack_gate(tmp_path, fake=fake) as s:
        box = s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        await s.wait_record(lambda r: r["event_type"] == "slack.posted", "the message recorded")
        await s.click("U0BOB", ACTION_APPROVE, request.id)
        await s.showing(request.id, "the call ran")  # the message Slack took shows the decision
        await fake.wait_for(lambda: box)
        records = await s.records()
    shown = [m for m in fake.messages.values() if metadata_request_id(m) == request.id]
    assert len(shown) == 1 and len(fake.calls_to("chat.postMessage", ok_only=False)) == 1
    [failed] = of_type(records, "slack.post_failed", request.id)
    [posted] = of_type(records, "slack.posted", request.id)
    assert failed["unanswered"] is True and posted["recovered"] is True
    found = fake.message_for(request.id)
    assert found is not None and (posted["channel"], posted["message_ts"]) == found[:2]
