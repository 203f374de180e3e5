"""Calls in flight whose sender is gone: recorded once as `call.outcome_unknown` (at a start with
nobody else serving, or when the replica that sent them let its lease lapse), never re-run; and a
result that comes back for one after that, recorded as `call.late_result` beside it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mcp_gate.events import EventType, RequestState
from mcp_gate.storage.base import Inflight, Tx

__all__ = ["finish", "recover"]

# Makes an evidence body (`ApprovalEngine._ev`): event type, correlation id, fields.
Events = Callable[..., dict[str, Any]]

LATE: EventType = "call.late_result"  # the type a result recorded after its outcome_unknown gets
AT_START = "the gate stopped after sending the call and before recording its outcome"
LAPSED = (
    "replica {replica} stopped renewing its lease on the database after sending the call and before "
    "recording its outcome"
)


def recover(
    tx: Tx,
    events: Events,
    *,
    claim: Callable[[Tx], list[Inflight]] | None = None,
    by: str | None = None,
    sender: Callable[[Tx, str], Mapping[str, Any] | None] | None = None,
) -> int:
    """Inside a write transaction: every marker `claim` hands over (default: all of them) becomes
    one `call.outcome_unknown` record and its request `outcome_unknown`; the marker goes. `by` is
    the replica recording it, `sender` describes the replica that sent the call."""
    unknown = tx.inflight() if claim is None else claim(tx)
    for call in unknown:
        if call.request_id is not None:
            tx.set_request_state(call.request_id, "outcome_unknown")
        extra: dict[str, Any] = {}
        if call.replica is not None:
            extra["replica"] = call.replica
            described = None if sender is None else sender(tx, call.replica)
            if described is not None:
                extra["replica_seen"] = dict(described)
        if by is not None:
            extra["recovered_by"] = by
        why = AT_START if claim is None else LAPSED.format(replica=call.replica)
        tx.append(
            [
                events(
                    "call.outcome_unknown",
                    call.correlation_id,
                    started_at=call.started_at,
                    why=why,
                    **dict(call.fields),
                    **extra,
                )
            ]
        )
        tx.end_inflight(call.correlation_id)
    return len(unknown)


def finish(
    tx: Tx,
    events: Events,
    correlation_id: str,
    request_id: str | None,
    event: dict[str, Any],
    state: RequestState,
) -> bool:
    """Inside a write transaction: record a forwarded call's outcome and close its request, or,
    when its marker was already taken over (recorded as outcome_unknown), record it as a
    `call.late_result` linked to that record and leave the request as it is. True for a late one."""
    # The marker's row first: the write transactions serialize on the chain head, so a takeover
    # either committed before this (its outcome_unknown is visible below) or runs after it.
    tx.end_inflight(correlation_id)
    taken = tx.bodies_for(correlation_id, ("call.outcome_unknown",))
    if not taken:
        if request_id is not None:
            tx.set_request_state(request_id, state)
        tx.append([event])
        return False
    unknown = taken[-1]
    # The result's own body (its event id, time and fields, never written), retyped and linked.
    tx.append(
        [
            {
                **event,
                "event_type": LATE,
                "result_event_type": event["event_type"],
                "result_state": state,
                "outcome_unknown_event_id": unknown.get("event_id"),
                "recovered_by": unknown.get("recovered_by"),
            }
        ]
    )
    return True
