"""The questions the pipeline puts to the person at the agent: the `Asker` it asks through, the
confirm and justification forms, and the answers read back from them, in both protocol eras."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, assert_never

import mcp_types as types

from mcp_gate.request_state import STATE_LIFETIME

__all__ = [
    "ASK_TIMEOUT",
    "CONFIRM_KEY",
    "CONFIRM_SCHEMA",
    "JUSTIFY_KEY",
    "JUSTIFY_SCHEMA",
    "MAX_JUSTIFICATION",
    "MAX_REASON",
    "Answer",
    "Asker",
    "Cancelled",
    "Confirmed",
    "Declined",
    "Era",
    "Justified",
    "Unsupported",
    "check_flat_schema",
    "confirm_answer",
    "describe_answer",
    "input_required",
    "justification_answer",
]

Era = Literal["legacy", "modern"]

CONFIRM_KEY = "confirm"
JUSTIFY_KEY = "justification"
MAX_REASON = 500
MAX_JUSTIFICATION = 1000
ASK_TIMEOUT = STATE_LIFETIME.total_seconds()  # how long a 2025-era ask may stay open

CONFIRM_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "confirm": {
            "type": "boolean",
            "title": "Run this call?",
            "description": "Yes runs it once, exactly as shown; no refuses it.",
        },
        "reason": {
            "type": "string",
            "title": "Reason (optional)",
            "description": "Recorded with your answer and told to the agent.",
            "maxLength": MAX_REASON,
        },
    },
    "required": ["confirm"],
}

JUSTIFY_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "justification": {
            "type": "string",
            "title": "Why is this needed?",
            "description": "Shown to the approvers who decide; declining cancels the request.",
            "minLength": 1,
            "maxLength": MAX_JUSTIFICATION,
        },
    },
    "required": ["justification"],
}

# -- flat forms ------------------------------------------------------------------------------------

_COMMON = frozenset({"type", "title", "description", "default"})
_PRIMITIVE_KEYS: Mapping[str, frozenset[str]] = {
    "string": _COMMON | {"minLength", "maxLength", "format", "enum", "enumNames", "oneOf"},
    "number": _COMMON | {"minimum", "maximum"},
    "integer": _COMMON | {"minimum", "maximum"},
    "boolean": _COMMON,
    "array": _COMMON | {"items", "minItems", "maxItems"},
}


def check_flat_schema(schema: Any) -> str | None:
    """Why `schema` is not a flat elicitation form (an object of primitive properties), or None.

    The SDK sends raw schemas unchecked; a client may render a nested one badly or not at all."""
    if not isinstance(schema, Mapping) or schema.get("type") != "object":
        return "the form is not an object schema"
    if set(schema) - {"type", "properties", "required", "title", "description", "$schema"}:
        return "the form has keys beyond type, properties and required"
    properties = schema.get("properties")
    if not isinstance(properties, Mapping) or not properties:
        return "the form has no properties"
    for name, prop in properties.items():
        if not isinstance(prop, Mapping):
            return f"property {name!r} is not a schema"
        kind = prop.get("type")
        allowed = _PRIMITIVE_KEYS.get(kind) if isinstance(kind, str) else None
        if allowed is None:
            return f"property {name!r} is not a string, number, integer, boolean or enum array"
        if set(prop) - allowed:
            return f"property {name!r} has keys a flat form does not allow"
        if kind == "array":
            items = prop.get("items")
            if not isinstance(items, Mapping) or not ({"enum"} <= set(items) or {"anyOf"} <= set(items)):
                return f"property {name!r} is an array that is not an enum list"
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) and r in properties for r in required):
        return "required names a property the form does not have"
    return None


# -- answers ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Confirmed:
    """The person accepted and said yes."""

    reason: str | None = None


@dataclass(frozen=True)
class Justified:
    """The person gave a justification for approvers to read."""

    text: str


@dataclass(frozen=True)
class Declined:
    """The person said no: declined the form, or accepted it answering confirm = false."""

    reason: str | None = None
    action: Literal["decline", "accept"] = "decline"


@dataclass(frozen=True)
class Cancelled:
    """The person dismissed the form without choosing (or it was never answered in time)."""


@dataclass(frozen=True)
class Unsupported:
    """The person could not be asked: the client cannot elicit, or asking failed."""

    why: str


Answer = Confirmed | Justified | Declined | Cancelled | Unsupported


def _text(value: Any, limit: int) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    # Untrusted text shown to approvers in terminals and chat: no control characters.
    text = "".join(ch for ch in " ".join(value.split()) if ch.isprintable())
    if not text:
        return None
    return text if len(text) <= limit else text[: limit - 1] + "…"


def confirm_answer(
    result: types.ElicitResult | Unsupported | None,
) -> Confirmed | Declined | Cancelled | Unsupported:
    """Read a confirm form's answer. It comes from the client: anything but confirm = true is a no."""
    match result:
        case None:
            return Cancelled()
        case Unsupported():
            return result
        case types.ElicitResult(action="accept", content=content):
            content = content if isinstance(content, dict) else {}
            reason = _text(content.get("reason"), MAX_REASON)
            if content.get("confirm") is True:
                return Confirmed(reason)
            return Declined(reason, action="accept")
        case types.ElicitResult(action="decline"):
            return Declined()
        case _:
            return Cancelled()


def justification_answer(
    result: types.ElicitResult | Unsupported | None,
) -> Justified | Declined | Cancelled | Unsupported:
    """Read a justification form's answer; an empty justification is no justification."""
    match result:
        case None:
            return Cancelled()
        case Unsupported():
            return result
        case types.ElicitResult(action="accept", content=content):
            text = _text((content or {}).get("justification"), MAX_JUSTIFICATION)
            return Justified(text) if text is not None else Declined(None, action="accept")
        case types.ElicitResult(action="decline"):
            return Declined()
        case _:
            return Cancelled()


def describe_answer(answer: Answer) -> dict[str, Any]:
    """The fields of an answer as evidence records them."""
    match answer:
        case Confirmed(reason=reason):
            return {"outcome": "confirmed", "verdict": "approve", "reason": reason}
        case Justified(text=text):
            return {"outcome": "justified", "justification": text}
        case Declined(reason=reason, action=action):
            return {"outcome": "declined", "verdict": "deny", "action": action, "reason": reason}
        case Cancelled():
            return {"outcome": "cancelled", "verdict": "deny"}
        case Unsupported(why=why):
            return {"outcome": "unsupported", "why": why}
        case _:
            assert_never(answer)


# -- asking in the 2026-07-28 era ----------------------------------------------------------------


def input_required(
    key: str, message: str, schema: Mapping[str, Any], state: str
) -> types.InputRequiredResult:
    """The 2026-07-28 way to ask: the client answers the form and retries the call with `state`."""
    problem = check_flat_schema(schema)
    if problem is not None:  # our own forms: a bug, not input
        raise ValueError(f"the gate's {key} form is not flat: {problem}")
    form = types.ElicitRequestFormParams(message=message, requested_schema=dict(schema))
    return types.InputRequiredResult(
        input_requests={key: types.ElicitRequest(params=form)}, request_state=state
    )


# -- the person at the agent -------------------------------------------------------------------


class Asker(Protocol):
    """The person at the agent for one call, through whatever their client's era allows."""

    @property
    def era(self) -> Era: ...

    @property
    def can_elicit(self) -> bool:
        """The client declared form elicitation."""
        ...

    @property
    def request_state(self) -> str | None:
        """The state a 2026-07-28 client echoed on a retry (hostile until unsealed)."""
        ...

    async def ask(self, message: str, schema: Mapping[str, Any]) -> types.ElicitResult | Unsupported:
        """2025-11-25: ask mid-call and wait for the answer."""
        ...

    def answer(self, key: str) -> types.ElicitResult | None:
        """2026-07-28: the answer the retry carries for input request `key`, if any."""
        ...

    def responses(self) -> types.InputResponses | None:
        """2026-07-28: every answer the retry carries (for a relayed downstream question)."""
        ...

    @property
    def can_open_url(self) -> bool:
        """The client declared URL-mode elicitation (2025-11-25)."""
        ...

    async def offer_url(self, message: str, url: str, elicitation_id: str) -> str | Unsupported:
        """2025-11-25: offer a link mid-call; the person's answer (accept, decline or cancel)."""
        ...

    async def url_done(self, elicitation_id: str) -> None:
        """2025-11-25: tell the client that what an offered link was about is over."""
        ...
