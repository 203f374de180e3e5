"""The Slack Web API adapter: Slack's failures become one SlackFailure, tokens never in messages."""

from __future__ import annotations

import logging
import socket
import threading

import anyio
import pytest

from mcp_gate.channels.slack_api import SlackApi, connect_socket_mode
from mcp_gate.channels.slack_blocks import metadata_request_id, request_metadata
from mcp_gate.errors import SlackFailure
from mcp_gate.fake_slack import SCOPES, FakeSlack

pytestmark = pytest.mark.anyio


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there any more


async def test_an_unreachable_slack_is_a_slack_failure_not_a_crash() -> None:
    api = SlackApi("xoxb-secret-value", f"http://127.0.0.1:{closed_port()}/api/", timeout=2)
    with pytest.raises(SlackFailure) as caught:
        await api.post_message("C1", {"text": "hi"})
    assert caught.value.error.startswith("unreachable") and "xoxb-secret-value" not in str(caught.value)


async def test_a_429_carries_its_retry_after_and_a_revoked_token_its_code() -> None:
    fake = FakeSlack()
    with fake.running():
        api = SlackApi(fake.bot_token, fake.api_url)
        fake.fail(429, times=1, retry_after=7)
        with pytest.raises(SlackFailure) as limited:
            await api.post_message("C0APPROVE", {"text": "hi"})
        fake.revoked = True
        with pytest.raises(SlackFailure) as revoked:
            await api.user_info("U1")
        wrong = SlackApi("xoxb-wrong", fake.api_url)
        with pytest.raises(SlackFailure) as invalid:
            await wrong.auth_test()
    assert (limited.value.status, limited.value.retry_after, limited.value.error) == (429, 7.0, "ratelimited")
    assert revoked.value.error == "token_revoked" and invalid.value.error == "invalid_auth"


async def test_users_info_and_auth_test_read_what_slack_returns() -> None:
    fake = FakeSlack()
    fake.add_user("U0BOB", "bob@example.com")
    with fake.running():
        api = SlackApi(fake.bot_token, fake.api_url)
        user = await api.user_info("U0BOB")
        auth = await api.auth_test()
        [call] = fake.calls_to("users.info")
    assert user["profile"]["email"] == "bob@example.com" and call.params["user"] == "U0BOB"
    assert auth.team_id == "T0TEAM" and auth.scopes == set(SCOPES)
    assert (auth.user_id, auth.bot_id) == (fake.bot_user_id, fake.bot_id)
    assert "xoxb" not in repr(api)


async def test_auth_test_tells_the_messages_this_token_posted_from_look_alikes() -> None:
    fake = FakeSlack()
    with fake.running():
        api = SlackApi(fake.bot_token, fake.api_url)
        meta = request_metadata("r1")
        _, ours = await api.post_message("C0APPROVE", {"text": "mine", "metadata": meta})
        fake.add_message("C0APPROVE", "a person's", metadata=meta, user="U0EVE")
        fake.add_message("C0APPROVE", "an app's", metadata=meta, user="U0APP", bot_id="B0APP")
        auth = await api.auth_test()
        messages, _ = await api.history("C0APPROVE", oldest="0", limit=10)
    assert [m["ts"] for m in messages if auth.sent(m)] == [ours]
    assert all(metadata_request_id(m) == "r1" for m in messages) and len(messages) == 3
    # The same bot's id under another user, or the bot's user without it, is not the bot's post.
    assert not auth.sent({"bot_id": fake.bot_id, "user": "U0EVE"})
    assert not auth.sent({"user": fake.bot_user_id})


async def test_a_call_sent_but_never_answered_is_unanswered_and_an_unreachable_slack_is_not() -> None:
    fake = FakeSlack()
    with fake.running():
        api = SlackApi(fake.bot_token, fake.api_url)
        fake.drop_answer("chat.postMessage")
        with pytest.raises(SlackFailure) as dropped:
            await api.post_message("C0APPROVE", {"text": "hi"})
    closed = SlackApi(fake.bot_token, f"http://127.0.0.1:{closed_port()}/api/", timeout=2)
    with pytest.raises(SlackFailure) as refused:
        await closed.post_message("C0APPROVE", {"text": "hi"})
    assert dropped.value.unanswered and dropped.value.error.startswith("no answer")
    assert len(fake.messages) == 1  # Slack did it: the message shows
    assert not refused.value.unanswered and refused.value.error.startswith("unreachable")


class _HoldAtSessionStart(logging.Handler):
    """Holds slack_sdk's session-runner thread at the moment it starts a session, until the link's
    close has begun: the window in which slack_sdk un-terminates a session that close() ended."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.let_go = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Starting to receive messages"):
            self.entered.set()
            self.let_go.wait(timeout=10)


async def test_closing_a_socket_mode_link_ends_even_when_it_races_the_session_runner() -> None:
    # The suite once hung for minutes in a Slack test's teardown: slack_sdk's runner sets
    # `terminated = False` just after checking the session is active, so a close() landing in
    # between left the runner looping forever and close() joining it forever.
    fake = FakeSlack()
    hold = _HoldAtSessionStart()
    sdk_log = logging.getLogger("mcp_gate.slack.sdk")
    sdk_log.addHandler(hold)
    previous = sdk_log.level
    sdk_log.setLevel(logging.INFO)
    try:
        with fake.running():
            link = await anyio.to_thread.run_sync(
                connect_socket_mode, fake.app_token, fake.bot_token, fake.api_url, lambda _e, _p: None
            )
            with anyio.fail_after(10, shield=True):
                await anyio.to_thread.run_sync(hold.entered.wait)

            def close_then_release() -> None:
                threading.Timer(0.3, hold.let_go.set).start()  # let close() end the session first
                link.close()

            with anyio.fail_after(20):
                await anyio.to_thread.run_sync(close_then_release, abandon_on_cancel=True)
            assert not link.connected
    finally:
        hold.let_go.set()
        sdk_log.removeHandler(hold)
        sdk_log.setLevel(previous)


async def test_history_pages_newest_first_with_the_metadata_messages_were_posted_with() -> None:
    fake = FakeSlack()
    with fake.running():
        api = SlackApi(fake.bot_token, fake.api_url)
        posted = [
            (await api.post_message("C0APPROVE", {"text": f"m{i}", "metadata": request_metadata(f"r{i}")}))[1]
            for i in range(3)
        ]
        first, cursor = await api.history("C0APPROVE", oldest="0", limit=2)
        rest, end = await api.history("C0APPROVE", oldest="0", limit=2, cursor=cursor)
        bare, _ = await api.call("conversations.history", channel="C0APPROVE")
        since, _ = await api.history("C0APPROVE", oldest=posted[1], limit=10)
        fake.scopes = ("chat:write",)
        with pytest.raises(SlackFailure) as unscoped:
            await api.history("C0APPROVE", oldest="0", limit=2)
    assert [m["ts"] for m in first + rest] == posted[::-1] and cursor is not None and end is None
    assert [metadata_request_id(m) for m in first + rest] == ["r2", "r1", "r0"]
    assert all("metadata" not in m for m in bare["messages"])  # only with include_all_metadata
    assert [m["ts"] for m in since] == posted[:0:-1]  # `oldest` is inclusive as the gate asks
    assert unscoped.value.error == "missing_scope"
