"""Slack interaction payloads (button clicks, the deny modal) parsed into the gate's Click values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from mcp_gate.channels.slack_blocks import ACTION_APPROVE, ACTION_APPROVE_FOR, ACTION_DENY, DENY_CALLBACK

__all__ = ["Click", "deny_reason", "modal_errors", "parse_interaction"]


class _Loose(BaseModel):
    # Slack adds fields to its payloads freely: keep what the gate reads, ignore the rest.
    model_config = ConfigDict(extra="ignore", frozen=True)


class _User(_Loose):
    id: str
    team_id: str | None = None


class _Team(_Loose):
    id: str


class _Action(_Loose):
    action_id: str
    value: str = ""


class _Container(_Loose):
    channel_id: str | None = None
    message_ts: str | None = None


class _BlockActions(_Loose):
    type: Literal["block_actions"]
    user: _User
    team: _Team | None = None
    trigger_id: str | None = None
    container: _Container | None = None
    actions: list[_Action]


class _View(_Loose):
    callback_id: str
    private_metadata: str
    state: dict[str, Any]


class _ViewSubmission(_Loose):
    type: Literal["view_submission"]
    user: _User
    team: _Team | None = None
    view: _View


@dataclass(frozen=True)
class Click:
    """One person's action on a request message or the deny modal, as Slack described it."""

    kind: Literal["approve", "approve_for", "deny", "deny_reason"]
    request_id: str
    user_id: str
    team_id: str
    channel: str | None = None
    trigger_id: str | None = None
    reason: str | None = None


_KINDS: dict[str, Literal["approve", "approve_for", "deny"]] = {
    ACTION_APPROVE: "approve",
    ACTION_APPROVE_FOR: "approve_for",
    ACTION_DENY: "deny",
}


def deny_reason(payload: Mapping[str, Any]) -> str | None:
    """The reason typed into the deny modal, stripped; None if absent."""
    try:
        value = payload["view"]["state"]["values"]["reason"]["reason"]["value"]
    except (KeyError, TypeError):
        return None
    return value.strip() if isinstance(value, str) and value.strip() else None


def parse_interaction(payload: Mapping[str, Any]) -> Click | None:
    """The Click in an interaction payload, or None for anything the gate does not act on."""
    kind = payload.get("type")
    try:
        if kind == "block_actions":
            actions = _BlockActions.model_validate(payload)
            action = next((a for a in actions.actions if a.action_id in _KINDS), None)
            if action is None or not action.value:
                return None
            return Click(
                kind=_KINDS[action.action_id],
                request_id=action.value.strip().upper()[:64],
                user_id=actions.user.id,
                team_id=actions.user.team_id or (actions.team.id if actions.team else ""),
                channel=actions.container.channel_id if actions.container else None,
                trigger_id=actions.trigger_id,
            )
        if kind == "view_submission":
            submission = _ViewSubmission.model_validate(payload)
            if submission.view.callback_id != DENY_CALLBACK:
                return None
            return Click(
                kind="deny_reason",
                request_id=submission.view.private_metadata.strip().upper()[:64],
                user_id=submission.user.id,
                team_id=submission.user.team_id or (submission.team.id if submission.team else ""),
                reason=deny_reason(payload),
            )
    except ValidationError:
        return None
    return None


def modal_errors(payload: Mapping[str, Any]) -> dict[str, Any] | None:
    """Slack's synchronous answer to a deny modal submitted without a reason, else None."""
    click = parse_interaction(payload)
    if click is not None and click.kind == "deny_reason" and click.reason is None:
        return {"response_action": "errors", "errors": {"reason": "Say why the call is denied."}}
    return None
