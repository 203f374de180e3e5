"""Escalation: a request nobody eligible has decided within a step's `after` is opened to that
step's further groups, once per step, by a sealed `approval.escalated` record (which the engine
reads back when it checks who may decide); a tier may have several steps, each later than the one
before, and expiry still ends the request. Driven by the engine's clock, at every sweep."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from mcp_gate.approvals import ApprovalRequest, format_duration
from mcp_gate.clock import utc_iso
from mcp_gate.events import EventType
from mcp_gate.policy import Escalation
from mcp_gate.seals import seal, sealed_by
from mcp_gate.storage.base import Tx

if TYPE_CHECKING:
    from mcp_gate.holds import ApprovalEngine

__all__ = ["ESCALATED", "escalate_due", "escalated_groups", "escalation_steps"]

ESCALATED: EventType = "approval.escalated"
REQUESTED: EventType = "approval.requested"


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


async def escalation_steps(engine: ApprovalEngine, request: ApprovalRequest) -> list[dict[str, Any]]:
    """The sealed escalation records of `request`, in order: what its messages show of it."""
    correlation_id = request.correlation_id
    bodies = await engine.store.read(lambda tx: tx.bodies_for(correlation_id, (ESCALATED,)))
    return [b for b in bodies if b.get("request_id") == request.id and sealed_by(engine.key, b)]


def _own_steps(
    key: bytes, request: ApprovalRequest, bodies: Iterable[Mapping[str, Any]]
) -> tuple[Escalation, ...] | None:
    """The escalation a manifest rule gave `request`, sealed in its `approval.requested` record
    (None: it has none of its own, and its tier's steps apply)."""
    for body in bodies:
        if body.get("event_type") != REQUESTED or body.get("request_id") != request.id:
            continue
        steps = body.get("escalation")
        if not steps or not sealed_by(key, body):
            return None
        return tuple(
            Escalation(float(s["after"]), tuple(str(g) for g in s["groups"]), s.get("channel")) for s in steps
        )
    return None


async def escalate_due(engine: ApprovalEngine) -> int:
    """Record each escalation step that is due for a pending, unexpired request (its rule's steps,
    else its tier's); return how many."""
    escalations = engine.settings.escalations
    if not escalations and not engine.rule_escalations:
        return 0
    now = engine.clock.now()

    def write(tx: Tx) -> int:
        count = 0
        pending = tx.requests(states=("pending",))
        for gone in engine.own_escalation.keys() - {r.id for r in pending}:
            del engine.own_escalation[gone]  # what was read of a closed request is not needed again
        for request in pending:
            if not request.groups or request.expired_at(now):
                continue  # a request any approver may decide has nobody further to reach
            own = engine.own_escalation.get(request.id)
            if own is None:
                bodies = tx.bodies_for(request.correlation_id, (REQUESTED,))
                own = engine.own_escalation[request.id] = _own_steps(engine.key, request, bodies) or ()
            steps = own or escalations.get(request.tier)
            if not steps:
                continue
            due = [
                (number, step)
                for number, step in enumerate(steps, start=1)
                if now >= request.created_at + timedelta(seconds=step.after)
            ]
            if not due:
                continue
            earlier = tx.bodies_for(request.correlation_id, (ESCALATED,))
            done = {
                b.get("step", 1)
                for b in earlier
                if b.get("request_id") == request.id and sealed_by(engine.key, b)
            }
            reached = [*request.groups, *escalated_groups(engine.key, request, earlier)]
            for number, step in due:
                if number in done:
                    continue
                event = engine.events(
                    ESCALATED,
                    request.correlation_id,
                    request_id=request.id,
                    step=number,
                    after=format_duration(timedelta(seconds=step.after)),
                    from_groups=list(dict.fromkeys(reached)),
                    to_groups=[g for g in step.groups if g not in reached],
                    channel=step.channel,
                    server=request.binding.server,
                    tool=request.binding.tool,
                    tier=request.tier,
                    requester={"agent": request.binding.agent, "owner": request.binding.owner},
                    expires_at=utc_iso(request.expires_at),
                    votes=len(request.votes),
                )
                tx.append([seal(engine.key, event)])
                reached.extend(g for g in step.groups if g not in reached)
                count += 1
        return count

    return await engine.store.transact(write)
