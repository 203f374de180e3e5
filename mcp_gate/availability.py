"""Approver availability: an approver marks themselves away (until a time, or until they are back);
notices are not routed to them while away, and a request whose every eligible approver is away says
so, as do `mcp-gate check`, the request's view and /metrics.

Being away changes who is told, never who may decide: an approver who is away may still decide a
request they are eligible for. Each mark is a sealed `approver.away` or `approver.back` record; the
latest sealed mark of an approver wins, and an unsealed one counts for nothing."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mcp_gate.approvals import ApprovalRequest, Approver, may_decide
from mcp_gate.clock import utc_iso
from mcp_gate.events import EventType
from mcp_gate.seals import seal, sealed_by
from mcp_gate.storage.base import Store

if TYPE_CHECKING:
    from mcp_gate.holds import ApprovalEngine

__all__ = [
    "AWAY",
    "BACK",
    "Away",
    "Availability",
    "mark_away",
    "mark_back",
    "read_availability",
]

AWAY: EventType = "approver.away"
BACK: EventType = "approver.back"


@dataclass(frozen=True)
class Away:
    """An approver's standing mark: away since `since`, until `until` (None: until they are back)."""

    approver: str
    since: datetime
    until: datetime | None
    note: str | None

    def view(self) -> dict[str, Any]:
        return {
            "approver": self.approver,
            "since": utc_iso(self.since),
            "until": utc_iso(self.until) if self.until else None,
            "note": self.note,
        }

    def text(self) -> str:
        return f"{self.approver} (away until {utc_iso(self.until) if self.until else 'back'})"


@dataclass(frozen=True)
class Availability:
    """Who is away at `now`, read from the sealed marks, and what that means for a request."""

    away: Mapping[str, Away]
    now: datetime

    def is_away(self, name: str) -> bool:
        return name in self.away

    def eligible(
        self, request: ApprovalRequest, approvers: Iterable[Approver], added: tuple[str, ...] = ()
    ) -> list[Approver]:
        """The approvers who may decide `request` (its groups and any escalation's), away or not."""
        widened = replace(request, groups=(*request.groups, *added)) if added else request
        return [a for a in approvers if may_decide(widened, a)]

    def available(self, approvers: Iterable[Approver]) -> list[Approver]:
        return [a for a in approvers if a.name not in self.away]

    def request_view(
        self, request: ApprovalRequest, approvers: Iterable[Approver], added: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """What a request's view says of who may decide it: eligible, away, and whether anybody is left."""
        eligible = self.eligible(request, approvers, added)
        away = [self.away[a.name] for a in eligible if a.name in self.away]
        view: dict[str, Any] = {
            "eligible": [a.name for a in eligible],
            "away": [a.view() for a in away],
            "nobody_available": len(away) == len(eligible),
        }
        if view["nobody_available"]:
            view["warning"] = "nobody who may decide this request is available: " + (
                ", ".join(a.text() for a in away) if away else "no approver is eligible"
            )
        return view


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def availability_from(key: bytes, bodies: Iterable[Mapping[str, Any]], now: datetime) -> Availability:
    """The standing marks in `bodies` (in log order): the latest sealed mark per approver, ended
    marks (`until` passed) dropped."""
    latest: dict[str, Mapping[str, Any]] = {}
    for body in bodies:
        if body.get("event_type") not in (AWAY, BACK) or not sealed_by(key, body):
            continue
        latest[str(body.get("approver"))] = body
    away: dict[str, Away] = {}
    for name, body in latest.items():
        if body.get("event_type") != AWAY:
            continue
        until = _moment(str(body["until"])) if body.get("until") else None
        if until is not None and until <= now:
            continue
        since = _moment(str(body.get("ts")))
        note = body.get("note")
        away[name] = Away(name, since, until, str(note) if note else None)
    return Availability(away, now)


async def read_availability(store: Store, key: bytes, now: datetime) -> Availability:
    """Who is away now, from the store's marks."""
    records = [*await store.records(event_type=AWAY), *await store.records(event_type=BACK)]
    records.sort(key=lambda r: r.seq)
    return availability_from(key, (r.body for r in records), now)


async def mark_away(
    engine: ApprovalEngine, approver: Approver, *, until: datetime | None, note: str | None, channel: str
) -> Away:
    """Record that `approver` is away (until `until`, or until they are back)."""
    now = engine.clock.now()
    if until is not None and until <= now:
        raise ValueError(f"the end of the absence ({utc_iso(until)}) is not in the future")
    event = engine.events(
        AWAY,
        None,
        approver=approver.name,
        until=utc_iso(until) if until else None,
        note=note,
        channel=channel,
    )
    await engine.store.transact(lambda tx: tx.append([seal(engine.key, event)]))
    return Away(approver.name, now, until, note)


async def mark_back(engine: ApprovalEngine, approver: Approver, *, channel: str) -> bool:
    """Record that `approver` is back; False (and nothing recorded) when they were not away."""
    now = engine.clock.now()
    current = await read_availability(engine.store, engine.key, now)
    if not current.is_away(approver.name):
        return False
    event = engine.events(BACK, None, approver=approver.name, channel=channel)
    await engine.store.transact(lambda tx: tx.append([seal(engine.key, event)]))
    return True
