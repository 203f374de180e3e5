"""End to end with a real OpenID provider (oidc-provider on 127.0.0.1): an agent's token from the
provider calls through `mcp-gate serve --http`, a high call is held, the requester's own identity
is refused, an approver signed in at the provider approves, and the evidence names both subjects."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_gate.approvals import principal
from mcp_gate.storage.sqlite import SQLiteStore
from mcp_gate.testing import NOTES_MANIFEST, eventually, notes_server_table, write_config
from tests.idp_helpers import AUDIENCE
from tests.oidc_helpers import OidcProvider, oidc_provider

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


@pytest.fixture
def provider() -> Iterator[OidcProvider]:
    with oidc_provider(AUDIENCE) as running:
        yield running


def gate_config(tmp_path: Path, provider: OidcProvider) -> Path:
    return write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        tiers={"high": {"approvals": 1, "groups": ["sre"]}},
        approvals={"hold_seconds": 60},
        extra=(
            f'[identity]\nissuer = "{provider.issuer}"\naudience = "{AUDIENCE}"\n'
            'required_scope = "mcp:tools"\ncli_client_id = "mcp-gate-cli"\n'
            '[identity.tier_scopes]\nhigh = "tools:high"\n'
            '[identity.groups]\nsre = ["okta:sre-oncall"]\n'
            '[identity.agents.deploy-bot]\nowner = "bob@example.com"\n'
        ),
    )


@dataclass
class Served:
    mcp_url: str
    api_url: str
    stderr: Path


@asynccontextmanager
async def serve(config: Path) -> AsyncIterator[Served]:
    """`mcp-gate serve --http 127.0.0.1:0 --admin 127.0.0.1:0`, once it says where it serves."""
    stderr = config.parent / "serve.stderr.log"
    env = {k: v for k, v in os.environ.items() if k not in ("MCP_GATE_CONFIG", "MCP_GATE_TOKEN")}
    command = [sys.executable, "-m", "mcp_gate", "serve", "--config", str(config)]
    command += ["--http", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
    with stderr.open("w") as err:
        process = subprocess.Popen(  # noqa: ASYNC220
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env
        )
    try:

        def announced() -> tuple[str, str] | None:
            text = stderr.read_text(errors="replace")
            if process.poll() is not None:
                raise AssertionError(f"mcp-gate serve exited {process.returncode}:\n{text}")
            mcp = re.search(r"serving streamable HTTP on (\S+)", text)
            api = re.search(r"approver API on (\S+)", text)
            return (mcp.group(1), api.group(1)) if mcp and api else None

        mcp_url, api_url = await eventually(announced, what="mcp-gate serve to listen", timeout=60)
        yield Served(mcp_url, api_url, stderr)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)


@asynccontextmanager
async def agent(url: str, token: str) -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(90.0))
    async with http, Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
        yield client


async def api(served: Served, method: str, path: str, token: str, body: Any = None) -> httpx2.Response:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        return await http.request(method, served.api_url + path, json=body)


async def evidence(config: Path) -> list[dict[str, Any]]:
    async with await SQLiteStore.open(config.parent / "data" / "gate.db") as store:
        return [dict(r.body) for r in await store.records()]


def text_of(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def test_a_held_call_from_a_provider_token_is_approved_by_another_subject_and_never_by_its_own(
    tmp_path: Path, provider: OidcProvider
) -> None:
    config = gate_config(tmp_path, provider)
    alice = provider.person_token("00u-alice")["access_token"]
    dave = provider.person_token("00u-dave")["access_token"]
    async with (
        serve(config) as served,
        agent(served.mcp_url, alice) as client,
        anyio.create_task_group() as tg,
    ):
        assert text_of(await client.call_tool("notes__echo", {"text": "hello"})) == "hello"
        results: list[types.CallToolResult] = []

        async def write() -> None:
            results.append(await client.call_tool("notes__write_note", {"name": "plan", "text": "v2"}))

        tg.start_soon(write)

        async def held() -> list[dict[str, Any]]:
            listed = (await api(served, "GET", "/requests", dave)).json()["requests"]
            return [r for r in listed if r["state"] == "pending"]

        request = (await eventually(held, what="the high call to be held", timeout=30))[0]
        own = await api(served, "POST", f"/requests/{request['id']}/approve", alice, {})
        assert own.status_code == 409 and own.json()["code"] == "self-approval"
        approved = await api(served, "POST", f"/requests/{request['id']}/approve", dave, {"note": "ok"})
        assert approved.status_code == 200 and approved.json()["outcome"] == "approved", approved.text
        await eventually(lambda: bool(results), what="the held call to return", timeout=30)
    assert not results[0].is_error, text_of(results[0])
    records = await evidence(config)
    assert any(r["event_type"] == "call.executed" and r["tool"] == "write_note" for r in records)
    requested = [r for r in records if r["event_type"] == "call.requested"][-1]
    assert (requested["requester"]["iss"], requested["requester"]["sub"]) == (provider.issuer, "00u-alice")
    assert requested["requester"]["agent"] == "mcp-gate-cli"
    assert requested["requester"]["owner"] == principal(provider.issuer, "00u-alice")
    decided = [r for r in records if r["event_type"] == "approval.decided"][-1]
    assert (decided["approver_iss"], decided["approver_sub"]) == (provider.issuer, "00u-dave")
    assert decided["eligible_by"] == ["groups=okta:sre-oncall"]
    refused = [r for r in records if r["event_type"] == "approval.refused"][-1]
    assert (refused["approver_sub"], refused["code"]) == ("00u-alice", "self-approval")


async def test_a_client_credentials_agent_from_the_provider_acts_for_its_configured_owner(
    tmp_path: Path, provider: OidcProvider
) -> None:
    config = gate_config(tmp_path, provider)
    token = provider.client_credentials()
    async with serve(config) as served, agent(served.mcp_url, token) as client:
        assert text_of(await client.call_tool("notes__echo", {"text": "m2m"})) == "m2m"
    requested = [r for r in await evidence(config) if r["event_type"] == "call.requested"][-1]
    assert (requested["requester"]["agent"], requested["requester"]["owner"]) == (
        "deploy-bot",
        "bob@example.com",
    )


async def test_a_token_of_the_provider_for_another_resource_is_refused(
    tmp_path: Path, provider: OidcProvider
) -> None:
    config = gate_config(tmp_path, provider)
    with oidc_provider("http://127.0.0.1:9999/other") as other:
        foreign = other.client_credentials()
    async with serve(config) as served, httpx2.AsyncClient() as http:
        response = await http.post(
            served.mcp_url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
            headers={"Authorization": f"Bearer {foreign}", "Accept": "application/json, text/event-stream"},
        )
        assert response.status_code == 401
        assert "resource_metadata=" in response.headers["www-authenticate"]
        assert "refused an agent's access token" in served.stderr.read_text()


def test_without_node_the_provider_fixture_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shutil

    from tests import oidc_helpers

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="node is not installed"):
        oidc_helpers._node()
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        oidc_helpers._node()


# -- opaque tokens: RFC 7662 introspection -----------------------------------------------------------


@pytest.fixture
def opaque_provider() -> Iterator[OidcProvider]:
    with oidc_provider(AUDIENCE, opaque=True) as running:
        yield running


def introspecting_config(tmp_path: Path, provider: OidcProvider) -> Path:
    config = gate_config(tmp_path, provider)
    endpoint = provider.document()["introspection_endpoint"]
    text = config.read_text().replace(
        'cli_client_id = "mcp-gate-cli"\n',
        f'cli_client_id = "mcp-gate-cli"\nintrospection_url = "{endpoint}"\n'
        'introspection_client_id = "mcp-gate"\nintrospection_secret_file = "introspection.secret"\n',
    )
    config.write_text(text)
    (config.parent / "introspection.secret").write_text("mcp-gate-introspection-secret\n")
    return config


async def test_an_opaque_token_is_introspected_and_a_revoked_one_refused(
    tmp_path: Path, opaque_provider: OidcProvider
) -> None:
    config = introspecting_config(tmp_path, opaque_provider)
    tokens = opaque_provider.person_token("00u-alice")
    assert tokens["access_token"].count(".") != 2  # opaque, not a JWT
    async with serve(config) as served:
        async with agent(served.mcp_url, tokens["access_token"]) as client:
            assert text_of(await client.call_tool("notes__echo", {"text": "opaque"})) == "opaque"
        revoked = httpx2.post(
            opaque_provider.document()["revocation_endpoint"],
            data={"token": tokens["access_token"], "client_id": "mcp-gate-cli"},
        )
        assert revoked.status_code == 200
        async with httpx2.AsyncClient() as http:
            response = await http.post(
                served.mcp_url,
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
                headers={
                    "Authorization": f"Bearer {tokens['access_token']}",
                    "Accept": "application/json, text/event-stream",
                },
            )
    assert response.status_code == 401
    records = await evidence(config)
    requested = [r for r in records if r["event_type"] == "call.requested"][-1]
    assert (requested["requester"]["sub"], requested["requester"]["email"]) == (
        "00u-alice",
        "alice@example.com",
    )
    assert [r["code"] for r in records if r["event_type"] == "token.refused"] == ["inactive"]
