"""[channels.teams] in gate.toml, `mcp-gate teams test`, and the Teams line of `mcp-gate check`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from mcp_gate.channels.teams import TeamsSecrets
from mcp_gate.config import load_config
from mcp_gate.config.model import BOT_FRAMEWORK_ISSUER, BOT_FRAMEWORK_METADATA
from mcp_gate.errors import ConfigError
from mcp_gate.fake_teams import FakeTeams
from mcp_gate.testing import eventually, notes_server_table, write_config
from tests.teams_helpers import APPROVERS, BOB, CONVERSATION, PASSWORD_ENV, make_config


def mcp_gate(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "MCP_GATE_CONFIG"} | env
    return subprocess.run(
        [sys.executable, "-m", "mcp_gate", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
    )


def config_with(tmp_path: Path, table: str, approvers: dict[str, dict[str, object]] | None = None) -> Path:
    return write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        approvers=approvers if approvers is not None else APPROVERS,
        extra=table,
    )


MINIMAL = f"""[channels.teams]
app_id = "0b7c5e3e-6d2a-4c51-9d1e-2f3a4b5c6d7e"
tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
service_url = "https://smba.trafficmanager.net/amer/"
conversation = "{CONVERSATION}"
"""


def test_a_minimal_table_defaults_to_the_public_bot_framework_and_maps_approvers_by_object_id(
    tmp_path: Path,
) -> None:
    config = load_config(config_with(tmp_path, MINIMAL), {})
    teams = config.teams
    assert teams is not None
    assert teams.openid_metadata == BOT_FRAMEWORK_METADATA and teams.issuer == BOT_FRAMEWORK_ISSUER
    assert teams.token_endpoint == (
        "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/v2.0/token"
    )
    assert teams.listen == ("127.0.0.1", 3978) and teams.app_password.env == "TEAMS_APP_PASSWORD"
    assert teams.users[BOB] == "bob"


@pytest.mark.parametrize(
    ("change", "key", "said"),
    [
        ('app_password = "hunter2"\n', "channels.teams.app_password", "must not be written in gate.toml"),
        ('app_id = "my-bot"\n', "channels.teams.app_id", "expected a GUID"),
        ('token_url = "http://login.example.com/t"\n', "channels.teams.token_url", "https"),
        ('listen = "nowhere"\n', "channels.teams.listen", "HOST:PORT"),
        ('service_url = "https://[bad"\n', "channels.teams.service_url", "expected an https URL"),
        (
            'app_password_env = "A"\napp_password_file = "pw"\n',
            "channels.teams.app_password_file",
            "not both",
        ),
        ('colour = "blue"\n', "channels.teams.colour", ""),
    ],
)
def test_a_wrong_teams_table_is_one_line_naming_the_key(
    tmp_path: Path, change: str, key: str, said: str
) -> None:
    lines = [line for line in MINIMAL.splitlines() if not line.startswith(change.split(" ")[0] + " ")]
    with pytest.raises(ConfigError) as caught:
        load_config(config_with(tmp_path, "\n".join(lines) + "\n" + change), {})
    assert caught.value.key == key and said in caught.value.problem and "\n" not in str(caught.value)


def test_an_unknown_channel_and_a_bad_or_shared_teams_user_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown channel"):
        load_config(config_with(tmp_path, MINIMAL + "[channels.webex]\nroom = 'x'\n"), {})
    bad = {"bob": {**APPROVERS["bob"], "teams_user": "bob@example.com"}}
    with pytest.raises(ConfigError, match="Entra ID object id"):
        load_config(config_with(tmp_path, MINIMAL, bad), {})
    shared = {"bob": APPROVERS["bob"], "carol": {**APPROVERS["carol"], "teams_user": BOB}}
    with pytest.raises(ConfigError, match="already approver"):
        load_config(config_with(tmp_path, MINIMAL, shared), {})


def test_the_bot_password_comes_from_its_variable_and_never_shows(tmp_path: Path) -> None:
    config = load_config(config_with(tmp_path, MINIMAL), {})
    with pytest.raises(ConfigError, match="TEAMS_APP_PASSWORD is not set"):
        TeamsSecrets.read(config, {})
    secrets = TeamsSecrets.read(config, {"TEAMS_APP_PASSWORD": "s3cret-bot-pw"})
    assert secrets.app_password == "s3cret-bot-pw"
    assert "s3cret" not in repr(secrets) and "s3cret" not in repr(config)


def test_teams_test_gets_a_token_reads_the_keys_posts_a_card_and_finds_the_endpoint(tmp_path: Path) -> None:
    fake = FakeTeams(conversations={CONVERSATION})
    with fake.running():
        config = make_config(tmp_path, fake)
        # No gate is listening on the fake's own port's /api/messages: it answers 404, not 401.
        done = mcp_gate(
            "teams",
            "test",
            "--config",
            str(config),
            "--endpoint",
            fake.url,
            env={PASSWORD_ENV: fake.app_password},
        )
        posts = fake.calls_to("POST")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["ok", "credentials"],
        ["ok", "keys"],
        ["ok", "conversation"],
        ["FAIL", "endpoint"],
    ]
    assert len(posts) == 1 and fake.app_password not in done.stdout + done.stderr


def test_check_says_teams_is_fine_or_names_the_problem_without_the_password(tmp_path: Path) -> None:
    fake = FakeTeams(conversations={CONVERSATION})
    with fake.running():
        config = make_config(tmp_path, fake)
        good = mcp_gate("check", "--config", str(config), env={PASSWORD_ENV: fake.app_password})
        bad = mcp_gate("check", "--config", str(config), env={PASSWORD_ENV: "not-the-password"})
        posts = fake.calls_to("POST")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "teams: ok: credentials and keys work" in good.stdout
    assert bad.returncode == 1 and "teams: PROBLEM: credentials:" in bad.stdout
    assert "not-the-password" not in bad.stdout + bad.stderr and posts == []


def test_serve_without_the_bot_password_is_a_one_line_error(tmp_path: Path) -> None:
    fake = FakeTeams(conversations={CONVERSATION})
    with fake.running():
        config = make_config(tmp_path, fake)
        done = mcp_gate("serve", "--config", str(config), env={})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"mcp-gate: error: {config}: channels.teams.app_password_env: environment variable {PASSWORD_ENV} "
        "is not set (it should hold the Teams bot's app password)"
    ]


@pytest.mark.anyio
async def test_mcp_gate_serve_posts_a_held_call_to_teams_and_runs_it_when_approved_there(
    tmp_path: Path,
) -> None:
    fake = FakeTeams(conversations={CONVERSATION})
    errlog = tmp_path / "serve.stderr"
    with fake.running(), errlog.open("w") as err:
        config = make_config(tmp_path, fake)
        gate = StdioServerParameters(
            command=sys.executable,
            args=["-m", "mcp_gate", "serve", "--config", str(config)],
            env={PASSWORD_ENV: fake.app_password, "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        )
        async with (
            Client(stdio_client(gate, errlog=err), mode="legacy") as agent,
            anyio.create_task_group() as tg,
        ):
            box: list[types.CallToolResult] = []

            async def call() -> None:
                box.append(await agent.call_tool("notes__write_note", {"name": "plan", "text": "ship"}))

            tg.start_soon(call)
            [post] = await fake.wait_for(lambda: fake.calls_to("POST"), timeout=30)
            found = await eventually(
                lambda: re.search(
                    r"messaging endpoint on (http://127\.0\.0\.1:\d+/api/messages)", errlog.read_text()
                ),
                what="the messaging endpoint's address on stderr",
            )
            request_id = post.body["attachments"][0]["content"]["actions"][0]["data"]["request_id"]
            activity = fake.invoke(BOB, "approve", {"request_id": request_id})
            async with httpx2.AsyncClient(timeout=20) as client:
                answer = await client.post(
                    found.group(1), json=activity, headers={"authorization": f"Bearer {fake.token()}"}
                )
            await fake.wait_for(lambda: box, timeout=30)
            await fake.wait_for(lambda: fake.calls_to("PUT"))
    assert answer.status_code == 200 and answer.json()["type"] == "application/vnd.microsoft.card.adaptive"
    assert not box[0].is_error and (tmp_path / "notes" / "plan").read_text() == "ship"
    assert fake.app_password not in errlog.read_text()
