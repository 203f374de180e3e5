"""`mcp-gate check`'s approval lines: tiers whose approvals could never all be given for some
requester, and tiers left without enough available approvers while some are marked away."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio

from mcp_gate import runtime
from mcp_gate.availability import read_availability
from mcp_gate.config import GateConfig
from mcp_gate.errors import GateError
from mcp_gate.policy import Approvals

__all__ = ["approval_problems", "availability_problems"]


def approval_problems(config: GateConfig) -> list[str]:
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


def availability_problems(config: GateConfig) -> tuple[list[dict[str, Any]], list[str]]:
    """Who is marked away now, and the tiers that leaves without enough available approvers for
    some requester (their requests would say so too). Nothing when there is no store yet."""
    if not config.approvers or not runtime.store_exists(config):
        return [], []

    async def read() -> Any:
        async with runtime.read_gate_store(config) as store:
            return await read_availability(store, runtime.decision_key(config), datetime.now(UTC))

    try:
        present = anyio.run(read)
    except GateError:
        return [], []  # an unreadable store is the readiness line's to report
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
            away = [present.away[a.name] for a in eligible if present.is_away(a.name)]
            if away and len(eligible) >= requirement.count > len(eligible) - len(away):
                problems.append(
                    f"{tier} calls made for {owner} need {requirement.count} approver(s), but of those who "
                    f"may decide them {', '.join(a.text() for a in away)} "
                    f"{'is' if len(away) == 1 else 'are'} away: nobody else is told of them meanwhile"
                )
    return [a.view() for a in present.away.values()], problems


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
