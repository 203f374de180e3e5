"""gate.toml's chat channels: [slack] and [channels.teams], with the approvers' chat identities."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, ValidationError

from mcp_gate.approvals import Approver
from mcp_gate.config.files import Strict, config_error_from
from mcp_gate.config.model import ServerSpec, SlackSecret, SlackSettings, TeamsSettings
from mcp_gate.config.servers import ENV_NAME
from mcp_gate.errors import ConfigError

__all__ = ["CONFIGURABLE_TIERS", "slack_settings", "teams_settings"]

CONFIGURABLE_TIERS = ("low", "medium", "high", "critical")
_CONFIGURABLE = CONFIGURABLE_TIERS


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


NonEmpty = Annotated[str, AfterValidator(_non_empty)]

# --- [slack] -----------------------------------------------------------------------------------------

_SLACK_ID = re.compile(r"[A-Z0-9][A-Z0-9_-]{1,40}")
_TOKEN_SHAPE = re.compile(r"^\s*(xox[abposr]-|xapp-)")
_LITERAL_SECRETS = ("bot_token", "app_token", "signing_secret")


class _SlackSection(Strict):
    team_id: NonEmpty
    channel: NonEmpty
    mode: Literal["socket", "http"] = "socket"
    bot_token_env: NonEmpty | None = None
    bot_token_file: NonEmpty | None = None
    app_token_env: NonEmpty | None = None
    app_token_file: NonEmpty | None = None
    signing_secret_env: NonEmpty | None = None
    signing_secret_file: NonEmpty | None = None
    api_url: NonEmpty = "https://slack.com/api/"
    listen: NonEmpty | None = None
    tiers: dict[str, NonEmpty] = Field(default_factory=dict)
    servers: dict[str, NonEmpty] = Field(default_factory=dict)


def _slack_secret(
    file: str, section: _SlackSection, what: str, default_env: str, base: Path, *, needed: bool
) -> SlackSecret | None:
    env: str | None = getattr(section, f"{what}_env")
    path: str | None = getattr(section, f"{what}_file")
    if env is not None and path is not None:
        raise ConfigError(file, f"slack.{what}_file", f"give {what}_env or {what}_file, not both")
    if path is not None:
        return SlackSecret(what, None, base / path)
    if env is None and not needed:
        return None
    env = env or default_env
    if not ENV_NAME.fullmatch(env):
        raise ConfigError(file, f"slack.{what}_env", f"{env!r} is not an environment variable name")
    return SlackSecret(what, env, None)


def slack_settings(
    file: str,
    data: dict[str, Any] | None,
    base: Path,
    sections: Mapping[str, Any],
    approvers: Mapping[str, Approver],
    servers: Mapping[str, ServerSpec],
) -> SlackSettings | None:
    if data is None:
        return None
    for key in _LITERAL_SECRETS:
        if key in data:
            raise ConfigError(
                file,
                f"slack.{key}",
                f"a Slack secret must not be written in gate.toml; name an environment variable "
                f"({key}_env) or a file ({key}_file) that holds it",
            )
    for key, value in data.items():
        if isinstance(value, str) and _TOKEN_SHAPE.match(value):
            raise ConfigError(
                file, f"slack.{key}", "looks like a Slack token; tokens come from the environment or a file"
            )
    try:
        section = _SlackSection.model_validate(data)
    except ValidationError as exc:
        raise config_error_from(file, exc, prefix=("slack",)) from exc
    if not _SLACK_ID.fullmatch(section.team_id):
        raise ConfigError(
            file, "slack.team_id", f"expected a Slack team id such as T0123ABCD, got {section.team_id!r}"
        )
    for tier in section.tiers:
        if tier not in _CONFIGURABLE:
            raise ConfigError(
                file, f"slack.tiers.{tier}", "unknown tier; expected low, medium, high or critical"
            )
    for server in section.servers:
        if server not in servers:
            raise ConfigError(file, f"slack.servers.{server}", f"no server {server!r} is configured")
    scheme = urlsplit(section.api_url).scheme
    if scheme not in ("http", "https"):
        raise ConfigError(file, "slack.api_url", f"expected an http(s) URL, got {section.api_url!r}")
    listen: tuple[str, int] | None = None
    if section.listen is not None:
        host, sep, port = section.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(
                file, "slack.listen", f"expected HOST:PORT such as 0.0.0.0:8767, got {section.listen!r}"
            )
        listen = (host.strip("[]"), int(port))
    if section.mode == "http" and listen is None:
        raise ConfigError(
            file, "slack.listen", 'mode = "http" needs listen = "HOST:PORT" for /slack/interactions'
        )
    users: dict[str, str] = {}
    for name, approver_section in sections.items():
        ids = approver_section.slack_user
        for user in [ids] if isinstance(ids, str) else ids or []:
            key = f"approvers.{name}.slack_user"
            if not _SLACK_ID.fullmatch(user):
                raise ConfigError(file, key, f"expected a Slack user id such as U0123ABCD, got {user!r}")
            if user in users and users[user] != name:
                raise ConfigError(file, key, f"Slack user {user} is already approver {users[user]!r}")
            users[user] = name
    assert set(users.values()) <= set(approvers)
    bot = _slack_secret(file, section, "bot_token", "SLACK_BOT_TOKEN", base, needed=True)
    assert bot is not None
    return SlackSettings(
        team_id=section.team_id,
        channel=section.channel,
        mode=section.mode,
        bot_token=bot,
        app_token=_slack_secret(
            file, section, "app_token", "SLACK_APP_TOKEN", base, needed=section.mode == "socket"
        ),
        signing_secret=_slack_secret(
            file, section, "signing_secret", "SLACK_SIGNING_SECRET", base, needed=section.mode == "http"
        ),
        api_url=section.api_url,
        listen=listen,
        tier_channels=MappingProxyType(dict(section.tiers)),
        server_channels=MappingProxyType(dict(section.servers)),
        users=MappingProxyType(users),
    )


# --- [channels.teams] --------------------------------------------------------------------------------

_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_CONVERSATION = re.compile(r"[A-Za-z0-9:@._;=-]{1,256}")


class _TeamsSection(Strict):
    app_id: NonEmpty
    tenant_id: NonEmpty
    app_password_env: NonEmpty | None = None
    app_password_file: NonEmpty | None = None
    service_url: NonEmpty
    conversation: NonEmpty
    listen: NonEmpty = "127.0.0.1:3978"
    openid_metadata: NonEmpty = TeamsSettings.openid_metadata
    issuer: NonEmpty = TeamsSettings.issuer
    token_url: NonEmpty = TeamsSettings.token_url
    scope: NonEmpty = TeamsSettings.scope
    console_url: NonEmpty | None = None


def _https_url(file: str, key: str, value: str) -> None:
    # http only for a local fake or a test: a real Bot Framework endpoint is https.
    try:
        parts = urlsplit(value)
        local = parts.hostname in ("127.0.0.1", "localhost", "::1")
    except ValueError:
        raise ConfigError(file, key, f"expected an https URL, got {value!r}") from None
    if not (parts.scheme == "https" or (parts.scheme == "http" and local)) or not parts.hostname:
        raise ConfigError(file, key, f"expected an https URL (http only on 127.0.0.1), got {value!r}")


def teams_settings(
    file: str,
    channels: dict[str, Any] | None,
    base: Path,
    sections: Mapping[str, Any],
    approvers: Mapping[str, Approver],
    servers: Mapping[str, ServerSpec],
) -> TeamsSettings | None:
    """[channels.teams]: the bot's app id and tenant, where its password lives, where cards go."""
    if channels is None:
        return None
    unknown = sorted(set(channels) - {"teams"})
    if unknown:
        raise ConfigError(file, f"channels.{unknown[0]}", "unknown channel; expected teams")
    data = channels["teams"]
    if not isinstance(data, dict):
        raise ConfigError(file, "channels.teams", "expected a table")
    if "app_password" in data:
        raise ConfigError(
            file,
            "channels.teams.app_password",
            "the bot's password must not be written in gate.toml; name an environment variable "
            "(app_password_env) or a file (app_password_file) that holds it",
        )
    try:
        section = _TeamsSection.model_validate(data)
    except ValidationError as exc:
        raise config_error_from(file, exc, prefix=("channels", "teams")) from exc
    for key in ("app_id", "tenant_id"):
        if not _GUID.fullmatch(getattr(section, key)):
            raise ConfigError(
                file, f"channels.teams.{key}", f"expected a GUID, got {getattr(section, key)!r}"
            )
    if not _CONVERSATION.fullmatch(section.conversation):
        raise ConfigError(
            file,
            "channels.teams.conversation",
            f"expected a Teams conversation id, got {section.conversation!r}",
        )
    for key in ("service_url", "openid_metadata", "issuer", "token_url"):
        _https_url(file, f"channels.teams.{key}", getattr(section, key))
    host, sep, port = section.listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            file, "channels.teams.listen", f"expected HOST:PORT such as 0.0.0.0:3978, got {section.listen!r}"
        )
    if section.app_password_env is not None and section.app_password_file is not None:
        raise ConfigError(
            file, "channels.teams.app_password_file", "give app_password_env or app_password_file, not both"
        )
    if section.app_password_file is not None:
        password = SlackSecret("app_password", None, base / section.app_password_file, "channels.teams")
    else:
        env = section.app_password_env or "TEAMS_APP_PASSWORD"
        if not ENV_NAME.fullmatch(env):
            raise ConfigError(
                file, "channels.teams.app_password_env", f"{env!r} is not an environment variable name"
            )
        password = SlackSecret("app_password", env, None, "channels.teams")
    users: dict[str, str] = {}
    for name, approver_section in sections.items():
        ids = approver_section.teams_user
        for user in [ids] if isinstance(ids, str) else ids or []:
            key = f"approvers.{name}.teams_user"
            if not _GUID.fullmatch(user):
                raise ConfigError(file, key, f"expected an Entra ID object id (a GUID), got {user!r}")
            user = user.lower()
            if user in users and users[user] != name:
                raise ConfigError(file, key, f"Teams user {user} is already approver {users[user]!r}")
            users[user] = name
    assert set(users.values()) <= set(approvers)
    return TeamsSettings(
        app_id=section.app_id.lower(),
        tenant_id=section.tenant_id.lower(),
        app_password=password,
        service_url=section.service_url,
        conversation=section.conversation,
        listen=(host.strip("[]"), int(port)),
        openid_metadata=section.openid_metadata,
        issuer=section.issuer.rstrip("/"),
        token_url=section.token_url,
        scope=section.scope,
        console_url=section.console_url,
        users=MappingProxyType(users),
    )
