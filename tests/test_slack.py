"""Slack as an approval channel: a held call is posted, a verified teammate decides, the message follows."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_gate.channels.slack_blocks import ACTION_APPROVE
from tests.slack_helpers import buttons, slack_gate

pytestmark = pytest.mark.anyio


def text_of(result: object) -> str:
    return " ".join(getattr(c, "text", "") for c in getattr(result, "content", []))


async def test_an_approve_click_in_slack_runs_the_held_call_and_the_message_shows_who_approved(
    tmp_path: Path,
) -> None:
    async with slack_gate(tmp_path) as s:
        box = s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        channel, _, message = await s.posted(request.id)
        assert channel == "C0APPROVE" and buttons(message)[:2] == [ACTION_APPROVE, "mcp_gate.deny"]
        await s.click("U0BOB", ACTION_APPROVE, request.id)
        done = await s.showing(request.id, "Approved")
        await s.fake.wait_for(lambda: box)
        assert not box[0].is_error and text_of(box[0]) == "wrote plan"
        assert buttons(done) == []
