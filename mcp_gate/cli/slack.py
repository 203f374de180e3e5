"""`mcp-gate slack test` and the Slack line of `mcp-gate check`: what works, what is missing."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from mcp_gate.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    add_config,
    load_config_from_args,
    progress,
    say,
    subcommand,
)
from mcp_gate.errors import ConfigError, GateError, SlackFailure
from mcp_gate.events import SLACK_DELIVERY

if TYPE_CHECKING:
    from mcp_gate.channels.slack_api import SlackApi
    from mcp_gate.config import GateConfig, SlackSettings

__all__ = ["Finding", "add_commands", "diagnose", "slack_check"]

BOT_SCOPES = ("chat:write", "users:read")
EMAIL_SCOPE = "users:read.email"
HISTORY_SCOPES = ("channels:history", "groups:history")  # recommended: finding a message after a crash


@dataclass(frozen=True)
class Finding:
    """One thing `slack test` looked at."""

    what: str
    ok: bool
    detail: str


def _settings(config: GateConfig) -> SlackSettings:
    if config.slack is None:
        raise GateError(f"{config.path}: slack: no [slack] table; see the README's Slack set-up")
    return config.slack


def _channels(settings: SlackSettings) -> list[str]:
    return list(
        dict.fromkeys(
            [settings.channel, *settings.tier_channels.values(), *settings.server_channels.values()]
        )
    )


def _needed_scopes(config: GateConfig, settings: SlackSettings) -> list[str]:
    mapped = set(settings.users.values())
    # Email lookups are needed unless every approver is mapped by slack_user.
    return [*BOT_SCOPES, *([] if mapped >= set(config.approvers) else [EMAIL_SCOPE])]


async def _auth(config: GateConfig, settings: SlackSettings, api: SlackApi) -> list[Finding]:
    try:
        auth = await api.auth_test()
    except SlackFailure as exc:
        return [
            Finding(
                "auth",
                False,
                f"auth.test failed: {exc.error} (check the bot token, {settings.bot_token.where()})",
            )
        ]
    found = [Finding("auth", True, f"bot {auth.user} in team {auth.team_id}")]
    if auth.team_id != settings.team_id:
        found.append(
            Finding(
                "team",
                False,
                f"the bot token is for team {auth.team_id}, but [slack] team_id is {settings.team_id}",
            )
        )
    missing = [s for s in _needed_scopes(config, settings) if s not in auth.scopes]
    have = ", ".join(sorted(auth.scopes)) or "none reported"
    if missing:
        found.append(Finding("scopes", False, f"missing {', '.join(missing)} (the token has {have})"))
    elif not auth.scopes & set(HISTORY_SCOPES):
        found.append(
            Finding(
                "scopes",
                True,
                f"{have}; add channels:history / groups:history, or a message posted just before "
                "a crash is posted again instead of updated",
            )
        )
    else:
        found.append(Finding("scopes", True, have))
    return found


async def diagnose(config: GateConfig, environ: Mapping[str, str], *, post: bool = True) -> list[Finding]:
    """Check the Slack set-up end to end; with `post`, send a test message to every channel."""
    import anyio

    from mcp_gate.channels.slack import SlackSecrets
    from mcp_gate.channels.slack_api import SlackApi, connect_socket_mode

    settings = _settings(config)
    try:
        secrets = SlackSecrets.read(config, environ)
    except ConfigError as exc:
        return [Finding("tokens", False, str(exc))]
    found = [Finding("tokens", True, "read from the environment or files named in gate.toml")]
    api = SlackApi(secrets.bot_token, settings.api_url)
    found += await _auth(config, settings, api)
    if post:
        for channel in _channels(settings):
            text = f"mcp-gate {config.name}: a test from `mcp-gate slack test`; approval requests come here"
            try:
                _, ts = await api.post_message(channel, {"text": text})
            except SlackFailure as exc:
                hint = (
                    " (invite the app to the channel)"
                    if exc.error in ("not_in_channel", "channel_not_found")
                    else ""
                )
                found.append(Finding(f"channel {channel}", False, f"cannot post: {exc.error}{hint}"))
            else:
                found.append(Finding(f"channel {channel}", True, f"posted a test message (ts {ts})"))
    if settings.mode == "socket":
        assert secrets.app_token is not None
        try:
            link = await anyio.to_thread.run_sync(
                connect_socket_mode,
                secrets.app_token,
                secrets.bot_token,
                settings.api_url,
                lambda _e, _p: None,
            )
        except SlackFailure as exc:
            found.append(
                Finding("socket mode", False, f"cannot connect: {exc.error} (check the app-level token)")
            )
        else:
            await anyio.to_thread.run_sync(link.close)
            found.append(Finding("socket mode", True, "connected with the app-level token"))
    else:
        assert settings.listen is not None
        host, port = settings.listen
        found.append(
            Finding(
                "interactivity",
                True,
                f"signing secret set; Slack must reach http://{host}:{port}/slack/interactions "
                "(through your load balancer) as the app's Request URL",
            )
        )
    return found


async def _recent_failure(config: GateConfig) -> str | None:
    """The last Slack failure the gate recorded, if nothing was posted or updated since."""
    from mcp_gate import runtime

    if not runtime.store_exists(config):
        return None
    async with runtime.read_gate_store(config) as store:
        records = [r for kind in SLACK_DELIVERY for r in await store.records(event_type=kind)]
    if not records:
        return None
    last = max(records, key=lambda r: r.seq)
    if last.event_type == "slack.posted":
        return None
    body = last.body
    error = body.get("error") or body.get("last_error")
    return f"the gate's last Slack attempt failed: {error} (request {body.get('request_id')}, {last.ts})"


def slack_check(config: GateConfig, environ: Mapping[str, str]) -> Finding:
    """One line for `mcp-gate check`: the Slack problem, or that Slack is fine (posts nothing)."""

    import anyio

    async def run() -> Finding:
        findings = await diagnose(config, environ, post=False)
        failed = [f for f in findings if not f.ok]
        recent = await _recent_failure(config)
        if failed:
            return Finding("slack", False, "; ".join(f"{f.what}: {f.detail}" for f in failed))
        if recent is not None:
            return Finding("slack", False, recent)
        auth = next(f for f in findings if f.what == "auth")
        return Finding("slack", True, f"{auth.detail}; {config.slack.mode if config.slack else ''} mode")

    return anyio.run(run)


def cmd_slack_test(args: argparse.Namespace) -> int:
    import anyio

    config = load_config_from_args(args)
    _settings(config)
    progress("checking Slack: auth, scopes, channels, connection...")
    findings = anyio.run(lambda: diagnose(config, os.environ, post=not args.no_post))
    if args.json:
        say(json.dumps([asdict(f) for f in findings], indent=2))
    else:
        width = max(len(f.what) for f in findings)
        for f in findings:
            say(f"{'ok  ' if f.ok else 'FAIL'}  {f.what:<{width}}  {f.detail}")
    return EXIT_OK if all(f.ok for f in findings) else EXIT_FAILED


def add_commands(sub: Any) -> None:
    p = subcommand(sub, "slack", "the Slack approval channel: test the set-up")
    slack_sub = p.add_subparsers(dest="slack_command", metavar="SUBCOMMAND", required=True)
    t = subcommand(
        slack_sub,
        "test",
        "send a test message and report what works and what is missing",
        "Check the bot token (auth.test), its scopes, every configured channel (by posting a test "
        "message) and the Socket Mode connection or HTTP interactivity set-up. Exits 1 if anything fails.",
    )
    add_config(t)
    t.add_argument("--json", action="store_true", help="print the findings as JSON")
    t.add_argument("--no-post", action="store_true", help="check without posting test messages")
    t.set_defaults(func=cmd_slack_test)
