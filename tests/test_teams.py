"""Teams as an approval channel: a held call becomes a card, a verified teammate decides, the card follows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from mcp_gate.desk import Desk
from mcp_gate.runtime import open_engine
from mcp_gate.testing import FakeClock, eventually
from tests.teams_helpers import (
    ALICE,
    BOB,
    CAROL,
    CONVERSATION,
    DAVE,
    EVE,
    FRANK,
    card_text,
    teams_gate,
    verbs,
)

pytestmark = pytest.mark.anyio


def text_of(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def of_type(records: list[dict[str, Any]], kind: str, request_id: str | None = None) -> list[dict[str, Any]]:
    return [
        r
        for r in records
        if r["event_type"] == kind and (request_id is None or r.get("request_id") == request_id)
    ]


async def test_a_held_call_is_posted_as_an_adaptive_card_and_an_approve_click_runs_it_once(
    tmp_path: Path,
) -> None:
    async with teams_gate(tmp_path) as t:
        box = t.call("notes__write_note", {"name": "plan", "text": "ship xoxb-123456789012-abcdefABCDEF"})
        request = await t.held()
        conversation, activity_id, card = await t.posted(request.id)
        assert conversation == CONVERSATION and card["version"] == "1.5"
        assert verbs(card) == ["approve", "deny", "approve_for"]
        assert all(a["data"] == {"request_id": request.id} for a in card["actions"] if "data" in a)
        shown = card_text(card)
        assert "notes__write_note" in shown and "high" in shown and "sre, security" in shown
        assert "xoxb-123456789012" not in shown and "[redacted]" in shown and "expires" in shown
        assert sorted(card["refresh"]["userIds"]) == sorted([BOB, CAROL, DAVE])
        [post] = t.fake.calls_to("POST")
        assert post.token is not None and post.token.startswith("fake-access-")
        assert not (tmp_path / "notes" / "plan").exists()

        answer = await t.click(BOB, "approve", request.id)
        assert answer["type"] == "application/vnd.microsoft.card.adaptive"
        assert verbs(answer["value"]) == []
        # The same click again (a new activity, so not a replay) changes nothing.
        again = await t.click(BOB, "approve", request.id)
        done = await t.showing(request.id, "the call ran")
        await t.fake.wait_for(lambda: box)
        records = await t.records()
    assert not box[0].is_error and text_of(box[0]) == "wrote plan"
    assert (tmp_path / "notes" / "plan").read_text() == "ship xoxb-123456789012-abcdefABCDEF"
    assert again["type"] == "application/vnd.microsoft.activity.message"
    assert verbs(done) == [] and "bob via teams" in card_text(done)
    [decided] = of_type(records, "approval.decided", request.id)
    assert decided["approver"] == "bob" and decided["channel"] == "teams"
    assert len(of_type(records, "call.executed")) == 1
    [posted] = of_type(records, "teams.posted", request.id)
    assert posted["activity_id"] == activity_id
    assert len(t.fake.calls_to("POST")) == 1  # posted once, updated in place
    assert t.fake.calls_to("PUT")


async def test_a_deny_click_needs_the_reason_typed_on_the_card_and_the_agent_gets_it(tmp_path: Path) -> None:
    async with teams_gate(tmp_path) as t:
        box = t.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await t.held()
        await t.posted(request.id)
        bare = await t.click(BOB, "deny", request.id)
        assert "reason" in bare["value"] and (await t.gate.engine.get(request.id)).state == "pending"
        await t.click(BOB, "deny", request.id, reason="  not during the [freeze](https://evil.example) ")
        done = await t.showing(request.id, "Denied")
        await t.fake.wait_for(lambda: box)
    assert box[0].is_error and "denied by bob: not during the [freeze](https://evil.example)" in text_of(
        box[0]
    )
    assert verbs(done) == []
    # The reason shows as literal text: a TextRun, which renders no Markdown link.
    runs = [i for b in done["body"] if b["type"] == "Container" for x in b["items"] for i in x["inlines"]]
    assert any("[freeze](https://evil.example)" in r["text"] for r in runs)


async def test_the_requesters_own_teams_account_cannot_approve(tmp_path: Path) -> None:
    async with teams_gate(tmp_path) as t:
        t.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await t.held()
        await t.posted(request.id)
        answer = await t.click(ALICE, "approve", request.id)
        refused = await t.wait_record(lambda r: r["event_type"] == "teams.refused")
        assert (await t.gate.engine.get(request.id)).state == "pending"
    assert answer["type"] == "application/vnd.microsoft.activity.message"
    assert "cannot decide" in answer["value"]
    assert refused["approver"] == "alice" and refused["code"] == "self-approval"
    assert ALICE not in t.channel.outbox.eligible_users(request)


@pytest.mark.parametrize(
    ("user", "tenant", "said"),
    [
        (EVE, None, "not mapped to an approver"),
        (BOB, "00000000-0000-4000-8000-00000000dead", "tenant"),
        (FRANK, None, "cannot decide"),
    ],
    ids=["unmapped user", "unknown tenant", "not in the tier's groups"],
)
async def test_a_click_by_someone_who_may_not_decide_is_answered_with_why_and_recorded(
    tmp_path: Path, user: str, tenant: str | None, said: str
) -> None:
    async with teams_gate(tmp_path) as t:
        t.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await t.held()
        await t.posted(request.id)
        response = await t.send(t.fake.invoke(user, "approve", {"request_id": request.id}, tenant_id=tenant))
        refused = await t.wait_record(lambda r: r["event_type"] == "teams.refused")
        assert (await t.gate.engine.get(request.id)).state == "pending"
    assert response.status_code == 200 and said in response.json()["value"]
    assert refused["request_id"] == request.id and refused["correlation_id"] == request.correlation_id


def _bad_tokens(t: Any) -> dict[str, str]:
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {
        "wrong audience": t.fake.token(audience="11111111-2222-4333-8444-555555555555"),
        "wrong issuer": t.fake.token(issuer="https://sts.windows.net/evil/"),
        "expired": t.fake.token(expires_in=-3600),
        "serviceurl mismatch": t.fake.token(service_url="https://smba.evil.example/"),
        "unknown kid": t.fake.token(kid="not-a-bot-framework-key"),
        "alg none": t.fake.token(algorithm="none"),
        "forged signature": t.fake.token(key=forger),
        "no token": "",
    }


async def test_every_bad_token_gets_a_bare_401_and_decides_nothing(tmp_path: Path) -> None:
    async with teams_gate(tmp_path) as t:
        t.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await t.held()
        await t.posted(request.id)
        answers = {}
        for what, token in _bad_tokens(t).items():
            response = await t.send(t.fake.invoke(BOB, "approve", {"request_id": request.id}), token=token)
            answers[what] = (response.status_code, response.json())
        records = await t.records()
        assert (await t.gate.engine.get(request.id)).state == "pending"
    assert all(answer == (401, {"error": "unauthorized"}) for answer in answers.values()), answers
    assert not of_type(records, "approval.decided") and not of_type(records, "teams.refused")


async def test_a_replayed_invoke_decides_nothing(tmp_path: Path) -> None:
    async with teams_gate(tmp_path) as t:
        t.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await t.held()
        await t.posted(request.id)
        deny = t.fake.invoke(
            BOB, "deny", {"request_id": request.id, "reason": "no"}, activity_id="f:replayed"
        )
        # The first delivery is refused by its token and so is not remembered; the second is taken.
        assert (await t.send(deny, token=t.fake.token(audience="someone-else"))).status_code == 401
        first = await t.send(deny)
        assert first.json()["type"] == "application/vnd.microsoft.card.adaptive"
        replay = await t.send(deny)
        records = await t.records()
    assert "already received" in replay.json()["value"]
    assert len(of_type(records, "approval.decided")) == 1
    [refused] = of_type(records, "teams.refused")
    assert refused["activity_id"] == "f:replayed"


async def test_a_decision_made_with_the_cli_updates_the_card_in_place(tmp_path: Path) -> None:
    async with teams_gate(tmp_path) as t:
        box = t.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await t.held()
        _, activity_id, _ = await t.posted(request.id)
        async with open_engine(t.config) as engine:  # its own SQLite connection, as the CLI has
            await Desk(engine, channel="cli").approve(
                request.id, t.config.approvers["carol"], note="via terminal"
            )
        done = await t.showing(request.id, "the call ran")
        await t.fake.wait_for(lambda: box)
        puts = t.fake.calls_to("PUT")
        late = await t.click(BOB, "approve", request.id)
    assert verbs(done) == [] and "carol via cli" in card_text(done)
    assert all(p.activity_id == activity_id for p in puts) and len(t.fake.calls_to("POST")) == 1
    assert "cannot decide" in late["value"]


async def test_an_expired_request_updates_the_card_and_a_late_click_is_refused(tmp_path: Path) -> None:
    clock = FakeClock()
    async with teams_gate(tmp_path, clock=clock, expires="5m") as t:
        box = t.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await t.held()
        await t.posted(request.id)
        clock.advance(minutes=6)
        done = await t.showing(request.id, "Expired")
        await t.fake.wait_for(lambda: box)
        late = await t.click(BOB, "approve", request.id)
    assert box[0].is_error and "expired" in text_of(box[0])
    assert verbs(done) == [] and "the call did not run" in card_text(done)
    assert "expired" in late["value"]


async def test_the_connector_down_then_back_posts_the_card_once_and_429_honours_retry_after(
    tmp_path: Path,
) -> None:
    from tests.teams_helpers import FakeTeams

    fake = FakeTeams(conversations={CONVERSATION})
    fake.fail(503, times=2, method="POST")
    async with teams_gate(tmp_path, fake=fake) as t:
        box = t.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await t.held()
        await t.posted(request.id)
        t.fake.fail(429, times=1, method="PUT", retry_after=1)
        await t.click(BOB, "approve", request.id)
        await t.showing(request.id, "the call ran")
        await t.fake.wait_for(lambda: box)
        records = await t.records()
    assert len(t.fake.calls_to("POST")) == 1 and len(t.fake.calls_to("POST", ok_only=False)) == 3
    failed = of_type(records, "teams.post_failed", request.id)
    assert [f["status"] for f in failed] == [503, 503]
    [throttled] = of_type(records, "teams.update_failed", request.id)
    assert throttled["status"] == 429 and throttled["retry_in_seconds"] >= 1


async def test_a_quorum_of_two_shows_progress_and_needs_two_distinct_approvers(tmp_path: Path) -> None:
    async with teams_gate(tmp_path) as t:
        box = t.call("notes__delete_note", {"name": "archive/2025"})
        request = await t.held()
        assert request.required == 2
        await t.posted(request.id)
        await t.click(DAVE, "approve", request.id)
        await t.showing(request.id, "1 of 2 approvals: dave via teams")
        again = await t.click(DAVE, "approve", request.id)
        await t.click(CAROL, "approve", request.id)
        await t.showing(request.id, "2 of 2 approvals")
        await t.fake.wait_for(lambda: box)
    assert "cannot decide" in again["value"]


async def test_two_channels_on_one_store_post_each_card_once(tmp_path: Path) -> None:
    from mcp_gate.channels.teams import TeamsChannel, TeamsSecrets
    from tests.teams_helpers import env

    async with teams_gate(tmp_path) as t:
        second = TeamsChannel(t.gate, TeamsSecrets.read(t.config, env(t.fake)), backoff=0.05, poll=0.02)
        await t.tg.start(second.run)
        for name in ("a", "b", "c"):
            t.call("notes__write_note", {"name": name, "text": "x"})
        await t.held(3)
        requests = await t.gate.engine.pending()
        for request in requests:
            await t.posted(request.id)

        async def recorded() -> list[dict[str, Any]] | None:
            found = of_type(await t.records(), "teams.posted")
            return found if len(found) >= 3 else None

        await eventually(recorded, what="three teams.posted records")  # a post is seen before it is recorded
        records = await t.records()
    assert len(t.fake.calls_to("POST")) == 3
    assert sorted(r["request_id"] for r in of_type(records, "teams.posted")) == sorted(r.id for r in requests)


async def test_approve_for_30_minutes_creates_a_grant_that_runs_the_next_identical_call_at_once(
    tmp_path: Path,
) -> None:
    async with teams_gate(tmp_path) as t:
        box = t.call("notes__write_note", {"name": "plan", "text": "one"})
        request = await t.held()
        await t.posted(request.id)
        await t.click(CAROL, "approve_for", request.id)
        await t.fake.wait_for(lambda: box)
        second = await t.agent.call_tool("notes__write_note", {"name": "plan", "text": "two"})
        records = await t.records()
    assert not box[0].is_error and not second.is_error
    [grant] = of_type(records, "grant.created", request.id)
    assert grant["duration"] == "30m" and grant["approver"] == "carol"
    assert t.fake.app_password not in json.dumps(records)  # the bot's password never reaches evidence


async def test_a_refreshing_card_shows_buttons_only_to_those_who_may_use_them(tmp_path: Path) -> None:
    async with teams_gate(tmp_path) as t:
        t.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await t.held()
        await t.posted(request.id)
        for_bob = await t.click(BOB, "refresh", request.id)
        for_alice = await t.click(ALICE, "refresh", request.id)
        for_eve = await t.click(EVE, "refresh", request.id)
        assert (await t.gate.engine.get(request.id)).state == "pending"
    assert verbs(for_bob["value"]) == ["approve", "deny", "approve_for"]
    assert verbs(for_alice["value"]) == []  # the requester: no buttons for her own call
    assert for_eve["type"] == "application/vnd.microsoft.activity.message"


@pytest.mark.parametrize(
    ("member", "decided"),
    [
        ({"email": "Gina@Example.com"}, True),
        ({"email": "gina@example.com", "role": "guest"}, False),
        ({"email": "gina@example.com", "tenant_id": "00000000-0000-4000-8000-00000000dead"}, False),
        ({"email": "eve@example.com"}, False),
    ],
    ids=["by email", "a guest", "another tenant", "not an approver's email"],
)
async def test_a_clicker_without_teams_user_is_mapped_by_the_email_the_connector_gives(
    tmp_path: Path, member: dict[str, str], decided: bool
) -> None:
    from tests.teams_helpers import GINA

    async with teams_gate(tmp_path) as t:
        t.fake.add_member(GINA, **member)
        box = t.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await t.held()
        await t.posted(request.id)
        answer = await t.click(GINA, "approve", request.id)
        if decided:
            await t.fake.wait_for(lambda: box)
        state = (await t.gate.engine.get(request.id)).state
    if decided:
        assert answer["type"] == "application/vnd.microsoft.card.adaptive" and state == "executed"
        assert "gina via teams" in card_text(answer["value"])
    else:
        assert "cannot decide" in answer["value"] and state == "pending"


async def test_a_revoked_approval_updates_the_card(tmp_path: Path) -> None:
    async with teams_gate(tmp_path) as t:
        t.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await t.held()
        await t.posted(request.id)
        async with open_engine(t.config) as engine:
            await engine.revoke(request.id, t.config.approvers["dave"])
        done = await t.showing(request.id, "Revoked")
    assert verbs(done) == [] and "Revoked by dave" in card_text(done)


async def test_a_request_the_connector_never_took_expires_and_says_it_was_not_posted(tmp_path: Path) -> None:
    from tests.teams_helpers import FakeTeams

    clock = FakeClock()
    fake = FakeTeams(conversations={CONVERSATION})
    fake.fail(503, method="POST")
    async with teams_gate(tmp_path, fake=fake, clock=clock, expires="5m") as t:
        box = t.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await t.held()
        await t.wait_record(lambda r: r["event_type"] == "teams.post_failed")
        clock.advance(minutes=6)
        await t.fake.wait_for(lambda: box)
        gave_up = await t.wait_record(lambda r: r["event_type"] == "teams.not_posted")
    assert box[0].is_error and "expired" in text_of(box[0])
    assert gave_up["request_id"] == request.id and gave_up["attempts"] >= 1
    assert t.fake.calls_to("POST") == [] and not (tmp_path / "notes" / "plan").exists()


async def test_an_escalated_request_shows_its_step_on_the_card_and_the_added_group_gets_buttons(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    tiers = {
        "high": {"approvals": 1, "groups": ["security"], "escalate_after": "10m", "escalate_to": ["finance"]}
    }
    async with teams_gate(tmp_path, clock=clock, tiers=tiers) as t:
        box = t.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await t.held()
        _, _, first = await t.posted(request.id)
        before = await t.click(FRANK, "refresh", request.id)
        clock.advance(minutes=11)
        await t.wait_record(lambda r: r["event_type"] == "approval.escalated", "the escalation")
        card = await t.showing(request.id, "Escalated (step 1) after 10m: finance may decide it too")
        after = await t.click(FRANK, "refresh", request.id)
        await t.click(FRANK, "approve", request.id)
        await t.fake.wait_for(lambda: box)
    assert FRANK not in first["refresh"]["userIds"] and FRANK in card["refresh"]["userIds"]
    assert verbs(before["value"]) == [] and verbs(after["value"]) == ["approve", "deny", "approve_for"]
    assert not box[0].is_error


async def test_a_break_glass_use_is_told_in_the_teams_conversation_once_naming_the_tiers_approvers(
    tmp_path: Path,
) -> None:
    async with teams_gate(tmp_path, tail='\n[breakglass]\ngroups = ["security"]\n') as t:
        box = t.call("notes__write_note", {"name": "plan", "text": "now"})
        request = await t.held()
        await t.posted(request.id)
        dave = t.config.approvers["dave"]
        outcome = await Desk(t.gate.engine, channel="cli").break_glass(
            request.id, dave, reason="the outage", settings=t.config.breakglass, approvers=t.config.approvers
        )
        notice = await t.wait_record(lambda r: r["event_type"] == "teams.breakglass_notified", "the notice")
        await t.fake.wait_for(lambda: box)
        await t.channel.outbox.sync()  # another pass posts nothing more
        records = await t.records()
        cards = [
            a["content"]
            for c in t.fake.calls_to("POST")
            for a in (c.body or {}).get("attachments") or []
            if "Break-glass" in json.dumps(a.get("content"))
        ]
    assert isinstance(outcome, dict) and not box[0].is_error
    assert len(of_type(records, "teams.breakglass_notified")) == 1
    [card] = cards
    text = card_text(card)
    assert "dave released request" in text and "the outage" in text
    assert notice["approvers"] and all(name in text for name in notice["approvers"])
