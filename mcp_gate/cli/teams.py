"""`mcp-gate teams test` and the Teams line of `mcp-gate check`: credentials, keys, conversation, endpoint."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from dataclasses import asdict
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
from mcp_gate.errors import ConfigError, TeamsFailure

if TYPE_CHECKING:
    from mcp_gate.cli.slack import Finding
    from mcp_gate.config import GateConfig, TeamsSettings

__all__ = ["add_commands", "diagnose", "teams_check"]


def _settings(config: GateConfig) -> TeamsSettings:
    if config.teams is None:
        raise ConfigError(
            str(config.path), "channels.teams", "no [channels.teams] table: Teams is not configured"
        )
    return config.teams


async def diagnose(
    config: GateConfig, environ: Mapping[str, str], *, post: bool, endpoint: str | None = None
) -> list[Finding]:
    """What works and what is missing: the bot's password, a token from the token service, the Bot
    Framework signing keys, (with `post`) a test card in the conversation, and (with `endpoint`) that
    the public messaging endpoint answers and refuses a request without a token."""
    import httpx2

    from mcp_gate.channels.teams import MESSAGES_PATH, TeamsSecrets
    from mcp_gate.channels.teams_auth import BotFrameworkVerifier, Unverified
    from mcp_gate.channels.teams_connector import Connector
    from mcp_gate.cli.slack import Finding

    settings = _settings(config)
    findings: list[Finding] = []
    try:
        secrets = TeamsSecrets.read(config, environ)
    except ConfigError as exc:
        return [Finding("credentials", False, exc.problem)]
    connector = Connector(settings, secrets.app_password)
    try:
        await connector.token()
        findings.append(
            Finding("credentials", True, f"a token for app {settings.app_id} from the token service")
        )
    except TeamsFailure as exc:
        findings.append(Finding("credentials", False, f"{exc} (check app_id, tenant_id and the password)"))
    verifier = BotFrameworkVerifier(settings)
    try:
        count = await verifier.load_keys()
        findings.append(Finding("keys", True, f"{count} signing key(s) from {settings.openid_metadata}"))
    except Unverified as exc:
        findings.append(Finding("keys", False, exc.why))
    if post and findings[0].ok:
        card = {
            "type": "AdaptiveCard",
            "version": "1.5",
            "body": [{"type": "TextBlock", "text": f"mcp-gate {config.name}: test card", "wrap": True}],
        }
        try:
            activity_id = await connector.post_card(settings.conversation, card)
            findings.append(Finding("conversation", True, f"posted a test card ({activity_id})"))
        except TeamsFailure as exc:
            findings.append(Finding("conversation", False, f"{settings.conversation}: {exc}"))
    if endpoint is not None:
        url = endpoint.rstrip("/")
        url = url if url.endswith(MESSAGES_PATH) else url + MESSAGES_PATH
        try:
            async with httpx2.AsyncClient(timeout=10.0) as client:
                response = await client.post(url, json={"type": "message"})
            ok = response.status_code == 401
            detail = (
                "answers, and refuses a request without a Bot Connector token"
                if ok
                else (f"answered HTTP {response.status_code}, expected 401 for a request without a token")
            )
            findings.append(Finding("endpoint", ok, f"{url}: {detail}"))
        except httpx2.HTTPError as exc:
            findings.append(Finding("endpoint", False, f"{url}: unreachable ({type(exc).__name__})"))
    return findings


def teams_check(config: GateConfig, environ: Mapping[str, str]) -> Finding:
    """One line for `mcp-gate check`: the Teams problem, or that Teams is fine (posts nothing)."""
    import anyio

    from mcp_gate.channels.teams import MESSAGES_PATH
    from mcp_gate.cli.slack import Finding

    findings = anyio.run(lambda: diagnose(config, environ, post=False))
    failed = [f for f in findings if not f.ok]
    if failed:
        return Finding("teams", False, "; ".join(f"{f.what}: {f.detail}" for f in failed))
    settings = _settings(config)
    host, port = settings.listen
    return Finding(
        "teams", True, f"credentials and keys work; messaging endpoint on {host}:{port}{MESSAGES_PATH}"
    )


def cmd_teams_test(args: argparse.Namespace) -> int:
    import anyio

    config = load_config_from_args(args)
    _settings(config)
    progress("checking Teams: credentials, signing keys, conversation, endpoint...")
    findings = anyio.run(lambda: diagnose(config, os.environ, post=not args.no_post, endpoint=args.endpoint))
    if args.json:
        say(json.dumps([asdict(f) for f in findings], indent=2))
    else:
        width = max(len(f.what) for f in findings)
        for f in findings:
            say(f"{'ok  ' if f.ok else 'FAIL'}  {f.what:<{width}}  {f.detail}")
    return EXIT_OK if all(f.ok for f in findings) else EXIT_FAILED


def add_commands(sub: Any) -> None:
    p = subcommand(sub, "teams", "the Microsoft Teams approval channel: test the set-up")
    teams_sub = p.add_subparsers(dest="teams_command", metavar="SUBCOMMAND", required=True)
    t = subcommand(
        teams_sub,
        "test",
        "post a test card and report what works and what is missing",
        "Check the bot's credentials (a token from the token service), the Bot Framework signing keys, "
        "the conversation (by posting a test card) and, with --endpoint, that the public messaging "
        "endpoint answers. Exits 1 if anything fails.",
    )
    add_config(t)
    t.add_argument("--json", action="store_true", help="print the findings as JSON")
    t.add_argument("--no-post", action="store_true", help="check without posting a test card")
    t.add_argument("--endpoint", metavar="URL", help="the public URL the Bot Connector posts to")
    t.set_defaults(func=cmd_teams_test)
