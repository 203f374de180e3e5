"""Escalation: a request nobody eligible has decided within its tier's `escalate_after` is opened to
further groups, once, by a sealed `approval.escalated` record (which the engine reads back when it
checks who may decide); expiry still ends it. Driven by the engine's clock, at every sweep."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from mcp_gate.approvals import ApprovalRequest, format_duration
from mcp_gate.clock import utc_iso
from mcp_gate.events import EventType
from mcp_gate.seals import seal, sealed_by
from mcp_gate.storage.base import Tx

if TYPE_CHECKING:
    from mcp_gate.holds import ApprovalEngine

__all__ = ["ESCALATED", "escalate_due", "escalated_groups"]

ESCALATED: EventType = "approval.escalated"


def escalated_groups(
    key: bytes, request: ApprovalRequest, bodies: Iterable[Mapping[str, Any]]
) -> tuple[str, ...]:
    """The groups sealed escalation records of `request` added (an unsealed record adds nothing)."""
    added: list[str] = []
    for body in bodies:
        if body.get("event_type") != ESCALATED or body.get("request_id") != request.id:
            continue
        if not sealed_by(key, body):
            continue
        added.extend(str(g) for g in body.get("to_groups") or [] if str(g) not in added)
    return tuple(added)


async def escalate_due(engine: ApprovalEngine) -> int:
    """Record an escalation for every pending, unexpired request whose tier's time is up; return how many."""
    escalations = engine.settings.escalations
    if not escalations:
        return 0
    now = engine.clock.now()

    def write(tx: Tx) -> int:
        count = 0
        for request in tx.requests(states=("pending",)):
            step = escalations.get(request.tier)
            if step is None or not request.groups or request.expired_at(now):
                continue  # a request any approver may decide has nobody further to reach
            if now < request.created_at + timedelta(seconds=step.after):
                continue
            earlier = tx.bodies_for(request.correlation_id, (ESCALATED,))
            if any(b.get("request_id") == request.id and sealed_by(engine.key, b) for b in earlier):
                continue
            event = engine.events(
                ESCALATED,
                request.correlation_id,
                request_id=request.id,
                step=1,
                after=format_duration(timedelta(seconds=step.after)),
                from_groups=list(request.groups),
                to_groups=[g for g in step.groups if g not in request.groups],
                channel=step.channel,
                server=request.binding.server,
                tool=request.binding.tool,
                tier=request.tier,
                requester={"agent": request.binding.agent, "owner": request.binding.owner},
                expires_at=utc_iso(request.expires_at),
                votes=len(request.votes),
            )
            tx.append([seal(engine.key, event)])
            count += 1
        return count

    return await engine.store.transact(write)
