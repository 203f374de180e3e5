"""The [slack] table: channels and overrides, tokens only from the environment or files, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_gate.channels.slack import SlackSecrets
from mcp_gate.config import load_config
from mcp_gate.errors import ConfigError
from mcp_gate.testing import approver_table, write_config

BASE = '[slack]\nteam_id = "T0TEAM"\nchannel = "C0APPROVE"\n'


def config_with(tmp_path: Path, slack: str, approvers: dict[str, dict[str, object]] | None = None) -> Path:
    return write_config(
        tmp_path,
        servers={"notes": {"command": "python3"}, "fs": {"command": "python3"}},
        approvers=approvers
        or {"bob": {**approver_table("bob@example.com", ["sre"], "t"), "slack_user": "U0BOB"}},
        extra=slack,
    )


def test_a_slack_table_loads_with_its_overrides_and_slack_user_mapping(tmp_path: Path) -> None:
    text = BASE + '[slack.tiers]\ncritical = "C0CRIT"\n[slack.servers]\nfs = "C0FS"\n'
    settings = load_config(config_with(tmp_path, text), {}).slack
    assert settings is not None and settings.mode == "socket"
    assert settings.channel_for("notes", "high") == "C0APPROVE"
    assert settings.channel_for("notes", "critical") == "C0CRIT"
    assert settings.channel_for("fs", "critical") == "C0FS"  # a server's own channel wins over its tier's
    assert dict(settings.users) == {"U0BOB": "bob"}
    assert settings.bot_token.where() == "$SLACK_BOT_TOKEN" and settings.app_token is not None


def test_tokens_are_read_from_the_environment_or_files_and_never_shown(tmp_path: Path) -> None:
    (tmp_path / "app.token").write_text("xapp-from-file\n")
    config = load_config(config_with(tmp_path, BASE + 'app_token_file = "app.token"\n'), {})
    secrets = SlackSecrets.read(config, {"SLACK_BOT_TOKEN": "xoxb-from-env"})
    assert (secrets.bot_token, secrets.app_token) == ("xoxb-from-env", "xapp-from-file")
    assert "xox" not in repr(secrets) and "xapp" not in repr(config)


def test_no_gate_without_slack_is_affected(tmp_path: Path) -> None:
    assert load_config(config_with(tmp_path, ""), {}).slack is None


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (BASE + 'bot_token = "xoxb-123"\n', "slack.bot_token", "must not be written in gate.toml"),
        (BASE + 'signing_secret = "abc"\n', "slack.signing_secret", "name an environment variable"),
        (BASE + 'api_url = "xoxb-1-2-3"\n', "slack.api_url", "looks like a Slack token"),
        (BASE + 'mode = "webhook"\n', "slack.mode", "expected 'socket' or 'http'"),
        (BASE + 'mode = "http"\n', "slack.listen", "needs listen"),
        (BASE + 'colour = "blue"\n', "slack.colour", "unknown key"),
        ('[slack]\nchannel = "C0APPROVE"\n', "slack.team_id", "required key is missing"),
        (BASE + 'team_id = "nope"\n', None, "invalid TOML"),
        (BASE.replace("T0TEAM", "team one"), "slack.team_id", "expected a Slack team id"),
        (BASE + '[slack.servers]\nghost = "C1"\n', "slack.servers.ghost", "no server 'ghost'"),
        (BASE + '[slack.tiers]\nblocked = "C1"\n', "slack.tiers.blocked", "unknown tier"),
        (BASE + 'bot_token_env = "A"\nbot_token_file = "f"\n', "slack.bot_token_file", "not both"),
        (BASE + 'bot_token_env = "1BAD"\n', "slack.bot_token_env", "not an environment variable name"),
        (BASE + 'api_url = "ftp://x"\n', "slack.api_url", "expected an http(s) URL"),
    ],
)
def test_a_bad_slack_table_is_one_line_naming_the_key(
    tmp_path: Path, text: str, key: str | None, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(config_with(tmp_path, text), {})
    assert caught.value.key == key and problem in caught.value.problem and "\n" not in str(caught.value)


def test_one_slack_user_cannot_be_two_approvers(tmp_path: Path) -> None:
    approvers = {
        "bob": {**approver_table("bob@example.com", ["sre"], "t1"), "slack_user": "U0BOB"},
        "rob": {**approver_table("rob@example.com", ["sre"], "t2"), "slack_user": ["U0ROB", "U0BOB"]},
    }
    with pytest.raises(ConfigError, match="Slack user U0BOB is already approver 'bob'") as caught:
        load_config(config_with(tmp_path, BASE, approvers), {})
    assert caught.value.key == "approvers.rob.slack_user"


def test_a_malformed_slack_user_id_is_refused(tmp_path: Path) -> None:
    approvers = {"bob": {**approver_table("bob@example.com", ["sre"], "t1"), "slack_user": "@bob"}}
    with pytest.raises(ConfigError, match="expected a Slack user id"):
        load_config(config_with(tmp_path, BASE, approvers), {})


def test_a_missing_token_is_a_one_line_error_naming_the_variable(tmp_path: Path) -> None:
    config = load_config(config_with(tmp_path, BASE), {})
    with pytest.raises(ConfigError) as caught:
        SlackSecrets.read(config, {"SLACK_APP_TOKEN": "xapp-1"})
    assert caught.value.key == "slack.bot_token_env" and "SLACK_BOT_TOKEN is not set" in caught.value.problem
    (tmp_path / "empty").write_text("\n")
    config = load_config(config_with(tmp_path, BASE + 'bot_token_file = "empty"\n'), {})
    with pytest.raises(ConfigError, match="the bot_token file is empty"):
        SlackSecrets.read(config, {"SLACK_APP_TOKEN": "xapp-1"})
