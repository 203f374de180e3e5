"""Hostile Slack interaction payloads: each parses into a click naming exactly one request id the gate
minted the way it mints them, or is refused; nothing escapes as an exception (docs/limits.md)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx2 as httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_gate.approvals import ID_ALPHABET, ID_LENGTH
from mcp_gate.channels.slack_blocks import ACTION_APPROVE, ACTION_APPROVE_FOR, ACTION_DENY, DENY_CALLBACK
from mcp_gate.channels.slack_clicks import MAX_REASON, modal_errors, parse_interaction
from mcp_gate.channels.slack_http import MAX_BODY_BYTES, parse_form_payload
from mcp_gate.fake_slack import FakeSlack, sign
from tests.slack_helpers import SIGNING_SECRET, SlackGate, slack_gate

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
request_ids = st.text(alphabet=ID_ALPHABET, min_size=ID_LENGTH, max_size=ID_LENGTH)
# Values that resemble a request id: other ids, padded, doubled, smuggling a second id.
id_like = (
    request_ids
    | request_ids.map(lambda i: "G" + i)
    | st.tuples(request_ids, request_ids).map(lambda p: f"{p[0]} {p[1]}")
    | st.tuples(request_ids, request_ids).map(lambda p: p[0] + p[1])
    | request_ids.map(lambda i: i.lower() + "\n")
    | request_ids.map(lambda i: i + "\x00")
    | st.text(max_size=80)
)
action_ids = st.sampled_from([ACTION_APPROVE, ACTION_APPROVE_FOR, ACTION_DENY, "other", ""]) | st.text(
    max_size=8
)


def block_actions(actions: list[Any], user: Any) -> dict[str, Any]:
    return {"type": "block_actions", "user": user, "team": {"id": "T0TEAM"}, "actions": actions}


@st.composite
def hostile_payloads(draw: st.DrawFn) -> Any:
    action = st.fixed_dictionaries(
        {"action_id": action_ids, "value": id_like | json_values},
        optional={"block_id": st.text(max_size=20)},
    )
    user = st.fixed_dictionaries(
        {"id": st.text(max_size=80) | json_values}, optional={"team_id": json_values}
    )
    view = st.fixed_dictionaries(
        {
            "callback_id": st.sampled_from([DENY_CALLBACK, "x"]) | json_values,
            "private_metadata": id_like | json_values,
            "state": json_values
            | st.text(max_size=30).map(lambda r: {"values": {"reason": {"reason": {"value": r}}}}),
        }
    )
    shape = draw(st.integers(0, 3))
    if shape == 0:
        return block_actions(draw(st.lists(action | json_values, max_size=3)), draw(user | json_values))
    if shape == 1:
        return {"type": "view_submission", "user": draw(user | json_values), "view": draw(view | json_values)}
    if shape == 2:
        return draw(st.dictionaries(st.sampled_from(["type", "user", "actions", "view"]), json_values))
    return {"type": draw(st.sampled_from(["block_actions", "view_submission"]) | json_values)}


def named_ids(payload: Any) -> set[str]:
    """Every request id written anywhere in the payload, as the gate would read it."""
    found: set[str] = set()
    if isinstance(payload, dict):
        for value in payload.values():
            found |= named_ids(value)
    elif isinstance(payload, list):
        for value in payload:
            found |= named_ids(value)
    elif isinstance(payload, str):
        found.add(payload.strip().upper())
    return found


@FUZZ
@given(hostile_payloads())
def test_a_hostile_payload_is_one_click_on_a_named_request_id_or_nothing(payload: Any) -> None:
    click = parse_interaction(payload)
    modal_errors(payload)  # must not raise either
    if click is None:
        return
    assert len(click.request_id) == ID_LENGTH and set(click.request_id) <= set(ID_ALPHABET)
    assert click.request_id in named_ids(payload)
    if click.kind != "deny_reason":
        [action] = payload["actions"]
        assert action["value"].strip().upper() == click.request_id


@FUZZ
@given(request_ids, request_ids)
def test_a_value_smuggling_a_second_request_id_names_no_request(first: str, second: str) -> None:
    for value in (f"{first} {second}", first + second, f"{first},{second}", f"{first}\n{second}"):
        assert (
            parse_interaction(block_actions([{"action_id": ACTION_APPROVE, "value": value}], {"id": "U1"}))
            is None
        )


def test_two_actions_in_one_payload_decide_neither() -> None:
    payload = block_actions(
        [{"action_id": ACTION_DENY, "value": "AAAAAAAA"}, {"action_id": ACTION_APPROVE, "value": "BBBBBBBB"}],
        {"id": "U1"},
    )
    assert parse_interaction(payload) is None


def test_a_reason_past_the_limit_is_refused_with_one_modal_error() -> None:
    state = {"values": {"reason": {"reason": {"value": "x" * (MAX_REASON + 1)}}}}
    payload = {
        "type": "view_submission",
        "user": {"id": "U1"},
        "view": {"callback_id": DENY_CALLBACK, "private_metadata": "AAAAAAAA", "state": state},
    }
    assert parse_interaction(payload) is None
    assert modal_errors(payload) == {
        "response_action": "errors",
        "errors": {"reason": f"Keep the reason under {MAX_REASON} characters."},
    }


def test_huge_fields_are_refused() -> None:
    huge = "U" * 1_000_000
    payload = block_actions([{"action_id": ACTION_APPROVE, "value": "AAAAAAAA"}], {"id": huge})
    assert parse_interaction(payload) is None
    assert (
        parse_interaction(block_actions([{"action_id": ACTION_APPROVE, "value": huge}], {"id": "U1"})) is None
    )


HOSTILE_BODIES = [
    b"\xff\xfe payload",
    b"payload=%ff%fe",
    b"payload=" + b"%5B" * 100_000,
    b"payload={}&payload={}",
    b"payload=" + urlencode({"x": '{"type": "block_actions", "type": "view_submission"}'}).encode()[2:],
    b"payload=",
    b"payload",
    b"a=1&" * 20 + b"payload={}",
    b"payload=" + b"1" * 5000,
    b"payload=%22just%20a%20string%22",
    b"payload=NaN",
]


@pytest.mark.parametrize("body", HOSTILE_BODIES, ids=range(len(HOSTILE_BODIES)))
def test_a_hostile_form_body_is_refused_without_an_exception(body: bytes) -> None:
    assert parse_form_payload(body) is None


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_as_a_form_body_give_a_json_object_or_nothing(body: bytes) -> None:
    payload = parse_form_payload(body)
    assert payload is None or isinstance(payload, dict)


# -- through the real endpoint ----------------------------------------------------------------------


async def post(s: SlackGate, body: Any, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.port}") as client:
        return await client.post("/slack/interactions", content=body, headers=headers)


def signed(
    body: bytes, *, timestamp: int | None = None, kind: str = "application/x-www-form-urlencoded"
) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "Content-Type": kind,
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": sign(SIGNING_SECRET, ts, body),
    }


@pytest.mark.anyio
async def test_hostile_requests_to_the_endpoint_are_refused_in_one_line_and_decide_nothing(
    tmp_path: Path,
) -> None:
    async with slack_gate(tmp_path, mode="http") as s:
        box = s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        await s.posted(request.id)
        click = s.fake.block_actions("U0BOB", ACTION_APPROVE, request.id)
        good, headers = FakeSlack.signed_form(click, SIGNING_SECRET)
        dup = (
            b"payload="
            + urlencode({"x": json.dumps(click)[:-1] + ', "type": "view_submission"}'}).encode()[2:]
        )
        cases: list[tuple[bytes, dict[str, str], int]] = [
            (good, {**headers, "X-Slack-Signature": "v0=" + "0" * 64}, 401),
            (good, {k: v for k, v in headers.items() if not k.startswith("X-Slack")}, 401),
            (good, FakeSlack.signed_form(click, SIGNING_SECRET, timestamp=1)[1], 401),
            (good, signed(good, kind="application/json"), 400),
            (b"\xff\xfe", signed(b"\xff\xfe"), 400),
            (b"payload=%5B" + b"%5B" * 50_000, signed(b"payload=%5B" + b"%5B" * 50_000), 400),
            (dup, signed(dup), 400),
            (b"x" * (MAX_BODY_BYTES + 1), signed(b"x" * (MAX_BODY_BYTES + 1)), 413),
        ]
        answers = [await post(s, body, h) for body, h, _ in cases]

        async def streamed() -> Any:
            for _ in range(MAX_BODY_BYTES // 65536 + 2):
                yield b"y" * 65536

        huge = await post(s, streamed(), {"Content-Type": "application/x-www-form-urlencoded"})
        # The gate keeps serving: the genuine click still decides.
        ok = await post(s, good, headers)
        await s.fake.wait_for(lambda: box)
        records = await s.records()
    assert [a.status_code for a in answers] == [c[2] for c in cases]
    for answer in answers:
        error = answer.json()["error"]
        assert isinstance(error, str) and "\n" not in error and "Traceback" not in error
    assert huge.status_code == 413
    assert ok.status_code == 200 and not box[0].is_error
    assert len([r for r in records if r["event_type"] == "approval.decided"]) == 1
