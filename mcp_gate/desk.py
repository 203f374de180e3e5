"""The approver service: what an approver is shown and can do, as JSON-ready values, for every channel.

The approvers' HTTP API, the CLI over the gate's database, Slack, Teams and the console each hand
their decisions to a `Desk`, which hands them to the approval engine; the engine alone decides who
may decide. The views here are what every channel shows of a request or a grant."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, assert_never

from mcp_gate.approvals import (
    ApprovalRequest,
    Approved,
    Approver,
    Denied,
    Grant,
    Pending,
    Refusal,
    quorum_progress,
)
from mcp_gate.availability import mark_away, mark_back, read_availability
from mcp_gate.breakglass import break_glass
from mcp_gate.clock import utc_iso
from mcp_gate.config import BreakGlassSettings, ConsoleSettings
from mcp_gate.escalation import ESCALATED, escalated_groups
from mcp_gate.evidence import Record
from mcp_gate.holds import ApprovalEngine
from mcp_gate.policy import SEPARATOR
from mcp_gate.redaction import DEFAULT_RULES, RedactionRules, scrub

__all__ = ["RECENT_CALLS", "Desk", "grant_view", "normal_id", "request_view", "summarize"]

RECENT_CALLS = 10


# -- views: what an approver is shown, as JSON values ------------------------------------------


def request_view(
    request: ApprovalRequest, now: datetime, rules: RedactionRules = DEFAULT_RULES
) -> dict[str, Any]:
    b = request.binding
    return {
        "id": request.id,
        "state": request.state,
        "name": f"{b.server}{SEPARATOR}{b.tool}",
        "server": b.server,
        "tool": b.tool,
        "requester": {"agent": b.agent, "owner": b.owner},
        "tier": request.tier,
        "rule": request.rule,
        "reason": request.reason,
        "args": scrub(request.args, rules),
        "args_sha256": b.args_sha256,
        "pin": b.pin,
        "policy_sha256": b.policy_sha256,
        "required": request.required,
        "groups": list(request.groups),
        "approvals": len(request.approvals),
        "quorum": quorum_progress(request),
        "votes": [
            {
                "approver": v.approver,
                "verdict": v.verdict,
                "channel": v.channel,
                "at": utc_iso(v.at),
                "note": v.note,
            }
            for v in request.votes
        ],
        "created_at": utc_iso(request.created_at),
        "expires_at": utc_iso(request.expires_at),
        "expires_in_seconds": max(0, int((request.expires_at - now).total_seconds())),
        "correlation_id": request.correlation_id,
        "closed_by": request.closed_by,
        "justification": request.justification,
    }


def grant_view(grant: Grant, now: datetime) -> dict[str, Any]:
    return {
        "id": grant.id,
        "name": f"{grant.server}{SEPARATOR}{grant.tool}",
        "server": grant.server,
        "tool": grant.tool,
        "requester": {"agent": grant.agent, "owner": grant.owner},
        "created_by": grant.created_by,
        "created_at": utc_iso(grant.created_at),
        "expires_at": utc_iso(grant.expires_at),
        "expires_in_seconds": max(0, int((grant.expires_at - now).total_seconds())),
        "live": grant.live(now),
        "request_id": grant.request_id,
        "note": grant.note,
        "revoked_at": None if grant.revoked_at is None else utc_iso(grant.revoked_at),
        "revoked_by": grant.revoked_by,
    }


def _call_view(record: Record, rules: RedactionRules) -> dict[str, Any]:
    body = record.body
    server, tool = body.get("server"), body.get("tool")
    return {
        "name": f"{server}{SEPARATOR}{tool}" if server else tool,
        "args": scrub(body.get("args"), rules),
        "ts": record.ts,
        "correlation_id": record.correlation_id,
    }


def _who(requester: dict[str, Any]) -> str:
    return f"{requester['agent']} for {requester['owner']}"


def summarize(outcome: dict[str, Any]) -> str:
    """One line saying what a decision did, for the person who made it."""
    if "grant" in outcome and "request" not in outcome:
        g = outcome["grant"]
        return f"revoked grant {g['id']}: {g['name']} by {_who(g['requester'])} needs approval again"
    r = outcome["request"]
    what = f"{r['name']} by {_who(r['requester'])}"
    match outcome["outcome"]:
        case "approved":
            line = f"approved {r['id']} ({r['approvals']} of {r['required']}): {what}"
        case "pending":
            missing = r["required"] - r["approvals"]
            line = f"recorded your approval of {r['id']}: {r['quorum']}; {what} waits for {missing} more"
        case "denied":
            vote = next((v for v in r["votes"] if v["verdict"] == "deny"), None)
            because = f": {vote['note']}" if vote and vote["note"] else ""
            line = f"denied {r['id']}: {what} will not run{because}"
        case "revoked":
            line = f"revoked {r['id']}: {what} will not run"
        case other:
            line = f"{other} {r['id']}: {what}"
    grant = outcome.get("grant")
    if grant is not None:
        line += (
            f"; grant {grant['id']} lets {grant['requester']['agent']} run {grant['name']} "
            f"without approval until {grant['expires_at']}"
        )
    return line


# -- the desk: what an approver can do, for the API and the CLI alike ------------------------------


@dataclass
class Desk:
    """An approver's operations over an ApprovalEngine, returning JSON-ready values (or a Refusal).

    The HTTP API serves it from the gate's own process; the CLI uses it over the shared SQLite
    file when it does not go through the API. `channel` is recorded with every decision."""

    engine: ApprovalEngine
    channel: str
    rules: RedactionRules = DEFAULT_RULES  # shown arguments are scrubbed once more with these
    # The configured approvers: who may decide each request, and which of them are away.
    approvers: Mapping[str, Approver] = field(default_factory=dict)
    links: ConsoleSettings | None = None  # with a public URL, each view names its console page

    def _view(self, request: ApprovalRequest, now: datetime) -> dict[str, Any]:
        view = request_view(request, now, self.rules)
        url = None if self.links is None else self.links.request_url(request.id)
        if url is not None:
            view["console_url"] = url
        return view

    def _now(self) -> datetime:
        return self.engine.clock.now()

    async def open_requests(self) -> list[dict[str, Any]]:
        now = self._now()
        requests = await self.engine.pending()
        present = await read_availability(self.engine.store, self.engine.key, now) if self.approvers else None
        views = []
        for r in requests:
            view = self._view(r, now)
            if present is not None:
                added = await self._escalated_to(r)
                view["availability"] = present.request_view(r, self.approvers.values(), added)
            views.append(view)
        return views

    async def _escalated_to(self, request: ApprovalRequest) -> tuple[str, ...]:
        bodies = await self.engine.store.read(lambda tx: tx.bodies_for(request.correlation_id, (ESCALATED,)))
        return escalated_groups(self.engine.key, request, bodies)

    async def show(self, request_id: str) -> dict[str, Any]:
        request = await self.engine.get(normal_id(request_id))
        now = self._now()
        view = self._view(request, now)
        agent = request.binding.agent
        mine = await self.engine.store.read(lambda tx: tx.recent_calls(agent, RECENT_CALLS))
        view["recent_calls"] = [_call_view(r, self.rules) for r in mine]
        steps = await self.engine.store.read(lambda tx: tx.bodies_for(request.correlation_id, (ESCALATED,)))
        view["escalations"] = [
            {
                "step": b.get("step", 1),
                "after": b.get("after"),
                "to_groups": b.get("to_groups"),
                "at": b.get("ts"),
            }
            for b in steps
            if b.get("request_id") == request.id
        ]
        if self.approvers:
            present = await read_availability(self.engine.store, self.engine.key, now)
            added = escalated_groups(self.engine.key, request, steps)
            view["availability"] = present.request_view(request, self.approvers.values(), added)
        return view

    async def approvers_view(self) -> list[dict[str, Any]]:
        """Every configured approver, their groups, and whether they are away now."""
        present = await read_availability(self.engine.store, self.engine.key, self._now())
        return [
            {
                "name": a.name,
                "groups": sorted(a.groups),
                "away": present.away[a.name].view() if present.is_away(a.name) else None,
            }
            for a in sorted(self.approvers.values(), key=lambda a: a.name)
        ]

    async def away(self, approver: Approver, *, until: datetime | None, note: str | None) -> dict[str, Any]:
        """Mark `approver` away; ValueError when `until` is not in the future."""
        mark = await mark_away(self.engine, approver, until=until, note=note, channel=self.channel)
        return {"outcome": "away", "away": mark.view()}

    async def back(self, approver: Approver) -> dict[str, Any]:
        was_away = await mark_back(self.engine, approver, channel=self.channel)
        return {"outcome": "back" if was_away else "not away", "approver": approver.name}

    async def approve(
        self,
        request_id: str,
        approver: Approver,
        *,
        note: str | None = None,
        grant_for: timedelta | None = None,
    ) -> dict[str, Any] | Refusal:
        request_id = normal_id(request_id)
        outcome = await self.engine.decide(
            request_id, approver, "approve", channel=self.channel, note=note, grant_for=grant_for
        )
        result = self._decided(outcome)
        if isinstance(result, Refusal) or grant_for is None:
            return result
        request = result["request"]
        grants = await self.engine.store.read(
            lambda tx: tx.grants_for(
                request["requester"]["agent"],
                request["requester"]["owner"],
                request["server"],
                request["tool"],
            )
        )
        made = [g for g in grants if g.request_id == request_id and g.created_by == approver.name]
        if made:
            result["grant"] = grant_view(max(made, key=lambda g: g.created_at), self._now())
        return result

    async def deny(self, request_id: str, approver: Approver, *, reason: str) -> dict[str, Any] | Refusal:
        outcome = await self.engine.decide(
            normal_id(request_id), approver, "deny", channel=self.channel, note=reason
        )
        return self._decided(outcome)

    async def revoke(self, request_id: str, approver: Approver) -> dict[str, Any] | Refusal:
        outcome = await self.engine.revoke(normal_id(request_id), approver)
        if isinstance(outcome, Refusal):
            return outcome
        return {"outcome": "revoked", "request": self._view(outcome.request, self._now())}

    async def grants(self, *, live_only: bool = True) -> list[dict[str, Any]]:
        now = self._now()
        return [grant_view(g, now) for g in await self.engine.grants(live_only=live_only)]

    async def revoke_grant(self, grant_id: str, approver: Approver) -> dict[str, Any] | Refusal:
        outcome = await self.engine.revoke_grant(normal_id(grant_id), approver)
        if isinstance(outcome, Refusal):
            return outcome
        return {"outcome": "revoked", "grant": grant_view(outcome, self._now())}

    async def break_glass(
        self,
        request_id: str,
        operator: Approver,
        *,
        reason: str,
        settings: BreakGlassSettings,
        approvers: Mapping[str, Approver],
    ) -> dict[str, Any] | Refusal:
        outcome = await break_glass(
            self.engine,
            normal_id(request_id),
            operator,
            reason,
            settings=settings,
            approvers=approvers,
            channel=self.channel,
        )
        if isinstance(outcome, Refusal):
            return outcome
        return {
            "outcome": "released by break-glass",
            "notified": list(outcome.notified),
            "request": self._view(outcome.request, self._now()),
        }

    def _decided(self, outcome: Pending | Approved | Denied | Refusal) -> dict[str, Any] | Refusal:
        now = self._now()
        match outcome:
            case Refusal():
                return outcome
            case Pending(request=request):
                return {"outcome": "pending", "request": self._view(request, now)}
            case Approved(request=request):
                return {"outcome": "approved", "request": self._view(request, now)}
            case Denied(request=request):
                return {"outcome": "denied", "request": self._view(request, now)}
            case _:
                assert_never(outcome)


def normal_id(identifier: str) -> str:
    return identifier.strip().upper()
