"""`mcp-gate serve`, `check`, `tools [accept]`, `import` and `manifests list|copy`: running the gate."""

from __future__ import annotations

import argparse
import errno
import functools
import json
import os
import socket
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mcp_gate.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    add_config,
    api_url,
    host_port,
    is_loopback,
    load_config_from_args,
    log_json,
    progress,
    say,
    subcommand,
)
from mcp_gate.errors import GateError
from mcp_gate.policy import SEPARATOR, split_name

if TYPE_CHECKING:
    from mcp_gate.config import GateConfig

__all__ = ["add_commands"]


# -- serve ----------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    import anyio

    from mcp_gate import runtime
    from mcp_gate.config import tracing_settings
    from mcp_gate.health import Probes, serve_admin
    from mcp_gate.logs import configure_logging
    from mcp_gate.server import FrontServer

    config = load_config_from_args(args)
    configure_logging(args.log_format, verbose=args.verbose, rules=config.redaction)
    log_json(args.log_format == "json")
    http = host_port(args.http, "--http") if args.http else None
    if http is not None and not config.agents and config.identity is None:
        raise GateError(
            f"{config.path}: agents: serving HTTP needs at least one [agents.NAME] with a token_sha256, "
            "or [identity] for the identity provider's access tokens"
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
        if address is not None and not is_loopback(address[0]):
            allowed = ", ".join(config.http.allowed_hosts) or "none yet"
            progress(
                f"warning: {option} {address[0]} is not a loopback address: other machines can reach it; "
                f"requests must name a loopback host or one of [http] allowed_hosts ({allowed})"
            )
    slack_secrets = None
    if config.slack is not None:  # read the tokens now: a missing one is a one-line error, not a crash
        from mcp_gate.channels.slack import SlackChannel, SlackSecrets

        slack_secrets = SlackSecrets.read(config, os.environ)
    teams_secrets = None
    if config.teams is not None:  # the bot's password now: a missing one is a one-line error
        from mcp_gate.channels.teams import TeamsChannel, TeamsSecrets

        teams_secrets = TeamsSecrets.read(config, os.environ)

    email_password = None
    if config.email is not None and config.email.password is not None:  # now: a missing one is one line
        email_password = config.email.password.read(os.environ, str(config.path))
    webhook_secret = (
        None if config.webhook is None else config.webhook.secret.read(os.environ, str(config.path))
    )
    signing: Literal["loaded", "off"] = "off" if runtime.gate_notary(config) is None else "loaded"
    tracing = runtime.gate_tracing(tracing_settings(os.environ, default_service=f"mcp-gate {config.name}"))

    async def run() -> None:
        async with runtime.open_gate(config, tracing=tracing) as gate, anyio.create_task_group() as tg:
            front = FrontServer(gate)
            probes = Probes(gate, signing)
            if slack_secrets is not None:
                slack = SlackChannel(gate, slack_secrets)
                slack_port = await tg.start(slack.run)
                where = f"interactions on port {slack_port}" if slack_port is not None else "Socket Mode"
                progress(f"mcp-gate {config.name}: Slack approvals ({where})")
                if slack_port is None:
                    probes = Probes(gate, signing, lambda: slack.link is not None)
            if teams_secrets is not None:
                teams_port = await tg.start(TeamsChannel(gate, teams_secrets).run)
                teams_host = config.teams.listen[0] if config.teams is not None else ""
                progress(
                    f"mcp-gate {config.name}: Teams approvals (messaging endpoint on "
                    f"http://{teams_host}:{teams_port}/api/messages)"
                )
            if config.email is not None:
                from mcp_gate.channels.email import EmailChannel

                mailer = EmailChannel(gate, config.email, email_password, runtime.console_key(config))
                await tg.start(mailer.run)
                progress(f"mcp-gate {config.name}: email approvals via {config.email.smtp_host}")
            if config.webhook is not None and webhook_secret is not None:
                from mcp_gate.channels.webhook import WebhookChannel

                await tg.start(WebhookChannel(gate, config.webhook, webhook_secret).run)
                progress(f"mcp-gate {config.name}: request events to the webhook {config.webhook.url}")
            if admin is not None:
                host, port = admin
                console = None
                if config.console is not None and config.console.enabled:
                    from mcp_gate.console import build_console

                    report = functools.partial(runtime.evidence_report, config)
                    console = build_console(gate.engine, config, runtime.console_key(config), report=report)
                bound = await tg.start(functools.partial(serve_admin, probes, host, port, console=console))
                progress(
                    f"mcp-gate {config.name}: approver API on {api_url(host, bound)} "
                    "(and /healthz, /readyz, /metrics)"
                )
                if console is not None:
                    base = api_url(host, bound).removesuffix("/v1")
                    progress(f"mcp-gate {config.name}: console on {base}/console")
            elif config.console is not None and config.console.enabled:
                progress(
                    f"mcp-gate {config.name}: [console] is enabled but there is no admin listener "
                    "([admin] listen or --admin): run `mcp-gate console` beside the gate to serve it"
                )
            if http is None:
                await front.serve_stdio()
                tg.cancel_scope.cancel()  # the agent hung up: stop the approver API too
                return
            host, port = http

            async def announce(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
                await front.serve_http(host, port, task_status=task_status)

            bound = await tg.start(announce)
            progress(f"mcp-gate {config.name}: serving streamable HTTP on http://{host}:{bound}/mcp")

    try:
        anyio.run(run)
    except BaseExceptionGroup as group:  # a listener that failed after all: its one line, not a traceback
        errors = _leaves(group)
        if len(errors) == 1 and isinstance(errors[0], GateError):
            raise errors[0] from None
        raise
    finally:
        if tracing.provider is not None and hasattr(tracing.provider, "shutdown"):
            tracing.provider.shutdown()  # the last spans go out
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


def _admin_address(option: str | None, config: GateConfig) -> tuple[str, int] | None:
    """Where to serve the approvers' API: --admin, else [admin] listen, else nowhere."""
    if option is None:
        return None if config.admin is None else (config.admin.host, config.admin.port)
    host, port = host_port(option, "--admin")
    if not is_loopback(host) and not (config.admin is not None and config.admin.allow_remote):
        raise GateError(
            f"--admin: {host} is not a loopback address; the approver API listens on other addresses "
            f"only with [admin] allow_remote = true in {config.path}"
        )
    return host, port


# -- check and tools ------------------------------------------------------------------------


def _inspect(config: GateConfig, *, timeout: float) -> dict[str, Any]:
    """Start the gate's downstreams once and describe servers and tools."""

    import anyio

    from mcp_gate import runtime
    from mcp_gate.manifests import load_manifests

    # Manifest errors are bad input: report them alone, before any progress about servers.
    load_manifests(config.manifests_dir, config.servers.keys(), required=config.manifests_required)
    signing = "off" if runtime.gate_notary(config) is None else "loaded"  # an unusable key is bad input too

    async def run() -> dict[str, Any]:
        names = ", ".join(config.servers) or "none"
        progress(f"connecting to {len(config.servers)} server(s): {names} (up to {timeout:.0f}s)...")
        async with runtime.open_gate(config, startup_timeout=timeout) as gate:
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
                for t in sorted(gate.offering.offered.values(), key=lambda t: t.name)
            ]
            from mcp_gate.health import Probes, readiness

            return {
                "gate": config.name,
                "policy_sha256": gate.policy_sha256,
                "servers": servers,
                "tools": tools,
                "readiness": await readiness(Probes(gate, "loaded" if signing == "loaded" else "off")),
            }

    return anyio.run(run)


def _print_tools(tools: list[dict[str, Any]]) -> None:
    if not tools:
        say("  (no tools)")
        return
    width = max(len(t["name"]) for t in tools)
    for t in tools:
        tier = t["tier"] + ("*" if t["conditional"] else "")
        flags = ("  QUARANTINED (new)" if t.get("new") else "  QUARANTINED") if t["quarantined"] else ""
        if not t["listed"]:
            flags += "  (not listed to agents)"
        say(f"  {t['name']:<{width}}  {tier:<9} {t['pin'][:12]}  {t['rule']}: {t['reason']}{flags}")
    if any(t["conditional"] for t in tools):
        say("  * a rule with argument conditions may give a different tier for some arguments")


def cmd_check(args: argparse.Namespace) -> int:
    from mcp_gate.cli.approval_checks import approval_problems, availability_problems
    from mcp_gate.cli.audit import checkpoint_warnings, missed_copies
    from mcp_gate.cli.policy import run_policy_tests
    from mcp_gate.cli.slack import slack_check
    from mcp_gate.cli.teams import teams_check

    config = load_config_from_args(args)
    report = _inspect(config, timeout=args.timeout)
    report["approval_problems"] = approval_problems(config)
    report["away"], report["availability_problems"] = availability_problems(config)
    report["missed_checkpoint_copies"] = missed_copies(config)
    report["checkpoint_warnings"] = checkpoint_warnings(config)
    report["mode"] = config.rollout.describe()
    report["breakglass_groups"] = sorted(config.breakglass.groups)
    if config.slack is not None:
        report["slack"] = asdict(slack_check(config, os.environ))
        # Offline, Slack counts as connected when its tokens work (`slack_check`).
        report["readiness"]["checks"]["slack"] = "connected" if report["slack"]["ok"] else "disconnected"
        if not report["slack"]["ok"] and report["readiness"]["status"] == "ready":
            report["readiness"]["status"] = "degraded"
            report["readiness"]["degraded"].append("slack")
    if config.teams is not None:
        report["teams"] = asdict(teams_check(config, os.environ))
    if config.identity is not None:
        report["identity"] = _identity_check(config)
    verdicts = run_policy_tests(config)
    failing = [v for v in verdicts if not v.passed]
    if verdicts:
        report["policy_tests"] = {
            "cases": len(verdicts),
            "passed": len(verdicts) - len(failing),
            "failed": [
                {"file": str(v.case.file), "name": v.case.name, "mismatches": [list(m) for m in v.mismatches]}
                for v in failing
            ],
        }
    if args.json:
        say(json.dumps(report, indent=2))
    else:
        say(f"config {config.path}: ok (gate {config.name!r}, policy {report['policy_sha256'][:12]})")
        shadowed = sorted(n for n in config.servers if config.rollout.mode_for(n) == "shadow")
        if shadowed:
            say(f"mode: SHADOW for {', '.join(shadowed)}: their calls run unenforced and are only recorded")
        if config.breakglass.groups:
            say(f"break-glass: allowed for {', '.join(report['breakglass_groups'])}")
        for s in report["servers"]:
            status = "up" if s["state"] == "up" else s["state"].upper()
            if s["state"] == "up" and s["protocol"]:
                status += f" ({s['protocol']})"
            elif s["error"] and s["state"] != "up":
                status += f": {' '.join(str(s['error']).split())}"
            manifest = f"manifest {s['manifest']}" if s["manifest"] else "no manifest: every tool is high"
            if s["copy_command"]:
                manifest += f"; a shipped manifest fits, copy it with: {s['copy_command']}"
            say(f"server {s['name']}: {status}; {manifest}")
        ready = report["readiness"]
        say(
            f"readiness: {ready['status']}"
            + (f" ({', '.join(ready['degraded'])})" if ready["degraded"] else "")
        )
        for problem in report["approval_problems"]:
            say(f"approvals: {problem}")
        for problem in report["availability_problems"]:
            say(f"approvals: {problem}")
        for missed in report["missed_checkpoint_copies"]:
            say(f"checkpoints: a copy was missed: {missed}")
        for warning in report["checkpoint_warnings"]:
            say(f"checkpoints: {warning}")
        if "slack" in report:
            say(f"slack: {'ok' if report['slack']['ok'] else 'PROBLEM'}: {report['slack']['detail']}")
        if "teams" in report:
            say(f"teams: {'ok' if report['teams']['ok'] else 'PROBLEM'}: {report['teams']['detail']}")
        if "identity" in report:
            found = report["identity"]
            say(f"identity: {'ok' if found['ok'] else 'PROBLEM'}: {found['detail']}")
        if verdicts and not failing:
            say(f"policy tests: {len(verdicts)} case(s), all hold")
        for verdict in failing:
            wrong = "; ".join(f"{k}: expected {w}, got {g}" for k, w, g in verdict.mismatches)
            say(f"policy tests: FAIL {verdict.case.name} ({verdict.case.file.name}): {wrong}")
        say("tools (name, tier, pin, rule: reason):")
        _print_tools(report["tools"])
    failed = [s for s in report["servers"] if s["state"] not in ("up", "disabled")]
    if "slack" in report and not report["slack"]["ok"]:
        return EXIT_FAILED
    if "teams" in report and not report["teams"]["ok"]:
        return EXIT_FAILED
    if "identity" in report and not report["identity"]["ok"]:
        return EXIT_FAILED
    if failing:
        return EXIT_FAILED
    return EXIT_FAILED if failed else EXIT_OK


def _identity_check(config: GateConfig) -> dict[str, Any]:
    """The identity provider's line: its discovery document and signing keys fetched now."""
    import anyio

    from mcp_gate.idp import TokenRefused, TokenVerifier

    identity = config.identity
    assert identity is not None
    try:
        count = anyio.run(TokenVerifier(identity, config_file=str(config.path)).load_keys)
    except TokenRefused as refused:
        return {"ok": False, "detail": f"{identity.issuer}: {refused.why}"}
    return {
        "ok": True,
        "detail": f"{count} signing key(s) from {identity.issuer}; resource {identity.audience}",
    }


def cmd_tools(args: argparse.Namespace) -> int:
    if args.tools_command == "accept":
        return cmd_tools_accept(args)
    config = load_config_from_args(args)
    report = _inspect(config, timeout=args.timeout)
    if args.json:
        say(json.dumps(report["tools"], indent=2))
    else:
        _print_tools(report["tools"])
    return EXIT_OK


def cmd_tools_accept(args: argparse.Namespace) -> int:
    import anyio

    from mcp_gate import __version__, runtime
    from mcp_gate.config import invoking_user

    config = load_config_from_args(args)
    split = split_name(args.name)
    if split is None or split[0] not in config.servers:
        raise GateError(f"tools accept: {args.name!r} is not SERVER{SEPARATOR}TOOL for a configured server")
    server, tool = split
    if not runtime.store_exists(config):
        where = runtime.store_where(config)
        raise GateError(f"tools accept: {where}: no pins here yet (has the gate run with this config?)")

    async def run() -> str:
        from mcp_gate.clock import SystemClock, utc_iso
        from mcp_gate.evidence import new_event

        async with runtime.open_gate_store(config) as store:
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
                accepted_by=invoking_user(),
            )
            accepted = await store.accept_drift(server, tool, events=[event])
            return accepted.pin

    pin = anyio.run(run)
    say(f"accepted {args.name}: pin {pin[:12]} is now trusted")
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
        say(f"wrote {target}")
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
        say(json.dumps(rows, indent=2))
        return EXIT_OK
    width = max((len(r["name"]) for r in rows), default=0)
    for r in rows:
        say(
            f"{r['name']:<{width}}  for {', '.join(r['packages']) or '(any)'}; {len(r['tools'])} tool name(s)"
        )
    say("copy one into your manifests folder: mcp-gate manifests copy NAME [--to DIR] [--server NAME]")
    return EXIT_OK


# -- import ---------------------------------------------------------------------------------


def cmd_import(args: argparse.Namespace) -> int:
    from mcp_gate.config import read_client_config, servers_to_toml

    # ${...} references stay references: gate.toml resolves them when it loads, so a secret in
    # this shell's environment is never printed.
    servers = read_client_config(Path(args.path), os.environ, keep_references=True)
    say(f"# servers from {args.path}; paste into gate.toml")
    say(servers_to_toml(servers, references=True))
    for hint in _import_hints(servers, _existing_config(args)):
        progress(f"hint: {hint}")
    return EXIT_OK


def _existing_config(args: argparse.Namespace) -> GateConfig | None:
    """The gate.toml the imported servers go into, when there is one that loads."""
    from mcp_gate.config import load_config, resolve_config_path

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

    from mcp_gate.manifests import load_manifests

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


def _add_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the servers to start (default 30)",
    )


def add_commands(sub: Any) -> None:
    """Register serve, check, tools [accept], import and manifests list|copy."""
    p = subcommand(
        sub,
        "serve",
        "serve agents over stdio (default) or streamable HTTP",
        "Serve agents over stdio (default) or streamable HTTP. Logs go to stderr; in stdio mode "
        "stdout carries only MCP messages.",
    )
    add_config(p)
    p.add_argument("--http", metavar="HOST:PORT", help="serve streamable HTTP on HOST:PORT instead of stdio")
    p.add_argument(
        "--admin",
        metavar="HOST:PORT",
        help="also serve the approvers' HTTP API on HOST:PORT (loopback only unless [admin] "
        "allow_remote = true; default: [admin] listen, else off); it also serves /healthz, /readyz "
        "and /metrics",
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="how log lines on stderr look: text for people (default) or JSON lines for a collector "
        "(with one INFO line per call, each naming its correlation id)",
    )
    p.set_defaults(func=cmd_serve)

    p = subcommand(
        sub,
        "check",
        "validate config and manifests, start the servers, list every tool",
        "Validate the config and manifests, start every server once and list each tool with its "
        "tier, pin and rule. Exits 1 if a server does not start.",
    )
    add_config(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_timeout(p)
    p.set_defaults(func=cmd_check)

    p = subcommand(
        sub,
        "tools",
        "list the tools the gate offers, with tier, rule and pin",
        "List the tools the gate offers, with tier, rule and pin; `tools accept` trusts a changed one.",
    )
    add_config(p)
    p.add_argument("--json", action="store_true", help="print the tools as JSON")
    _add_timeout(p)
    p.set_defaults(func=cmd_tools, tools_command=None)
    tools_sub = p.add_subparsers(dest="tools_command", metavar="SUBCOMMAND")
    a = subcommand(
        tools_sub,
        "accept",
        "trust the changed definition of a quarantined tool",
        "Trust the changed definition of a quarantined tool (after reviewing it) so agents can call "
        "it again. Recorded as a tool.accepted event.",
    )
    add_config(a, default=argparse.SUPPRESS)
    a.add_argument("name", metavar="SERVER__TOOL", help="the quarantined tool, e.g. notes__read_note")
    a.set_defaults(func=cmd_tools)

    p = subcommand(
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
    add_config(p)
    p.set_defaults(func=cmd_import)

    p = subcommand(
        sub,
        "manifests",
        "list the tool manifests that ship with mcp-gate, or copy one",
        "List the tool manifests that ship with mcp-gate (`manifests list`) or copy one into a "
        "manifests folder (`manifests copy NAME`).",
    )
    manifests_sub = p.add_subparsers(dest="manifests_command", metavar="SUBCOMMAND", required=True)
    m = subcommand(manifests_sub, "list", "name each shipped manifest and the packages it is written for")
    m.add_argument("--json", action="store_true", help="print the list as JSON")
    m.set_defaults(func=cmd_manifests)
    m = subcommand(
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
