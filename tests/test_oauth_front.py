"""The agent front with [identity]: an OAuth 2.1 resource server (RFC 9728 metadata, bearer
challenges, the required scope and a scope per tier), agents and people from access tokens,
static agent tokens still served, and no agent token ever passed to a downstream."""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_gate.config import Requester, load_config
from mcp_gate.storage.sqlite import SQLiteStore
from mcp_gate.testing import NOTES_MANIFEST, notes_server, running_gate, write_config
from tests.idp_helpers import AUDIENCE, LocalIdp

pytestmark = pytest.mark.anyio

STATIC = "static-agent-token-9f2c"
METADATA = "http://127.0.0.1:8765/.well-known/oauth-protected-resource/mcp"
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}


@pytest.fixture
def idp() -> Iterator[LocalIdp]:
    with LocalIdp().running() as running:
        yield running


def identity_toml(idp: LocalIdp, extra: str = "") -> str:
    return (
        f'[identity]\nissuer = "{idp.issuer}"\naudience = "{AUDIENCE}"\nrequired_scope = "mcp:tools"\n'
        f'{extra}[identity.tier_scopes]\nhigh = "tools:high"\n'
        '[identity.agents.deploy-bot]\nowner = "bob@example.com"\n'
        f'[agents.ci-bot]\ntoken_sha256 = "{hashlib.sha256(STATIC.encode()).hexdigest()}"\n'
        'owner = "carol@example.com"\n'
    )


@pytest.fixture
def config(tmp_path: Path, idp: LocalIdp) -> Path:
    return write_config(
        tmp_path / "gate",
        servers={},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        approvals={"hold_seconds": 0.3},
        extra=identity_toml(idp),
    )


@asynccontextmanager
async def http_gate(config: Path, tmp_path: Path) -> AsyncIterator[str]:
    servers = {"notes": notes_server(tmp_path / "notes")}
    async with running_gate(config, servers=servers) as front, anyio.create_task_group() as tg:
        port = await tg.start(front.serve_http, "127.0.0.1", 0)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def agent(url: str, token: str) -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30.0))
    async with http, Client(streamable_http_client(f"{url}/mcp", http_client=http), mode="legacy") as client:
        yield client


def text_of(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def records(config: Path) -> list[dict[str, Any]]:
    async with await SQLiteStore.open(config.parent / "data" / "gate.db") as store:
        return [dict(r.body) for r in await store.records()]


def call_body(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


async def test_protected_resource_metadata_is_served_at_the_root_and_in_the_path_form(
    config: Path, tmp_path: Path, idp: LocalIdp
) -> None:
    async with http_gate(config, tmp_path) as url, httpx2.AsyncClient() as http:
        for path in ("/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"):
            response = await http.get(url + path)
            assert response.status_code == 200
            document = response.json()
            assert document["resource"] == AUDIENCE
            assert [s.rstrip("/") for s in document["authorization_servers"]] == [idp.issuer]
            assert document["scopes_supported"] == ["mcp:tools", "tools:high"]
            assert document["bearer_methods_supported"] == ["header"]


async def test_a_request_without_a_token_gets_401_naming_the_metadata_and_the_scope(
    config: Path, tmp_path: Path
) -> None:
    async with http_gate(config, tmp_path) as url, httpx2.AsyncClient() as http:
        response = await http.post(f"{url}/mcp", json=LIST, headers=HEADERS)
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'resource_metadata="{METADATA}"' in challenge
    assert 'scope="mcp:tools"' in challenge


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        ({"iss": "https://evil.example"}, "wrong_issuer"),
        ({"aud": "https://other.example/mcp"}, "wrong_audience"),
        ({"aud": None}, "missing_audience"),
        ({"exp": 1_000_000}, "expired"),
    ],
)
async def test_a_refused_token_gets_401_and_its_reason_is_recorded_never_the_token(
    config: Path, tmp_path: Path, idp: LocalIdp, claims: dict[str, Any], code: str
) -> None:
    token = idp.mint(**claims)
    async with http_gate(config, tmp_path) as url, httpx2.AsyncClient() as http:
        response = await http.post(
            f"{url}/mcp", json=LIST, headers={**HEADERS, "Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge and f'resource_metadata="{METADATA}"' in challenge
    refused = [r for r in await records(config) if r["event_type"] == "token.refused"]
    assert [r["code"] for r in refused] == [code]
    stored = b"".join(p.read_bytes() for p in (config.parent / "data").rglob("*") if p.is_file())
    assert token.encode() not in stored and token.split(".")[2].encode() not in stored


async def test_a_token_without_the_required_scope_gets_403_insufficient_scope(
    config: Path, tmp_path: Path, idp: LocalIdp
) -> None:
    token = idp.mint(scope="openid")
    async with http_gate(config, tmp_path) as url, httpx2.AsyncClient() as http:
        response = await http.post(
            f"{url}/mcp", json=LIST, headers={**HEADERS, "Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 403
    challenge = response.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="mcp:tools"' in challenge
    assert f'resource_metadata="{METADATA}"' in challenge


async def test_an_agent_with_a_token_is_its_client_acting_for_its_subject_and_evidence_names_both(
    config: Path, tmp_path: Path, idp: LocalIdp
) -> None:
    token = idp.mint(jti="j-1")
    async with http_gate(config, tmp_path) as url, agent(url, token) as client:
        assert text_of(await client.call_tool("notes__echo", {"text": "hi"})) == "hi"
    requested = [r for r in await records(config) if r["event_type"] == "call.requested"][-1]
    assert requested["requester"] == {
        "agent": "claude-code",
        "owner": f"{idp.issuer}#00u-alice",
        "iss": idp.issuer,
        "sub": "00u-alice",
        "email": "alice@example.com",
        "name": "Alice Example",
        "jti_sha256": hashlib.sha256(b"j-1").hexdigest(),
    }


async def test_a_high_call_without_the_tiers_scope_gets_403_naming_every_scope_to_step_up_to(
    config: Path, tmp_path: Path, idp: LocalIdp
) -> None:
    token = idp.mint()
    body = call_body("notes__write_note", {"name": "a", "text": "b"})
    async with http_gate(config, tmp_path) as url, agent(url, token) as client:
        # A session first, as a client has one; then the call itself, over the same session.
        await client.list_tools()
        async with httpx2.AsyncClient() as http:
            response = await http.post(
                f"{url}/mcp", json=body, headers={**HEADERS, "Authorization": f"Bearer {token}"}
            )
    assert response.status_code == 403
    challenge = response.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="mcp:tools tools:high"' in challenge
    assert f'resource_metadata="{METADATA}"' in challenge
    assert not any(r["event_type"] == "call.requested" for r in await records(config))


async def test_a_high_call_with_the_tiers_scope_is_held_for_approval(
    config: Path, tmp_path: Path, idp: LocalIdp
) -> None:
    token = idp.mint(scope="mcp:tools tools:high")
    async with http_gate(config, tmp_path) as url, agent(url, token) as client:
        result = await client.call_tool("notes__write_note", {"name": "a", "text": "b"})
    assert result.is_error and "not run yet" in text_of(result)
    kinds = [r["event_type"] for r in await records(config)]
    assert "approval.requested" in kinds


async def test_the_pipeline_refuses_a_call_whose_token_lacks_the_tiers_scope_as_a_second_lock(
    config: Path, tmp_path: Path, idp: LocalIdp
) -> None:
    requester = Requester(
        agent="claude-code", owner=f"{idp.issuer}#00u-alice", issuer=idp.issuer, subject="00u-alice",
        scopes=frozenset({"mcp:tools"}),
    )  # fmt: skip
    async with running_gate(config, servers={"notes": notes_server(tmp_path / "notes")}) as front:
        result = await front.gateway.call(
            requester, "notes__write_note", {"name": "a", "text": "b"}, transport="http"
        )
    assert result.is_error and "lacks scope tools:high" in text_of(result)
    kinds = [r["event_type"] for r in await records(config)]
    assert "call.refused" in kinds and "approval.requested" not in kinds


async def test_a_static_agent_token_still_works_beside_the_identity_provider(
    config: Path, tmp_path: Path
) -> None:
    async with http_gate(config, tmp_path) as url, agent(url, STATIC) as client:
        assert text_of(await client.call_tool("notes__echo", {"text": "static"})) == "static"
    requested = [r for r in await records(config) if r["event_type"] == "call.requested"][-1]
    assert requested["requester"] == {"agent": "ci-bot", "owner": "carol@example.com"}


async def test_a_client_credentials_agent_acts_for_its_configured_owner(
    config: Path, tmp_path: Path, idp: LocalIdp
) -> None:
    token = idp.mint(sub="deploy-bot", azp=None, client_id="deploy-bot", email=None, name=None)
    async with http_gate(config, tmp_path) as url, agent(url, token) as client:
        assert text_of(await client.call_tool("notes__echo", {"text": "m2m"})) == "m2m"
    requested = [r for r in await records(config) if r["event_type"] == "call.requested"][-1]
    assert requested["requester"]["agent"] == "deploy-bot"
    assert requested["requester"]["owner"] == "bob@example.com"
    assert requested["requester"]["sub"] is None


async def test_a_client_credentials_agent_with_no_owner_is_refused(
    config: Path, tmp_path: Path, idp: LocalIdp
) -> None:
    token = idp.mint(sub=None, azp="stray-bot")
    async with http_gate(config, tmp_path) as url, httpx2.AsyncClient() as http:
        response = await http.post(
            f"{url}/mcp", json=LIST, headers={**HEADERS, "Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 403
    assert "acts for nobody" in response.json()["error_description"]
    assert [r["code"] for r in await records(config) if r["event_type"] == "token.refused"] == ["no_owner"]


async def test_an_owner_can_come_from_a_claim(tmp_path: Path, idp: LocalIdp) -> None:
    config = write_config(
        tmp_path / "gate",
        servers={},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        extra=identity_toml(idp, 'owner_claim = "owner_email"\n'),
    )
    token = idp.mint(sub=None, azp="nightly", owner_email="dana@example.com")
    async with http_gate(config, tmp_path) as url, agent(url, token) as client:
        assert text_of(await client.call_tool("notes__echo", {"text": "x"})) == "x"
    requested = [r for r in await records(config) if r["event_type"] == "call.requested"][-1]
    assert requested["requester"]["owner"] == "dana@example.com"


async def test_the_agents_token_is_never_passed_to_a_downstream(tmp_path: Path, idp: LocalIdp) -> None:
    seen: list[dict[str, str]] = []
    inner = notes_server(tmp_path / "notes").streamable_http_app(host="127.0.0.1")

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await inner(scope, receive, send)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    downstream = uvicorn.Server(uvicorn.Config(recording, log_level="warning", lifespan="on"))
    config = write_config(
        tmp_path / "gate",
        servers={
            "remote": {"url": f"http://127.0.0.1:{port}/mcp", "headers": {"Authorization": "Bearer own-cred"}}
        },
        manifests={"remote": NOTES_MANIFEST.read_text().replace('server = "notes"', 'server = "remote"')},
        extra=identity_toml(idp),
    )
    token = idp.mint()
    async with anyio.create_task_group() as tg:
        tg.start_soon(downstream.serve, [sock])
        async with running_gate(load_config(config, {})) as front, anyio.create_task_group() as inner_tg:
            gate_port = await inner_tg.start(front.serve_http, "127.0.0.1", 0)
            async with agent(f"http://127.0.0.1:{gate_port}", token) as client:
                assert text_of(await client.call_tool("remote__echo", {"text": "far"})) == "far"
            inner_tg.cancel_scope.cancel()
        downstream.should_exit = True
    sock.close()
    assert seen
    assert {h.get("authorization") for h in seen} == {"Bearer own-cred"}
    assert not any(token in json.dumps(h) for h in seen)


@pytest.mark.parametrize("down", [False, True])
async def test_check_fetches_the_providers_keys_and_fails_when_it_cannot(
    tmp_path: Path, idp: LocalIdp, down: bool
) -> None:
    import sys

    from mcp_gate.testing import notes_server_table

    config = write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        extra=identity_toml(idp),
    )
    idp.down = down
    done = await anyio.run_process(
        [sys.executable, "-m", "mcp_gate", "check", "--config", str(config)], check=False
    )
    out = done.stdout.decode()
    if down:
        assert done.returncode == 1 and f"identity: PROBLEM: {idp.issuer}" in out
    else:
        assert done.returncode == 0, out + done.stderr.decode()
        assert f"identity: ok: 1 signing key(s) from {idp.issuer}; resource {AUDIENCE}" in out
