"""The Teams card and card actions: agent text stays literal, hostile activities decide nothing."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_gate.channels.teams_activity import parse_activity, parse_body
from mcp_gate.channels.teams_cards import breakglass_card, card_answer, render_card
from mcp_gate.fake_teams import FakeTeams

RID = "K7Q2M9XA"
HOSTILE = "<at>Everyone</at> [click](https://evil.example) **now** \u202eevil\u200b"


def view(state: str = "pending", **extra: Any) -> dict[str, Any]:
    return {
        "id": RID,
        "name": "notes__write_note",
        "server": "notes",
        "tool": "write_note",
        "tier": "high",
        "rule": "write_note",
        "reason": HOSTILE,
        "requester": {"agent": HOSTILE, "owner": "alice@example.com"},
        "groups": ["sre"],
        "required": 1,
        "expires_at": "2026-11-24T12:15:00.000000Z",
        "args": {"name": "plan", "text": HOSTILE, "api_token": "s3cr3t-by-key"},
        "args_sha256": "ab" * 32,
        "votes": [],
        "state": state,
        "closed_by": None,
        **extra,
    }


def nodes(card: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(card, dict):
        found.append(card)
        for value in card.values():
            found += nodes(value)
    elif isinstance(card, list):
        for value in card:
            found += nodes(value)
    return found


def test_agent_and_server_text_is_only_ever_a_text_run_never_markdown() -> None:
    card = render_card(view(), gate="gate", justification=HOSTILE, tool_description=HOSTILE)
    markdown = [n["text"] for n in nodes(card) if n.get("type") == "TextBlock"]
    assert markdown == ["Approval needed"]  # the one TextBlock (which renders Markdown) is the gate's own
    runs = [n["text"] for n in nodes(card) if n.get("type") == "TextRun"]
    assert any("[click](https://evil.example)" in r for r in runs)
    assert not any("\u202e" in r or "\u200b" in r for r in runs)
    assert "s3cr3t-by-key" not in json.dumps(card) and "msteams" not in json.dumps(
        card
    )  # no mention entities


def test_buttons_carry_only_the_request_id_and_go_once_the_request_is_decided() -> None:
    pending = render_card(view(), gate="gate", grant_allowed=True, refresh_users=["b0b"])
    executes = [a for a in pending["actions"] if a["type"] == "Action.Execute"]
    assert [a["verb"] for a in executes] == ["approve", "deny", "approve_for"]
    assert all(a["data"] == {"request_id": RID} for a in executes)
    assert pending["refresh"]["userIds"] == ["b0b"] and pending["version"] == "1.5"
    vote = {"approver": "bob", "verdict": "approve", "channel": "teams", "at": "2026-11-24T12:01:00Z"}
    done = render_card(view("executed", votes=[vote]), gate="gate", refresh_users=["b0b"])
    assert "actions" not in done and "refresh" not in done
    assert not any(n.get("type") == "Input.Text" for n in nodes(done))


def click(**change: Any) -> dict[str, Any]:
    with FakeTeams().running() as fake:
        activity = fake.invoke("b0b00000-0000-4000-8000-000000000001", "approve", {"request_id": RID})
    for path, value in change.items():
        target = activity
        *parents, leaf = path.split("__")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return activity


def test_a_well_formed_click_is_parsed_and_hostile_ones_decide_nothing() -> None:
    good = parse_activity(click())
    assert (
        not isinstance(good, str) and good is not None and good.request_id == RID and good.verb == "approve"
    )
    assert parse_activity(click(type="message")) is None
    assert parse_activity(click(name="composeExtension/query")) is None
    for bad in [
        click(value__action__type="Action.Submit"),
        click(value__action__verb="approve_all"),
        click(value__action__data={"request_id": "../../etc"}),
        click(value__action__data={"request_id": RID, "approver": "bob"}),
        click(value__action__data={"request_id": RID, "reason": "x" * 9000}),
        click(channelId="webchat"),
        click(**{"from": {"id": "29:x" * 200}}),
    ]:
        assert isinstance(parse_activity(bad), str), bad
    split = parse_activity(click(channelData={"tenant": {"id": "00000000-0000-4000-8000-00000000dead"}}))
    assert split is not None and not isinstance(split, str) and split.tenant_id is None


def test_a_body_that_names_a_key_twice_or_is_not_an_object_is_refused() -> None:
    assert parse_body(b'{"type": "invoke", "type": "message"}') is None
    assert parse_body(b"[1, 2]") is None and parse_body(b"\xff") is None
    assert parse_body(b'{"type": "invoke"}') == {"type": "invoke"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["type", "name", "id", "from", "value", "conversation"]), json_values))
def test_any_json_object_parses_to_a_click_a_reason_or_nothing_without_raising(
    activity: dict[str, Any],
) -> None:
    found = parse_activity({"type": "invoke", "name": "adaptiveCard/action", **activity})
    assert found is None or isinstance(found, str) or found.request_id == RID


def test_the_console_link_is_an_open_url_action_beside_the_buttons() -> None:
    card = render_card(view(), gate="gate", console_url="https://gate.example.com/console")
    assert card["actions"][-1] == {
        "type": "Action.OpenUrl",
        "title": "Open in console",
        "url": "https://gate.example.com/console",
    }


def test_every_card_the_gate_renders_is_one_teams_own_card_model_reads_back_unchanged() -> None:
    from microsoft_teams.cards import AdaptiveCard

    vote = {
        "approver": "bob",
        "verdict": "deny",
        "channel": "teams",
        "at": "2026-11-24T12:01:00Z",
        "note": "no",
    }
    notice = {"operator": "carol", "request_id": RID, "server": "notes", "tool": "write_note", "tier": "high"}
    for card in [
        render_card(
            view(), gate="gate", grant_allowed=True, refresh_users=["b0b"], console_url="https://g/c"
        ),
        render_card(view("denied", votes=[vote]), gate="gate"),
        breakglass_card({**notice, "reason": HOSTILE, "notify": ["bob"]}, gate="gate"),
    ]:
        read = AdaptiveCard.model_validate(card)
        assert read.model_dump(mode="json", exclude_none=True) == card
        assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    answer = card_answer(card)
    assert answer == {"statusCode": 200, "type": "application/vnd.microsoft.card.adaptive", "value": card}


def test_an_invoke_teams_own_model_would_not_read_is_malformed() -> None:
    activity = click()
    del activity["recipient"]  # Teams always names the bot an activity is for
    assert parse_activity(activity) == "the card action is malformed"
    assert parse_activity(click(serviceUrl=None)) == "the card action is malformed"
