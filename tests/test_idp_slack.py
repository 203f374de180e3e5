"""Slack users as identity provider subjects: matched by verified email through an approver's
subject, or by an explicit [identity.subjects] entry; with require_idp an unmapped one is refused;
a Slack account mapped to the requester's subject cannot approve their call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mcp_gate.approvals import principal
from mcp_gate.channels.slack_blocks import ACTION_APPROVE
from mcp_gate.config import Requester
from mcp_gate.testing import eventually
from tests.slack_helpers import SlackGate, slack_gate

pytestmark = pytest.mark.anyio

ISSUER = "http://127.0.0.1:1"


def identity(*, require_idp: bool, subjects: dict[str, str]) -> str:
    lines = [
        "[identity]",
        f'issuer = "{ISSUER}"',
        'audience = "http://127.0.0.1:8765/mcp"',
        f"require_idp = {'true' if require_idp else 'false'}",
        "[identity.subjects]",
        *(f'{slack} = "{sub}"' for slack, sub in subjects.items()),
    ]
    return "\n".join(lines) + "\n"


def of_type(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in records if r["event_type"] == kind]


async def held_for(s: SlackGate, requester: Requester) -> str:
    s.tg.start_soon(
        lambda: s.gate.call(requester, "notes__write_note", {"name": "p", "text": "x"}, transport="http")
    )
    request_id = (await s.held()).id
    await s.posted(request_id)
    return request_id


IDP_ALICE = Requester(
    agent="claude-code",
    owner=principal(ISSUER, "00u-alice"),
    issuer=ISSUER,
    subject="00u-alice",
    email="alice@idp.example",
    scopes=frozenset(),
)


async def test_a_mapped_slack_user_decides_with_their_subject_recorded(tmp_path: Path) -> None:
    tail = identity(require_idp=True, subjects={"U0BOB": "00u-bob"})
    async with slack_gate(tmp_path, tail=tail) as s:
        request_id = await held_for(s, IDP_ALICE)
        await s.click("U0BOB", ACTION_APPROVE, request_id)
        decided = await eventually(lambda: _decided(s), what="bob's approval to be recorded")
    assert (decided[0]["approver"], decided[0]["approver_sub"]) == ("bob", "00u-bob")
    assert decided[0]["approver_iss"] == ISSUER


async def _decided(s: SlackGate) -> list[dict[str, Any]]:
    return of_type(await s.records(), "approval.decided")


async def test_with_require_idp_a_slack_user_mapped_to_no_subject_is_refused(tmp_path: Path) -> None:
    tail = identity(require_idp=True, subjects={"U0BOB": "00u-bob"})
    async with slack_gate(tmp_path, tail=tail) as s:
        request_id = await held_for(s, IDP_ALICE)
        await s.click("U0CAROL", ACTION_APPROVE, request_id)  # an approver by email, with no subject

        async def refused() -> list[dict[str, Any]]:
            return of_type(await s.records(), "slack.refused")

        found = await eventually(refused, what="carol's click to be refused")
        assert not of_type(await s.records(), "approval.decided")
    assert "maps to no subject" in found[0]["why"]


async def test_a_slack_account_mapped_to_the_requesters_subject_cannot_approve(tmp_path: Path) -> None:
    # Bob's Slack account is, to the identity provider, Alice: another channel, the same person.
    tail = identity(require_idp=False, subjects={"U0BOB": "00u-alice"})
    async with slack_gate(tmp_path, tail=tail) as s:
        request_id = await held_for(s, IDP_ALICE)
        await s.click("U0BOB", ACTION_APPROVE, request_id)

        async def refused() -> list[dict[str, Any]]:
            return of_type(await s.records(), "approval.refused")

        found = await eventually(refused, what="the self-approval to be refused")
    assert found[0]["code"] == "self-approval" and found[0]["approver_sub"] == "00u-alice"
