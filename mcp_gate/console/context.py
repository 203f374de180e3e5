"""What the console's pages show: a request in full context, its viewer's buttons, arguments laid out.

Every value here is read from the engine and the evidence store; nothing is decided here. Which
buttons a viewer gets is worked out by the same pure checks the engine runs when a decision
arrives (`approvals.decide`, `approvals.revoke`, `approvals.grant_refusal`), so a page offers only what
the engine would accept, and the engine checks again whatever is posted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from mcp_gate.approvals import ApprovalRequest, Approver, Refusal, decide, grant_refusal, revoke
from mcp_gate.clock import utc_iso
from mcp_gate.desk import Desk
from mcp_gate.escalation import ESCALATED, escalated_groups
from mcp_gate.events import FINAL_STATES, RELEASED_STATES, EventType

__all__ = ["GRANT_CHOICES", "Abilities", "abilities", "lay_out", "request_context"]

FOLD_AT = 240  # characters of text shown before the rest is folded away
GRANT_CHOICES = (15, 30, 60)  # minutes offered for "approve for N minutes"
OUTCOMES: tuple[EventType, ...] = ("call.executed", "call.failed", "call.refused", "call.outcome_unknown")
EARLIER = 10  # earlier decisions on the same tool shown


@dataclass(frozen=True)
class Abilities:
    """What one viewer may do with one request now, and why not where not."""

    approve: bool
    deny: bool
    grant_minutes: tuple[int, ...]
    revoke: bool
    why_not: str | None  # shown instead of the buttons

    @property
    def any(self) -> bool:
        return self.approve or self.deny or self.revoke


def abilities(
    engine_key: bytes,
    request: ApprovalRequest,
    viewer: Approver,
    policy: str,
    bodies: list[dict[str, Any]],
    now: Any,
) -> Abilities:
    """The buttons `viewer` gets for `request`: those the engine's own checks would accept now."""
    added = escalated_groups(engine_key, request, bodies)
    eligible = replace(request, groups=(*request.groups, *added)) if added else request
    approve = decide(eligible, viewer, "approve", channel="console", now=now)
    deny = decide(eligible, viewer, "deny", channel="console", now=now)
    revoked = revoke(eligible, viewer, now=now)
    grants: tuple[int, ...] = ()
    if not isinstance(approve, Refusal):
        grants = tuple(
            m for m in GRANT_CHOICES if grant_refusal(request, timedelta(minutes=m), policy) is None
        )
    why = approve.why if isinstance(approve, Refusal) else None
    return Abilities(
        approve=not isinstance(approve, Refusal),
        deny=not isinstance(deny, Refusal),
        grant_minutes=grants,
        revoke=not isinstance(revoked, Refusal),
        why_not=why,
    )


def lay_out(args: Any) -> list[dict[str, Any]]:
    """Arguments as rows a person reads: short text as is, long text folded, structures as JSON."""
    if not isinstance(args, dict):
        return [{"key": "(arguments)", **_value(args)}]
    return [{"key": str(key), **_value(value)} for key, value in args.items()]


def _value(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        if len(value) > FOLD_AT or value.count("\n") > 3:
            return {
                "kind": "long",
                "head": value[:FOLD_AT].split("\n")[0][:120],
                "text": value,
                "size": len(value),
            }
        return {"kind": "text", "text": value}
    if isinstance(value, dict | list):
        return {"kind": "json", "text": json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)}
    return {"kind": "text", "text": json.dumps(value)}


async def request_context(desk: Desk, request_id: str, viewer: Approver) -> dict[str, Any]:
    """Everything the request page shows: the request, its tool, the requester's recent calls and
    their outcomes, earlier decisions on the same tool, the votes, and the viewer's buttons."""
    engine = desk.engine
    view = await desk.show(request_id)
    request = await engine.get(view["id"])
    now = engine.clock.now()
    pin = await engine.store.get_pin(request.binding.server, request.binding.tool)

    def gather(
        tx: Any,
    ) -> tuple[list[dict[str, Any]], dict[str, str], list[ApprovalRequest], list[dict[str, Any]]]:
        escalations = tx.bodies_for(request.correlation_id, (ESCALATED,))
        notes = [
            {"approver": b.get("approver"), "note": b.get("note"), "at": b.get("ts")}
            for b in tx.bodies_for(request.correlation_id, ("approval.annotated",))
            if b.get("request_id") == request.id
        ]
        outcomes = {}
        for call in view["recent_calls"]:
            found = tx.bodies_for(call["correlation_id"], OUTCOMES)
            outcomes[call["correlation_id"]] = found[-1]["event_type"] if found else "no outcome yet"
        earlier = [
            r
            for r in tx.requests(limit=200)
            if r.id != request.id
            and r.binding.server == request.binding.server
            and r.binding.tool == request.binding.tool
            and (r.state in FINAL_STATES or r.state in RELEASED_STATES)
        ]
        return escalations, outcomes, earlier[-EARLIER:][::-1], notes

    escalations, outcomes, earlier, notes = await engine.store.read(gather)
    for call in view["recent_calls"]:
        outcome = outcomes.get(call["correlation_id"], "no outcome yet").removeprefix("call.")
        if call["correlation_id"] == request.correlation_id and outcome == "no outcome yet":
            outcome = "this request"
        call["outcome"] = outcome
    definition = dict(pin.definition) if pin is not None else {}
    return {
        "r": view,
        "args_rows": lay_out(view["args"]),
        "tool": {
            "description": definition.get("description") or "",
            "title": definition.get("title"),
            "pin": request.binding.pin,
            "accepted_pin": pin.pin if pin is not None else None,
            "drifted": pin is not None and pin.drifted_pin is not None,
        },
        "earlier": [
            {
                "id": r.id,
                "state": r.state,
                "requester": f"{r.binding.agent} for {r.binding.owner}",
                "created_at": utc_iso(r.created_at),
                "by": ", ".join(f"{v.approver} ({v.verdict})" for v in r.votes) or (r.closed_by or ""),
            }
            for r in earlier
        ],
        "can": abilities(engine.key, request, viewer, engine.events.policy_sha256, escalations, now),
        "open": request.state == "pending" and not request.expired_at(now),
        "notes": notes,
    }
