"""Slack interaction payloads (button clicks, the deny modal) parsed into the gate's Click values."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mcp_gate.approvals import ID_ALPHABET, ID_LENGTH
from mcp_gate.channels.slack_blocks import ACTION_APPROVE, ACTION_APPROVE_FOR, ACTION_DENY, DENY_CALLBACK

__all__ = ["MAX_REASON", "Click", "deny_reason", "modal_errors", "parse_interaction"]

MAX_REASON = 2000  # characters of a typed deny reason, as the approvers' API allows
MAX_SLACK_ID = 64  # Slack's user, team and channel ids are about a dozen characters
# A request id exactly as the gate mints them: a value naming anything else names no request.
_REQUEST_ID = re.compile(f"[{re.escape(ID_ALPHABET)}]{{{ID_LENGTH}}}")
SlackId = Annotated[str, Field(max_length=MAX_SLACK_ID)]


class _Loose(BaseModel):
    # Slack adds fields to its payloads freely: keep what the gate reads, ignore the rest.
    model_config = ConfigDict(extra="ignore", frozen=True)


class _User(_Loose):
    id: SlackId
    team_id: SlackId | None = None


class _Team(_Loose):
    id: SlackId


class _Action(_Loose):
    action_id: str
    value: str = ""


class _Container(_Loose):
    channel_id: SlackId | None = None
    message_ts: str | None = None


class _BlockActions(_Loose):
    type: Literal["block_actions"]
    user: _User
    team: _Team | None = None
    trigger_id: Annotated[str, Field(max_length=256)] | None = None
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
    except (KeyError, TypeError, IndexError):
        return None
    return value.strip() if isinstance(value, str) and value.strip() else None


def _request_id(value: str) -> str | None:
    """The request id a button value or modal metadata names, or None if it is not one."""
    candidate = value.strip().upper()
    return candidate if _REQUEST_ID.fullmatch(candidate) else None


def parse_interaction(payload: Mapping[str, Any]) -> Click | None:
    """The Click in an interaction payload, or None for anything the gate does not act on."""
    kind = payload.get("type")
    try:
        if kind == "block_actions":
            actions = _BlockActions.model_validate(payload)
            # Slack sends one action per click; a payload with several is not a click on one request.
            if len(actions.actions) != 1 or actions.actions[0].action_id not in _KINDS:
                return None
            action = actions.actions[0]
            request_id = _request_id(action.value)
            if request_id is None:
                return None
            return Click(
                kind=_KINDS[action.action_id],
                request_id=request_id,
                user_id=actions.user.id,
                team_id=actions.user.team_id or (actions.team.id if actions.team else ""),
                channel=actions.container.channel_id if actions.container else None,
                trigger_id=actions.trigger_id,
            )
        if kind == "view_submission":
            submission = _ViewSubmission.model_validate(payload)
            request_id = _request_id(submission.view.private_metadata)
            if submission.view.callback_id != DENY_CALLBACK or request_id is None:
                return None
            reason = deny_reason(payload)
            if reason is not None and len(reason) > MAX_REASON:
                return None  # modal_errors asks for a shorter one
            return Click(
                kind="deny_reason",
                request_id=request_id,
                user_id=submission.user.id,
                team_id=submission.user.team_id or (submission.team.id if submission.team else ""),
                reason=reason,
            )
    except ValidationError:
        return None
    return None


def modal_errors(payload: Mapping[str, Any]) -> dict[str, Any] | None:
    """Slack's synchronous answer to a deny modal submitted without a reason, else None."""
    if payload.get("type") != "view_submission":
        return None
    reason = deny_reason(payload)
    if reason is not None and len(reason) > MAX_REASON:
        why = f"Keep the reason under {MAX_REASON} characters."
        return {"response_action": "errors", "errors": {"reason": why}}
    click = parse_interaction(payload)
    if click is not None and click.kind == "deny_reason" and click.reason is None:
        return {"response_action": "errors", "errors": {"reason": "Say why the call is denied."}}
    return None
