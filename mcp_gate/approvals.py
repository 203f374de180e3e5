"""Pure approval logic: requests bound to one call, decisions, quorum, expiry, grants, no self-approval."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal, assert_never

from mcp_gate.events import RequestState

__all__ = [
    "ID_ALPHABET",
    "Approved",
    "ApprovalRequest",
    "Approver",
    "Binding",
    "Denied",
    "Expired",
    "Grant",
    "HoldOutcome",
    "Pending",
    "Refusal",
    "Released",
    "Revoked",
    "StillPending",
    "TooMany",
    "UsedElsewhere",
    "grant_refusal",
    "may_decide",
    "Verdict",
    "Void",
    "Vote",
    "decide",
    "describe_wait",
    "final_outcome",
    "format_duration",
    "grant_covers",
    "new_id",
    "parse_duration",
    "principal",
    "requester_identities",
    "release",
    "revoke",
    "void_reason",
]

# Crockford-style: no 0/O, 1/I/L or U, so an id read aloud or retyped is unambiguous.
ID_ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
ID_LENGTH = 8

Verdict = Literal["approve", "deny"]


def new_id(prefix: str = "") -> str:
    """A short random id from an unambiguous alphabet (30**8, about 6.6e11 values)."""
    return prefix + "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))


_DURATION = re.compile(r"^\s*(\d{1,6})\s*(s|m|h|d)\s*$")
MAX_DURATION = timedelta(days=366)
MAX_GRANT = timedelta(hours=24)  # a grant is a short delegation, never a standing right
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """'90s', '30m', '2h', '1d' -> timedelta; ValueError with a readable message otherwise."""
    match = _DURATION.match(text)
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not a duration like 90s, 30m, 2h or 1d")
    duration = timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    if duration > MAX_DURATION:
        raise ValueError(f"{text!r} is longer than {MAX_DURATION.days} days")
    return duration


def format_duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit in ("d", "h", "m"):
        size = _UNITS[unit]
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def principal(issuer: str, subject: str) -> str:
    """A person at an identity provider as one string: the issuer and the subject it vouches for.
    A subject is unique only per issuer, so the two always travel together."""
    return f"{issuer.rstrip('/')}#{subject}"


@dataclass(frozen=True)
class Approver:
    """A person who may decide, authenticated by a token (or a chat identity in later channels).

    One authenticated by the organisation's identity provider carries its `issuer` and `subject`
    (their principal is among its identities), the SHA-256 of the token's `jti`, and the claims
    that made it a member of its groups (`granted_by`), all recorded with its decisions."""

    name: str
    email: str
    groups: frozenset[str]
    token_sha256: str | None = None
    aliases: frozenset[str] = frozenset()
    issuer: str | None = None
    subject: str | None = None
    jti_sha256: str | None = None
    granted_by: tuple[str, ...] = ()
    display_name: str | None = None

    def identities(self) -> frozenset[str]:
        own = [self.name, self.email, *self.aliases]
        if self.issuer is not None and self.subject is not None:
            own.append(principal(self.issuer, self.subject))
        return frozenset(i.strip().lower() for i in own if i.strip())

    def idp_fields(self) -> dict[str, Any]:
        """What a decision's record says of an approver from the identity provider (nothing for others)."""
        if self.subject is None:
            return {}
        return {
            "approver_iss": self.issuer,
            "approver_sub": self.subject,
            "approver_name": self.display_name,
            "approver_jti_sha256": self.jti_sha256,
            "eligible_by": list(self.granted_by),
        }


@dataclass(frozen=True)
class Binding:
    """What an approval is bound to: it releases a call only if every field is the same."""

    agent: str
    owner: str
    server: str
    tool: str
    pin: str
    args_sha256: str
    policy_sha256: str

    def same_call(self, other: Binding) -> bool:
        """Same requester, tool and arguments: the agent is re-sending this call."""
        return (self.agent, self.owner, self.server, self.tool, self.args_sha256) == (
            other.agent,
            other.owner,
            other.server,
            other.tool,
            other.args_sha256,
        )


@dataclass(frozen=True)
class Vote:
    approver: str
    verdict: Verdict
    channel: str
    at: datetime
    note: str | None = None


@dataclass(frozen=True)
class ApprovalRequest:
    id: str
    binding: Binding
    correlation_id: str
    tier: str
    required: int
    groups: tuple[str, ...]  # empty: any configured approver
    rule: str
    reason: str
    args: Any  # redacted, for approvers to read
    created_at: datetime
    expires_at: datetime
    state: RequestState = "pending"
    votes: tuple[Vote, ...] = field(default=())
    closed_by: str | None = None  # who revoked it, or why it was voided
    reported: bool = False  # its final outcome has been told to a call of the agent
    justification: str | None = None  # the requester's own words, asked by elicitation: untrusted

    @property
    def approvals(self) -> tuple[Vote, ...]:
        return tuple(v for v in self.votes if v.verdict == "approve")

    @property
    def denial(self) -> Vote | None:
        return next((v for v in self.votes if v.verdict == "deny"), None)

    def expired_at(self, now: datetime) -> bool:
        return now >= self.expires_at


@dataclass(frozen=True)
class Grant:
    """'Approve this tool for this requester for N minutes': recorded, revocable, never for critical."""

    id: str
    agent: str
    owner: str
    server: str
    tool: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    request_id: str | None = None
    note: str | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    # What the approved call was bound to besides requester and tool: the grant covers calls under
    # the same manifest rule of the same policy version and the same tool definition only.
    rule: str = ""
    policy_sha256: str = ""
    pin: str = ""

    def live(self, now: datetime) -> bool:
        return self.revoked_at is None and now < self.expires_at


def grant_covers(grant: Grant, binding: Binding, tier: str, rule: str, now: datetime) -> bool:
    """Same requester and tool, under the same manifest rule of the same policy version and the
    same tool definition (so the same tier and approver groups), while live, never for critical."""
    return (
        tier != "critical"
        and rule == grant.rule
        and binding.policy_sha256 == grant.policy_sha256
        and binding.pin == grant.pin
        and grant.live(now)
        and (grant.agent, grant.owner, grant.server, grant.tool)
        == (binding.agent, binding.owner, binding.server, binding.tool)
    )


# -- outcomes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """A decision or release that must not take effect; `why` is written for the person or agent."""

    code: Literal[
        "self-approval", "not-eligible", "not-pending", "expired", "duplicate", "no-grant", "void",
        "breakglass-off", "not-allowed", "own-request", "no-reason", "no-identity",
    ]  # fmt: skip
    why: str


@dataclass(frozen=True)
class Pending:
    request: ApprovalRequest


@dataclass(frozen=True)
class Approved:
    request: ApprovalRequest


@dataclass(frozen=True)
class Denied:
    request: ApprovalRequest
    vote: Vote


@dataclass(frozen=True)
class Expired:
    request: ApprovalRequest


@dataclass(frozen=True)
class Revoked:
    request: ApprovalRequest
    by: str


@dataclass(frozen=True)
class Void:
    request: ApprovalRequest
    why: str


@dataclass(frozen=True)
class Released:
    request: ApprovalRequest


DecisionOutcome = Pending | Approved | Denied | Refusal


@dataclass(frozen=True)
class StillPending:
    """The hold budget ran out; the request stays open for a later identical call."""

    request: ApprovalRequest


@dataclass(frozen=True)
class TooMany:
    limit: int


@dataclass(frozen=True)
class UsedElsewhere:
    """An identical call, joined to the same request, used the approval first."""

    request: ApprovalRequest


# What holding a call came to (holds.ApprovalEngine.hold).
HoldOutcome = Released | Denied | Expired | Revoked | Void | StillPending | TooMany | UsedElsewhere


def final_outcome(request: ApprovalRequest) -> Denied | Expired | Revoked | Void:
    """What a request closed in one of the `events.FINAL_STATES` means for the call it held."""
    match request.state:
        case "denied":
            vote = request.denial
            assert vote is not None
            return Denied(request, vote)
        case "expired":
            return Expired(request)
        case "revoked":
            return Revoked(request, request.closed_by or "an approver")
        case _:
            return Void(request, request.closed_by or "the call changed")


def requester_identities(bodies: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """Every identity of the person a call was made for, from the `requester` of its records: the
    owner, and for a token from the identity provider their email and (issuer, subject) principal."""
    found: list[Any] = []
    for body in bodies:
        recorded = body.get("requester")
        if not isinstance(recorded, dict):
            continue
        found += [recorded.get("owner"), recorded.get("email")]
        issuer, subject = recorded.get("iss"), recorded.get("sub")
        if isinstance(issuer, str) and isinstance(subject, str):
            found.append(principal(issuer, subject))
    return frozenset(i.strip().lower() for i in found if isinstance(i, str) and i.strip())


def _eligibility(
    request: ApprovalRequest, approver: Approver, requester: frozenset[str] = frozenset()
) -> Refusal | None:
    if ({request.binding.owner.strip().lower()} | requester) & approver.identities():
        return Refusal(
            "self-approval",
            f"{approver.name} cannot decide request {request.id}: it was made on behalf of "
            f"{request.binding.owner}, and nobody approves their own calls",
        )
    if request.groups and not (approver.groups & set(request.groups)):
        return Refusal(
            "not-eligible",
            f"{approver.name} cannot decide request {request.id}: it needs a member of "
            f"{', '.join(request.groups)}",
        )
    return None


def may_decide(request: ApprovalRequest, approver: Approver, requester: frozenset[str] = frozenset()) -> bool:
    """Whether `approver` may vote on `request` at all: not its owner (nor any identity of the
    person it was made for, `requester`), and in one of its groups."""
    return _eligibility(request, approver, requester) is None


def decide(
    request: ApprovalRequest,
    approver: Approver,
    verdict: Verdict,
    *,
    channel: str,
    now: datetime,
    note: str | None = None,
    requester: frozenset[str] = frozenset(),
) -> DecisionOutcome:
    """One approver's decision on a request, checked at decision time. `requester` holds every
    identity of the person the call was made for (`requester_identities`): none may decide it."""
    refusal = _eligibility(request, approver, requester)
    if refusal is not None:
        return refusal
    if request.state != "pending":
        return Refusal(
            "not-pending", f"request {request.id} is {request.state.replace('_', ' ')}, not pending"
        )
    if request.expired_at(now):
        return Refusal("expired", f"request {request.id} expired at {_hhmm(request.expires_at)}")
    if any(v.approver == approver.name for v in request.votes):
        return Refusal("duplicate", f"{approver.name} has already decided request {request.id}")
    vote = Vote(approver=approver.name, verdict=verdict, channel=channel, at=now, note=note)
    decided = replace(request, votes=(*request.votes, vote))
    if verdict == "deny":
        return Denied(replace(decided, state="denied"), vote)
    if len(decided.approvals) >= request.required:
        return Approved(replace(decided, state="approved"))
    return Pending(decided)


def revoke(request: ApprovalRequest, approver: Approver, *, now: datetime) -> Revoked | Refusal:
    """Withdraw an approval that has not been executed yet."""
    refusal = _eligibility(request, approver)
    if refusal is not None and refusal.code != "self-approval":
        return refusal
    if request.state not in ("approved", "pending"):
        return Refusal(
            "not-pending", f"request {request.id} is {request.state.replace('_', ' ')}; nothing to revoke"
        )
    return Revoked(replace(request, state="revoked", closed_by=approver.name), approver.name)


def release(
    request: ApprovalRequest, current: Binding, *, now: datetime
) -> Released | Expired | Void | Refusal:
    """May this approved request release the call bound to `current`, now? At most once."""
    if request.state != "approved":
        return Refusal("not-pending", f"request {request.id} is {request.state.replace('_', ' ')}")
    if request.expired_at(now):
        return Expired(replace(request, state="expired"))
    why = void_reason(request.binding, current)
    if why is not None:
        return Void(replace(request, state="void", closed_by=why), why)
    return Released(replace(request, state="executing"))


def void_reason(approved: Binding, current: Binding) -> str | None:
    """Why an approval for `approved` cannot release the call `current`, or None if it can."""
    if not approved.same_call(current):
        return "it was approved for another call"
    if approved.pin != current.pin:
        return "the tool's definition changed after it was requested"
    if approved.policy_sha256 != current.policy_sha256:
        return "the gate's policy changed after it was requested"
    return None


def _hhmm(moment: datetime) -> str:
    return moment.strftime("%H:%M:%S UTC")


def describe_wait(request: ApprovalRequest) -> str:
    """The progress message of a held call."""
    missing = request.required - len(request.approvals)
    who = f" from {' or '.join(request.groups)}" if request.groups else ""
    noun = "approval" if missing == 1 else "approvals"
    return f"waiting for {missing} {noun}{who}; request {request.id}; expires {_hhmm(request.expires_at)}"


def outcome_text(outcome: Denied | Expired | Revoked | Void, tool: str) -> str:
    """The tool error an agent gets when its held call will not run."""
    request = outcome.request
    match outcome:
        case Denied(vote=vote):
            because = f": {vote.note}" if vote.note else " (no reason given)"
            return f"{tool} was not run: request {request.id} was denied by {vote.approver}{because}"
        case Expired():
            return (
                f"{tool} was not run: request {request.id} expired at {_hhmm(request.expires_at)} without "
                "enough approvals; call again to ask for a new approval if it is still needed"
            )
        case Revoked(by=by):
            return f"{tool} was not run: the approval of request {request.id} was revoked by {by}"
        case Void(why=why):
            return (
                f"{tool} was not run: the approval of request {request.id} is void because {why}; "
                "call again to ask for a new approval"
            )
        case _:
            assert_never(outcome)


def quorum_progress(request: ApprovalRequest) -> str:
    names: Sequence[str] = [v.approver for v in request.approvals]
    listed = f": {', '.join(names)}" if names else ""
    return f"{len(names)} of {request.required} approvals{listed}"


def grant_refusal(request: ApprovalRequest, duration: timedelta, policy: str) -> str | None:
    """Why a grant of `duration` may not come with an approval of `request`, or None if it may
    (channels use this to offer a grant only where the engine would accept one)."""
    if request.binding.policy_sha256 != policy:
        return f"request {request.id} was made under an earlier policy; a grant must follow the current one"
    if request.tier == "critical":
        return f"request {request.id} is critical; critical calls get no grants"
    if request.required > 1:
        return f"request {request.id} needs {request.required} approvals; a grant could stand in for only one"
    if duration > MAX_GRANT:
        return f"a grant lasts at most {format_duration(MAX_GRANT)}"
    return None
