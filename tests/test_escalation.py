"""Escalation, driven by the gate's clock: a request nobody in its groups decided within the tier's
`escalate_after` may then be decided by the further groups, who are told in Slack; each step is
sealed evidence shown with the request and in the report, and expiry still ends the request."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from mcp_gate import runtime
from mcp_gate.approvals import Refusal
from mcp_gate.channels.slack import SlackChannel, SlackSecrets
from mcp_gate.config import load_config
from mcp_gate.desk import Desk
from mcp_gate.errors import ConfigError
from mcp_gate.evidence import VerifyReport
from mcp_gate.report import build_report
from mcp_gate.testing import (
    NOTES_MANIFEST,
    FakeClock,
    eventually,
    notes_server_table,
    running_gate,
    write_config,
)
from tests.slack_helpers import APPROVERS, SlackGate, env, fake_slack, slack_table

pytestmark = pytest.mark.anyio

TIERS = {
    "high": {"approvals": 1, "groups": ["finance"], "escalate_after": "10m", "escalate_to": ["security"]},
}


@asynccontextmanager
async def escalating_gate(
    tmp_path: Path,
    clock: FakeClock,
    tiers: dict[str, Any] | None = None,
    manifest: str | None = None,
    extra: str = "",
) -> AsyncIterator[SlackGate]:
    fake = fake_slack()
    with fake.running():
        path = write_config(
            tmp_path / "gate",
            servers={"notes": notes_server_table(tmp_path / "notes")},
            manifests={"notes": manifest or NOTES_MANIFEST.read_text()},
            approvers=APPROVERS,
            tiers=tiers or TIERS,
            approvals={"hold_seconds": 60, "progress_seconds": 0.5, "expires": "15m"},
            extra=slack_table(fake) + extra,
        )
        config = load_config(path, env())
        async with (
            running_gate(config, clock=clock) as front,
            Client(front.server, mode="legacy") as agent,
            anyio.create_task_group() as tg,
        ):
            channel = SlackChannel(
                front.gateway, SlackSecrets.read(config, env()), backoff=0.05, max_backoff=0.5, poll=0.02
            )
            port = await tg.start(channel.run)
            await fake.wait_for(lambda: fake.connected)
            yield SlackGate(fake, config, front.gateway, channel, agent, tg, port)
            tg.cancel_scope.cancel()


def of_type(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in records if r["event_type"] == kind]


async def test_after_escalate_after_the_further_group_may_decide_and_is_told_in_slack(tmp_path: Path) -> None:
    clock = FakeClock()
    async with escalating_gate(tmp_path, clock) as s:
        box = s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        await s.posted(request.id)
        dave = s.config.approvers["dave"]  # security: not the tier's group
        early = await s.gate.engine.decide(request.id, dave, "approve", channel="test")
        clock.advance(minutes=9)
        assert not of_type(await s.records(), "approval.escalated")
        clock.advance(minutes=2)
        step = await s.wait_record(lambda r: r["event_type"] == "approval.escalated", "the escalation")
        notice = await s.wait_record(lambda r: r["event_type"] == "slack.escalation_notified", "its notice")
        shown = await Desk(s.gate.engine, channel="test").show(request.id)
        # The request's own message shows the step too, updated in place.
        line = "Escalated (step 1) after 10m: security may decide it too"
        await s.fake.wait_for(lambda: any(line in str(m.get("blocks")) for m in s.fake.messages.values()))
        late = await s.gate.engine.decide(request.id, dave, "approve", channel="test")
        await s.fake.wait_for(lambda: box)
        records = await s.records()
        posted = [m for m in s.fake.messages.values() if "Escalated" in str(m.get("text"))]
    assert isinstance(early, Refusal) and early.code == "not-eligible"
    assert not isinstance(late, Refusal)
    assert not box[0].is_error and (tmp_path / "notes" / "plan").read_text() == "ship"
    assert (step["request_id"], step["after"], step["to_groups"]) == (request.id, "10m", ["security"])
    assert step["from_groups"] == ["finance"] and step["seal"]
    assert len(of_type(records, "approval.escalated")) == 1  # once, however many sweeps followed
    # the security group is told, but not alice: the request was made on her behalf
    assert notice["approvers"] == ["carol", "dave"] and notice["slack_users"] == ["U0DAVE"]
    [message] = posted
    assert "<@U0DAVE>" in message["text"] and "U0ALICE" not in message["text"]
    assert [(e["after"], e["to_groups"]) for e in shown["escalations"]] == [("10m", ["security"])]

    with runtime.open_log_reader(s.config) as reader:
        verdict = VerifyReport(ok=True, records=0, head_hash="", first_bad_seq=None, problem=None)
        report = build_report(reader, since=None, until=None, gate="g", verified=verdict)
    assert [(e["request_id"], e["to_groups"]) for e in report["escalations"]] == [(request.id, ["security"])]


async def test_expiry_still_ends_an_escalated_request(tmp_path: Path) -> None:
    clock = FakeClock()
    async with escalating_gate(tmp_path, clock) as s:
        box = s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        clock.advance(minutes=11)
        await s.wait_record(lambda r: r["event_type"] == "approval.escalated", "the escalation")
        clock.advance(minutes=5)
        await eventually(lambda: box, what="the held call to end")
        late = await s.gate.engine.decide(request.id, s.config.approvers["dave"], "approve", channel="test")
        records = await s.records()
    assert box[0].is_error and "expired" in " ".join(getattr(c, "text", "") for c in box[0].content)
    assert of_type(records, "approval.expired") and isinstance(late, Refusal)
    assert not (tmp_path / "notes" / "plan").exists()


def test_an_escalation_needs_both_keys_and_known_groups(tmp_path: Path) -> None:
    for i, (tier, where) in enumerate(
        (
            ({"approvals": 1, "escalate_after": "10m"}, "tiers.high"),
            ({"approvals": 1, "escalate_after": "10m", "escalate_to": ["nobody"]}, "tiers.high.escalate_to"),
            ({"approvals": 1, "escalate_after": "soon", "escalate_to": ["sre"]}, "tiers.high.escalate_after"),
        )
    ):
        config = write_config(
            tmp_path / str(i),
            servers={"notes": notes_server_table(tmp_path)},
            approvers={"bob": APPROVERS["bob"]},
            tiers={"high": tier},
        )
        with pytest.raises(ConfigError) as caught:
            load_config(config, os.environ)
        assert where in str(caught.value)


STEPS = {
    "high": {
        "approvals": 1,
        "groups": ["finance"],
        "escalation": [{"after": "5m", "to": ["security"]}, {"after": "10m", "to": ["sre"]}],
    },
}


async def test_each_step_opens_the_request_to_its_groups_in_turn_and_is_told_once(tmp_path: Path) -> None:
    clock = FakeClock()
    async with escalating_gate(tmp_path, clock, STEPS) as s:
        box = s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        await s.posted(request.id)
        bob = s.config.approvers["bob"]  # sre: reached by the second step only
        clock.advance(minutes=6)
        first = await s.wait_record(lambda r: r["event_type"] == "approval.escalated", "the first step")
        early = await s.gate.engine.decide(request.id, bob, "approve", channel="test")
        clock.advance(minutes=5)
        second = await s.wait_record(
            lambda r: r["event_type"] == "approval.escalated" and r["step"] == 2, "the second step"
        )
        await s.wait_record(
            lambda r: r["event_type"] == "slack.escalation_notified" and r["notice_of"] == second["event_id"],
            "the second step's notice",
        )
        shown = await Desk(s.gate.engine, channel="test").show(request.id)
        late = await s.gate.engine.decide(request.id, bob, "approve", channel="test")
        await s.fake.wait_for(lambda: box)
        records = await s.records()
        posted = [str(m.get("text")) for m in s.fake.messages.values() if "Escalated" in str(m.get("text"))]
    assert (first["step"], first["from_groups"], first["to_groups"]) == (1, ["finance"], ["security"])
    assert (second["step"], second["from_groups"], second["to_groups"]) == (
        2,
        ["finance", "security"],
        ["sre"],
    )
    assert isinstance(early, Refusal) and early.code == "not-eligible"
    assert not isinstance(late, Refusal) and not box[0].is_error
    assert [e["step"] for e in of_type(records, "approval.escalated")] == [1, 2]
    assert len(of_type(records, "slack.escalation_notified")) == 2
    assert any("(step 2)" in text for text in posted)
    assert [(e["step"], e["to_groups"]) for e in shown["escalations"]] == [(1, ["security"]), (2, ["sre"])]


async def test_steps_due_together_are_recorded_in_order_in_one_sweep(tmp_path: Path) -> None:
    clock = FakeClock()
    async with escalating_gate(tmp_path, clock, STEPS) as s:
        s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        clock.advance(minutes=12)  # both steps are due at once
        await s.wait_record(
            lambda r: r["event_type"] == "approval.escalated" and r["step"] == 2, "the second step"
        )
        steps = of_type(await s.records(), "approval.escalated")
        await s.gate.engine.decide(request.id, s.config.approvers["bob"], "deny", channel="test", note="no")
    assert [(e["step"], e["to_groups"]) for e in steps] == [(1, ["security"]), (2, ["sre"])]
    assert steps[0]["seq"] < steps[1]["seq"]


def test_a_list_of_steps_must_be_ordered_known_and_not_mixed_with_the_shorthand(tmp_path: Path) -> None:
    bad = (
        ({"approvals": 1, "escalation": []}, "tiers.high.escalation"),
        ({"approvals": 1, "escalation": [{"after": "10m"}]}, "tiers.high.escalation[0]"),
        (
            {"approvals": 1, "escalation": [{"after": "10m", "to": ["sre"]}, {"after": "5m", "to": ["sre"]}]},
            "tiers.high.escalation[1].after",
        ),
        (
            {"approvals": 1, "escalation": [{"after": "1m", "to": ["sre"], "when": 1}]},
            "tiers.high.escalation[0]",
        ),
        ({"approvals": 1, "escalation": [{"after": "1m", "to": ["nobody"]}]}, "tiers.high.escalation[0].to"),
        (
            {"approvals": 1, "escalate_after": "1m", "escalation": [{"after": "1m", "to": ["sre"]}]},
            "tiers.high",
        ),
    )
    for i, (tier, where) in enumerate(bad):
        config = write_config(
            tmp_path / str(i),
            servers={"notes": notes_server_table(tmp_path)},
            approvers={"bob": APPROVERS["bob"]},
            tiers={"high": tier},
        )
        with pytest.raises(ConfigError) as caught:
            load_config(config, os.environ)
        assert where in str(caught.value), (where, str(caught.value))


def test_one_step_written_either_way_is_the_same_policy(tmp_path: Path) -> None:
    def digest(i: int, tier: dict[str, Any]) -> str:
        config = write_config(
            tmp_path / "gate",  # one path each time: the path is part of the digest
            servers={"notes": notes_server_table(tmp_path)},
            approvers={"bob": APPROVERS["bob"]},
            tiers={"high": {"approvals": 1, "groups": ["sre"], **tier}},
        )
        return load_config(config, os.environ).config_sha256

    shorthand = digest(0, {"escalate_after": "10m", "escalate_to": ["sre"]})
    listed = digest(1, {"escalation": [{"after": "10m", "to": ["sre"]}]})
    two = digest(2, {"escalation": [{"after": "10m", "to": ["sre"]}, {"after": "20m", "to": ["sre"]}]})
    assert shorthand == listed != two


def with_rule_escalation(steps: str) -> str:
    """The notes manifest with write_note's rule escalating on its own."""
    text = NOTES_MANIFEST.read_text()
    rule = 'reason = "replaces a note\'s whole text; the old text is lost"\n'
    assert rule in text
    return text.replace(rule, rule + f"escalation = {steps}\n")


async def test_a_manifest_rule_escalates_by_its_own_steps_and_other_calls_by_the_tiers(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    tiers = {"high": {"approvals": 1, "groups": ["finance"], "escalate_after": "10m", "escalate_to": ["sre"]}}
    manifest = with_rule_escalation('[{ after = "3m", to = ["security"] }]')
    async with escalating_gate(tmp_path, clock, tiers, manifest) as s:
        s.call("notes__write_note", {"name": "plan", "text": "ship"})
        written = await s.held()
        s.call("notes__delete_note", {"name": "old"})
        deleted = await s.held(2)
        [requested] = [
            r for r in of_type(await s.records(), "approval.requested") if r["request_id"] == written.id
        ]
        clock.advance(minutes=4)
        first = await s.wait_record(lambda r: r["event_type"] == "approval.escalated", "the rule's step")
        early = of_type(await s.records(), "approval.escalated")
        clock.advance(minutes=7)
        await s.wait_record(
            lambda r: r["event_type"] == "approval.escalated" and r["request_id"] == deleted.id,
            "the tier's step",
        )
        steps = of_type(await s.records(), "approval.escalated")
        for request in (written, deleted):
            await s.gate.engine.decide(
                request.id, s.config.approvers["frank"], "deny", channel="test", note="no"
            )
    assert requested["escalation"] == [{"after": 180.0, "groups": ["security"], "channel": None}]
    assert requested["seal"]  # sealed with the request: a row edited later escalates nobody
    assert (first["request_id"], first["to_groups"], first["after"]) == (written.id, ["security"], "3m")
    assert len(early) == 1
    # write_note's rule replaces the tier's steps: it never goes to sre; delete_note follows the tier.
    assert sorted((e["request_id"], tuple(e["to_groups"])) for e in steps) == sorted(
        [(written.id, ("security",)), (deleted.id, ("sre",))]
    )


def test_a_rules_steps_must_be_ordered_and_name_known_groups(tmp_path: Path) -> None:
    from mcp_gate.manifests import load_manifest

    unordered = tmp_path / "unordered.toml"
    unordered.write_text(
        with_rule_escalation('[{ after = "10m", to = ["sre"] }, { after = "5m", to = ["sre"] }]')
    )
    with pytest.raises(ConfigError) as caught:
        load_manifest(unordered)
    assert "rule[5].escalation[1].after" in str(caught.value)
    garbled = tmp_path / "garbled.toml"
    garbled.write_text(with_rule_escalation('[{ after = "soon", to = ["sre"] }]'))
    with pytest.raises(ConfigError) as caught:
        load_manifest(garbled)
    assert "is not a duration" in str(caught.value)


async def test_a_rule_escalating_to_a_group_nobody_is_in_stops_the_gate_from_starting(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": with_rule_escalation('[{ after = "3m", to = ["nobody"] }]')},
        approvers=APPROVERS,
        tiers=TIERS,
    )
    with pytest.raises(ConfigError) as caught:
        async with running_gate(load_config(path, env())):
            pass
    assert "rule[5].escalation[0].to" in str(caught.value) and "'nobody'" in str(caught.value)


async def test_an_escalation_reaches_the_on_call_webhook_signed_as_well_as_slack(tmp_path: Path) -> None:
    from mcp_gate.channels.webhook import WebhookChannel
    from tests.test_webhook import SECRET, Receiver, receiver_at

    clock = FakeClock()
    receiver = Receiver()
    (tmp_path / "hook.secret").write_text(SECRET)
    async with anyio.create_task_group() as outer:
        url = await receiver_at(outer, receiver)
        hook = f'\n[webhook]\nurl = "{url}"\nsecret_file = "{tmp_path / "hook.secret"}"\nbackoff = 0.05\n'
        async with escalating_gate(tmp_path, clock, extra=hook) as s:
            assert s.config.webhook is not None
            await s.tg.start(WebhookChannel(s.gate, s.config.webhook, SECRET).run)
            s.call("notes__write_note", {"name": "plan", "text": "ship"})
            request = await s.held()
            clock.advance(minutes=11)
            await s.wait_record(lambda r: r["event_type"] == "slack.escalation_notified", "the Slack notice")
            await eventually(
                lambda: any(p["type"] == "approval.escalated" for p in receiver.payloads),
                what="the escalation posted to the webhook",
            )
            await s.gate.engine.decide(
                request.id, s.config.approvers["frank"], "deny", channel="test", note="no"
            )
        outer.cancel_scope.cancel()
    [posted] = [p for p in receiver.payloads if p["type"] == "approval.escalated"]
    assert posted["request_id"] == request.id and receiver.refused == 0
