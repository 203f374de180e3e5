"""The approvers' HTTP API over a real gate: decisions release, deny or keep holding real agent calls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import mcp_types as types
import pytest
from mcp import Client

from mcp_gate.approvals import ApprovalRequest
from mcp_gate.channels.api import serve_api
from mcp_gate.server import FrontServer
from mcp_gate.storage.sqlite import SQLiteStore
from mcp_gate.testing import (
    NOTES_MANIFEST,
    approver_table,
    eventually,
    notes_server,
    notes_server_table,
    running_gate,
    within,
    write_config,
)

pytestmark = pytest.mark.anyio

APPROVERS = {
    "bob": approver_table("bob@example.com", ["sre"], "tok-bob"),
    "carol": approver_table("carol@example.com", ["security"], "tok-carol"),
    "alice": approver_table("alice@example.com", ["sre"], "tok-alice"),  # the requester's owner
    "frank": approver_table("frank@example.com", ["finance"], "tok-frank"),
}
TIERS = {
    "high": {"approvals": 1, "groups": ["sre", "security"]},
    "critical": {"approvals": 2, "groups": ["sre", "security"]},
}


def make_config(tmp_path: Path, *, hold_seconds: float = 30) -> Path:
    return write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        approvers=APPROVERS,
        tiers=TIERS,
        approvals={"hold_seconds": hold_seconds},
    )


def text_of(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


@dataclass
class Api:
    http: httpx2.AsyncClient

    async def get(self, path: str, token: str | None = "tok-bob") -> httpx2.Response:
        return await self.http.get(path, headers=_auth(token))

    async def post(self, path: str, body: Any = None, token: str | None = "tok-bob") -> httpx2.Response:
        return await self.http.post(path, json=body, headers=_auth(token))


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@asynccontextmanager
async def gate_with_api(config: Path) -> AsyncIterator[tuple[FrontServer, Api, Client]]:
    # The notes server runs in this process: these tests are about the API and the holds.
    notes = notes_server(config.parent.parent / "notes")
    async with running_gate(config, servers={"notes": notes}) as front, anyio.create_task_group() as tg:
        port = await tg.start(serve_api, front.gateway, "127.0.0.1", 0)
        async with (
            httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1", timeout=30) as http,
            Client(front.server, mode="legacy") as agent,
        ):
            yield front, Api(http), agent
        tg.cancel_scope.cancel()


@dataclass
class HeldCall:
    request: ApprovalRequest
    done: anyio.Event = field(default_factory=anyio.Event)
    result: types.CallToolResult | None = None

    async def outcome(self) -> types.CallToolResult:
        await within(self.done.wait(), what=f"the held call of request {self.request.id} to return")
        assert self.result is not None
        return self.result


async def new_pending(front: FrontServer, known: set[str]) -> ApprovalRequest:
    async def fresh() -> list[ApprovalRequest]:
        return [r for r in await front.gateway.engine.pending() if r.id not in known]

    return (await eventually(fresh, what="a new pending approval request"))[0]


async def hold(
    tg: anyio.abc.TaskGroup, front: FrontServer, agent: Client, name: str, args: dict[str, Any]
) -> HeldCall:
    """Start an agent call in the background and return once its approval request exists."""
    known = {r.id for r in await front.gateway.engine.pending()}
    box: list[HeldCall] = []
    started = anyio.Event()

    async def call() -> None:
        started.set()
        result = await agent.call_tool(name, args)
        await eventually(lambda: bool(box), what="the test to note the held call")
        box[0].result = result
        box[0].done.set()

    tg.start_soon(call)
    await started.wait()
    held = HeldCall(await new_pending(front, known))
    box.append(held)
    return held


async def evidence(config: Path) -> list[dict[str, Any]]:
    async with await SQLiteStore.open(config.parent / "data" / "gate.db") as store:
        return [dict(r.body) for r in await store.records()]


async def test_an_approval_over_the_api_releases_the_held_call_and_the_agent_gets_the_downstream_result(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path)
    async with gate_with_api(config) as (front, api, agent), anyio.create_task_group() as tg:
        held = await hold(tg, front, agent, "notes__write_note", {"name": "todo", "text": "ship it"})
        assert not (tmp_path / "notes" / "todo").exists()
        response = await api.post(f"/requests/{held.request.id}/approve", {"note": "looks right"})
        assert response.status_code == 200, response.text
        assert response.json()["outcome"] == "approved"
        assert response.json()["request"]["quorum"] == "1 of 1 approvals: bob"
        result = await held.outcome()
    assert not result.is_error, text_of(result)
    assert (tmp_path / "notes" / "todo").read_text() == "ship it"
    decided = [r for r in await evidence(config) if r["event_type"] == "approval.decided"]
    assert [(d["approver"], d["channel"], d["note"]) for d in decided] == [("bob", "api", "looks right")]


async def test_a_denial_with_a_reason_reaches_the_agent_as_a_tool_error_and_the_call_never_runs(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path)
    async with gate_with_api(config) as (front, api, agent), anyio.create_task_group() as tg:
        held = await hold(tg, front, agent, "notes__write_note", {"name": "todo", "text": "x"})
        response = await api.post(
            f"/requests/{held.request.id}/deny", {"reason": "wrong note, use plans"}, token="tok-carol"
        )
        assert response.status_code == 200, response.text
        assert response.json()["outcome"] == "denied"
        result = await held.outcome()
    assert result.is_error
    assert "denied by carol" in text_of(result) and "wrong note, use plans" in text_of(result)
    assert not (tmp_path / "notes" / "todo").exists()


async def test_two_distinct_approvers_are_needed_for_a_critical_call_and_it_gets_no_grant(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path)
    async with gate_with_api(config) as (front, api, agent), anyio.create_task_group() as tg:
        held = await hold(tg, front, agent, "notes__delete_note", {"name": "archive/2025"})
        path = f"/requests/{held.request.id}/approve"
        no_grant = await api.post(path, {"for": "30m"})
        assert no_grant.status_code == 409 and no_grant.json()["code"] == "no-grant"
        first = await api.post(path, {})
        assert first.json()["outcome"] == "pending"
        assert first.json()["request"]["quorum"] == "1 of 2 approvals: bob"
        again = await api.post(path, {})
        assert again.status_code == 409 and again.json()["code"] == "duplicate"
        assert not held.done.is_set()
        second = await api.post(path, None, token="tok-carol")
        assert second.json()["outcome"] == "approved"
        result = await held.outcome()
    assert "was not run" not in text_of(result)
    released = [r for r in await evidence(config) if r["event_type"] == "call.released"]
    assert released[-1]["approvers"] == ["bob", "carol"]


async def test_the_requesters_owner_cannot_approve_and_the_refusal_is_recorded(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with gate_with_api(config) as (front, api, agent), anyio.create_task_group() as tg:
        held = await hold(tg, front, agent, "notes__write_note", {"name": "todo", "text": "x"})
        response = await api.post(f"/requests/{held.request.id}/approve", {}, token="tok-alice")
        assert response.status_code == 409
        assert response.json()["code"] == "self-approval"
        assert "nobody approves their own calls" in response.json()["error"]
        assert (await front.gateway.engine.get(held.request.id)).state == "pending"
        assert not held.done.is_set()
        tg.cancel_scope.cancel()
    refused = [r for r in await evidence(config) if r["event_type"] == "approval.refused"]
    assert [(r["approver"], r["code"], r["channel"]) for r in refused] == [("alice", "self-approval", "api")]


async def test_an_approver_outside_the_eligible_groups_is_refused_with_409(tmp_path: Path) -> None:
    config = make_config(tmp_path, hold_seconds=0.2)
    async with gate_with_api(config) as (front, api, agent):
        await agent.call_tool("notes__write_note", {"name": "todo", "text": "x"})
        [request] = await front.gateway.engine.pending()
        response = await api.post(f"/requests/{request.id}/approve", {}, token="tok-frank")
        assert response.status_code == 409
        assert response.json()["code"] == "not-eligible"
        assert "sre, security" in response.json()["error"]
        assert (await front.gateway.engine.get(request.id)).votes == ()


BAD_AUTHORIZATION = [None, "Bearer nope", "Bearer", "Basic dG9rLWJvYjo=", "tok-bob", "Bearer tok-bobx"]

MALFORMED = [
    ("approve", b"{not json", "not JSON"),
    ("approve", b"[1, 2]", "valid dictionary"),
    ("approve", b'{"note": "ok", "by": "alice"}', "by: Extra inputs"),
    ("approve", b'{"note": 5}', "note:"),
    ("approve", b'{"for": "forever"}', "is not a duration"),
    ("approve", b'{"for": "99999999999999d"}', "is not a duration"),
    ("approve", b'{"for": "400d"}', "is longer than"),
    ("approve", b"[" * 60_000, "nested too deeply"),
    ("approve", b"\xff\xfe", "not JSON"),
    ("approve", b'{"note": "' + b"n" * 70_000 + b'"}', "over 65536 bytes"),
    ("deny", b"", "reason: Field required"),
    ("deny", b'{"reason": "   "}', "reason: must not be empty"),
    ("revoke", b'{"why": "x"}', "why: Extra inputs"),
]


async def test_a_request_without_a_valid_approver_token_gets_401_and_decides_nothing(tmp_path: Path) -> None:
    config = make_config(tmp_path, hold_seconds=0.2)
    async with gate_with_api(config) as (front, api, agent):
        await agent.call_tool("notes__write_note", {"name": "todo", "text": "x"})
        [request] = await front.gateway.engine.pending()
        responses = []
        for authorization in BAD_AUTHORIZATION:
            headers = {"Authorization": authorization} if authorization else {}
            responses.append(await api.http.get("/requests", headers=headers))
            responses.append(await api.http.post(f"/requests/{request.id}/approve", json={}, headers=headers))
        assert (await front.gateway.engine.get(request.id)).state == "pending"
    for response in responses:
        assert response.status_code == 401, response.request
        assert "approver token" in response.json()["error"]
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_malformed_body_gets_a_400_with_one_line_and_changes_nothing(tmp_path: Path) -> None:
    config = make_config(tmp_path, hold_seconds=0.2)
    async with gate_with_api(config) as (front, api, agent):
        await agent.call_tool("notes__write_note", {"name": "todo", "text": "x"})
        [request] = await front.gateway.engine.pending()
        for action, body, expected in MALFORMED:
            response = await api.http.post(
                f"/requests/{request.id}/{action}",
                content=body,
                headers={**_auth("tok-bob"), "Content-Type": "application/json"},
            )
            assert response.status_code == (413 if len(body) > 65536 else 400), (body[:40], response.text)
            error = response.json()["error"]
            assert expected in error and "\n" not in error, (body[:40], error)
        after = await front.gateway.engine.get(request.id)
    assert after.state == "pending" and after.votes == ()


async def test_unknown_ids_and_routes_get_404_json(tmp_path: Path) -> None:
    async with gate_with_api(make_config(tmp_path)) as (_front, api, _agent):
        responses = [
            await api.get("/requests/ZZZZZZZZ"),
            await api.post("/requests/ZZZZZZZZ/approve", {}),
            await api.post("/requests/ZZZZZZZZ/deny", {"reason": "no"}),
            await api.post("/requests/ZZZZZZZZ/revoke"),
            await api.post("/grants/GZZZZZZZZ/revoke"),
            await api.get("/nothing-here"),
        ]
        wrong_method = await api.get("/requests/ZZZZZZZZ/approve")
    for response in responses:
        assert response.status_code == 404, response.text
        assert response.json()["error"]
    assert "ZZZZZZZZ" in responses[0].json()["error"]
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]


async def test_a_grant_lets_identical_calls_run_without_holding_until_it_is_revoked(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    args = {"name": "todo", "text": "x"}
    async with gate_with_api(config) as (front, api, agent), anyio.create_task_group() as tg:
        held = await hold(tg, front, agent, "notes__write_note", args)
        response = await api.post(f"/requests/{held.request.id}/approve", {"for": "30m", "note": "sprint"})
        assert response.status_code == 200, response.text
        grant = response.json()["grant"]
        assert grant["id"].startswith("G") and grant["created_by"] == "bob"
        assert not (await held.outcome()).is_error

        again = await agent.call_tool("notes__write_note", {"name": "todo", "text": "y"})
        assert not again.is_error, text_of(again)
        assert (tmp_path / "notes" / "todo").read_text() == "y"
        assert await front.gateway.engine.pending() == []

        listed = (await api.get("/grants")).json()["grants"]
        assert [(g["id"], g["name"], g["live"]) for g in listed] == [(grant["id"], "notes__write_note", True)]
        revoked = await api.post(f"/grants/{grant['id']}/revoke", token="tok-carol")
        assert revoked.status_code == 200 and revoked.json()["grant"]["revoked_by"] == "carol"
        assert (await api.get("/grants")).json()["grants"] == []
        assert [g["id"] for g in (await api.get("/grants?all=true")).json()["grants"]] == [grant["id"]]
        twice = await api.post(f"/grants/{grant['id']}/revoke")
        assert twice.status_code == 409

        third = await hold(tg, front, agent, "notes__write_note", {"name": "todo", "text": "z"})
        assert third.request.state == "pending" and not third.done.is_set()
        tg.cancel_scope.cancel()
    assert (tmp_path / "notes" / "todo").read_text() == "y"


async def test_an_approval_not_yet_executed_can_be_revoked_over_the_api_and_the_resent_call_is_told(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, hold_seconds=0.3)
    args = {"name": "todo", "text": "x"}
    async with gate_with_api(config) as (front, api, agent):
        first = await agent.call_tool("notes__write_note", args)
        assert "not run yet" in text_of(first)
        [request] = await front.gateway.engine.pending()
        approved = await api.post(f"/requests/{request.id}/approve", {})
        assert approved.json()["outcome"] == "approved"
        listed = (await api.get("/requests")).json()["requests"]
        assert [(r["id"], r["state"]) for r in listed] == [(request.id, "approved")]
        revoked = await api.post(f"/requests/{request.id}/revoke", token="tok-carol")
        assert revoked.status_code == 200 and revoked.json()["outcome"] == "revoked"
        resent = await agent.call_tool("notes__write_note", args)
    assert resent.is_error and "revoked by carol" in text_of(resent)
    assert not (tmp_path / "notes" / "todo").exists()


async def test_showing_a_request_gives_its_redacted_arguments_hashes_and_the_requesters_recent_calls(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, hold_seconds=0.2)
    async with gate_with_api(config) as (front, api, agent):
        for n in range(12):
            await agent.call_tool("notes__echo", {"text": f"hello {n}"})
        await agent.call_tool("notes__write_note", {"name": "todo", "text": "x" * 5000})
        [request] = await front.gateway.engine.pending()
        listed = (await api.get("/requests")).json()["requests"]
        shown = (await api.get(f"/requests/{request.id.lower()}")).json()
    assert [r["id"] for r in listed] == [request.id]
    assert shown["id"] == request.id and shown["state"] == "pending"
    assert shown["tier"] == "high" and shown["reason"] == "replaces a note's whole text; the old text is lost"
    assert shown["requester"] == {"agent": "test-agent", "owner": "alice@example.com"}
    assert shown["args"]["name"] == "todo" and len(shown["args"]["text"]) < 400  # stored redacted
    assert shown["args_sha256"] == request.binding.args_sha256 and shown["pin"] == request.binding.pin
    assert shown["policy_sha256"] == front.gateway.policy_sha256
    assert shown["votes"] == [] and shown["quorum"] == "0 of 1 approvals"
    recent = shown["recent_calls"]
    assert len(recent) == 10
    assert recent[-1]["name"] == "notes__write_note" and recent[-1]["args"] == shown["args"]
    assert [c["args"]["text"] for c in recent[:-1]] == [f"hello {n}" for n in range(3, 12)]
    assert all(c["ts"] for c in recent)


async def test_secrets_in_ordinary_arguments_are_kept_out_of_evidence_and_the_api(tmp_path: Path) -> None:
    stripe = "sk_live_51HcY3bKj2XGq8Zz0aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789abcdefABCDEFgh"
    google = "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"
    basic = "Authorization: Basic ZGVwbG95OlRyMHViNGRvcjM="
    text = f"stripe {stripe} google {google} password=Tr0ub4dor3 {basic}"
    config = make_config(tmp_path, hold_seconds=0.2)
    async with gate_with_api(config) as (front, api, agent):
        await agent.call_tool("notes__echo", {"text": text})
        await agent.call_tool("notes__write_note", {"name": "todo", "text": text})
        [request] = await front.gateway.engine.pending()
        shown = (await api.get(f"/requests/{request.id}")).text
        listed = (await api.get("/requests")).text
    stored = b"".join(p.read_bytes() for p in (tmp_path / "gate" / "data").glob("gate.db*"))
    for secret in (stripe, google, "Tr0ub4dor3", "ZGVwbG95OlRyMHViNGRvcjM"):
        assert secret not in shown and secret not in listed
        assert secret.encode() not in stored
    assert "stripe [redacted] google [redacted] password=[redacted]" in shown
