"""The `mcp-gate` command: argument parsing and one function per command."""

from __future__ import annotations

import argparse
import functools
import hashlib
import ipaddress
import json
import logging
import os
import re
import secrets
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import anyio

from mcp_gate import __version__
from mcp_gate.config import GateConfig, load_config, read_client_config, resolve_config_path, servers_to_toml
from mcp_gate.errors import GateError, StoreError
from mcp_gate.evidence import render_story
from mcp_gate.gateway import SEPARATOR, Gateway, split_name
from mcp_gate.manifests import load_manifests
from mcp_gate.store import SQLiteStore, Tx, verify_file

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _config(args: argparse.Namespace) -> GateConfig:
    return load_config(resolve_config_path(args.config, os.environ, Path.cwd()), os.environ)


def _add_config(p: argparse.ArgumentParser, *, default: Any = None) -> None:
    p.add_argument(
        "--config",
        metavar="PATH",
        default=default,
        help="gate.toml to use (default: $MCP_GATE_CONFIG, else ./gate.toml)",
    )


def _say(text: str = "") -> None:
    print(text, flush=True)


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- serve ----------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from mcp_gate.channels.api import serve_api
    from mcp_gate.server import FrontServer

    config = _config(args)
    http = _host_port(args.http, "--http") if args.http else None
    if http is not None and not config.agents:
        raise GateError(
            f"{config.path}: agents: serving HTTP needs at least one [agents.NAME] with a token_sha256"
        )
    admin = _admin_address(args.admin, config)

    async def run() -> None:
        async with Gateway.open(config) as gate, anyio.create_task_group() as tg:
            front = FrontServer(gate)
            if admin is not None:
                host, port = admin
                bound = await tg.start(functools.partial(serve_api, gate, host, port))
                _progress(f"mcp-gate {config.name}: approver API on {_url(host, bound)}")
            if http is None:
                await front.serve_stdio()
                tg.cancel_scope.cancel()  # the agent hung up: stop the approver API too
                return
            host, port = http

            async def announce(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
                await front.serve_http(host, port, task_status=task_status)

            bound = await tg.start(announce)
            _progress(f"mcp-gate {config.name}: serving streamable HTTP on http://{host}:{bound}/mcp")

    anyio.run(run)
    return EXIT_OK


def _host_port(text: str, option: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise GateError(f"{option}: expected HOST:PORT such as 127.0.0.1:8765, got {text!r}")
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _admin_address(option: str | None, config: GateConfig) -> tuple[str, int] | None:
    """Where to serve the approvers' API: --admin, else [admin] listen, else nowhere."""
    if option is None:
        return None if config.admin is None else (config.admin.host, config.admin.port)
    host, port = _host_port(option, "--admin")
    if not _is_loopback(host) and not (config.admin is not None and config.admin.allow_remote):
        raise GateError(
            f"--admin: {host} is not a loopback address; the approver API listens on other addresses "
            f"only with [admin] allow_remote = true in {config.path}"
        )
    return host, port


def _url(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::"):  # listening everywhere: reach it on this machine
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return f"http://[{host}]:{port}/v1" if ":" in host else f"http://{host}:{port}/v1"


# -- check and tools ------------------------------------------------------------------------


def _inspect(config: GateConfig, *, timeout: float) -> dict[str, Any]:
    """Start the gate's downstreams once and describe servers and tools."""

    # Manifest errors are bad input: report them alone, before any progress about servers.
    load_manifests(config.manifests_dir, config.servers.keys(), required=config.manifests_required)

    async def run() -> dict[str, Any]:
        names = ", ".join(config.servers) or "none"
        _progress(f"connecting to {len(config.servers)} server(s): {names} (up to {timeout:.0f}s)...")
        async with Gateway.open(config, startup_timeout=timeout) as gate:
            servers = [
                {
                    "name": ds.name,
                    "state": ds.state,
                    "transport": ds.spec.transport,
                    "protocol": ds.protocol_version,
                    "error": ds.last_error,
                    "manifest": str(gate.manifests[ds.name].path) if ds.name in gate.manifests else None,
                }
                for ds in gate.downstreams
            ]
            tools = [
                {
                    "name": t.name,
                    "server": t.server,
                    "tier": t.decision.tier,
                    "conditional": t.decision.conditional,
                    "rule": t.decision.rule,
                    "reason": t.decision.reason,
                    "pin": t.pin,
                    "quarantined": t.quarantined,
                    "listed": t.decision.tier != "blocked",
                }
                for t in sorted(gate.offered.values(), key=lambda t: t.name)
            ]
            return {
                "gate": config.name,
                "policy_sha256": gate.policy_sha256,
                "servers": servers,
                "tools": tools,
            }

    return anyio.run(run)


def _print_tools(tools: list[dict[str, Any]]) -> None:
    if not tools:
        _say("  (no tools)")
        return
    width = max(len(t["name"]) for t in tools)
    for t in tools:
        tier = t["tier"] + ("*" if t["conditional"] else "")
        flags = "  QUARANTINED" if t["quarantined"] else ""
        if not t["listed"]:
            flags += "  (not listed to agents)"
        _say(f"  {t['name']:<{width}}  {tier:<9} {t['pin'][:12]}  {t['rule']}: {t['reason']}{flags}")
    if any(t["conditional"] for t in tools):
        _say("  * a rule with argument conditions may give a different tier for some arguments")


def cmd_check(args: argparse.Namespace) -> int:
    config = _config(args)
    report = _inspect(config, timeout=args.timeout)
    if args.json:
        _say(json.dumps(report, indent=2))
    else:
        _say(f"config {config.path}: ok (gate {config.name!r}, policy {report['policy_sha256'][:12]})")
        for s in report["servers"]:
            status = "up" if s["state"] == "up" else s["state"].upper()
            if s["state"] == "up" and s["protocol"]:
                status += f" ({s['protocol']})"
            elif s["error"] and s["state"] != "up":
                status += f": {' '.join(str(s['error']).split())}"
            manifest = f"manifest {s['manifest']}" if s["manifest"] else "no manifest: every tool is high"
            _say(f"server {s['name']}: {status}; {manifest}")
        _say("tools (name, tier, pin, rule: reason):")
        _print_tools(report["tools"])
    failed = [s for s in report["servers"] if s["state"] not in ("up", "disabled")]
    return EXIT_FAILED if failed else EXIT_OK


def cmd_tools(args: argparse.Namespace) -> int:
    if args.tools_command == "accept":
        return cmd_tools_accept(args)
    config = _config(args)
    report = _inspect(config, timeout=args.timeout)
    if args.json:
        _say(json.dumps(report["tools"], indent=2))
    else:
        _print_tools(report["tools"])
    return EXIT_OK


def cmd_tools_accept(args: argparse.Namespace) -> int:
    config = _config(args)
    split = split_name(args.name)
    if split is None or split[0] not in config.servers:
        raise GateError(f"tools accept: {args.name!r} is not SERVER{SEPARATOR}TOOL for a configured server")
    server, tool = split
    db = config.data_dir / "gate.db"
    if not db.exists():
        raise GateError(f"tools accept: {db}: no pins here yet (has the gate run with this config?)")

    async def run() -> str:
        from mcp_gate.clock import SystemClock, utc_iso
        from mcp_gate.evidence import new_event

        async with await SQLiteStore.open(db) as store:
            pin = await store.get_pin(server, tool)
            if pin is None or pin.drifted_pin is None:
                raise GateError(f"tools accept: {args.name} has no changed definition waiting to be accepted")
            event = new_event(
                "tool.accepted",
                ts=utc_iso(SystemClock().now()),
                correlation_id=None,
                gate={"name": config.name, "version": __version__},
                server=server,
                tool=tool,
                pin=pin.drifted_pin,
                previous_pin=pin.pin,
                accepted_by=os.environ.get("USER", "unknown"),
            )
            accepted = await store.accept_drift(server, tool, events=[event])
            return accepted.pin

    pin = anyio.run(run)
    _say(f"accepted {args.name}: pin {pin[:12]} is now trusted")
    return EXIT_OK


# -- import ---------------------------------------------------------------------------------


def cmd_import(args: argparse.Namespace) -> int:
    # ${...} references stay references: gate.toml resolves them when it loads, so a secret in
    # this shell's environment is never printed.
    servers = read_client_config(Path(args.path), os.environ, keep_references=True)
    _say(f"# servers from {args.path}; paste into gate.toml")
    _say(servers_to_toml(servers, references=True))
    return EXIT_OK


# -- audit ----------------------------------------------------------------------------------


def cmd_audit(args: argparse.Namespace) -> int:
    config = _config(args)
    db = config.data_dir / "gate.db"
    if not db.exists():
        raise GateError(f"{db}: no evidence log here yet (has the gate run with this config?)")

    async def verify() -> int:
        _progress(f"verifying {db}...")
        report = await verify_file(db)  # read-only: verifying never changes what it verifies
        if args.json:
            _say(json.dumps(report.__dict__))
        elif report.ok:
            _say(f"ok: {report.records} records, chain intact, head {report.head_hash[:16]}")
        else:
            _say(f"TAMPERED: {report.problem}")
        return EXIT_OK if report.ok else EXIT_FAILED

    async def show() -> int:
        async with await SQLiteStore.open(db) as store:
            records = await store.records(correlation_id=args.correlation_id)
            # A call that joined an approval request made by an earlier identical call: its
            # story includes that request's records (who was asked, who decided).
            linked = {r.body["request_id"] for r in records if isinstance(r.body.get("request_id"), str)}
            for request_id in sorted(linked):
                request = await store.read(functools.partial(Tx.get_request, request_id=request_id))
                if request is not None and request.correlation_id != args.correlation_id:
                    records += await store.records(correlation_id=request.correlation_id)
        records = sorted({r.seq: r for r in records}.values(), key=lambda r: r.seq)
        if not records:
            raise GateError(f"audit show: no records with correlation id {args.correlation_id!r}")
        if args.json:
            _say(json.dumps([dict(r.body) for r in records], indent=2))
        else:
            _say(render_story(records))
        return EXIT_OK

    return anyio.run(verify if args.audit_command == "verify" else show)


# -- approvers: pending, show, approve, deny, revoke, grants --------------------------------


class Refused(GateError):
    """The gate refused a decision (self-approval, not eligible, expired, ...): exit 1."""


class Unreachable(GateError):
    """The approver API could not be reached or answered unexpectedly: exit 1."""


def _token(args: argparse.Namespace) -> str:
    """The approver's token: --token-file, else $MCP_GATE_TOKEN. Never a name typed here."""
    if args.token_file is not None:
        path = Path(args.token_file)
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise GateError(
                f"--token-file {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})"
            ) from exc
        if not token:
            raise GateError(f"--token-file {path}: the file is empty")
        return token
    token = os.environ.get("MCP_GATE_TOKEN", "").strip()
    if not token:
        raise GateError(
            "no approver token: set MCP_GATE_TOKEN or pass --token-file PATH "
            "(`mcp-gate approvers token NAME` makes one)"
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
    token = _token(args)
    if args.api is not None:
        if args.via == "db":
            raise GateError("--api and --via db contradict each other; drop one")
        return _over_api(args.api, token, op)
    config = _config(args)
    if args.via == "api" or (args.via == "auto" and config.admin is not None):
        if config.admin is None:
            raise GateError(f"--via api: {config.path} has no [admin] section; pass --api URL")
        url = _url(config.admin.host, config.admin.port)
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
        raise Unreachable(f"cannot reach the approver API at {base}: {exc}") from exc
    except httpx2.HTTPError as exc:
        raise Unreachable(f"the approver API at {base} failed: {exc}") from exc
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
            raise Refused(error or "refused")
        case 400 | 404 if error:
            raise GateError(error)
        case status:
            raise Unreachable(f"the approver API at {base} answered {status}: {error or response.text[:200]}")


async def _over_db(config: GateConfig, token: str, op: _Op) -> Any:
    from mcp_gate.channels.api import Desk
    from mcp_gate.clock import SystemClock
    from mcp_gate.evidence import EventFactory
    from mcp_gate.holds import ApprovalEngine, NoSuchRequest
    from mcp_gate.policy import policy_sha256

    approver = config.approver_by_token(token)
    if approver is None:
        raise GateError(f"the token is no approver's token in {config.path}")
    db = config.data_dir / "gate.db"
    if not db.exists():
        raise GateError(f"{db}: no approval requests here yet (has the gate run with this config?)")
    manifests = load_manifests(
        config.manifests_dir, config.servers.keys(), required=config.manifests_required
    )
    clock = SystemClock()
    # The same policy hash the gate computes, so the decisions recorded here match its records.
    events = EventFactory(config.name, __version__, policy_sha256(config.config_sha256, manifests), clock)
    async with await SQLiteStore.open(db) as store:
        desk = Desk(ApprovalEngine(store, clock, config.approval_settings, events), channel="cli")
        try:
            result = await op.run(desk, approver)
        except NoSuchRequest as exc:
            raise GateError(str(exc)) from exc
    if isinstance(result, dict | list):
        return result
    raise Refused(result.why)


def _path_id(identifier: str) -> str:
    return quote(identifier.strip().upper(), safe="")


def _print_json(value: Any) -> None:
    _say(json.dumps(value, indent=2, ensure_ascii=False))


def _in(seconds: int) -> str:
    return (
        f"{seconds // 60}m{seconds % 60:02d}s"
        if seconds < 3600
        else f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    )


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
        _say("no open requests")
        return EXIT_OK
    for r in requests:
        if r["state"] == "approved":
            status = f"approved ({r['quorum']}), runs when the agent calls again"
        else:
            status = r["quorum"]
        _say(f"{r['id']}  {r['tier']:<8}  {r['name']}  {_requester(r)}")
        _say(f"    {status}; expires in {_in(r['expires_in_seconds'])}; {r['reason']}")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    async def run(desk: Any, approver: Any) -> Any:
        return await desk.show(args.id)

    r = _perform(args, _Op("GET", f"/requests/{_path_id(args.id)}", None, run))
    if args.json:
        _print_json(r)
        return EXIT_OK
    groups = f" from {' or '.join(r['groups'])}" if r["groups"] else ""
    _say(f"request {r['id']}: {r['state']}, {r['quorum']}")
    _say(f"  tool:       {r['name']}")
    _say(f"  requester:  {_requester(r)}")
    _say(f"  tier:       {r['tier']} ({r['rule']}: {r['reason']})")
    _say(f"  needs:      {r['required']} approval(s){groups}")
    _say(f"  expires:    {r['expires_at']} (in {_in(r['expires_in_seconds'])})")
    _say("  arguments (redacted):")
    for line in json.dumps(r["args"], indent=2, ensure_ascii=False).splitlines():
        _say(f"    {line}")
    _say(f"  args_sha256:   {r['args_sha256']}")
    _say(f"  pin:           {r['pin']}")
    _say(f"  policy_sha256: {r['policy_sha256']}")
    _say(f"  correlation:   {r['correlation_id']}")
    _say("  votes:" if r["votes"] else "  votes: none yet")
    for v in r["votes"]:
        note = f": {v['note']}" if v["note"] else ""
        _say(f"    {v['at']}  {v['approver']} {v['verdict']}d via {v['channel']}{note}")
    calls = r.get("recent_calls") or []
    _say(f"  recent calls by {r['requester']['agent']}:" if calls else "  recent calls: none")
    for c in calls:
        _say(f"    {c['ts']}  {c['name']} {json.dumps(c['args'], ensure_ascii=False)[:200]}")
    return EXIT_OK


def _decided(args: argparse.Namespace, result: dict[str, Any]) -> int:
    from mcp_gate.channels.api import summarize

    if args.json:
        _print_json(result)
    else:
        _say(summarize(result))
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
        _say("no live grants" if not args.all else "no grants")
        return EXIT_OK
    for g in grants:
        if g["revoked_by"] is not None:
            status = f"revoked by {g['revoked_by']}"
        elif not g["live"]:
            status = f"expired {g['expires_at']}"
        else:
            status = f"expires in {_in(g['expires_in_seconds'])}"
        _say(f"{g['id']}  {g['name']}  {_requester(g)}  by {g['created_by']}  {status}")
    return EXIT_OK


_APPROVER_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


def cmd_approvers_token(args: argparse.Namespace) -> int:
    name = args.name
    if not _APPROVER_NAME.fullmatch(name):
        raise GateError(f"approvers token: {name!r}: a name is 1-64 letters, digits, '_', '.', '@' or '-'")
    token = secrets.token_urlsafe(32)
    header = name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)
    _progress(
        f"a new API token for approver {name}: give the first line to {name} (as $MCP_GATE_TOKEN or a "
        f"--token-file); it is shown only this once and stored nowhere. Put the second line under "
        f"[approvers.{header}] in gate.toml yourself (this command does not edit it) and restart the gate."
    )
    _say(token)
    _say(f'token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"')
    return EXIT_OK


# -- demo -----------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from mcp_gate.demo import run_demo

    return run_demo(keep=args.keep)


# -- parser ---------------------------------------------------------------------------------


_EXAMPLES = """\
examples:
  mcp-gate import ~/.config/Claude/claude_desktop_config.json >> gate.toml
  mcp-gate check --config gate.toml
  mcp-gate serve --config gate.toml
  mcp-gate tools accept notes__read_note
  MCP_GATE_TOKEN=... mcp-gate pending
  MCP_GATE_TOKEN=... mcp-gate approve K7Q2M9XA --note "checked the diff"
  mcp-gate audit verify
  mcp-gate demo

exit status: 0 ok, 1 a check failed (server down, evidence tampered, decision refused), 2 bad input
"""


def _sub(sub: Any, name: str, summary: str, description: str | None = None) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=summary, description=description or summary)
    return parser


def _add_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the servers to start (default 30)",
    )


def _add_approver(p: argparse.ArgumentParser, *, json_help: str | None = None) -> None:
    _add_config(p)
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


def _add_approver_commands(sub: Any) -> None:
    p = _sub(
        sub,
        "pending",
        "list the approval requests still open",
        "List open approval requests: id, tier, tool, requester, quorum progress, expiry and reason.",
    )
    _add_approver(p, json_help="print the requests as JSON")
    p.set_defaults(func=cmd_pending)

    p = _sub(
        sub,
        "show",
        "show one approval request in full",
        "Show one approval request: the redacted arguments, hashes, rule, votes and the requester's "
        "recent calls.",
    )
    p.add_argument("id", metavar="ID", help="the request id, e.g. K7Q2M9XA")
    _add_approver(p, json_help="print the request as JSON")
    p.set_defaults(func=cmd_show)

    p = _sub(
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

    p = _sub(
        sub,
        "deny",
        "deny a held call; the agent is told your reason",
        "Deny one held call. Any eligible approver's denial ends the request; the agent gets the reason.",
    )
    p.add_argument("id", metavar="ID", help="the request id, from `mcp-gate pending`")
    p.add_argument("--reason", metavar="TEXT", required=True, help="why (required; the agent is told)")
    _add_approver(p)
    p.set_defaults(func=cmd_deny)

    p = _sub(
        sub,
        "revoke",
        "revoke an approval not yet executed, or a grant",
        "Revoke an approval request that has not run yet (ID), or a grant (GRANT_ID, starts with G).",
    )
    p.add_argument("id", metavar="ID", help="a request id, or a grant id from `mcp-gate grants`")
    _add_approver(p)
    p.set_defaults(func=cmd_revoke)

    p = _sub(sub, "grants", "list live grants", "List grants: tool, requester, who granted it, expiry.")
    p.add_argument("--all", action="store_true", help="include expired and revoked grants")
    _add_approver(p, json_help="print the grants as JSON")
    p.set_defaults(func=cmd_grants)

    p = _sub(sub, "approvers", "manage approvers")
    approvers_sub = p.add_subparsers(dest="approvers_command", metavar="SUBCOMMAND", required=True)
    t = _sub(
        approvers_sub,
        "token",
        "print a new API token for an approver and its token_sha256 line",
        "Print a new random API token (first line, shown once) and the token_sha256 line to put under "
        "[approvers.NAME] in gate.toml. It does not edit gate.toml; restart the gate after editing.",
    )
    t.add_argument("name", metavar="NAME", help="the approver's name in gate.toml")
    t.set_defaults(func=cmd_approvers_token)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcp-gate",
        description="An MCP server that guards what AI agents do: agents connect to the gate, the gate "
        "connects to their tool servers, tiers every tool, and records every call as evidence.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mcp-gate {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _sub(
        sub,
        "serve",
        "serve agents over stdio (default) or streamable HTTP",
        "Serve agents over stdio (default) or streamable HTTP. Logs go to stderr; in stdio mode "
        "stdout carries only MCP messages.",
    )
    _add_config(p)
    p.add_argument("--http", metavar="HOST:PORT", help="serve streamable HTTP on HOST:PORT instead of stdio")
    p.add_argument(
        "--admin",
        metavar="HOST:PORT",
        help="also serve the approvers' HTTP API on HOST:PORT (loopback only unless [admin] "
        "allow_remote = true; default: [admin] listen, else off)",
    )
    p.set_defaults(func=cmd_serve)

    p = _sub(
        sub,
        "check",
        "validate config and manifests, start the servers, list every tool",
        "Validate the config and manifests, start every server once and list each tool with its "
        "tier, pin and rule. Exits 1 if a server does not start.",
    )
    _add_config(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_timeout(p)
    p.set_defaults(func=cmd_check)

    p = _sub(
        sub,
        "tools",
        "list the tools the gate offers, with tier, rule and pin",
        "List the tools the gate offers, with tier, rule and pin; `tools accept` trusts a changed one.",
    )
    _add_config(p)
    p.add_argument("--json", action="store_true", help="print the tools as JSON")
    _add_timeout(p)
    p.set_defaults(func=cmd_tools, tools_command=None)
    tools_sub = p.add_subparsers(dest="tools_command", metavar="SUBCOMMAND")
    a = _sub(
        tools_sub,
        "accept",
        "trust the changed definition of a quarantined tool",
        "Trust the changed definition of a quarantined tool (after reviewing it) so agents can call "
        "it again. Recorded as a tool.accepted event.",
    )
    _add_config(a, default=argparse.SUPPRESS)
    a.add_argument("name", metavar="SERVER__TOOL", help="the quarantined tool, e.g. notes__read_note")
    a.set_defaults(func=cmd_tools)

    p = _sub(
        sub,
        "import",
        "print [servers.*] tables for an mcpServers / VS Code servers JSON file",
        "Print gate.toml [servers.*] tables for the servers of a client config (Claude Desktop, "
        "Claude Code, Cursor, VS Code; comments allowed).",
    )
    p.add_argument(
        "path", metavar="PATH", help="claude_desktop_config.json, .mcp.json, .vscode/mcp.json, ..."
    )
    p.set_defaults(func=cmd_import)

    p = _sub(sub, "audit", "verify the evidence log or show one call's story")
    audit_sub = p.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)
    v = _sub(
        audit_sub,
        "verify",
        "check the hash chain and gapless sequence (exit 1 if tampered)",
        "Check the evidence log's hash chain and gapless sequence. Exits 1 and names the first bad "
        "record if anything was edited, deleted, inserted or reordered.",
    )
    _add_config(v)
    v.add_argument("--json", action="store_true", help="print the result as JSON")
    v.set_defaults(func=cmd_audit)
    s = _sub(
        audit_sub,
        "show",
        "print every record of one call",
        "Print every record of one call: requested, decided, executed / failed / refused.",
    )
    _add_config(s)
    s.add_argument(
        "correlation_id",
        metavar="CORRELATION_ID",
        help="the call's id, from a refused call's error result or `audit show --json`",
    )
    s.add_argument("--json", action="store_true", help="print the records as JSON")
    s.set_defaults(func=cmd_audit)

    _add_approver_commands(sub)

    p = _sub(
        sub,
        "demo",
        "run the guided demo against the example notes server",
        "A scripted agent drives a real gate in front of the example notes server (about 10 s).",
    )
    p.add_argument("--keep", action="store_true", help="keep the demo's temporary directory")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO if args.verbose else logging.WARNING,
        format="mcp-gate %(levelname)s %(name)s: %(message)s",
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        code = func(args)
    except Refused as exc:
        print(f"mcp-gate: refused: {exc}", file=sys.stderr)
        code = EXIT_FAILED
    except GateError as exc:
        print(f"mcp-gate: error: {exc}", file=sys.stderr)
        code = EXIT_FAILED if isinstance(exc, StoreError | Unreachable) else EXIT_USAGE
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
