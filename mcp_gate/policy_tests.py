"""Policy tests and explanations: table-driven cases that say what the gate must decide for a call,
checked against a config and its manifests without starting any server.

A case file is TOML in the manifest directory's `tests/` folder (the manifest loader reads only the
directory's own `*.toml`, so the cases never pass for a manifest):

    [[case]]
    name = "deleting an archived note needs two approvers"
    server = "notes"
    tool = "delete_note"
    arguments = { name = "archive/2020" }
    requester = "ci-bot"                   # an [agents.NAME]; default: the stdio [requester]
    expect = { tier = "critical", approvals = 2 }

`expect` takes any of: tier, rule, requirement (run, confirm, approvals, block), approvals (how
many), groups (who may decide) and approvers (the approvers eligible for this requester's call).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from mcp_gate.approvals import Approver
from mcp_gate.config import GateConfig, Requester
from mcp_gate.config.files import Strict, config_error_from, read_toml
from mcp_gate.errors import ConfigError
from mcp_gate.policy import (
    CASES_DIR,
    Approvals,
    Block,
    Confirm,
    Decision,
    Manifest,
    Requirement,
    Rule,
    Run,
    Tier,
    classify,
    condition_holds,
    resolve_pointer,
)

__all__ = [
    "CASES_DIR",
    "Case",
    "Explanation",
    "Outcome",
    "Verdict",
    "case_files",
    "eligible_approvers",
    "evaluate",
    "explain",
    "load_cases",
    "outcome_for",
    "requester_of",
]

MAX_CASES = 10_000
RequirementKind = Literal["run", "confirm", "approvals", "block"]


class _Expect(Strict):
    tier: Tier | None = None
    rule: str | None = None
    requirement: RequirementKind | None = None
    approvals: int | None = Field(default=None, ge=1)
    groups: list[str] | None = None
    approvers: list[str] | None = None


class _Case(Strict):
    name: str | None = None
    server: str
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    annotations: dict[str, Any] | None = None
    requester: str | None = None
    expect: _Expect


class _CaseFile(Strict):
    case: list[_Case] = Field(min_length=1, max_length=MAX_CASES)


@dataclass(frozen=True)
class Case:
    """One call and what the gate must decide for it."""

    file: Path
    index: int  # 1-based, in its file
    name: str
    server: str
    tool: str
    arguments: Mapping[str, Any]
    annotations: Mapping[str, Any] | None
    requester: str | None  # an agent name, or None for the stdio requester
    expect: Mapping[str, Any]  # only the keys the case sets


@dataclass(frozen=True)
class Outcome:
    """What the gate decides for a call: the same keys a case's `expect` may set."""

    decision: Decision
    requirement: Requirement
    approvers: tuple[str, ...]

    def as_expect(self) -> dict[str, Any]:
        groups = self.requirement.groups if isinstance(self.requirement, Approvals) else ()
        return {
            "tier": self.decision.tier,
            "rule": self.decision.rule,
            "requirement": requirement_kind(self.requirement),
            "approvals": self.requirement.count if isinstance(self.requirement, Approvals) else None,
            "groups": list(groups),
            "approvers": list(self.approvers),
        }


@dataclass(frozen=True)
class Verdict:
    case: Case
    outcome: Outcome
    mismatches: tuple[tuple[str, Any, Any], ...]  # (key, expected, got)

    @property
    def passed(self) -> bool:
        return not self.mismatches


def case_files(manifests_dir: Path) -> list[Path]:
    """The case files next to the manifests: `<manifests>/tests/*.toml`, in name order."""
    folder = manifests_dir / CASES_DIR
    return sorted(folder.glob("*.toml")) if folder.is_dir() else []


def load_cases(path: Path, config: GateConfig) -> list[Case]:
    """Every case in one file, checked against the config: a bad file is one ConfigError line."""
    data, _ = read_toml(path)
    try:
        model = _CaseFile.model_validate(data)
    except ValidationError as exc:
        raise config_error_from(str(path), exc) from None
    cases = []
    for index, raw in enumerate(model.case, start=1):
        key = f"case[{index}]"
        if raw.server not in config.servers:
            known = ", ".join(sorted(config.servers)) or "none"
            raise ConfigError(
                str(path),
                f"{key}.server",
                f"{raw.server!r} is not a server in the gate config (known: {known})",
            )
        if raw.requester is not None and raw.requester not in config.agents:
            known = ", ".join(sorted(config.agents)) or "none"
            raise ConfigError(
                str(path),
                f"{key}.requester",
                f"{raw.requester!r} is not an [agents.NAME] in the gate config (known: {known}); "
                "leave it out for the stdio [requester]",
            )
        expect = raw.expect.model_dump(exclude_none=True)
        if not expect:
            raise ConfigError(
                str(path),
                f"{key}.expect",
                "sets nothing to check; give tier, rule, requirement, approvals, groups or approvers",
            )
        for listed in ("groups", "approvers"):
            if listed in expect:
                expect[listed] = sorted(expect[listed])
        cases.append(
            Case(
                file=path,
                index=index,
                name=raw.name or f"{raw.server}__{raw.tool} (case {index})",
                server=raw.server,
                tool=raw.tool,
                arguments=raw.arguments,
                annotations=raw.annotations,
                requester=raw.requester,
                expect=expect,
            )
        )
    return cases


def requester_of(config: GateConfig, agent: str | None) -> Requester:
    return config.requester if agent is None else config.agents[agent].requester()


def outcome_for(
    config: GateConfig,
    manifests: Mapping[str, Manifest],
    server: str,
    tool: str,
    arguments: Mapping[str, Any],
    *,
    annotations: Mapping[str, Any] | None = None,
    requester: Requester | None = None,
) -> Outcome:
    """What the gate decides for this call, as its call path decides it."""
    decision = classify(tool, annotations, arguments, manifests.get(server), server=server)
    requirement = effective_requirement(config.requirements[decision.tier], decision)
    owner = (requester or config.requester).owner
    return Outcome(decision, requirement, eligible_approvers(config, requirement, owner))


def effective_requirement(requirement: Requirement, decision: Decision) -> Requirement:
    """A rule's approver groups replace its tier's groups for the call."""
    if isinstance(requirement, Approvals) and decision.approvers:
        return Approvals(requirement.count, decision.approvers, requirement.expires_after)
    return requirement


def eligible_approvers(config: GateConfig, requirement: Requirement, owner: str) -> tuple[str, ...]:
    """The approvers who may decide such a call made for `owner`: never the owner themself, and only
    members of the required groups when there are any."""
    if not isinstance(requirement, Approvals):
        return ()
    return tuple(
        sorted(
            approver.name for approver in config.approvers.values() if _eligible(approver, requirement, owner)
        )
    )


def _eligible(approver: Approver, requirement: Approvals, owner: str) -> bool:
    if owner.strip().lower() in approver.identities():
        return False
    return not requirement.groups or bool(approver.groups & set(requirement.groups))


def requirement_kind(requirement: Requirement) -> RequirementKind:
    match requirement:
        case Run():
            return "run"
        case Confirm():
            return "confirm"
        case Approvals():
            return "approvals"
        case Block():
            return "block"
    raise AssertionError(requirement)


def evaluate(case: Case, config: GateConfig, manifests: Mapping[str, Manifest]) -> Verdict:
    outcome = outcome_for(
        config,
        manifests,
        case.server,
        case.tool,
        case.arguments,
        annotations=case.annotations,
        requester=requester_of(config, case.requester),
    )
    got = outcome.as_expect()
    mismatches = tuple((key, want, got[key]) for key, want in case.expect.items() if got[key] != want)
    return Verdict(case, outcome, mismatches)


# -- explain ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Explanation:
    """Why a call gets its tier: each rule that names the tool, in order, and what it required."""

    server: str
    tool: str
    outcome: Outcome
    owner: str
    steps: tuple[dict[str, Any], ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "tool": self.tool,
            "owner": self.owner,
            **self.outcome.as_expect(),
            "reason": self.outcome.decision.reason,
            "source": self.outcome.decision.source,
            "rules": list(self.steps),
        }

    def lines(self) -> list[str]:
        out = [f"{self.server}__{self.tool}"]
        if not self.steps:
            out.append("  no rule names this tool")
        for step in self.steps:
            head = f"  rule {step['rule']} ({', '.join(step['tools'])}, tier {step['tier']})"
            if step["result"] == "not reached":
                out.append(f"{head}: not reached, an earlier rule matched")
                continue
            out.append(f"{head}: {step['result']}")
            for check in step["conditions"]:
                verdict = "holds" if check["holds"] else "fails"
                out.append(f"    {check['pointer']} {check['condition']}: {check['value']} -> {verdict}")
        decision = self.outcome.decision
        out.append(f"  tier {decision.tier}, by {decision.rule}: {decision.reason}")
        out.append(f"  requires {describe(self.outcome.requirement)}")
        if isinstance(self.outcome.requirement, Approvals):
            who = ", ".join(self.outcome.approvers) or "nobody"
            out.append(f"  may decide a call made for {self.owner}: {who}")
        return out


def describe(requirement: Requirement) -> str:
    match requirement:
        case Run():
            return "nothing: it runs at once"
        case Confirm():
            return "a confirmation by the requester, in their own client"
        case Approvals(count=count, groups=groups):
            noun = "approval" if count == 1 else "approvals"
            return f"{count} {noun}" + (f" from {', '.join(groups)}" if groups else " from any approver")
        case Block():
            return "nothing: it never runs"
    raise AssertionError(requirement)


def explain(
    config: GateConfig,
    manifests: Mapping[str, Manifest],
    server: str,
    tool: str,
    arguments: Mapping[str, Any],
    *,
    annotations: Mapping[str, Any] | None = None,
    requester: Requester | None = None,
) -> Explanation:
    requester = requester or config.requester
    outcome = outcome_for(
        config, manifests, server, tool, arguments, annotations=annotations, requester=requester
    )
    manifest = manifests.get(server)
    steps: list[dict[str, Any]] = []
    matched = False
    for rule in manifest.rules if manifest is not None else ():
        if not any(_glob_names(pattern, tool) for pattern in rule.tools):
            continue
        if matched:
            steps.append(_step(rule, "not reached", []))
            continue
        checks = [_check(pointer, condition, arguments) for pointer, condition in rule.when]
        matched = all(check["holds"] for check in checks)
        steps.append(_step(rule, "matches" if matched else "skipped, a condition fails", checks))
    return Explanation(server, tool, outcome, requester.owner, tuple(steps))


def _glob_names(pattern: str, tool: str) -> bool:
    return fnmatch.fnmatchcase(tool, pattern)


def _step(rule: Rule, result: str, checks: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "rule": rule.index,
        "tools": list(rule.tools),
        "tier": rule.tier,
        "reason": rule.reason,
        "result": result,
        "conditions": list(checks),
    }


def _check(pointer: str, condition: Any, arguments: Mapping[str, Any]) -> dict[str, Any]:
    try:
        value = json.dumps(resolve_pointer(arguments, pointer), ensure_ascii=False)[:80]
    except LookupError:
        value = "(absent)"
    parts = []
    if condition.glob is not None:
        parts.append(f"glob {condition.glob!r}")
    if condition.regex is not None:
        parts.append(f"regex {condition.regex.pattern!r}")
    if condition.checks_equals:
        parts.append(f"equals {json.dumps(condition.equals)}")
    if condition.min is not None:
        parts.append(f"min {condition.min}")
    if condition.max is not None:
        parts.append(f"max {condition.max}")
    return {
        "pointer": pointer,
        "condition": ", ".join(parts),
        "value": value,
        "holds": condition_holds(condition, pointer, arguments),
    }
