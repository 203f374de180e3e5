"""People are (issuer, subject): approvers sign in to the approvers' API with the identity
provider's tokens, their groups come from the token's claims at decision time, and nobody decides
a call made for them, whichever account, email or channel they come through."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest

from mcp_gate.approvals import principal, requester_identities
from mcp_gate.channels.api import serve_api
from mcp_gate.config import Requester
from mcp_gate.server import FrontServer
from mcp_gate.storage.sqlite import SQLiteStore
from mcp_gate.testing import NOTES_MANIFEST, approver_table, notes_server, running_gate, write_config
from tests.idp_helpers import AUDIENCE, LocalIdp

pytestmark = pytest.mark.anyio

WRITE = ("notes__write_note", {"name": "plan", "text": "v2"})


@pytest.fixture
def idp() -> Iterator[LocalIdp]:
    with LocalIdp().running() as running:
        yield running


def make_config(tmp_path: Path, idp: LocalIdp, *, require_idp: bool = False, approvers: Any = None) -> Path:
    return write_config(
        tmp_path / "gate",
        servers={},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        tiers={"high": {"approvals": 1, "groups": ["sre"]}},
        approvals={"hold_seconds": 0.2},
        approvers=approvers or {"bob": approver_table("bob@example.com", ["sre"], "tok-bob")},
        extra=(
            f'[identity]\nissuer = "{idp.issuer}"\naudience = "{AUDIENCE}"\n'
            f"require_idp = {'true' if require_idp else 'false'}\n"
            '[identity.groups]\nsre = ["okta:sre-oncall", "okta:platform"]\n'
        ),
    )


def alice(idp: LocalIdp, email: str = "alice@example.com") -> Requester:
    """The requester as the agent front makes her from her token: an agent acting for her subject."""
    return Requester(
        agent="claude-code",
        owner=principal(idp.issuer, "00u-alice"),
        issuer=idp.issuer,
        subject="00u-alice",
        email=email,
        name="Alice Example",
        jti_sha256=hashlib.sha256(b"j").hexdigest(),
        scopes=frozenset({"mcp:tools"}),
    )


@asynccontextmanager
async def gate_with_api(config: Path) -> AsyncIterator[tuple[FrontServer, httpx2.AsyncClient]]:
    notes = notes_server(config.parent.parent / "notes")
    async with running_gate(config, servers={"notes": notes}) as front, anyio.create_task_group() as tg:
        port = await tg.start(serve_api, front.gateway, "127.0.0.1", 0)
        async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1", timeout=30) as http:
            yield front, http
        tg.cancel_scope.cancel()


async def held_request(front: FrontServer, requester: Requester) -> str:
    result = await front.gateway.call(requester, *WRITE, transport="http")
    assert isinstance(result, types.CallToolResult) and result.is_error  # held: not run yet
    pending = await front.gateway.engine.pending()
    assert len(pending) == 1
    return pending[0].id


async def approve(http: httpx2.AsyncClient, request_id: str, token: str) -> httpx2.Response:
    return await http.post(
        f"/requests/{request_id}/approve", json={}, headers={"Authorization": f"Bearer {token}"}
    )


async def evidence(config: Path) -> list[dict[str, Any]]:
    async with await SQLiteStore.open(config.parent / "data" / "gate.db") as store:
        return [dict(r.body) for r in await store.records()]


async def test_an_approver_from_the_identity_provider_decides_by_the_groups_in_their_token(
    tmp_path: Path, idp: LocalIdp
) -> None:
    config = make_config(tmp_path, idp)
    token = idp.mint(sub="00u-dave", email="dave@example.com", name="Dave Ops", jti="dave-1")
    async with gate_with_api(config) as (front, http):
        request_id = await held_request(front, alice(idp))
        response = await approve(http, request_id, token)
        assert response.status_code == 200, response.text
        assert response.json()["outcome"] == "approved"
    decided = [r for r in await evidence(config) if r["event_type"] == "approval.decided"][-1]
    assert decided["approver"] == principal(idp.issuer, "00u-dave")
    assert (decided["approver_iss"], decided["approver_sub"]) == (idp.issuer, "00u-dave")
    assert decided["approver_email"] == "dave@example.com" and decided["approver_name"] == "Dave Ops"
    assert decided["approver_jti_sha256"] == hashlib.sha256(b"dave-1").hexdigest()
    assert decided["eligible_by"] == ["groups=okta:sre-oncall"]
    requested = [r for r in await evidence(config) if r["event_type"] == "call.requested"][-1]
    assert (requested["requester"]["iss"], requested["requester"]["sub"]) == (idp.issuer, "00u-alice")


async def test_a_token_without_the_group_claim_is_not_eligible_at_decision_time(
    tmp_path: Path, idp: LocalIdp
) -> None:
    config = make_config(tmp_path, idp)
    token = idp.mint(sub="00u-dave", email="dave@example.com", groups=["okta:everyone"])
    async with gate_with_api(config) as (front, http):
        request_id = await held_request(front, alice(idp))
        response = await approve(http, request_id, token)
    assert response.status_code == 409 and response.json()["code"] == "not-eligible"


@pytest.mark.parametrize(
    "claims",
    [
        {},  # her own token
        {"email": "alice.new@example.com"},  # the same subject after a changed email
        {"azp": "mcp-gate-cli", "jti": "other"},  # the same subject through another client
    ],
)
async def test_the_requesters_own_identity_cannot_approve(
    tmp_path: Path, idp: LocalIdp, claims: dict[str, Any]
) -> None:
    config = make_config(tmp_path, idp)
    async with gate_with_api(config) as (front, http):
        request_id = await held_request(front, alice(idp))
        response = await approve(http, request_id, idp.mint(sub="00u-alice", **claims))
    assert response.status_code == 409 and response.json()["code"] == "self-approval"
    refused = [r for r in await evidence(config) if r["event_type"] == "approval.refused"][-1]
    assert refused["approver_sub"] == "00u-alice" and refused["code"] == "self-approval"


async def test_a_gate_issued_token_of_the_same_person_by_email_cannot_approve(
    tmp_path: Path, idp: LocalIdp
) -> None:
    approvers = {"alice": approver_table("alice@example.com", ["sre"], "tok-alice")}
    config = make_config(tmp_path, idp, approvers=approvers)
    async with gate_with_api(config) as (front, http):
        request_id = await held_request(front, alice(idp))
        response = await approve(http, request_id, "tok-alice")
    assert response.status_code == 409 and response.json()["code"] == "self-approval"


async def test_a_second_account_mapped_to_the_requesters_subject_cannot_approve(
    tmp_path: Path, idp: LocalIdp
) -> None:
    second = {**approver_table("al@other.example", ["sre"], "tok-al"), "subject": "00u-alice"}
    config = make_config(tmp_path, idp, approvers={"al": second})
    async with gate_with_api(config) as (front, http):
        request_id = await held_request(front, alice(idp, email="alice@example.com"))
        response = await approve(http, request_id, "tok-al")
    assert response.status_code == 409 and response.json()["code"] == "self-approval"


async def test_a_static_requester_cannot_be_approved_by_their_idp_account_sharing_the_email(
    tmp_path: Path, idp: LocalIdp
) -> None:
    config = make_config(tmp_path, idp)
    static = Requester(agent="laptop", owner="alice@example.com")
    async with gate_with_api(config) as (front, http):
        request_id = await held_request(front, static)
        response = await approve(http, request_id, idp.mint(sub="00u-alice", email="alice@example.com"))
    assert response.status_code == 409 and response.json()["code"] == "self-approval"


async def test_with_require_idp_an_approver_known_by_no_subject_is_refused(
    tmp_path: Path, idp: LocalIdp
) -> None:
    config = make_config(tmp_path, idp, require_idp=True)
    async with gate_with_api(config) as (front, http):
        request_id = await held_request(front, alice(idp))
        response = await approve(http, request_id, "tok-bob")
        assert response.status_code == 409 and response.json()["code"] == "no-identity"
        response = await approve(http, request_id, idp.mint(sub="00u-dave", email="dave@example.com"))
        assert response.json()["outcome"] == "approved"


async def test_a_refused_idp_token_gets_401_at_the_approvers_api(tmp_path: Path, idp: LocalIdp) -> None:
    config = make_config(tmp_path, idp)
    async with gate_with_api(config) as (_front, http):
        response = await http.get("/requests", headers={"Authorization": f"Bearer {idp.mint(aud='x')}"})
    assert response.status_code == 401


def test_the_requesters_identities_are_their_owner_email_and_principal() -> None:
    body = {"requester": {"agent": "a", "owner": "X#s", "iss": "https://idp", "sub": "S1", "email": "A@x"}}
    assert requester_identities([body, {"requester": None}]) == {"x#s", "a@x", "https://idp#s1"}


async def test_the_audit_report_shows_people_by_name_and_subject(tmp_path: Path, idp: LocalIdp) -> None:
    import json
    import sys

    config = make_config(tmp_path, idp)
    token = idp.mint(sub="00u-dave", email="dave@example.com", name="Dave Ops")
    async with gate_with_api(config) as (front, http):
        request_id = await held_request(front, alice(idp))
        assert (await approve(http, request_id, token)).status_code == 200
    done = await anyio.run_process(
        [sys.executable, "-m", "mcp_gate", "audit", "report", "--config", str(config), "--format", "json"],
        check=False,
    )
    report = json.loads(done.stdout)
    [entry] = [a for a in report["approvals"] if a["request_id"] == request_id]
    assert entry["person"] == "Alice Example (subject 00u-alice)"
    assert entry["decided_by"] == ["approve: Dave Ops (subject 00u-dave)"]
    html = await anyio.run_process(
        [sys.executable, "-m", "mcp_gate", "audit", "report", "--config", str(config)], check=False
    )
    assert b"Dave Ops (subject 00u-dave)" in html.stdout
