"""The sealed 2026-07-28 request_state: what the gate vouches for when it asks in a result rather than
mid-call, sealed with an HMAC so that a client echoing it back can change nothing, and checked once."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Literal

from mcp_gate.approvals import Binding

__all__ = [
    "MAX_STATE_CHARS",
    "STATE_LIFETIME",
    "BadState",
    "Claims",
    "mismatch",
    "new_claims",
    "seal",
    "unseal",
]

MAX_STATE_CHARS = 64 * 1024  # a relayed downstream state rides inside
STATE_LIFETIME = timedelta(minutes=10)
_STATE_VERSION = "v1"
_STATE_CONTEXT = b"mcp-gate/request-state/v1\x00"


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
