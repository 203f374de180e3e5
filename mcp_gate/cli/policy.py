"""`mcp-gate policy test` and `policy explain`: what the gate would decide, without serving."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcp_gate.cli._common import EXIT_FAILED, EXIT_OK, add_config, load_config_from_args, say, subcommand
from mcp_gate.errors import ConfigError, GateError
from mcp_gate.policy import CASES_DIR, Manifest

if TYPE_CHECKING:
    from mcp_gate.config import GateConfig
    from mcp_gate.policy_tests import Verdict

__all__ = ["add_commands", "run_policy_tests"]


def _manifests(config: GateConfig) -> dict[str, Manifest]:
    from mcp_gate.manifests import load_manifests

    return load_manifests(config.manifests_dir, config.servers.keys(), required=config.manifests_required)


def run_policy_tests(config: GateConfig, files: list[Path] | None = None) -> list[Verdict]:
    """Every case of `files` (default: the case files next to the manifests), evaluated."""
    from mcp_gate.policy_tests import case_files, evaluate, load_cases

    manifests = _manifests(config)
    verdicts = []
    for path in files if files is not None else case_files(config.manifests_dir):
        for case in load_cases(path, config):
            verdicts.append(evaluate(case, config, manifests))
    return verdicts


def cmd_policy_test(args: argparse.Namespace) -> int:
    config = load_config_from_args(args)
    files = [Path(f) for f in args.files] if args.files else None
    verdicts = run_policy_tests(config, files)
    failed = [v for v in verdicts if not v.passed]
    if not verdicts:
        where = config.manifests_dir / CASES_DIR
        raise ConfigError(
            str(where),
            None,
            "no policy test cases here; write [[case]] tables in a .toml file "
            "(see `mcp-gate policy test --help`)",
        )
    if args.json:
        passed = len(verdicts) - len(failed)
        cases = [_verdict_json(v) for v in verdicts]
        say(json.dumps({"cases": cases, "passed": passed, "failed": len(failed)}, indent=2))
        return EXIT_FAILED if failed else EXIT_OK
    current: Path | None = None
    for verdict in verdicts:
        if verdict.case.file != current:
            current = verdict.case.file
            say(f"{current}:")
        say(f"  {'ok  ' if verdict.passed else 'FAIL'}  {verdict.case.name}")
        for key, want, got in verdict.mismatches:
            say(f"          {key}: expected {_show(want)}, got {_show(got)}")
        if not verdict.passed:
            decision = verdict.outcome.decision
            say(f"          ({decision.rule}: {decision.reason})")
    say(f"{len(verdicts)} case(s): {len(verdicts) - len(failed)} passed, {len(failed)} failed")
    return EXIT_FAILED if failed else EXIT_OK


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _verdict_json(verdict: Verdict) -> dict[str, Any]:
    case = verdict.case
    return {
        "file": str(case.file),
        "case": case.index,
        "name": case.name,
        "server": case.server,
        "tool": case.tool,
        "passed": verdict.passed,
        "expected": dict(case.expect),
        "got": verdict.outcome.as_expect(),
        "mismatches": [{"key": k, "expected": w, "got": g} for k, w, g in verdict.mismatches],
    }


def cmd_policy_explain(args: argparse.Namespace) -> int:
    from mcp_gate.policy_tests import explain, requester_of

    config = load_config_from_args(args)
    if args.server not in config.servers:
        known = ", ".join(sorted(config.servers)) or "none"
        raise GateError(f"{args.server!r} is not a server in the gate config (known: {known})")
    if args.requester is not None and args.requester not in config.agents:
        known = ", ".join(sorted(config.agents)) or "none"
        raise GateError(f"--requester: {args.requester!r} is not an [agents.NAME] (known: {known})")
    arguments = _json_object(args.args, "--args")
    annotations = _json_object(args.annotations, "--annotations") if args.annotations else None
    explanation = explain(
        config,
        _manifests(config),
        args.server,
        args.tool,
        arguments,
        annotations=annotations,
        requester=requester_of(config, args.requester),
    )
    if args.json:
        say(json.dumps(explanation.as_json(), indent=2))
    else:
        for line in explanation.lines():
            say(line)
    return EXIT_OK


def _json_object(text: str, option: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise GateError(f"{option}: not JSON ({' '.join(str(exc).split())[:120]})") from None
    if not isinstance(value, dict):
        raise GateError(f'{option}: expected a JSON object, like \'{{"name": "todo"}}\'')
    return value


_TEST_HELP = f"""\
Evaluate table-driven policy cases against the config and its manifests, without starting any
server. With no FILES, reads every .toml in the manifest directory's {CASES_DIR}/ folder. A case:

  [[case]]
  name = "deleting an archived note needs two approvers"
  server = "notes"
  tool = "delete_note"
  arguments = {{ name = "archive/2020" }}
  requester = "ci-bot"          # an [agents.NAME]; default: the stdio [requester]
  annotations = {{ readOnlyHint = true }}   # what the server would declare (optional)
  expect = {{ tier = "critical", requirement = "approvals", approvals = 2 }}

expect takes any of: tier, rule (as `check` prints it, e.g. "notes.toml rule 6"), requirement
(run, confirm, approvals, block), approvals (how many), groups, and approvers (the names of the
approvers who may decide that requester's call).

exit status: 0 every case holds, 1 a case fails, 2 a bad file or config
"""


def add_commands(sub: Any) -> None:
    p = subcommand(sub, "policy", "check what the policy decides: test cases and explanations")
    policy_sub = p.add_subparsers(dest="policy_command", metavar="SUBCOMMAND", required=True)
    t = policy_sub.add_parser(
        "test",
        help="evaluate policy test cases (TOML) against the config and manifests",
        description=_TEST_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config(t)
    t.add_argument(
        "files", nargs="*", metavar="FILE", help=f"case files (default: <manifests>/{CASES_DIR}/*.toml)"
    )
    t.add_argument("--json", action="store_true", help="print every case and its result as JSON")
    t.set_defaults(func=cmd_policy_test)
    e = subcommand(
        policy_sub,
        "explain",
        "say which rule decides a call, which conditions hold, and what its tier requires",
    )
    add_config(e)
    e.add_argument("server", metavar="SERVER")
    e.add_argument("tool", metavar="TOOL", help="the tool's own name, without the SERVER__ prefix")
    e.add_argument("--args", default="{}", metavar="JSON", help="the call's arguments as a JSON object")
    e.add_argument(
        "--annotations", metavar="JSON", help="the tool's annotations, as the server declares them"
    )
    e.add_argument("--requester", metavar="AGENT", help="an [agents.NAME] (default: the stdio [requester])")
    e.add_argument("--json", action="store_true", help="print the explanation as JSON")
    e.set_defaults(func=cmd_policy_explain)
