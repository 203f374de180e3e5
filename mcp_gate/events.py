"""The catalogue of names: every evidence event type the gate writes and every approval request state.

Code that writes a record or a request state spells it as one of these Literals, so the type checker
rejects a misspelt one. Records read back from a log are text (an older or newer gate, or an edited
file, may hold any type): `is_event_type` narrows such text before code dispatches on it.
`tests/test_events_catalogue.py` keeps this list, the code and docs/events.md saying the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeGuard, get_args

__all__ = [
    "EVENT_TYPES",
    "FINAL_STATES",
    "GRANT_DECISIONS",
    "OPEN_STATES",
    "REACHED_DOWNSTREAM",
    "RELEASED_STATES",
    "REQUEST_DECISIONS",
    "REQUEST_STATES",
    "SEALED_EVENTS",
    "SLACK_DELIVERY",
    "TERMINAL_STATES",
    "EventType",
    "RequestState",
    "event_type_of",
    "is_event_type",
]

EventType = Literal[
    # -- one call, in the order its story is told -----------------------------------------------
    "call.requested",  # a call arrived: requester, tool, pin, redacted arguments and their digest
    "policy.decided",  # the tier, rule, reason and requirement the manifests gave that call
    "confirm.asked",  # the person at the agent was asked to confirm (or justify) the call
    "confirm.decided",  # their answer (confirmed, justified, declined, cancelled) and who gave it
    "confirm.refused",  # an answer or echoed request_state refused: tampered, expired, mismatched, replayed
    "call.resumed",  # an agent's retry carried a sealed request_state: the call continues where it stopped
    "call.released",  # a held call released once, by its approvers or a grant
    "call.deferred",  # a held call stopped waiting (its hold ran out, its client left); its request stays
    "elicitation.relayed",  # a downstream's question relayed to the person at the agent, and the answer
    "elicitation.url_offered",  # a held call's request offered as a link to follow (view only), the answer
    "call.executed",  # the downstream answered: result digest, redacted result, duration
    "call.failed",  # sent, then the connection broke, timed out or was cancelled: the outcome is unknown
    "call.input_required",  # the downstream asked for input first; the agent's retry continues the call
    "call.refused",  # the call did not run, and why (unknown tool, bad input, blocked, denied, expired, ...)
    "call.outcome_unknown",  # a call sent, its outcome never recorded (a restart, a lapsed lease); not re-run
    "call.late_result",  # a result that came after its call was recorded as outcome_unknown, linked to it
    "token.refused",  # an access token refused at the agent front: the reason, never the token
    # -- approval requests and grants ---------------------------------------------------------
    "approval.requested",  # a request bound to one exact call, persisted and sealed; channels show it
    "approval.joined",  # the same call sent again joined the open request instead of opening another
    "approval.decided",  # an approver's vote (approve or deny) counted, sealed, with the quorum so far
    "approval.refused",  # a vote refused: self-approval, not eligible, not pending, duplicate, expired, ...
    "approval.expired",  # a request ran out of time before its call was released
    "approval.revoked",  # an approver withdrew a request before its call ran
    "approval.annotated",  # an approver's note on a request; it decides nothing
    "approval.voided",  # a request voided: the tool's pin or the policy changed since it was made
    "approval.forged",  # a request's approvals are not backed by sealed evidence: the call does not run
    "grant.created",  # a time-boxed grant of one tool to one requester, sealed
    "grant.revoked",  # a grant withdrawn before its end, sealed
    "grant.forged",  # a grant row not backed by a sealed grant.created: it covers nothing
    "approval.escalated",  # nobody eligible decided in time: further groups may now decide, sealed
    "breakglass.used",  # an operator released one held call without its approvals, with a reason, sealed
    "breakglass.refused",  # a break-glass refused: own request, not allowed, no reason, already used
    "approver.away",  # an approver marked themselves away (until a time, or until back): not notified, sealed
    "approver.back",  # an approver marked themselves back, sealed
    # -- tools --------------------------------------------------------------------------------
    "tool.pinned",  # a tool's definition first seen and trusted: its pin
    "tool.new",  # a new tool on a known server, quarantined until accepted (`[pins] new_tools`)
    "tool.drifted",  # a pinned tool's definition changed: quarantined until accepted
    "tool.accepted",  # a person accepted a tool's new definition (`mcp-gate tools accept`)
    # -- the gate's runs ----------------------------------------------------------------------
    "gate.started",  # a run began: its servers and manifests, the signing key, the argument key's id
    "gate.stopped",  # a run ended, cleanly or with an error
    "gate.unclean_stop",  # at start-up: the last run ended without a stop, naming the held calls cut off
    "policy.changed",  # a start whose policy differs from the last start's: what changed (shadow -> enforce)
    # -- Slack --------------------------------------------------------------------------------
    "slack.posted",  # a request's message posted (or found and adopted after a crash)
    "slack.post_failed",  # posting a request's message failed; it is retried
    "slack.update_failed",  # updating a request's message failed; it is retried
    "slack.not_posted",  # a request closed while its message still failed to post: the outbox stopped
    "slack.refused",  # a click from someone Slack could not map to an approver, or who may not decide
    "slack.breakglass_notified",  # every approver of the tier told in Slack of a break-glass
    "slack.escalation_notified",  # the further groups of an escalated request told in Slack
    # -- Teams --------------------------------------------------------------------------------
    "teams.posted",  # a request's Adaptive Card posted to its Teams conversation
    "teams.updated",  # a request's card updated in place to its outcome
    "teams.post_failed",  # posting a request's card failed; it is retried
    "teams.update_failed",  # updating a request's card failed; it is retried
    "teams.not_posted",  # a request closed while its card still failed to post: the outbox stopped
    "teams.breakglass_notified",  # the Teams approvals conversation told of a break-glass use
    "teams.refused",  # a click from someone not mapped to an approver, another tenant, or who may not decide
    # -- the webhook --------------------------------------------------------------------------
    "webhook.delivered",  # the webhook receiver took every request event up to a sequence number
    "webhook.failed",  # one request event could not be delivered after every retry; delivery went on
    # -- the console --------------------------------------------------------------------------
    "console.refused",  # a console request refused before the engine: no session, bad CSRF token, login limit
    # -- email --------------------------------------------------------------------------------
    "email.sent",  # a request mailed to its eligible approvers (and the notify-only list), with signed links
    "email.send_failed",  # mailing a request failed (SMTP down, refused); it is retried
    "email.link_used",  # an emailed decision link was confirmed in the console: it is never good again
    "email.breakglass_notified",  # every approver of the tier mailed of a break-glass use
    # -- evidence and audit -------------------------------------------------------------------
    "checkpoint.copy_failed",  # a signed checkpoint could not be copied to a sink (file or webhook)
    "audit.verified",  # `mcp-gate audit verify` ran, and what it found
    "audit.exported",  # `mcp-gate audit export` wrote a bundle: its period and records
    "audit.reported",  # `mcp-gate audit report` ran: its period and the violations it found
    "evidence.pruned",  # `mcp-gate audit prune` removed records under a retention checkpoint
]
EVENT_TYPES: frozenset[str] = frozenset(get_args(EventType))

# The decisions on a request and on a grant: the records the engine seals (mcp_gate/seals.py), from
# which alone it derives what releases a call.
REQUEST_DECISIONS: tuple[EventType, ...] = (
    "approval.requested",
    "approval.decided",
    "approval.revoked",
    "breakglass.used",
)
GRANT_DECISIONS: tuple[EventType, ...] = ("grant.created", "grant.revoked")
SEALED_EVENTS: tuple[EventType, ...] = (*REQUEST_DECISIONS, *GRANT_DECISIONS)
# The outcomes of a run that reached its downstream and ended there: the report looks for the
# approval of each. (`call.input_required` ends only this run; the agent's retry finishes it.)
REACHED_DOWNSTREAM: tuple[EventType, ...] = ("call.executed", "call.failed", "call.outcome_unknown")
# What the Slack outbox writes of delivering a request's message (`mcp-gate check` shows the last).
SLACK_DELIVERY: tuple[EventType, ...] = (
    "slack.posted",
    "slack.post_failed",
    "slack.update_failed",
    "slack.not_posted",
)

RequestState = Literal[
    "pending",  # waiting for its decisions
    "approved",  # quorum reached; the call is not released yet
    "denied",  # an approver denied it
    "expired",  # ran out of time before its call was released
    "revoked",  # withdrawn by an approver
    "void",  # the tool or policy changed, or its approvals are not backed by sealed evidence
    "executing",  # released: the call was sent and its outcome is not recorded yet
    "executed",  # the call ran (or handed a question back to the agent)
    "failed",  # the call was refused after release, before it was sent
    "outcome_unknown",  # the call was sent and its outcome is unknown (a broken connection, a crash)
]
REQUEST_STATES: frozenset[str] = frozenset(get_args(RequestState))

# Still open: a decision may change it, and an approved one may release its call.
OPEN_STATES: tuple[RequestState, ...] = ("pending", "approved")
# Closed before the call ran: the call gets this outcome as its answer (`approvals.final_outcome`).
FINAL_STATES: tuple[RequestState, ...] = ("denied", "expired", "revoked", "void")
# The request released its call, which can happen only once.
RELEASED_STATES: tuple[RequestState, ...] = ("executing", "executed", "failed", "outcome_unknown")
# Nothing more will happen to the request: closed unrun, or its call's outcome is recorded.
TERMINAL_STATES: tuple[RequestState, ...] = (*FINAL_STATES, "executed", "failed", "outcome_unknown")


def is_event_type(text: object) -> TypeGuard[EventType]:
    """Whether `text` (an event type read back from a log) names a type in this catalogue."""
    return isinstance(text, str) and text in EVENT_TYPES


def event_type_of(body: Mapping[str, Any]) -> EventType | None:
    """A record body's event type if this catalogue names it, else None (an unknown or edited one)."""
    kind = body.get("event_type")
    return kind if is_event_type(kind) else None
