"""The approver's command line: pending, show, approve, deny, revoke, grants, over the API or the file."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from mcp_gate.cli._common import (
    EXIT_OK,
    add_config,
    api_url,
    load_config_from_args,
    progress,
    say,
    subcommand,
)
from mcp_gate.errors import ApiUnreachable, DecisionRefused, GateError, NoSuchRequest

if TYPE_CHECKING:
    from mcp_gate.config import GateConfig

__all__ = ["add_commands"]

# `pending` shows each request's (redacted) arguments on one line, capped like Slack's recent calls;
# `show` and `--json` give them whole.
PENDING_ARGS_CHARS = 160


# -- approvers: pending, show, approve, deny, revoke, grants --------------------------------


def _token(args: argparse.Namespace) -> str:
    """The approver's token: --token-file, else $MCP_GATE_TOKEN, else the identity provider's token
    `mcp-gate login` keeps (refreshed when due). Never a name typed here."""
    from mcp_gate.config import read_private_text

    if args.token_file is not None:
        path = Path(args.token_file)
        try:
            token = read_private_text(path, "token file").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise GateError(
                f"--token-file {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})"
            ) from exc
        if not token:
            raise GateError(f"--token-file {path}: the file is empty")
        return token
    token = os.environ.get("MCP_GATE_TOKEN", "").strip()
    if not token:
        try:
            config = load_config_from_args(args)
        except GateError:
            config = None
        if config is not None and config.identity is not None:
            from mcp_gate.cli.login import stored_access_token

            token = stored_access_token(config) or ""
    if not token:
        raise GateError(
            "no approver token: set MCP_GATE_TOKEN, pass --token-file PATH "
            "(`mcp-gate approvers token NAME` makes one), or run `mcp-gate login`"
        )
    return token


@dataclass(frozen=True)
class _Op:
    """One approver operation, as an API call and as the same call on a local Desk."""

    method: str
    path: str
    body: dict[str, Any] | None
    run: Callable[[Any, Any], Awaitable[Any]]  # (Desk, Approver) -> result or Refusal


def _perform(args: argparse.Namespace, op: _Op) -> Any:
    """Run an operation through the API or the gate's database, as --via and the config say."""
    import anyio

    token = _token(args)
    if args.api is not None:
        if args.via == "db":
            raise GateError("--api and --via db contradict each other; drop one")
        return _over_api(args.api, token, op)
    config = load_config_from_args(args)
    if args.via == "api" or (args.via == "auto" and config.admin is not None):
        if config.admin is None:
            raise GateError(f"--via api: {config.path} has no [admin] section; pass --api URL")
        url = api_url(config.admin.host, config.admin.port)
        try:
            return _over_api(url, token, op, connect_errors=args.via == "auto")
        except _NotListening:
            logging.getLogger("mcp_gate.cli").info("no approver API at %s; using the gate's database", url)
    return anyio.run(_over_db, config, token, op)


class _NotListening(Exception):
    pass


def _over_api(url: str, token: str, op: _Op, *, connect_errors: bool = False) -> Any:
    import httpx2

    base = url.rstrip("/")
    try:
        with httpx2.Client(
            headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30.0)
        ) as http:
            response = http.request(op.method, base + op.path, json=op.body)
    except httpx2.ConnectError as exc:
        if connect_errors:
            raise _NotListening from exc
        raise ApiUnreachable(f"cannot reach the approver API at {base}: {exc}") from exc
    except httpx2.HTTPError as exc:
        raise ApiUnreachable(f"the approver API at {base} failed: {exc}") from exc
    try:
        data = response.json()
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    match response.status_code:
        case 200 if isinstance(data, dict):
            return data
        case 401:
            raise GateError(f"the approver API at {base} refused the token: it is no approver's token")
        case 409:
            raise DecisionRefused(error or "refused")
        case 400 | 404 if error:
            raise GateError(error)
        case status:
            raise ApiUnreachable(
                f"the approver API at {base} answered {status}: {error or response.text[:200]}"
            )


async def _over_db(config: GateConfig, token: str, op: _Op) -> Any:
    from mcp_gate import runtime
    from mcp_gate.desk import Desk

    approver = config.approver_by_token(token)
    if approver is None and config.identity is not None:
        from mcp_gate.idp import TokenRefused, TokenVerifier
        from mcp_gate.oauth import Refused, approver_from

        try:
            verified = await TokenVerifier(config.identity, config_file=str(config.path)).check(token)
            approver = approver_from(verified, config.identity, config.approvers)
        except (TokenRefused, Refused) as exc:
            raise GateError(f"the identity provider's token is refused: {exc}") from exc
    if approver is None:
        raise GateError(f"the token is no approver's token in {config.path}")
    if not runtime.store_exists(config):
        where = runtime.store_where(config)
        raise GateError(f"{where}: no approval requests here yet (has the gate run with this config?)")
    async with runtime.open_engine(config) as engine:
        desk = Desk(
            engine, channel="cli", rules=config.redaction, approvers=config.approvers, links=config.console
        )
        try:
            result = await op.run(desk, approver)
        except NoSuchRequest as exc:
            raise GateError(str(exc)) from exc
    if isinstance(result, dict | list):
        return result
    raise DecisionRefused(result.why)


def _path_id(identifier: str) -> str:
    return quote(identifier.strip().upper(), safe="")


def _print_json(value: Any) -> None:
    say(json.dumps(value, indent=2, ensure_ascii=False))


def _in(seconds: int) -> str:
    return (
        f"{seconds // 60}m{seconds % 60:02d}s"
        if seconds < 3600
        else f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    )


def _capped(text: str, limit: int = PENDING_ARGS_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]} [cut {len(text) - limit} characters]"


def _requester(view: dict[str, Any]) -> str:
    return f"{view['requester']['agent']} for {view['requester']['owner']}"


def cmd_pending(args: argparse.Namespace) -> int:
    async def run(desk: Any, approver: Any) -> Any:
        return {"requests": await desk.open_requests()}

    requests = _perform(args, _Op("GET", "/requests", None, run))["requests"]
    if args.json:
        _print_json(requests)
        return EXIT_OK
    if not requests:
        say("no open requests")
        return EXIT_OK
    for r in requests:
        if r["state"] == "approved":
            status = f"approved ({r['quorum']}), runs when the agent calls again"
        else:
            status = r["quorum"]
        say(f"{r['id']}  {r['tier']:<8}  {r['name']}  {_requester(r)}")
        say(f"    {status}; expires in {_in(r['expires_in_seconds'])}; {r['reason']}")
        say(f"    args: {_capped(json.dumps(r['args'], ensure_ascii=False, sort_keys=True))}")
        if r.get("justification"):
            say(f"    requester says: {r['justification']}")
        if r.get("console_url"):
            say(f"    console: {r['console_url']}")
        _say_unattended(r, "    ")
    return EXIT_OK


def _say_unattended(view: dict[str, Any], indent: str) -> None:
    warning = (view.get("availability") or {}).get("warning")
    if warning:
        say(f"{indent}{warning}")


def cmd_show(args: argparse.Namespace) -> int:
    async def run(desk: Any, approver: Any) -> Any:
        return await desk.show(args.id)

    r = _perform(args, _Op("GET", f"/requests/{_path_id(args.id)}", None, run))
    if args.json:
        _print_json(r)
        return EXIT_OK
    groups = f" from {' or '.join(r['groups'])}" if r["groups"] else ""
    say(f"request {r['id']}: {r['state']}, {r['quorum']}")
    say(f"  tool:       {r['name']}")
    say(f"  requester:  {_requester(r)}")
    say(f"  tier:       {r['tier']} ({r['rule']}: {r['reason']})")
    say(f"  needs:      {r['required']} approval(s){groups}")
    if r.get("justification"):
        say(f"  requester's justification (their own words): {r['justification']}")
    say(f"  expires:    {r['expires_at']} (in {_in(r['expires_in_seconds'])})")
    for step in r.get("escalations") or []:
        say(
            f"  escalated:  {step['at']}, step {step.get('step', 1)} after {step['after']}, "
            f"to {', '.join(step['to_groups'])}"
        )
    _say_unattended(r, "  ")
    say("  arguments (redacted):")
    for line in json.dumps(r["args"], indent=2, ensure_ascii=False).splitlines():
        say(f"    {line}")
    say(f"  args_sha256:   {r['args_sha256']}")
    say(f"  pin:           {r['pin']}")
    say(f"  policy_sha256: {r['policy_sha256']}")
    say(f"  correlation:   {r['correlation_id']}")
    if r.get("console_url"):
        say(f"  console:       {r['console_url']}")
    say("  votes:" if r["votes"] else "  votes: none yet")
    for v in r["votes"]:
        note = f": {v['note']}" if v["note"] else ""
        say(f"    {v['at']}  {v['approver']} {v['verdict']}d via {v['channel']}{note}")
    calls = r.get("recent_calls") or []
    say(f"  recent calls by {r['requester']['agent']}:" if calls else "  recent calls: none")
    for c in calls:
        say(f"    {c['ts']}  {c['name']} {json.dumps(c['args'], ensure_ascii=False)[:200]}")
    return EXIT_OK


def _decided(args: argparse.Namespace, result: dict[str, Any]) -> int:
    from mcp_gate.desk import summarize

    if args.json:
        _print_json(result)
    else:
        say(summarize(result))
    return EXIT_OK


def cmd_approve(args: argparse.Namespace) -> int:
    from mcp_gate.approvals import parse_duration

    grant_for = None
    if args.grant_for is not None:
        try:
            grant_for = parse_duration(args.grant_for)
        except ValueError as exc:
            raise GateError(f"--for: {exc}") from exc

    async def run(desk: Any, approver: Any) -> Any:
        return await desk.approve(args.id, approver, note=args.note, grant_for=grant_for)

    body: dict[str, Any] = {}
    if args.note is not None:
        body["note"] = args.note
    if args.grant_for is not None:
        body["for"] = args.grant_for
    return _decided(args, _perform(args, _Op("POST", f"/requests/{_path_id(args.id)}/approve", body, run)))


def cmd_deny(args: argparse.Namespace) -> int:
    reason = args.reason.strip()
    if not reason:
        raise GateError("--reason: say why the call is denied; the agent is told")

    async def run(desk: Any, approver: Any) -> Any:
        return await desk.deny(args.id, approver, reason=reason)

    body = {"reason": reason}
    return _decided(args, _perform(args, _Op("POST", f"/requests/{_path_id(args.id)}/deny", body, run)))


def cmd_breakglass(args: argparse.Namespace) -> int:
    reason = args.reason.strip()
    if not reason:
        raise GateError("--reason: say why this call cannot wait for its approvals; every approver is told")

    async def run(desk: Any, operator: Any) -> Any:
        config = load_config_from_args(args)
        return await desk.break_glass(
            args.id, operator, reason=reason, settings=config.breakglass, approvers=config.approvers
        )

    body = {"reason": reason}
    op = _Op("POST", f"/requests/{_path_id(args.id)}/breakglass", body, run)
    result = _perform(args, op)
    if args.json:
        _print_json(result)
        return EXIT_OK
    request = result["request"]
    say(
        f"request {request['id']} ({request['name']}) released by break-glass: it runs once when "
        f"{request['requester']['agent']} calls again (or at once, if its call is still held)"
    )
    say(f"recorded as breakglass.used; told: {', '.join(result['notified']) or 'no other approver'}")
    return EXIT_OK


def _is_grant_id(identifier: str) -> bool:
    from mcp_gate.approvals import ID_LENGTH

    text = identifier.strip().upper()
    return text.startswith("G") and len(text) == ID_LENGTH + 1


def cmd_revoke(args: argparse.Namespace) -> int:
    if _is_grant_id(args.id):

        async def run_grant(desk: Any, approver: Any) -> Any:
            return await desk.revoke_grant(args.id, approver)

        op = _Op("POST", f"/grants/{_path_id(args.id)}/revoke", {}, run_grant)
    else:

        async def run(desk: Any, approver: Any) -> Any:
            return await desk.revoke(args.id, approver)

        op = _Op("POST", f"/requests/{_path_id(args.id)}/revoke", {}, run)
    return _decided(args, _perform(args, op))


def cmd_grants(args: argparse.Namespace) -> int:
    async def run(desk: Any, approver: Any) -> Any:
        return {"grants": await desk.grants(live_only=not args.all)}

    grants = _perform(args, _Op("GET", "/grants?all=true" if args.all else "/grants", None, run))["grants"]
    if args.json:
        _print_json(grants)
        return EXIT_OK
    if not grants:
        say("no live grants" if not args.all else "no grants")
        return EXIT_OK
    for g in grants:
        if g["revoked_by"] is not None:
            status = f"revoked by {g['revoked_by']}"
        elif not g["live"]:
            status = f"expired {g['expires_at']}"
        else:
            status = f"expires in {_in(g['expires_in_seconds'])}"
        say(f"{g['id']}  {g['name']}  {_requester(g)}  by {g['created_by']}  {status}")
    return EXIT_OK


_APPROVER_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


def _until(args: argparse.Namespace) -> datetime | None:
    """--until TIME or --for DURATION as a moment, or None (away until back)."""
    from mcp_gate.approvals import parse_duration

    if args.until is not None and args.away_for is not None:
        raise GateError("away: give --until or --for, not both")
    if args.away_for is not None:
        try:
            return datetime.now(UTC) + parse_duration(args.away_for)
        except ValueError as exc:
            raise GateError(f"away --for: {exc}") from exc
    if args.until is None:
        return None
    try:
        until = datetime.fromisoformat(args.until.replace("Z", "+00:00"))
    except ValueError as exc:
        raise GateError(f"away --until {args.until!r}: expected a time like 2026-12-08T09:00Z") from exc
    if until.tzinfo is None:
        raise GateError(f"away --until {args.until!r}: give a time zone, e.g. 2026-12-08T09:00Z")
    if until <= datetime.now(UTC):
        raise GateError(f"away --until {args.until}: that time has passed")
    return until


def cmd_away(args: argparse.Namespace) -> int:
    until = _until(args)
    note = args.note.strip() if args.note else None

    async def run(desk: Any, approver: Any) -> Any:
        return await desk.away(approver, until=until, note=note)

    body: dict[str, Any] = {"until": until.isoformat() if until else None, "note": note}
    result = _perform(args, _Op("POST", "/approvers/me/away", body, run))
    if args.json:
        _print_json(result)
        return EXIT_OK
    away = result["away"]
    when = f"until {away['until']}" if away["until"] else "until you run `mcp-gate back`"
    say(f"{away['approver']} is away {when}: notices go to the other approvers meanwhile")
    return EXIT_OK


def cmd_back(args: argparse.Namespace) -> int:
    async def run(desk: Any, approver: Any) -> Any:
        return await desk.back(approver)

    result = _perform(args, _Op("POST", "/approvers/me/back", {}, run))
    if args.json:
        _print_json(result)
        return EXIT_OK
    if result["outcome"] == "back":
        say(f"{result['approver']} is back: notices reach you again")
    else:
        say(f"{result['approver']} was not marked away")
    return EXIT_OK


def cmd_approvers_list(args: argparse.Namespace) -> int:
    async def run(desk: Any, approver: Any) -> Any:
        return {"approvers": await desk.approvers_view()}

    approvers = _perform(args, _Op("GET", "/approvers", None, run))["approvers"]
    if args.json:
        _print_json(approvers)
        return EXIT_OK
    for a in approvers:
        away = a["away"]
        state = "available" if away is None else f"away until {away['until'] or 'back'}"
        note = f" ({away['note']})" if away and away.get("note") else ""
        say(f"{a['name']:<20} {', '.join(a['groups']) or '(any request)':<30} {state}{note}")
    return EXIT_OK


def cmd_approvers_token(args: argparse.Namespace) -> int:
    name = args.name
    if not _APPROVER_NAME.fullmatch(name):
        raise GateError(f"approvers token: {name!r}: a name is 1-64 letters, digits, '_', '.', '@' or '-'")
    token = secrets.token_urlsafe(32)
    header = name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)
    progress(
        f"a new API token for approver {name}: give the first line to {name} (as $MCP_GATE_TOKEN or a "
        f"--token-file); it is shown only this once and stored nowhere. Put the second line under "
        f"[approvers.{header}] in gate.toml yourself (this command does not edit it) and restart the gate."
    )
    say(token)
    say(f'token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"')
    return EXIT_OK


def _add_approver(p: argparse.ArgumentParser, *, json_help: str | None = None) -> None:
    add_config(p)
    p.add_argument(
        "--token-file",
        metavar="PATH",
        help="read your approver token from PATH (default: $MCP_GATE_TOKEN); the token says who you are",
    )
    p.add_argument(
        "--via",
        choices=("auto", "api", "db"),
        default="auto",
        help="reach the gate through its approver API or its database file (default auto: the API if "
        "[admin] is configured and answering, else the database)",
    )
    p.add_argument("--api", metavar="URL", help="the approver API to use, e.g. http://127.0.0.1:8766/v1")
    p.add_argument("--json", action="store_true", help=json_help or "print the outcome as JSON")


def add_commands(sub: Any) -> None:
    p = subcommand(
        sub,
        "pending",
        "list the approval requests still open",
        "List open approval requests: id, tier, tool, requester, quorum progress, expiry and reason.",
    )
    _add_approver(p, json_help="print the requests as JSON")
    p.set_defaults(func=cmd_pending)

    p = subcommand(
        sub,
        "show",
        "show one approval request in full",
        "Show one approval request: the redacted arguments, hashes, rule, votes and the requester's "
        "recent calls.",
    )
    p.add_argument("id", metavar="ID", help="the request id, e.g. K7Q2M9XA")
    _add_approver(p, json_help="print the request as JSON")
    p.set_defaults(func=cmd_show)

    p = subcommand(
        sub,
        "approve",
        "approve a held call (or grant its tool for a while with --for)",
        "Approve one held call. It runs once, when enough approvers agree. With --for, also grant "
        "this tool to this requester for that long (never for critical calls).",
    )
    p.add_argument("id", metavar="ID", help="the request id, from `mcp-gate pending`")
    p.add_argument("--note", metavar="TEXT", help="a note recorded with your decision")
    p.add_argument(
        "--for", dest="grant_for", metavar="DURATION", help="also grant the tool for 90s, 30m, 2h or 1d"
    )
    _add_approver(p)
    p.set_defaults(func=cmd_approve)

    p = subcommand(
        sub,
        "deny",
        "deny a held call; the agent is told your reason",
        "Deny one held call. Any eligible approver's denial ends the request; the agent gets the reason.",
    )
    p.add_argument("id", metavar="ID", help="the request id, from `mcp-gate pending`")
    p.add_argument("--reason", metavar="TEXT", required=True, help="why (required; the agent is told)")
    _add_approver(p)
    p.set_defaults(func=cmd_deny)

    p = subcommand(
        sub,
        "revoke",
        "revoke an approval not yet executed, or a grant",
        "Revoke an approval request that has not run yet (ID), or a grant (GRANT_ID, starts with G).",
    )
    p.add_argument("id", metavar="ID", help="a request id, or a grant id from `mcp-gate grants`")
    _add_approver(p)
    p.set_defaults(func=cmd_revoke)

    p = subcommand(
        sub,
        "breakglass",
        "release one held call without its approvals (operators in [breakglass] groups only)",
        "Break glass: release one held call without waiting for its approvals, for a real emergency. "
        "Only members of the [breakglass] groups may, never on a request made for themselves, and only "
        "with a reason. It is recorded as breakglass.used, every approver of the tier is told on every "
        "channel, and `audit report` lists it first.",
    )
    p.add_argument("id", metavar="REQUEST_ID", help="the request id, from `mcp-gate pending`")
    p.add_argument(
        "--reason", metavar="TEXT", required=True, help="why (required; recorded and sent to approvers)"
    )
    _add_approver(p)
    p.set_defaults(func=cmd_breakglass)

    p = subcommand(sub, "grants", "list live grants", "List grants: tool, requester, who granted it, expiry.")
    p.add_argument("--all", action="store_true", help="include expired and revoked grants")
    _add_approver(p, json_help="print the grants as JSON")
    p.set_defaults(func=cmd_grants)

    p = subcommand(sub, "approvers", "manage approvers")
    approvers_sub = p.add_subparsers(dest="approvers_command", metavar="SUBCOMMAND", required=True)
    t = subcommand(
        approvers_sub,
        "token",
        "print a new API token for an approver and its token_sha256 line",
        "Print a new random API token (first line, shown once) and the token_sha256 line to put under "
        "[approvers.NAME] in gate.toml. It does not edit gate.toml; restart the gate after editing.",
    )
    t.add_argument("name", metavar="NAME", help="the approver's name in gate.toml")
    t.set_defaults(func=cmd_approvers_token)
    t = subcommand(
        approvers_sub,
        "list",
        "list the approvers, their groups, and who is away",
        "List every approver in gate.toml with their groups and whether they are marked away now.",
    )
    _add_approver(t, json_help="print the approvers as JSON")
    t.set_defaults(func=cmd_approvers_list)

    p = subcommand(
        sub,
        "away",
        "mark yourself away: notices go to the other approvers meanwhile",
        "Mark yourself away, until a time (--until), for a while (--for) or until `mcp-gate back`. "
        "Break-glass and escalation notices are not sent to you meanwhile, and a request whose every "
        "eligible approver is away says so (as does `mcp-gate check`). You may still decide requests.",
    )
    p.add_argument("--until", metavar="TIME", help="back at this time, e.g. 2026-12-08T09:00Z")
    p.add_argument("--for", dest="away_for", metavar="DURATION", help="away for 90m, 8h or 3d")
    p.add_argument("--note", metavar="TEXT", help="a note other approvers see, e.g. 'on leave'")
    _add_approver(p)
    p.set_defaults(func=cmd_away)

    p = subcommand(sub, "back", "mark yourself back", "End your away mark: notices reach you again.")
    _add_approver(p)
    p.set_defaults(func=cmd_back)
