"""Bot Framework activities from Teams (Action.Execute invokes) parsed strictly into TeamsClick values."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mcp_gate.approvals import ID_ALPHABET, ID_LENGTH
from mcp_gate.channels.slack_clicks import MAX_REASON
from mcp_gate.channels.teams_cards import VERB_APPROVE, VERB_APPROVE_FOR, VERB_DENY, VERB_REFRESH

__all__ = ["INVOKE_NAME", "TeamsClick", "parse_activity", "parse_body"]

INVOKE_NAME = "adaptiveCard/action"
MAX_ID = 512  # Teams ids (29:..., 19:...@thread.tacv2) are well under this
_REQUEST_ID = re.compile(f"[{re.escape(ID_ALPHABET)}]{{{ID_LENGTH}}}")
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
TeamsId = Annotated[str, Field(min_length=1, max_length=MAX_ID)]
Verb = Literal["approve", "deny", "approve_for", "refresh"]


class _Loose(BaseModel):
    # Teams adds fields to activities freely: keep what the gate reads, ignore the rest.
    model_config = ConfigDict(extra="ignore", frozen=True)


class _From(_Loose):
    id: TeamsId
    aadObjectId: TeamsId | None = None  # noqa: N815 (the wire's spelling)


class _Conversation(_Loose):
    id: TeamsId
    tenantId: TeamsId | None = None  # noqa: N815


class _Tenant(_Loose):
    id: TeamsId


class _ChannelData(_Loose):
    tenant: _Tenant | None = None


class _Data(BaseModel):
    # What rides in an action's data: the request id the card put there and the card's one input.
    model_config = ConfigDict(extra="forbid", frozen=True)
    request_id: Annotated[str, Field(max_length=64)]
    reason: Annotated[str, Field(max_length=4 * MAX_REASON)] | None = None


class _Action(_Loose):
    type: Literal["Action.Execute"]
    verb: Annotated[str, Field(max_length=64)]
    data: _Data


class _Value(_Loose):
    action: _Action
    trigger: Literal["manual", "automatic"] | None = None


class _Invoke(_Loose):
    type: Literal["invoke"]
    name: Literal["adaptiveCard/action"]
    id: TeamsId
    channelId: Literal["msteams"]  # noqa: N815
    serviceUrl: Annotated[str, Field(max_length=2048)]  # noqa: N815
    from_: _From = Field(alias="from")
    conversation: _Conversation
    channelData: _ChannelData | None = None  # noqa: N815
    replyToId: TeamsId | None = None  # noqa: N815
    value: _Value


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
        invoke = _Invoke.model_validate(activity)
    except ValidationError:
        return "the card action is malformed"
    action = invoke.value.action
    verb = _VERBS.get(action.verb)
    if verb is None:
        return "the card action is not one this gate knows"
    request_id = action.data.request_id.strip().upper()
    if not _REQUEST_ID.fullmatch(request_id):
        return "the card action names no approval request"
    reason = action.data.reason.strip() if action.data.reason else None
    if reason is not None and len(reason) > MAX_REASON:
        return f"keep the reason under {MAX_REASON} characters"
    aad = invoke.from_.aadObjectId
    tenants = {
        t
        for t in (
            invoke.conversation.tenantId,
            invoke.channelData.tenant.id if invoke.channelData and invoke.channelData.tenant else None,
        )
        if t
    }
    return TeamsClick(
        verb=verb,
        request_id=request_id,
        activity_id=invoke.id,
        user_id=invoke.from_.id,
        aad_object_id=aad.lower() if aad and _GUID.fullmatch(aad) else None,
        tenant_id=next(iter(tenants)).lower() if len(tenants) == 1 else None,
        conversation=invoke.conversation.id,
        reply_to=invoke.replyToId,
        reason=reason or None,
    )
