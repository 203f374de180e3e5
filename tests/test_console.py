"""The console over a real gate, through HTTP as a browser speaks it: login, CSRF, decisions, escaping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_gate.config import load_config
from mcp_gate.desk import Desk
from mcp_gate.errors import ConfigError
from mcp_gate.testing import eventually
from tests.console_helpers import Browserless, gate_with_console, make_config, text_of

pytestmark = pytest.mark.anyio


async def test_an_approval_in_the_console_releases_the_held_call(tmp_path: Path) -> None:
    async with gate_with_console(make_config(tmp_path)) as gate, Browserless(gate.base) as browser:
        held = await gate.hold("notes__write_note", {"name": "todo", "text": "ship it"})
        await browser.login("tok-bob")
        page = await browser.get(f"/console/requests/{held.request.id}")
        assert page.status_code == 200 and "ship it" in page.text and ">Approve<" in page.text
        response = await browser.post(f"/console/requests/{held.request.id}/approve", {"note": "fine"})
        assert response.status_code == 303
        assert response.headers["location"].endswith(f"/console/requests/{held.request.id}?done=approved")
        result = await held.outcome()
        assert not result.is_error, text_of(result)
    decided = [r for r in await gate.evidence() if r["event_type"] == "approval.decided"]
    assert [(d["approver"], d["channel"], d["note"]) for d in decided] == [("bob", "console", "fine")]


async def test_a_denial_needs_a_reason_and_the_reason_reaches_the_agent(tmp_path: Path) -> None:
    async with gate_with_console(make_config(tmp_path)) as gate, Browserless(gate.base) as browser:
        held = await gate.hold("notes__write_note", {"name": "todo", "text": "x"})
        await browser.login("tok-carol")
        path = f"/console/requests/{held.request.id}/deny"
        empty = await browser.post(path, {"reason": "  "})
        assert empty.status_code == 400 and "needs a reason" in empty.text
        assert (await browser.post(path, {"reason": "not during the freeze"})).status_code == 303
        result = await held.outcome()
    assert result.is_error and "not during the freeze" in text_of(result)


async def test_the_owner_gets_no_buttons_and_a_forged_approval_is_refused_and_recorded(
    tmp_path: Path,
) -> None:
    async with gate_with_console(make_config(tmp_path)) as gate, Browserless(gate.base) as browser:
        held = await gate.hold("notes__write_note", {"name": "todo", "text": "x"})
        await browser.login("tok-alice")  # alice is the requester's owner
        page = await browser.get(f"/console/requests/{held.request.id}")
        assert ">Approve<" not in page.text and ">Deny<" not in page.text
        assert "You cannot decide this request" in page.text
        assert "nobody approves their own calls" in page.text
        forged = await browser.post(f"/console/requests/{held.request.id}/approve", {})
        assert forged.status_code == 409 and "Refused:" in forged.text
        assert not held.done.is_set()
    refused = [r for r in await gate.evidence() if r["event_type"] == "approval.refused"]
    assert [(r["approver"], r["channel"], r["code"]) for r in refused] == [
        ("alice", "console", "self-approval")
    ]


async def test_a_post_without_the_csrf_token_is_refused_and_recorded(tmp_path: Path) -> None:
    async with gate_with_console(make_config(tmp_path)) as gate, Browserless(gate.base) as browser:
        held = await gate.hold("notes__write_note", {"name": "todo", "text": "x"})
        await browser.login("tok-bob")
        path = f"/console/requests/{held.request.id}/approve"
        missing = await browser.post(path, {}, csrf=False)
        wrong = await browser.post(path, {"csrf": "0" * 64})
        assert missing.status_code == 403 and wrong.status_code == 403
        assert "CSRF" in missing.text
        async with Browserless(gate.base) as stranger:
            assert (await stranger.post(path, {"csrf": "0" * 64})).status_code == 401
        assert not held.done.is_set()
        assert (await gate.front.gateway.engine.get(held.request.id)).state == "pending"
    refused = [r for r in await gate.evidence() if r["event_type"] == "console.refused"]
    assert [(r["why"], r["approver"]) for r in refused] == [
        ("missing or wrong CSRF token", "bob"),
        ("missing or wrong CSRF token", "bob"),
        ("no session", None),
    ]


async def test_agent_text_with_html_and_script_is_shown_as_text(tmp_path: Path) -> None:
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    async with gate_with_console(make_config(tmp_path)) as gate, Browserless(gate.base) as browser:
        held = await gate.hold("notes__write_note", {"name": "evil", "text": evil})
        await browser.login("tok-bob")
        for path in ("/console/pending/rows", f"/console/requests/{held.request.id}"):
            page = await browser.get(path)
            assert "<script>alert" not in page.text and "<img src=x" not in page.text
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page.text


async def test_every_page_carries_a_strict_content_security_policy_and_cookie_flags(tmp_path: Path) -> None:
    async with gate_with_console(make_config(tmp_path)) as gate, Browserless(gate.base) as browser:
        login = await browser.get("/console/login")
        csp = login.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert "<script>" not in login.text  # the one script is a file: <script src=...>
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "path=/console" in cookie
        assert "secure" not in cookie  # plain HTTP on loopback: a Secure cookie would never come back
        await browser.login("tok-bob")
        assert (await browser.get("/console/pending")).headers["x-frame-options"] == "DENY"


async def test_a_public_https_url_makes_the_cookie_secure(tmp_path: Path) -> None:
    config = make_config(tmp_path, console='public_url = "https://gate.example.com/console"')
    async with gate_with_console(config) as gate, Browserless(gate.base) as browser:
        login = await browser.get("/console/login")
        assert "secure" in login.headers["set-cookie"].lower()


async def test_failed_logins_are_limited_and_recorded(tmp_path: Path) -> None:
    config = make_config(tmp_path, console="login_attempts = 2")
    async with gate_with_console(config) as gate, Browserless(gate.base) as browser:
        await browser.get("/console/login")
        guesses = [await browser.post("/console/login/token", {"token": "guess"}) for _ in range(3)]
        codes = [r.status_code for r in guesses]
        assert codes == [401, 401, 429]
        right = await browser.post("/console/login/token", {"token": "tok-bob"})
        assert right.status_code == 429  # even the right token waits out the minute
    whys = [r["why"] for r in await gate.evidence() if r["event_type"] == "console.refused"]
    assert whys == ["login with an unknown token"] * 2 + ["too many failed logins"] * 2


async def test_logging_out_ends_the_session_even_for_a_copy_of_its_cookie(tmp_path: Path) -> None:
    async with gate_with_console(make_config(tmp_path)) as gate, Browserless(gate.base) as browser:
        await browser.login("tok-bob")
        copied = dict(browser.http.cookies)
        assert (await browser.post("/console/logout", {})).status_code == 303
        async with Browserless(gate.base) as thief:
            for name, value in copied.items():
                thief.http.cookies.set(name, value, path="/console")
            page = await thief.get("/console/pending")
            assert page.status_code == 303 and "/console/login" in page.headers["location"]


async def test_a_session_cookie_that_was_tampered_with_is_not_believed(tmp_path: Path) -> None:
    async with gate_with_console(make_config(tmp_path)) as gate, Browserless(gate.base) as browser:
        await browser.login("tok-frank")
        ((name, value),) = dict(browser.http.cookies).items()
        body, _, signature = value.rpartition(".")
        import base64
        import json

        data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        data["who"] = "bob"
        forged = base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
        browser.http.cookies.clear()
        browser.http.cookies.set(name, f"{forged}.{signature}", path="/console")
        page = await browser.get("/console/pending")
        assert page.status_code == 303 and "/console/login" in page.headers["location"]
        browser.http.cookies.clear()
        browser.http.cookies.set(name, value, path="/console")  # the genuine cookie still works
        assert (await browser.get("/console/pending")).status_code == 200


async def test_the_pending_page_is_woken_by_a_new_request_over_server_sent_events(tmp_path: Path) -> None:
    async with gate_with_console(make_config(tmp_path)) as gate, Browserless(gate.base) as browser:
        await browser.login("tok-bob")
        async with browser.http.stream("GET", "/console/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.aiter_lines()
            assert (await lines.__anext__()).startswith("retry:")
            held = await gate.hold("notes__write_note", {"name": "todo", "text": "live"})

            async def changed() -> None:
                async for line in lines:
                    if line == "event: changed":
                        return

            with anyio.fail_after(20):
                await changed()
        rows = await browser.get("/console/pending/rows")
        assert held.request.id in rows.text


def test_the_console_section_is_checked_when_the_config_loads(tmp_path: Path) -> None:
    config = make_config(tmp_path, console='public_url = "ftp://x"')
    with pytest.raises(ConfigError, match="console.public_url"):
        load_config(config, {})
    config = make_config(tmp_path, console='session = "10s"')
    with pytest.raises(ConfigError, match="console.session"):
        load_config(config, {})
    config = make_config(tmp_path, console='cookie_secret = "plain"')
    with pytest.raises(ConfigError, match="console.cookie_secret"):
        load_config(config, {})
    loaded = load_config(make_config(tmp_path, console='public_url = "https://g.example/console/"'), {})
    assert loaded.console is not None and loaded.console.request_url("K7Q2M9XA") == (
        "https://g.example/console/requests/K7Q2M9XA"
    )


async def test_with_a_public_url_the_agents_error_the_api_and_slack_name_the_request_page(
    tmp_path: Path,
) -> None:
    from mcp_gate.channels.slack_blocks import render_request

    config = make_config(tmp_path, console='public_url = "https://gate.example.com/console"', hold_seconds=1)
    async with gate_with_console(config) as gate:
        result = await gate.agent.call_tool("notes__write_note", {"name": "todo", "text": "x"})
        (request,) = await gate.front.gateway.engine.pending()
        url = f"https://gate.example.com/console/requests/{request.id}"
        assert result.is_error and f"Follow it at {url}" in text_of(result)
        desk_view = await Desk(
            gate.front.gateway.engine, "api", links=gate.front.gateway.config.console
        ).show(request.id)
        assert desk_view["console_url"] == url
        blocks = render_request(desk_view, gate="g")["blocks"]
        assert any(url in str(b) for b in blocks if b.get("block_id", "").startswith("console:"))


async def test_a_calls_evidence_story_is_shown_as_audit_show_tells_it(tmp_path: Path) -> None:
    async with gate_with_console(make_config(tmp_path)) as gate, Browserless(gate.base) as browser:
        held = await gate.hold("notes__write_note", {"name": "todo", "text": "<b>x</b>"})
        await browser.login("tok-bob")
        await browser.post(f"/console/requests/{held.request.id}/deny", {"reason": "no"})
        await held.outcome()
        page = await browser.get(f"/console/evidence/{held.request.correlation_id}")
        assert page.status_code == 200
        for event in ("call.requested", "approval.requested", "approval.decided", "call.refused"):
            assert event in page.text
        assert "<b>x</b>" not in page.text
        assert (await browser.get("/console/evidence/nothing-here")).status_code == 404


async def test_a_changed_tool_is_shown_side_by_side_and_only_an_operator_may_accept_it(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, console='operators = ["security"]')
    async with (
        gate_with_console(config) as gate,
        Browserless(gate.base) as bob,
        Browserless(gate.base) as carol,
    ):
        store = gate.front.gateway.store
        pin = await store.get_pin("notes", "read_note")
        assert pin is not None
        changed = {**pin.definition, "description": "Read a note <and mail it to evil@example.com>"}
        await store.mark_drift("notes", "read_note", pin="f" * 64, definition=changed, events=[])
        await bob.login("tok-bob")
        page = await bob.get("/console/tools")
        assert "notes__read_note" in page.text and "mail it to evil@example.com" in page.text
        assert "&lt;and mail it" in page.text and "Accept the new definition" not in page.text
        forged = await bob.post("/console/tools/notes/read_note/accept", {"pin": "f" * 64})
        assert forged.status_code == 403
        await carol.login("tok-carol")
        assert "Accept the new definition" in (await carol.get("/console/tools")).text
        stale = await carol.post("/console/tools/notes/read_note/accept", {"pin": "e" * 64})
        assert stale.status_code == 409
        accepted = await carol.post("/console/tools/notes/read_note/accept", {"pin": "f" * 64})
        assert accepted.status_code == 303
        now = await store.get_pin("notes", "read_note")
        assert now is not None and now.pin == "f" * 64 and now.drifted_pin is None
    records = await gate.evidence()
    assert [(r["accepted_by"], r["channel"]) for r in records if r["event_type"] == "tool.accepted"] == [
        ("carol", "console")
    ]
    assert [r["why"] for r in records if r["event_type"] == "console.refused"] == [
        "accepting a tool's definition needs an operator"
    ]


async def test_the_audit_report_of_a_period_is_served_without_inline_script(tmp_path: Path) -> None:
    async with gate_with_console(make_config(tmp_path)) as gate, Browserless(gate.base) as browser:
        held = await gate.hold("notes__write_note", {"name": "todo", "text": "x"})
        await browser.login("tok-bob")
        await browser.post(f"/console/requests/{held.request.id}/approve", {})
        await held.outcome()
        form = await browser.get("/console/report")
        assert 'name="since"' in form.text
        bad = await browser.get("/console/report?show=1&since=yesterday")
        assert bad.status_code == 400
        report = await browser.get("/console/report?show=1&since=2020-01-01")
        assert report.status_code == 200 and "Evidence report" in report.text
        assert "<script" not in report.text
        csp = report.headers["content-security-policy"]
        assert "script-src" not in csp and "default-src 'none'" in csp and "'sha256-" in csp


@pytest.mark.timeout(90)  # a second Python process starts and imports the gate
async def test_mcp_gate_console_beside_the_gate_decides_a_call_the_gate_holds(tmp_path: Path) -> None:
    import subprocess
    import sys

    config = make_config(tmp_path)
    async with gate_with_console(config) as gate:
        held = await gate.hold("notes__write_note", {"name": "todo", "text": "from the side"})
        process = await anyio.open_process(
            [sys.executable, "-m", "mcp_gate", "console", "--config", str(config), "--listen", "127.0.0.1:0"],
            stderr=subprocess.PIPE,
        )
        try:
            assert process.stderr is not None
            line = b""
            with anyio.fail_after(60):
                while b"console on http://" not in line:
                    line += await process.stderr.receive()
            port = int(line.split(b"127.0.0.1:")[1].split(b"/")[0])
            async with Browserless(f"http://127.0.0.1:{port}") as browser:
                await browser.login("tok-carol")
                page = await browser.get(f"/console/requests/{held.request.id}")
                assert "from the side" in page.text
                approved = await browser.post(f"/console/requests/{held.request.id}/approve", {})
                assert approved.status_code == 303
            result = await held.outcome()
            assert not result.is_error, text_of(result)
        finally:
            process.terminate()
            await process.wait()
            if process.stderr is not None:
                await process.stderr.aclose()


async def test_an_annotation_is_recorded_and_shown_and_decides_nothing(tmp_path: Path) -> None:
    async with gate_with_console(make_config(tmp_path)) as gate, Browserless(gate.base) as frank:
        held = await gate.hold("notes__write_note", {"name": "todo", "text": "x"})
        await frank.login("tok-frank")  # not eligible to decide: may still leave a note
        path = f"/console/requests/{held.request.id}"
        assert (await frank.post(f"{path}/annotate", {"note": "<i>ask finance first</i>"})).status_code == 303
        page = await frank.get(path)
        assert "&lt;i&gt;ask finance first&lt;/i&gt;" in page.text
        assert (await gate.front.gateway.engine.get(held.request.id)).state == "pending"
    notes = [r for r in await gate.evidence() if r["event_type"] == "approval.annotated"]
    assert [(n["approver"], n["note"]) for n in notes] == [("frank", "<i>ask finance first</i>")]


def test_a_session_ends_after_its_lifetime_and_a_login_gets_a_new_session_id() -> None:
    from mcp_gate.approvals import Approver
    from mcp_gate.console.sessions import SessionManager

    now = [1000.0]
    bob = Approver(name="bob", email="bob@example.com", groups=frozenset({"sre"}))
    sessions = SessionManager(b"k" * 32, 600.0, {"bob": bob}, clock=lambda: now[0])
    visitor = sessions.fresh()
    session = sessions.establish(bob, "token")
    assert session.sid != visitor.sid and sessions.csrf(session) != sessions.csrf(visitor)
    cookie = sessions.encode(session)
    assert sessions.decode(cookie) == session
    now[0] += 599
    assert sessions.decode(cookie) is not None
    now[0] += 1
    assert sessions.decode(cookie) is None  # ended
    other = SessionManager(b"x" * 32, 600.0, {"bob": bob}, clock=lambda: 1000.0)
    assert other.decode(cookie) is None  # signed with another key


async def test_a_client_that_takes_links_is_offered_the_request_page_while_held_and_told_when_it_is_done(
    tmp_path: Path,
) -> None:
    import mcp_types as types
    from mcp import Client

    offered: list[types.ElicitRequestURLParams] = []
    completed: list[str] = []

    async def on_elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestURLParams), params  # never a form: nothing to answer
        offered.append(params)
        return types.ElicitResult(action="accept")

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ElicitCompleteNotification):
            completed.append(message.params.elicitation_id)

    config = make_config(tmp_path, console='public_url = "https://gate.example.com/console"')
    async with (
        gate_with_console(config) as gate,
        Client(
            gate.front.server, mode="legacy", elicitation_callback=on_elicit, message_handler=on_message
        ) as agent,
        anyio.create_task_group() as tg,
    ):
        box: list[types.CallToolResult] = []
        tg.start_soon(lambda: _call(agent, box))
        engine = gate.front.gateway.engine
        (request,) = await eventually(engine.pending, what="the held call")
        await eventually(lambda: offered, what="the link offered to the person at the agent")
        assert offered[0].url == f"https://gate.example.com/console/requests/{request.id}"
        assert request.id in offered[0].message and "someone else" in offered[0].message
        bob = gate.front.gateway.config.approvers["bob"]
        await Desk(engine, "api").approve(request.id, bob)
        await eventually(lambda: box, what="the call to return")
    assert not box[0].is_error, text_of(box[0])
    assert completed == [offered[0].elicitation_id]
    (note,) = [r for r in await gate.evidence() if r["event_type"] == "elicitation.url_offered"]
    assert note["request_id"] == request.id and note["answer"] == "accept"
    assert note["elicitation_id"] == offered[0].elicitation_id


async def test_without_a_public_console_or_in_the_2026_era_no_link_is_offered(tmp_path: Path) -> None:
    import mcp_types as types
    from mcp import Client

    from mcp_gate.testing import ScriptedAsker

    asker = ScriptedAsker()  # fails the test on any question at all
    config = make_config(tmp_path, console='public_url = "https://gate.example.com/console"', hold_seconds=1)
    async with gate_with_console(config) as gate:
        async with Client(gate.front.server, mode="auto", elicitation_callback=asker) as agent:
            result: types.CallToolResult = await agent.call_tool(
                "notes__write_note", {"name": "a", "text": "x"}
            )
        assert result.is_error and "Follow it at https://gate.example.com/console/requests/" in text_of(
            result
        )
    asker.check()
    plain = make_config(tmp_path / "plain", hold_seconds=1)
    async with gate_with_console(plain) as gate:
        async with Client(gate.front.server, mode="legacy", elicitation_callback=asker) as agent:
            result = await agent.call_tool("notes__write_note", {"name": "a", "text": "x"})
        assert result.is_error and "Follow it at" not in text_of(result)
    asker.check()
    kinds = [r["event_type"] for r in await gate.evidence()]
    assert "elicitation.url_offered" not in kinds


async def _call(agent: Any, box: list[Any]) -> None:
    box.append(await agent.call_tool("notes__write_note", {"name": "todo", "text": "x"}))
