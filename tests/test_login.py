"""`mcp-gate login` against a real OpenID provider: the device grant, the token kept 0600 in the
user's config dir, refreshed when it ends, and used by pending and approve; gate-issued approver
tokens keep working beside it."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest

from mcp_gate.testing import approver_table, eventually
from tests.idp_helpers import AUDIENCE
from tests.oidc_helpers import OidcProvider, oidc_provider
from tests.test_oidc_provider import agent, evidence, gate_config, serve

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


@pytest.fixture
def provider() -> Iterator[OidcProvider]:
    with oidc_provider(AUDIENCE) as running:
        yield running


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MCP_GATE_CONFIG", "MCP_GATE_TOKEN")}
    return {**env, "XDG_CONFIG_HOME": str(tmp_path / "xdg"), **extra}


async def login(tmp_path: Path, config: Path, provider: OidcProvider, sub: str) -> Path:
    """Run `mcp-gate login`, do the person's step at the provider for `sub`, wait for it to finish."""
    stderr = tmp_path / "login.stderr"
    with stderr.open("w") as err:
        process = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "mcp_gate", "login", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            env=cli_env(tmp_path),
            text=True,
        )
    try:

        def code() -> str | None:
            found = re.search(r"enter the code (\S+)", stderr.read_text())
            if found is None and process.poll() is not None:
                raise AssertionError(f"login exited {process.returncode}: {stderr.read_text()}")
            return found.group(1) if found else None

        user_code = await eventually(code, what="login to show a code", timeout=30)
        assert f"{provider.issuer}/device" in stderr.read_text()
        provider.complete_device(user_code, sub)
        out, _ = await anyio.to_thread.run_sync(lambda: process.communicate(timeout=60))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr.read_text()
    assert f"subject {sub}" in out
    return tmp_path / "xdg" / "mcp-gate" / "idp-token.json"


async def cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return await anyio.run_process(
        [sys.executable, "-m", "mcp_gate", *args], env=cli_env(tmp_path, **env), check=False
    )  # type: ignore[return-value]


def text(done: Any) -> str:
    return (done.stdout or b"").decode() + (done.stderr or b"").decode()


async def test_login_keeps_the_token_0600_and_approve_uses_it(tmp_path: Path, provider: OidcProvider) -> None:
    config = gate_config(tmp_path, provider)
    stored = await login(tmp_path, config, provider, "00u-dave")
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    kept = json.loads(stored.read_text())
    assert (kept["issuer"], kept["sub"], kept["email"]) == (provider.issuer, "00u-dave", "dave@example.com")
    assert kept["refresh_token"]
    alice = provider.person_token("00u-alice")["access_token"]
    async with (
        serve(config) as served,
        agent(served.mcp_url, alice) as client,
        anyio.create_task_group() as tg,
    ):
        results: list[types.CallToolResult] = []

        async def write() -> None:
            results.append(await client.call_tool("notes__write_note", {"name": "plan", "text": "v2"}))

        tg.start_soon(write)

        async def pending() -> list[dict[str, Any]]:
            done = await cli(tmp_path, "pending", "--config", str(config), "--api", served.api_url, "--json")
            assert done.returncode == 0, text(done)
            return [r for r in json.loads(done.stdout) if r["state"] == "pending"]

        request = (await eventually(pending, what="the held call over the CLI", timeout=30))[0]
        done = await cli(tmp_path, "approve", request["id"], "--config", str(config), "--api", served.api_url)
        assert done.returncode == 0, text(done)
        await eventually(lambda: bool(results), what="the approved call to return", timeout=30)
    assert not results[0].is_error
    decided = [r for r in await evidence(config) if r["event_type"] == "approval.decided"][-1]
    assert (decided["approver_sub"], decided["channel"]) == ("00u-dave", "api")


async def test_an_expired_stored_token_is_refreshed_and_kept_again(
    tmp_path: Path, provider: OidcProvider
) -> None:
    config = gate_config(tmp_path, provider)
    stored = await login(tmp_path, config, provider, "00u-dave")
    kept = json.loads(stored.read_text())
    stored.write_text(json.dumps({**kept, "expires_at": 1}))
    async with serve(config) as served:
        done = await cli(tmp_path, "pending", "--config", str(config), "--api", served.api_url, "--json")
    assert done.returncode == 0, text(done)
    renewed = json.loads(stored.read_text())
    assert renewed["access_token"] != kept["access_token"] and renewed["expires_at"] > 1
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600


async def test_a_stored_login_others_can_read_is_refused(tmp_path: Path, provider: OidcProvider) -> None:
    config = gate_config(tmp_path, provider)
    stored = await login(tmp_path, config, provider, "00u-dave")
    stored.chmod(0o644)
    done = await cli(tmp_path, "pending", "--config", str(config), "--api", "http://127.0.0.1:9/v1")
    assert done.returncode != 0 and "chmod 600" in text(done)


async def test_gate_issued_approver_tokens_still_work_beside_login(
    tmp_path: Path, provider: OidcProvider
) -> None:
    config = gate_config(tmp_path, provider)
    with config.open("a") as f:
        table = approver_table("bob@example.com", ["sre"], "tok-bob")
        f.write("\n[approvers.bob]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items()))
    async with serve(config) as served:
        done = await cli(
            tmp_path, "pending", "--config", str(config), "--api", served.api_url, MCP_GATE_TOKEN="tok-bob"
        )
    assert done.returncode == 0, text(done)


async def test_logout_forgets_the_login(tmp_path: Path, provider: OidcProvider) -> None:
    config = gate_config(tmp_path, provider)
    stored = await login(tmp_path, config, provider, "00u-dave")
    done = await cli(tmp_path, "logout")
    assert done.returncode == 0 and not stored.exists()
