"""The `mcp-gate` command: argument parsing and one function per command."""

from __future__ import annotations

import argparse
import errno
import functools
import ipaddress
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import anyio

from mcp_gate import __version__
from mcp_gate.approvals import ApprovalRequest
from mcp_gate.config import GateConfig, load_config, read_client_config, resolve_config_path, servers_to_toml
from mcp_gate.datadir import gate_db
from mcp_gate.errors import GateError, StoreError
from mcp_gate.evidence import render_story
from mcp_gate.gateway import SEPARATOR, Gateway, split_name
from mcp_gate.manifests import load_manifests
from mcp_gate.policy import Approvals
from mcp_gate.storage import open_store, verify_file
from mcp_gate.storage.base import Tx

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
    # Fail closed before any server starts: a gate whose approvers' API cannot listen would hold
    # calls nobody can decide, and a second gate on a taken --http port serves nothing.
    if admin is not None:
        where = "--admin" if args.admin is not None else f"[admin] listen in {config.path}"
        _ensure_free(
            admin,
            f"the approver API address {_hp(admin)} ({where}) is already in use "
            f"(another gate?): stop it, or set [admin] listen (or --admin) to a free port",
        )
    if http is not None:
        _ensure_free(
            http, f"--http {_hp(http)} is already in use (another gate?): stop it, or choose a free port"
        )
    for option, address in (("--http", http), ("--admin", admin)):
        if address is not None and not _is_loopback(address[0]):
            allowed = ", ".join(config.http.allowed_hosts) or "none yet"
            _progress(
                f"warning: {option} {address[0]} is not a loopback address: other machines can reach it; "
                f"requests must name a loopback host or one of [http] allowed_hosts ({allowed})"
            )
    slack_secrets = None
    if config.slack is not None:  # read the tokens now: a missing one is a one-line error, not a crash
        from mcp_gate.channels.slack import SlackChannel, SlackSecrets

        slack_secrets = SlackSecrets.read(config, os.environ)

    async def run() -> None:
        async with Gateway.open(config) as gate, anyio.create_task_group() as tg:
            front = FrontServer(gate)
            if slack_secrets is not None:
                slack_port = await tg.start(SlackChannel(gate, slack_secrets).run)
                where = f"interactions on port {slack_port}" if slack_port is not None else "Socket Mode"
                _progress(f"mcp-gate {config.name}: Slack approvals ({where})")
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

    try:
        anyio.run(run)
    except BaseExceptionGroup as group:  # a listener that failed after all: its one line, not a traceback
        errors = _leaves(group)
        if len(errors) == 1 and isinstance(errors[0], GateError):
            raise errors[0] from None
        raise
    return EXIT_OK


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves


def _hp(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ensure_free(address: tuple[str, int], taken: str) -> None:
    """Raise GateError(`taken`) when something already listens on `address` (port 0 is always free)."""
    host, port = address
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the real listener does
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise GateError(taken) from exc
            raise GateError(f"cannot listen on {_hp(address)}: {exc.strerror or exc}") from exc


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
    from mcp_gate.notary import notary_for

    notary_for(config)  # so is a signing key others can read

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
                    "copy_command": None
                    if ds.name in gate.manifests
                    else _copy_command(ds.name, ds.spec.command, ds.spec.args, config.manifests_dir),
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
                    "new": t.quarantined and t.accepted is not None and t.accepted.new,
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
        flags = ("  QUARANTINED (new)" if t.get("new") else "  QUARANTINED") if t["quarantined"] else ""
        if not t["listed"]:
            flags += "  (not listed to agents)"
        _say(f"  {t['name']:<{width}}  {tier:<9} {t['pin'][:12]}  {t['rule']}: {t['reason']}{flags}")
    if any(t["conditional"] for t in tools):
        _say("  * a rule with argument conditions may give a different tier for some arguments")


def _approval_problems(config: GateConfig) -> list[str]:
    """Tiers whose approvals could never all be given for some requester (nobody approves their
    own calls): their calls would wait and expire."""
    owners = sorted({config.requester.owner, *(a.owner for a in config.agents.values())})
    problems = []
    for tier, requirement in config.requirements.items():
        if not isinstance(requirement, Approvals):
            continue
        groups = set(requirement.groups)
        for owner in owners:
            eligible = [
                a
                for a in config.approvers.values()
                if (not groups or a.groups & groups) and owner.strip().lower() not in a.identities()
            ]
            if len(eligible) < requirement.count:
                problems.append(_approval_problem(tier, requirement, owner, len(eligible)))
    return problems


def _approval_problem(tier: str, requirement: Approvals, owner: str, eligible: int) -> str:
    """Who is missing, in plain words, and what to add."""
    groups = ", ".join(f'"{g}"' for g in requirement.groups)
    add = "an [approvers.NAME] with a token_sha256 (or a Slack user)"
    if requirement.groups:
        add += f" and groups = [{groups}]"
    owner_note = f"; approvers never decide calls made for their own owner ({owner})"
    if eligible == 0:
        return (
            f"no approver may decide {tier} calls made for {owner}, of any server{owner_note}: "
            f"add {add}, or those calls wait and expire"
        )
    missing = requirement.count - eligible
    return (
        f"{tier} calls need {requirement.count} distinct approvers but only {eligible} may decide calls "
        f"made for {owner}{owner_note}: add {missing} more, each {add}, or those calls wait and expire"
    )


def cmd_check(args: argparse.Namespace) -> int:
    config = _config(args)
    report = _inspect(config, timeout=args.timeout)
    report["approval_problems"] = _approval_problems(config)
    report["missed_checkpoint_copies"] = _missed_copies(config)
    report["checkpoint_warnings"] = _checkpoint_warnings(config)
    if config.slack is not None:
        from dataclasses import asdict

        from mcp_gate.channels.slack_cli import slack_check

        report["slack"] = asdict(slack_check(config, os.environ))
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
            if s["copy_command"]:
                manifest += f"; a shipped manifest fits, copy it with: {s['copy_command']}"
            _say(f"server {s['name']}: {status}; {manifest}")
        for problem in report["approval_problems"]:
            _say(f"approvals: {problem}")
        for missed in report["missed_checkpoint_copies"]:
            _say(f"checkpoints: a copy was missed: {missed}")
        for warning in report["checkpoint_warnings"]:
            _say(f"checkpoints: {warning}")
        if "slack" in report:
            _say(f"slack: {'ok' if report['slack']['ok'] else 'PROBLEM'}: {report['slack']['detail']}")
        _say("tools (name, tier, pin, rule: reason):")
        _print_tools(report["tools"])
    failed = [s for s in report["servers"] if s["state"] not in ("up", "disabled")]
    if "slack" in report and not report["slack"]["ok"]:
        return EXIT_FAILED
    return EXIT_FAILED if failed else EXIT_OK


def _missed_copies(config: GateConfig) -> list[str]:
    from mcp_gate.audit_cli import missed_copies

    return missed_copies(config)


def _checkpoint_warnings(config: GateConfig) -> list[str]:
    from mcp_gate.audit_cli import checkpoint_warnings

    return checkpoint_warnings(config)


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
    db = gate_db(config.data_dir)
    if not db.exists():
        raise GateError(f"tools accept: {db}: no pins here yet (has the gate run with this config?)")

    async def run() -> str:
        from mcp_gate.clock import SystemClock, utc_iso
        from mcp_gate.evidence import new_event

        async with await open_store(db) as store:
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
                previous_pin=None if pin.new else pin.pin,
                accepted_by=os.environ.get("USER", "unknown"),
            )
            accepted = await store.accept_drift(server, tool, events=[event])
            return accepted.pin

    pin = anyio.run(run)
    _say(f"accepted {args.name}: pin {pin[:12]} is now trusted")
    return EXIT_OK


# -- manifests ----------------------------------------------------------------------------


def _copy_command(server: str, command: str | None, args: Sequence[str], directory: Path) -> str | None:
    """The `mcp-gate manifests copy ...` line for the shipped manifest that fits this server, if one does."""
    import shlex

    from mcp_gate.manifests import shipped_for

    shipped = shipped_for(command, args)
    if shipped is None:
        return None
    line = f"mcp-gate manifests copy {shipped.name} --to {shlex.quote(str(directory))}"
    if server != shipped.manifest.server:
        line += f" --server {shlex.quote(server)}"
    return line


def cmd_manifests(args: argparse.Namespace) -> int:
    from mcp_gate.manifests import copy_shipped, shipped_manifests

    if args.manifests_command == "copy":
        target = copy_shipped(args.name, Path(args.to), server=args.server, force=args.force)
        _say(f"wrote {target}")
        return EXIT_OK
    shipped = shipped_manifests()
    rows = [
        {
            "name": s.name,
            "server": s.manifest.server,
            "packages": list(s.manifest.packages),
            "tools": sorted({t for rule in s.manifest.rules for t in rule.tools}),
            "default": s.manifest.default,
        }
        for s in shipped.values()
    ]
    if args.json:
        _say(json.dumps(rows, indent=2))
        return EXIT_OK
    width = max((len(r["name"]) for r in rows), default=0)
    for r in rows:
        _say(
            f"{r['name']:<{width}}  for {', '.join(r['packages']) or '(any)'}; {len(r['tools'])} tool name(s)"
        )
    _say("copy one into your manifests folder: mcp-gate manifests copy NAME [--to DIR] [--server NAME]")
    return EXIT_OK


# -- import ---------------------------------------------------------------------------------


def cmd_import(args: argparse.Namespace) -> int:
    # ${...} references stay references: gate.toml resolves them when it loads, so a secret in
    # this shell's environment is never printed.
    servers = read_client_config(Path(args.path), os.environ, keep_references=True)
    _say(f"# servers from {args.path}; paste into gate.toml")
    _say(servers_to_toml(servers, references=True))
    for hint in _import_hints(servers, _existing_config(args)):
        _progress(f"hint: {hint}")
    return EXIT_OK


def _existing_config(args: argparse.Namespace) -> GateConfig | None:
    """The gate.toml the imported servers go into, when there is one that loads."""
    path = resolve_config_path(args.config, os.environ, Path.cwd())
    if not path.exists():
        return None
    try:
        return load_config(path, os.environ)
    except GateError:
        return None  # import works without a gate.toml; `check` reports what is wrong with it


def _import_hints(servers: dict[str, Any], config: GateConfig | None) -> list[str]:
    """What a new user has still to do after pasting the tables: one line each, on stderr."""
    import shutil

    hints = []
    manifests_dir = config.manifests_dir if config is not None else Path.cwd() / "tool_manifests"
    try:
        known = {*servers, *(config.servers if config is not None else ())}
        have = set(load_manifests(manifests_dir, known, required=False))
    except GateError:
        have = set()  # `check` reports a bad manifest; here it only means "no usable manifest"
    for name, spec in servers.items():
        if spec.command is not None and "${" not in spec.command and shutil.which(spec.command) is None:
            hints.append(
                f"server {name}: {spec.command!r} is not on PATH; install it, "
                "or the gate cannot start this server"
            )
        if name in have:
            continue
        copy = _copy_command(name, spec.command, spec.args, manifests_dir)
        if copy is not None:
            hints.append(
                f"server {name} has no manifest, so every tool will be high; a shipped manifest fits: {copy}"
            )
        else:
            hints.append(
                f"server {name} has no manifest, so every tool will be high; write "
                f"{manifests_dir / (name + '.toml')} (see `mcp-gate manifests list` for examples)"
            )
    if config is None or config.requester.owner == "unknown":
        hints.append(
            "set [requester] agent and owner in gate.toml (owner: the person the agent acts for, "
            "who may not approve its calls)"
        )
    if config is None or not config.approvers:
        hints.append(
            "add an [approvers.NAME] with a token_sha256 (and groups = [...] if a tier names groups), "
            "or high calls wait for nobody and expire"
        )
    return hints


# -- audit ----------------------------------------------------------------------------------


def _get_request(tx: Tx, request_id: str) -> ApprovalRequest | None:
    return tx.get_request(request_id)


def cmd_audit(args: argparse.Namespace) -> int:
    config = _config(args)
    db = gate_db(config.data_dir)
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
        async with await open_store(db) as store:
            records = await store.records(correlation_id=args.correlation_id)
            # A call that joined an approval request made by an earlier identical call: its
            # story includes that request's records (who was asked, who decided).
            linked = {r.body["request_id"] for r in records if isinstance(r.body.get("request_id"), str)}
            for request_id in sorted(linked):
                request = await store.read(functools.partial(_get_request, request_id=request_id))
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


class Refused(GateError):
    """The gate refused a decision (self-approval, not eligible, expired, ...): exit 1."""


class Unreachable(GateError):
    """The approver API could not be reached or answered unexpectedly: exit 1."""


# -- demo -----------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from mcp_gate.demo import run_demo

    return run_demo(keep=args.keep)


# -- parser ---------------------------------------------------------------------------------


_EXAMPLES = """\
examples:
  mcp-gate import ~/.config/Claude/claude_desktop_config.json >> gate.toml
  mcp-gate check --config gate.toml
  mcp-gate manifests copy time --to tool_manifests
  mcp-gate serve --config gate.toml
  mcp-gate tools accept notes__read_note
  MCP_GATE_TOKEN=... mcp-gate pending
  MCP_GATE_TOKEN=... mcp-gate approve K7Q2M9XA --note "checked the diff"
  mcp-gate audit verify
  mcp-gate keys init
  mcp-gate audit export --since 2026-11-01 --until 2026-12-01 --out evidence.tar.gz
  mcp-gate audit verify --bundle evidence.tar.gz --pubkey KEY
  mcp-gate audit report --since 2026-11-01 --out report.html
  mcp-gate slack test
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


def build_parser() -> argparse.ArgumentParser:
    # The approver commands live beside the other decision channels; they use this module's helpers.
    from mcp_gate.audit_cli import add_audit_commands, add_key_commands, add_verify_options
    from mcp_gate.channels.cli import add_approver_commands

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
        "Claude Code, Cursor, VS Code; comments allowed). Hints about what is left to do (a command "
        "not on PATH, a server without a manifest, [requester] and [approvers]) go to stderr.",
    )
    p.add_argument(
        "path", metavar="PATH", help="claude_desktop_config.json, .mcp.json, .vscode/mcp.json, ..."
    )
    _add_config(p)
    p.set_defaults(func=cmd_import)

    p = _sub(
        sub,
        "manifests",
        "list the tool manifests that ship with mcp-gate, or copy one",
        "List the tool manifests that ship with mcp-gate (`manifests list`) or copy one into a "
        "manifests folder (`manifests copy NAME`).",
    )
    manifests_sub = p.add_subparsers(dest="manifests_command", metavar="SUBCOMMAND", required=True)
    m = _sub(manifests_sub, "list", "name each shipped manifest and the packages it is written for")
    m.add_argument("--json", action="store_true", help="print the list as JSON")
    m.set_defaults(func=cmd_manifests)
    m = _sub(
        manifests_sub,
        "copy",
        "copy a shipped manifest into a manifests folder",
        "Copy shipped manifest NAME to DIR/SERVER.toml (refuses to overwrite without --force).",
    )
    m.add_argument("name", metavar="NAME", help="a name from `mcp-gate manifests list`, e.g. time")
    m.add_argument(
        "--to", default="tool_manifests", metavar="DIR", help="folder to write to (default ./tool_manifests)"
    )
    m.add_argument(
        "--server", metavar="NAME", help="the server name in your gate.toml (default: the manifest's)"
    )
    m.add_argument("--force", action="store_true", help="overwrite an existing file")
    m.set_defaults(func=cmd_manifests)

    p = _sub(sub, "audit", "verify, export, report on and prune the evidence log; show one call's story")
    audit_sub = p.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)
    v = _sub(
        audit_sub,
        "verify",
        "check the hash chain, gapless sequence and signed checkpoints (exit 1 if tampered)",
        "Check the evidence log's hash chain and gapless sequence, and every signed checkpoint (with "
        "the gate's key or --pubkey). Exits 1 and names the first bad record if anything was edited, "
        "deleted, inserted, reordered, truncated or rewritten. With --bundle, verify an export bundle.",
    )
    _add_config(v)
    v.add_argument("--json", action="store_true", help="print the result as JSON")
    v.set_defaults(func=cmd_audit)
    add_verify_options(v)
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
    add_audit_commands(audit_sub)

    add_approver_commands(sub)
    add_key_commands(sub)
    from mcp_gate.channels.slack_cli import add_slack_commands

    add_slack_commands(sub)

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
