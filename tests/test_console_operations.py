"""The console's break-glass button and an approver's away and back, over a real gate: shown only to
those the engine would accept, refused and recorded when forged, and recorded as the CLI records them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.console_helpers import Browserless, gate_with_console, make_config, text_of

pytestmark = pytest.mark.anyio

BREAKGLASS = '\n[breakglass]\ngroups = ["security"]\n'


async def test_break_glass_shows_only_to_its_group_and_releases_the_call_once_recorded(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, console=BREAKGLASS)
    async with gate_with_console(config) as gate:
        held = await gate.hold("notes__write_note", {"name": "todo", "text": "now"})
        page = f"/console/requests/{held.request.id}"
        async with Browserless(gate.base) as bob:
            await bob.login("tok-bob")  # sre: may approve, may not break glass
            shown_to_bob = (await bob.get(page)).text
            forged = await bob.post(f"{page}/breakglass", {"reason": "trust me"})
        async with Browserless(gate.base) as carol:
            await carol.login("tok-carol")  # security: the [breakglass] group
            shown_to_carol = (await carol.get(page)).text
            empty = await carol.post(f"{page}/breakglass", {"reason": "  "})
            used = await carol.post(f"{page}/breakglass", {"reason": "the outage will not wait"})
        result = await held.outcome()
        records = await gate.evidence()
    assert "Break glass" not in shown_to_bob and "Break glass" in shown_to_carol
    assert forged.status_code == 409 and "Refused:" in forged.text
    assert empty.status_code == 409
    assert used.status_code == 303 and "done=released" in used.headers["location"]
    assert not result.is_error, text_of(result)
    refused = [r for r in records if r["event_type"] == "breakglass.refused"]
    assert [(r["operator"], r["code"]) for r in refused] == [("bob", "not-allowed"), ("carol", "no-reason")]
    [broken] = [r for r in records if r["event_type"] == "breakglass.used"]
    assert (broken["operator"], broken["reason"], broken["channel"]) == (
        "carol",
        "the outage will not wait",
        "console",
    )


async def test_an_approver_marks_themselves_away_and_back_in_the_console(tmp_path: Path) -> None:
    async with gate_with_console(make_config(tmp_path)) as gate, Browserless(gate.base) as bob:
        await bob.login("tok-bob")
        before = (await bob.get("/console/pending")).text
        forged = await bob.post("/console/away", {"for": "8h"}, csrf=False)
        bad = await bob.post("/console/away", {"for": "forever"})
        away = await bob.post("/console/away", {"for": "8h", "note": "<b>on leave</b>"})
        during = (await bob.get("/console/pending?done=away")).text
        back = await bob.post("/console/back", {})
        after = (await bob.get("/console/pending")).text
        records = await gate.evidence()
    assert "Mark me away" in before
    assert forged.status_code == 403 and bad.status_code == 400
    assert away.status_code == 303 and away.headers["location"].endswith("/console/pending?done=away")
    assert "You are away until" in during and "I am back" in during
    assert "&lt;b&gt;on leave&lt;/b&gt;" in during and "<b>on leave</b>" not in during
    assert back.status_code == 303 and "Mark me away" in after
    [marked] = [r for r in records if r["event_type"] == "approver.away"]
    assert (marked["approver"], marked["channel"], marked["note"]) == ("bob", "console", "<b>on leave</b>")
    assert [r["approver"] for r in records if r["event_type"] == "approver.back"] == ["bob"]
    assert any(r["event_type"] == "console.refused" for r in records)  # the CSRF-less post
