"""The elicitation channel: ask the person at the agent in their own client, in both protocol eras."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol, assert_never

import anyio
import mcp_types as types
from mcp import MCPError
from mcp.server import ServerRequestContext
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from mcp_gate.approvals import Binding
from mcp_gate.seals import load_key

__all__ = [
    "ASK_TIMEOUT",
    "CONFIRM_KEY",
    "CONFIRM_SCHEMA",
    "JUSTIFY_KEY",
    "JUSTIFY_SCHEMA",
    "MAX_JUSTIFICATION",
    "MAX_REASON",
    "STATE_LIFETIME",
    "Answer",
    "Asker",
    "BadState",
    "Cancelled",
    "Claims",
    "Confirmed",
    "ContextAsker",
    "Declined",
    "Era",
    "Justified",
    "Unsupported",
    "check_flat_schema",
    "confirm_answer",
    "describe_answer",
    "input_required",
    "justification_answer",
    "load_key",
    "mismatch",
    "new_claims",
    "seal",
    "unseal",
]

Era = Literal["legacy", "modern"]

CONFIRM_KEY = "confirm"
JUSTIFY_KEY = "justification"
MAX_REASON = 500
MAX_JUSTIFICATION = 1000
MAX_STATE_CHARS = 64 * 1024  # a relayed downstream state rides inside
STATE_LIFETIME = timedelta(minutes=10)
ASK_TIMEOUT = STATE_LIFETIME.total_seconds()  # how long a 2025-era ask may stay open
_STATE_VERSION = "v1"
_STATE_CONTEXT = b"mcp-gate/request-state/v1\x00"

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


# -- sealed request_state (2026-07-28) -------------------------------------------------------------


@dataclass(frozen=True)
class Claims:
    """What a request_state vouches for: one ask, for one exact call, until `expires_at`, once."""

    kind: Literal["confirm", "justification", "relay"]
    correlation_id: str
    agent: str
    owner: str
    server: str
    tool: str
    args_sha256: str
    pin: str
    policy_sha256: str
    expires_at: str  # ISO 8601 UTC
    nonce: str
    inner: str | None = None  # relay: the downstream's own request_state, passed back to it


@dataclass(frozen=True)
class BadState:
    """A request_state the gate will not honour; `why` is written for the agent."""

    code: Literal["tampered", "expired", "mismatched", "replayed"]
    why: str


def new_claims(
    kind: Literal["confirm", "justification", "relay"],
    correlation_id: str,
    binding: Binding,
    now: datetime,
    inner: str | None = None,
) -> Claims:
    return Claims(
        kind=kind,
        correlation_id=correlation_id,
        agent=binding.agent,
        owner=binding.owner,
        server=binding.server,
        tool=binding.tool,
        args_sha256=binding.args_sha256,
        pin=binding.pin,
        policy_sha256=binding.policy_sha256,
        expires_at=(now + STATE_LIFETIME).isoformat(),
        nonce=secrets.token_urlsafe(18),
        inner=inner,
    )


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload: str) -> bytes:
    return hmac.new(key, _STATE_CONTEXT + payload.encode("ascii"), hashlib.sha256).digest()


def seal(key: bytes, claims: Claims) -> str:
    """`v1.<payload>.<HMAC-SHA256>`: readable by anyone, changeable by nobody without the key."""
    payload = _b64(json.dumps(asdict(claims), sort_keys=True, separators=(",", ":")).encode())
    return f"{_STATE_VERSION}.{payload}.{_b64(_mac(key, payload))}"


_TAMPERED = (
    "the request_state sent back is not one this gate issued (it was changed or forged); "
    "call the tool again without it"
)


def unseal(key: bytes, token: str, *, now: datetime) -> Claims | BadState:
    """Authenticate a request_state the client echoed and check it has not expired."""
    if not isinstance(token, str) or len(token) > MAX_STATE_CHARS:
        return BadState("tampered", _TAMPERED)
    version, _, rest = token.partition(".")
    payload, _, mac = rest.partition(".")
    if version != _STATE_VERSION or not payload or not mac or not payload.isascii() or not mac.isascii():
        return BadState("tampered", _TAMPERED)
    # The MAC first: an unauthenticated payload is never parsed (deep nesting in it would raise).
    try:
        presented = _unb64(mac)
    except (binascii.Error, ValueError):
        return BadState("tampered", _TAMPERED)
    if not hmac.compare_digest(presented, _mac(key, payload)):
        return BadState("tampered", _TAMPERED)
    try:
        claims = Claims(**json.loads(_unb64(payload)))
        expires_at = datetime.fromisoformat(claims.expires_at)
    except (TypeError, ValueError):  # authentic but of another shape: treat as foreign
        return BadState("tampered", _TAMPERED)
    if now >= expires_at:
        return BadState(
            "expired",
            f"the question this answers expired at {expires_at:%H:%M:%S} UTC; "
            "call the tool again to be asked anew",
        )
    return claims


def mismatch(claims: Claims, binding: Binding, kind: str) -> str | None:
    """Why authentic claims do not fit the call now being made, or None if they do."""
    if claims.kind != kind:
        return f"it answers a {claims.kind} question, not a {kind} question"
    if (claims.agent, claims.owner) != (binding.agent, binding.owner):
        return "it was issued to another requester"
    if (claims.server, claims.tool) != (binding.server, binding.tool):
        return f"it was issued for {claims.server}__{claims.tool}"
    if claims.args_sha256 != binding.args_sha256:
        return "it was issued for other arguments"
    if claims.pin != binding.pin:
        return "the tool's definition changed since it was issued"
    if claims.policy_sha256 != binding.policy_sha256:
        return "the gate's policy changed since it was issued"
    return None


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


# -- the person at the agent, per era -------------------------------------------------------------------


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


class ContextAsker:
    """An `Asker` over one low-level SDK request context (the front server's tools/call)."""

    def __init__(self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> None:
        self._ctx = ctx
        self._params = params

    @property
    def era(self) -> Era:
        return "modern" if self._ctx.protocol_version in MODERN_PROTOCOL_VERSIONS else "legacy"

    @property
    def can_elicit(self) -> bool:
        caps = self._ctx.session.client_capabilities
        if caps is None or caps.elicitation is None:
            return False
        # An empty elicitation capability means form mode (the spec's backwards-compatible reading).
        return caps.elicitation.form is not None or caps.elicitation.url is None

    @property
    def request_state(self) -> str | None:
        return self._params.request_state

    async def ask(self, message: str, schema: Mapping[str, Any]) -> types.ElicitResult | Unsupported:
        if self.era != "legacy":
            return Unsupported("a 2026-07-28 client cannot be asked in the middle of a call")
        try:
            return await self._ctx.session.elicit_form(
                message, dict(schema), related_request_id=self._ctx.request_id
            )
        except MCPError as exc:
            return Unsupported(f"the client could not show the question ({exc.error.message[:200]})")
        except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            return Unsupported(f"the client went away ({type(exc).__name__})")

    def answer(self, key: str) -> types.ElicitResult | None:
        found = (self._params.input_responses or {}).get(key)
        return found if isinstance(found, types.ElicitResult) else None

    def responses(self) -> types.InputResponses | None:
        return self._params.input_responses
