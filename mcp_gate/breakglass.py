"""Break-glass: an allowed operator releases one held call without its approvals, loudly recorded.

The operator is an approver (authenticated by their token, like every decision) in a group that
`[breakglass] groups` names. A use is checked and recorded in one transaction: never on a request
made on the operator's own behalf, only on a pending, unexpired request, and only with a reason.
It moves the request to `approved` without a vote and writes a sealed `breakglass.used` record
naming who, why, what and whom it notifies; the engine's release then accepts that record in place
of the approvals (seals.derive), once, like any approval. A refused attempt is recorded too
(`breakglass.refused`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from mcp_gate.approvals import ApprovalRequest, Approver, Refusal
from mcp_gate.clock import utc_iso
from mcp_gate.config import BreakGlassSettings
from mcp_gate.errors import NoSuchRequest
from mcp_gate.holds import ApprovalEngine
from mcp_gate.seals import seal
from mcp_gate.storage.base import Tx

__all__ = ["BrokeGlass", "break_glass", "breakglass_refusal", "tier_approvers"]

MAX_REASON = 2000


@dataclass(frozen=True)
class BrokeGlass:
    """The request, now approved by break-glass, and the approvers told about it."""

    request: ApprovalRequest
    notified: tuple[str, ...]


def tier_approvers(request: ApprovalRequest, approvers: Mapping[str, Approver]) -> tuple[str, ...]:
    """Every approver who could have decided this request: its groups' members (any approver when
    it names none), the requester's owner excepted."""
    owner = request.binding.owner.strip().lower()
    return tuple(
        sorted(
            a.name
            for a in approvers.values()
            if (not request.groups or a.groups & set(request.groups)) and owner not in a.identities()
        )
    )


def breakglass_refusal(
    request: ApprovalRequest, operator: Approver, settings: BreakGlassSettings, reason: str, *, now: datetime
) -> Refusal | None:
    """Why `operator` may not break glass on `request` now, or None (pure)."""
    if not settings.groups:
        return Refusal("breakglass-off", "break-glass is off: [breakglass] groups names nobody")
    if not settings.allows(operator):
        return Refusal(
            "not-allowed",
            f"{operator.name} may not break glass: it needs a member of {', '.join(sorted(settings.groups))}",
        )
    if request.binding.owner.strip().lower() in operator.identities():
        return Refusal(
            "own-request",
            f"{operator.name} cannot break glass on request {request.id}: it was made on behalf of "
            f"{request.binding.owner}, and nobody releases their own calls",
        )
    if not reason.strip():
        return Refusal("no-reason", "break-glass needs a reason; it is recorded and sent to every approver")
    if len(reason) > MAX_REASON:
        return Refusal("no-reason", f"the reason is longer than {MAX_REASON} characters")
    if request.state != "pending":
        return Refusal(
            "not-pending", f"request {request.id} is {request.state.replace('_', ' ')}, not pending"
        )
    if request.expired_at(now):
        return Refusal("expired", f"request {request.id} has expired; the agent must call again")
    return None


async def break_glass(
    engine: ApprovalEngine,
    request_id: str,
    operator: Approver,
    reason: str,
    *,
    settings: BreakGlassSettings,
    approvers: Mapping[str, Approver],
    channel: str,
) -> BrokeGlass | Refusal:
    """Check and record one break-glass use in one transaction (which wakes the held call)."""

    def write(tx: Tx) -> BrokeGlass | Refusal:
        request = tx.get_request(request_id)
        if request is None:
            raise NoSuchRequest(request_id)
        now = engine.clock.now()
        refusal = breakglass_refusal(request, operator, settings, reason, now=now)
        b = request.binding
        common = {
            "request_id": request.id,
            "operator": operator.name,
            "operator_email": operator.email,
            "channel": channel,
            "server": b.server,
            "tool": b.tool,
            "tier": request.tier,
            "requester": {"agent": b.agent, "owner": b.owner},
        }
        if refusal is not None:
            tx.append(
                [
                    engine.events(
                        "breakglass.refused",
                        request.correlation_id,
                        **common,
                        code=refusal.code,
                        why=refusal.why,
                    )
                ]
            )
            return refusal
        notified = tier_approvers(request, approvers)
        released = replace(request, state="approved")
        tx.save_request(released)
        used = engine.events(
            "breakglass.used",
            request.correlation_id,
            **common,
            reason=reason.strip(),
            rule=request.rule,
            pin=b.pin,
            args_sha256=b.args_sha256,
            required=request.required,
            groups=list(request.groups),
            expires_at=utc_iso(request.expires_at),
            notify=list(notified),
        )
        tx.append([seal(engine.key, used)])
        return BrokeGlass(released, notified)

    return await engine.store.transact(write)
