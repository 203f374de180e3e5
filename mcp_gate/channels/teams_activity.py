"""Bot Framework activities from Teams (Action.Execute invokes), read with Teams' own model of the
invoke and then bounded strictly, into TeamsClick values."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mcp_gate.approvals import ID_ALPHABET, ID_LENGTH
from mcp_gate.channels.slack_clicks import MAX_REASON
from mcp_gate.channels.teams_api import InvokeMalformed, read_invoke
from mcp_gate.channels.teams_cards import VERB_APPROVE, VERB_APPROVE_FOR, VERB_DENY, VERB_REFRESH

__all__ = ["INVOKE_NAME", "TeamsClick", "parse_activity", "parse_body"]

INVOKE_NAME = "adaptiveCard/action"
MAX_ID = 512  # Teams ids (29:..., 19:...@thread.tacv2) are well under this
_REQUEST_ID = re.compile(f"[{re.escape(ID_ALPHABET)}]{{{ID_LENGTH}}}")
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
TeamsId = Annotated[str, Field(min_length=1, max_length=MAX_ID)]
Verb = Literal["approve", "deny", "approve_for", "refresh"]


class _Data(BaseModel):
    # What rides in an action's data: the request id the card put there and the card's one input.
    model_config = ConfigDict(extra="forbid", frozen=True)
    request_id: Annotated[str, Field(max_length=64)]
    reason: Annotated[str, Field(max_length=4 * MAX_REASON)] | None = None


class _Fields(BaseModel):
    # Bounds on the fields the gate reads, over what Teams' own model of the invoke accepts.
    model_config = ConfigDict(frozen=True)
    id: TeamsId
    channel_id: Literal["msteams"]
    service_url: Annotated[str, Field(max_length=2048)]
    user_id: TeamsId
    aad_object_id: TeamsId | None
    conversation: TeamsId
    tenants: tuple[TeamsId, ...]
    reply_to: TeamsId | None
    action_type: Literal["Action.Execute"]
    verb: Annotated[str, Field(max_length=64)]
    data: _Data


@dataclass(frozen=True)
class TeamsClick:
    """One person's Action.Execute on a request card, as Teams described it."""

    verb: Verb
    request_id: str
    activity_id: str
    user_id: str  # the Teams user id (29:...)
    aad_object_id: str | None
    tenant_id: str | None  # None when the conversation and channel data disagree
    conversation: str
    reply_to: str | None
    reason: str | None = None


_VERBS: dict[str, Verb] = {
    VERB_APPROVE: "approve",
    VERB_DENY: "deny",
    VERB_APPROVE_FOR: "approve_for",
    VERB_REFRESH: "refresh",
}


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused if it names a key twice (two readers could take different values)."""
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("duplicate key")
    return found


def parse_body(body: bytes) -> dict[str, Any] | None:
    """The JSON object of a request body, or None if it is anything else."""
    try:
        found = json.loads(body.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return found if isinstance(found, dict) else None


def parse_activity(activity: Mapping[str, Any]) -> TeamsClick | str | None:
    """The TeamsClick in an activity; a string saying why an invoke for a card action is malformed;
    None for an activity the gate does not act on (messages, conversation updates, other invokes)."""
    if activity.get("type") != "invoke" or activity.get("name") != INVOKE_NAME:
        return None
    try:
        invoke = read_invoke(activity)
        channel = invoke.channel_data
        action = invoke.value.action
        found = _Fields.model_validate(
            {
                "id": invoke.id,
                "channel_id": invoke.channel_id,
                "service_url": invoke.service_url,
                "user_id": invoke.from_.id,
                "aad_object_id": invoke.from_.aad_object_id,
                "conversation": invoke.conversation.id,
                "tenants": tuple(
                    t
                    for t in (
                        invoke.conversation.tenant_id,
                        channel.tenant.id if channel is not None and channel.tenant is not None else None,
                    )
                    if t
                ),
                "reply_to": invoke.reply_to_id,
                "action_type": action.type,
                "verb": action.verb or "",
                "data": action.data,
            }
        )
    except (InvokeMalformed, ValidationError):
        return "the card action is malformed"
    verb = _VERBS.get(found.verb)
    if verb is None:
        return "the card action is not one this gate knows"
    request_id = found.data.request_id.strip().upper()
    if not _REQUEST_ID.fullmatch(request_id):
        return "the card action names no approval request"
    reason = found.data.reason.strip() if found.data.reason else None
    if reason is not None and len(reason) > MAX_REASON:
        return f"keep the reason under {MAX_REASON} characters"
    aad = found.aad_object_id
    tenants = set(found.tenants)
    return TeamsClick(
        verb=verb,
        request_id=request_id,
        activity_id=found.id,
        user_id=found.user_id,
        aad_object_id=aad.lower() if aad and _GUID.fullmatch(aad) else None,
        tenant_id=next(iter(tenants)).lower() if len(tenants) == 1 else None,
        conversation=found.conversation,
        reply_to=found.reply_to,
        reason=reason or None,
    )
