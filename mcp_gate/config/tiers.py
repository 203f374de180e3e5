"""gate.toml's [tiers] and [breakglass]: what each tier requires, whether it is enforced or only
shadowed, what the person at the agent is asked, and who may break glass."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal, cast

from pydantic import Field

from mcp_gate.approvals import Approver, parse_duration
from mcp_gate.config.files import Strict
from mcp_gate.config.model import BreakGlassSettings, ElicitationSettings, Escalation, Mode, RolloutSettings
from mcp_gate.errors import ConfigError
from mcp_gate.policy import DEFAULT_REQUIREMENTS, Approvals, Block, Confirm, Requirement, Run, Tier

__all__ = [
    "CONFIGURABLE",
    "BreakGlassSection",
    "breakglass_from",
    "check_groups",
    "duration",
    "elicitation_from",
    "escalations_from",
    "requirements_from",
    "rollout_from",
]

CONFIGURABLE = ("low", "medium", "high", "critical")
MODES: tuple[Mode, ...] = ("enforce", "shadow")


class BreakGlassSection(Strict):
    groups: list[str] = Field(default_factory=list)


def rollout_from(
    file: str, tiers: Mapping[str, Any], servers: Mapping[str, Mode | None]
) -> tuple[dict[str, Any], RolloutSettings]:
    """Take `mode` out of [tiers] (the rest are requirements) and add each server's own mode.

    Anything but "enforce" or "shadow" is a config error: a typo must not switch enforcement off."""
    rest = {k: v for k, v in tiers.items() if k != "mode"}
    mode = tiers.get("mode", "enforce")
    if mode not in MODES:
        raise ConfigError(file, "tiers.mode", f'expected "enforce" or "shadow", got {mode!r}')
    own = {name: m for name, m in servers.items() if m is not None}
    return rest, RolloutSettings(mode=cast(Mode, mode), servers=MappingProxyType(own))


_ESCALATION_KEYS = ("escalate_after", "escalate_to", "escalate_channel", "escalation")
_STEP_KEYS = ("after", "to", "channel")


def escalations_from(
    file: str, tiers: Mapping[str, Any], approvers: Mapping[str, Approver]
) -> tuple[dict[str, Any], dict[str, tuple[Escalation, ...]]]:
    """Take each tier's escalation out of its table: one step as `escalate_after`, `escalate_to`
    and `escalate_channel`, or several as `escalation = [{ after, to, channel }, ...]`."""
    rest: dict[str, Any] = {}
    found: dict[str, tuple[Escalation, ...]] = {}
    known = {g for a in approvers.values() for g in a.groups}
    for tier, value in tiers.items():
        if not isinstance(value, dict) or not set(value) & set(_ESCALATION_KEYS):
            rest[tier] = value
            continue
        key = f"tiers.{tier}"
        if "escalation" in value:
            if set(value) & set(_ESCALATION_KEYS[:3]):
                raise ConfigError(
                    file, key, "give escalation = [...] or escalate_after/escalate_to, not both"
                )
            found[tier] = _steps(file, f"{key}.escalation", value["escalation"], known)
        else:
            if "escalate_after" not in value or "escalate_to" not in value:
                raise ConfigError(file, key, "escalation needs both escalate_after and escalate_to")
            step = {"after": value["escalate_after"], "to": value["escalate_to"]}
            if "escalate_channel" in value:
                step["channel"] = value["escalate_channel"]
            found[tier] = (_step(file, key, step, known, prefix="escalate_"),)
        rest[tier] = {k: v for k, v in value.items() if k not in _ESCALATION_KEYS}
    return rest, found


def _steps(file: str, key: str, value: Any, known: set[str]) -> tuple[Escalation, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(
            file, key, f'must be a list of steps like {{ after = "10m", to = ["leads"] }}, got {value!r}'
        )
    steps: list[Escalation] = []
    for index, item in enumerate(value):
        where = f"{key}[{index}]"
        if not isinstance(item, dict):
            raise ConfigError(
                file, where, f'must be a table like {{ after = "10m", to = ["leads"] }}, got {item!r}'
            )
        unknown = sorted(set(item) - set(_STEP_KEYS))
        if unknown:
            raise ConfigError(file, where, f"unknown key {unknown[0]!r}; a step has after, to and channel")
        if "after" not in item or "to" not in item:
            raise ConfigError(file, where, "a step needs both after and to")
        step = _step(file, where, item, known, prefix="")
        if steps and step.after <= steps[-1].after:
            raise ConfigError(file, f"{where}.after", "each step must come after the one before it")
        steps.append(step)
    return tuple(steps)


def _step(file: str, key: str, item: Mapping[str, Any], known: set[str], *, prefix: str) -> Escalation:
    after = duration(file, f"{key}.{prefix}after", item["after"])
    groups = item["to"]
    if not isinstance(groups, list) or not groups or not all(isinstance(g, str) and g for g in groups):
        raise ConfigError(file, f"{key}.{prefix}to", f"must be a list of group names, got {groups!r}")
    for group in groups:
        if group not in known:
            raise ConfigError(
                file, f"{key}.{prefix}to", f"no approver is in group {group!r} (known: {sorted(known)})"
            )
    channel = item.get("channel")
    if channel is not None and (not isinstance(channel, str) or not channel.strip()):
        raise ConfigError(file, f"{key}.{prefix}channel", f"must be a Slack channel id, got {channel!r}")
    return Escalation(after=after, groups=tuple(groups), channel=channel)


def breakglass_from(
    file: str, section: BreakGlassSection | None, approvers: Mapping[str, Approver]
) -> BreakGlassSettings:
    """[breakglass] groups: approver groups whose members may break glass (none: off)."""
    if section is None:
        return BreakGlassSettings()
    known = {g for a in approvers.values() for g in a.groups}
    for group in section.groups:
        if not group.strip():
            raise ConfigError(file, "breakglass.groups", "a group name must not be empty")
        if group not in known:
            raise ConfigError(
                file, "breakglass.groups", f"no approver is in group {group!r} (known: {sorted(known)})"
            )
    return BreakGlassSettings(groups=frozenset(section.groups))


def requirements_from(file: str, tiers: Mapping[str, Any]) -> dict[Tier, Requirement]:
    requirements: dict[Tier, Requirement] = dict(DEFAULT_REQUIREMENTS)
    for tier, value in tiers.items():
        key = f"tiers.{tier}"
        if tier == "blocked":
            raise ConfigError(file, key, "the blocked tier always blocks and cannot be configured")
        if tier not in CONFIGURABLE:
            raise ConfigError(file, key, "unknown tier; expected low, medium, high or critical")
        requirement: Requirement
        if value == "run":
            requirement = Run()
        elif value == "confirm":
            requirement = Confirm()
        elif value == "block":
            requirement = Block()
        elif isinstance(value, dict):
            extra = sorted(set(value) - {"approvals", "groups", "expires"})
            if extra:
                raise ConfigError(file, f"{key}.{extra[0]}", "unknown key")
            if "approvals" not in value:
                raise ConfigError(file, f"{key}.approvals", "required key is missing")
            count = value["approvals"]
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 10:
                raise ConfigError(file, f"{key}.approvals", f"must be an integer from 1 to 10, got {count!r}")
            groups = value.get("groups", [])
            if not isinstance(groups, list) or not all(isinstance(g, str) and g.strip() for g in groups):
                raise ConfigError(file, f"{key}.groups", f"must be a list of group names, got {groups!r}")
            expires_after = None
            if "expires" in value:
                expires_after = duration(file, f"{key}.expires", value["expires"])
            requirement = Approvals(count, groups=tuple(groups), expires_after=expires_after)
        else:
            raise ConfigError(
                file, key, f'expected "run", "confirm", "block" or {{ approvals = N }}, got {value!r}'
            )
        requirements[cast(Tier, tier)] = requirement
    return requirements


def elicitation_from(file: str, tiers: Mapping[str, Any]) -> tuple[dict[str, Any], ElicitationSettings]:
    """Take the elicitation keys out of [tiers]: `medium_fallback` beside the tiers, and
    `ask_justification` inside a tier's table; the rest are requirements."""
    rest: dict[str, Any] = {}
    fallback: Literal["approve", "deny"] = "approve"
    justify: set[str] = set()
    for tier, value in tiers.items():
        if tier == "medium_fallback":
            if value not in ("approve", "deny"):
                raise ConfigError(
                    file, "tiers.medium_fallback", f'expected "approve" or "deny", got {value!r}'
                )
            fallback = value
            continue
        if isinstance(value, dict) and "ask_justification" in value:
            flag = value["ask_justification"]
            if not isinstance(flag, bool):
                raise ConfigError(
                    file, f"tiers.{tier}.ask_justification", f"expected true or false, got {flag!r}"
                )
            if flag:
                justify.add(tier)
            value = {k: v for k, v in value.items() if k != "ask_justification"}
        rest[tier] = value
    return rest, ElicitationSettings(medium_fallback=fallback, ask_justification=frozenset(justify))


def duration(file: str, key: str, value: Any) -> float:
    if not isinstance(value, str):
        raise ConfigError(file, key, f'expected a duration like "15m", got {value!r}')
    try:
        return parse_duration(value).total_seconds()
    except ValueError as exc:
        raise ConfigError(file, key, str(exc)) from exc


def check_groups(
    file: str,
    requirements: Mapping[Tier, Requirement],
    approvers: Mapping[str, Approver],
    idp_groups: frozenset[str] = frozenset(),
) -> None:
    known = {g for a in approvers.values() for g in a.groups} | idp_groups
    for tier, requirement in requirements.items():
        if isinstance(requirement, Approvals):
            for group in requirement.groups:
                if group not in known:
                    raise ConfigError(
                        file,
                        f"tiers.{tier}.groups",
                        f"no approver is in group {group!r} (known: {sorted(known)})",
                    )
