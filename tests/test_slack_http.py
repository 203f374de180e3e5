"""Slack's HTTP interactivity endpoint: only fresh, correctly signed, first-seen requests count."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_gate.channels.slack_blocks import ACTION_APPROVE, ACTION_DENY
from mcp_gate.channels.slack_clicks import parse_interaction
from mcp_gate.channels.slack_http import verify_signature
from mcp_gate.fake_slack import FakeSlack, sign
from tests.slack_helpers import SIGNING_SECRET, SlackGate, slack_gate

pytestmark = pytest.mark.anyio


async def post(s: SlackGate, body: bytes, headers: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.port}") as client:
        return await client.post("/slack/interactions", content=body, headers=headers)


def decided(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["event_type"] == "approval.decided"]


async def test_a_signed_click_over_http_is_acknowledged_and_decides_and_its_replay_is_refused(
    tmp_path: Path,
) -> None:
    async with slack_gate(tmp_path, mode="http") as s:
        box = s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        await s.posted(request.id)
        body, headers = FakeSlack.signed_form(
            s.fake.block_actions("U0BOB", ACTION_APPROVE, request.id), SIGNING_SECRET
        )
        first = await post(s, body, headers)
        await s.fake.wait_for(lambda: box)
        replay = await post(s, body, headers)
        records = await s.records()
    assert first.status_code == 200 and not box[0].is_error
    assert replay.status_code == 401 and "replay" in replay.json()["error"]
    assert len(decided(records)) == 1


async def test_the_endpoint_acknowledges_before_a_slow_decision_is_recorded(tmp_path: Path) -> None:
    async with slack_gate(tmp_path, mode="http") as s:
        box = s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        await s.posted(request.id)
        slow = s.fake.block("users.info")  # looking the clicker up hangs until released
        body, headers = FakeSlack.signed_form(
            s.fake.block_actions("U0BOB", ACTION_APPROVE, request.id), SIGNING_SECRET
        )
        response = await post(s, body, headers)
        assert response.status_code == 200
        assert decided(await s.records()) == []  # acknowledged while the decision still waits
        slow.set()
        await s.fake.wait_for(lambda: box)
        assert len(decided(await s.records())) == 1


async def test_socket_mode_acknowledges_before_a_slow_decision_is_recorded(tmp_path: Path) -> None:
    async with slack_gate(tmp_path) as s:
        box = s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        await s.posted(request.id)
        slow = s.fake.block("users.info")
        await s.click("U0BOB", ACTION_APPROVE, request.id)  # returns once the envelope is acked
        assert decided(await s.records()) == []
        slow.set()
        await s.fake.wait_for(lambda: box)
        assert len(decided(await s.records())) == 1


def _mangled(payload: dict[str, Any], kind: str) -> tuple[bytes, dict[str, Any]]:
    now = int(time.time())
    body, headers = FakeSlack.signed_form(payload, SIGNING_SECRET, timestamp=now)
    match kind:
        case "stale":
            return FakeSlack.signed_form(payload, SIGNING_SECRET, timestamp=now - 301)
        case "future":
            return FakeSlack.signed_form(payload, SIGNING_SECRET, timestamp=now + 60)
        case "forged":
            return FakeSlack.signed_form(payload, "not-the-secret", timestamp=now)
        case "tampered":
            return body.replace(b"U0BOB", b"U0BOX"), headers
        case "no-signature":
            return body, {k: v for k, v in headers.items() if k != "X-Slack-Signature"}
        case "no-timestamp":
            return body, {k: v for k, v in headers.items() if k != "X-Slack-Request-Timestamp"}
        case "bad-timestamp":
            return body, {**headers, "X-Slack-Request-Timestamp": "12:00"}
        case "bad-signature":
            return body, {**headers, "X-Slack-Signature": "v1=" + "0" * 64}
        case "short-signature":
            return body, {**headers, "X-Slack-Signature": "v0=abc"}
        case "unicode-signature":
            return body, {**headers, "X-Slack-Signature": ("v0=" + "é" * 64).encode("latin-1")}
    raise AssertionError(kind)


MANGLED = [
    "stale",
    "future",
    "forged",
    "tampered",
    "no-signature",
    "no-timestamp",
    "bad-timestamp",
    "bad-signature",
    "short-signature",
    "unicode-signature",
]
BAD_BODIES = [
    b"",
    b"payload=",
    b"payload=%7Bnot+json",
    b"payload=%5B1%2C2%5D",
    b"\xff\xfe",
    b"a=1&b=2",
    b"payload=1&payload=2",
]


async def test_forged_or_stale_requests_get_a_401_badly_bodied_ones_a_400_and_none_decides(
    tmp_path: Path,
) -> None:
    async with slack_gate(tmp_path, mode="http") as s:
        s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        await s.posted(request.id)
        answers: dict[str, int] = {}
        for kind in MANGLED:
            body, headers = _mangled(s.fake.block_actions("U0BOB", ACTION_APPROVE, request.id), kind)
            response = await post(s, body, headers)
            assert response.json()["error"]
            answers[kind] = response.status_code
        for raw in BAD_BODIES:  # correctly signed, but not what Slack sends
            ts = str(int(time.time()))
            headers = {
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Slack-Request-Timestamp": ts,
                "X-Slack-Signature": sign(SIGNING_SECRET, ts, raw),
            }
            answers[repr(raw)] = (await post(s, raw, headers)).status_code
        records = await s.records()
        assert (await s.gate.engine.get(request.id)).state == "pending"
    expected = {kind: 401 for kind in MANGLED} | {repr(raw): 400 for raw in BAD_BODIES}
    assert answers == expected
    assert decided(records) == []


async def test_a_deny_modal_submitted_without_a_reason_is_sent_back_with_an_error(tmp_path: Path) -> None:
    async with slack_gate(tmp_path, mode="http") as s:
        box = s.call("notes__write_note", {"name": "plan", "text": "ship"})
        request = await s.held()
        await s.posted(request.id)
        body, headers = FakeSlack.signed_form(
            s.fake.block_actions("U0BOB", ACTION_DENY, request.id), SIGNING_SECRET
        )
        assert (await post(s, body, headers)).status_code == 200
        await s.fake.wait_for(lambda: s.fake.views)
        blank = FakeSlack.signed_form(s.fake.view_submission("U0BOB", request.id, "   "), SIGNING_SECRET)
        answer = await post(s, *blank)
        assert answer.status_code == 200 and answer.json()["response_action"] == "errors"
        assert (await s.gate.engine.get(request.id)).state == "pending"
        reason = FakeSlack.signed_form(
            s.fake.view_submission("U0BOB", request.id, "wrong file"), SIGNING_SECRET
        )
        assert (await post(s, *reason)).status_code == 200
        await s.fake.wait_for(lambda: box)
    assert box[0].is_error and "denied by bob: wrong file" in " ".join(
        getattr(c, "text", "") for c in box[0].content
    )


def test_a_valid_signature_is_accepted_and_one_second_too_old_is_not() -> None:
    body = b"payload=%7B%7D"
    now = 1_800_000_000
    good = {"x-slack-request-timestamp": str(now - 300), "x-slack-signature": sign("s", str(now - 300), body)}
    old = {"x-slack-request-timestamp": str(now - 301), "x-slack-signature": sign("s", str(now - 301), body)}
    assert verify_signature("s", good, body, now=now) is None
    assert verify_signature("s", old, body, now=now) == "the request is too old"
    ahead = {"x-slack-request-timestamp": str(now + 6), "x-slack-signature": sign("s", str(now + 6), body)}
    assert verify_signature("s", ahead, body, now=now) == "the request is dated in the future"


@settings(max_examples=200, deadline=None)
@given(
    timestamp=st.text(max_size=20),
    signature=st.text(max_size=80),
    body=st.binary(max_size=200),
)
def test_verification_never_raises_and_never_accepts_a_made_up_signature(
    timestamp: str, signature: str, body: bytes
) -> None:
    headers = {"x-slack-request-timestamp": timestamp, "x-slack-signature": signature}
    assert verify_signature("secret", headers, body, now=1_800_000_000) is not None


def test_the_fake_signs_exactly_as_slack_documents() -> None:
    # Slack's documented example: secret, timestamp and body give this signature.
    body = (
        b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&"
        b"channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&"
        b"response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&"
        b"trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
    )
    assert (
        sign("8f742231b10e8888abcd99yyyzzz85a5", "1531420618", body)
        == "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    )
    assert json.dumps({"ok": True})  # the fake answers JSON, like Slack


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    payload=st.dictionaries(
        st.sampled_from(["type", "user", "team", "actions", "view", "container", "trigger_id"]),
        json_values | st.just("block_actions") | st.just("view_submission"),
        max_size=7,
    )
)
def test_parsing_any_interaction_payload_never_raises(payload: dict[str, Any]) -> None:
    click = parse_interaction(payload)
    assert click is None or click.request_id == click.request_id.strip().upper()
