"""The approval engine's I/O: persist requests, hold calls until decided, take decisions, release once."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from typing import Any, assert_never

import anyio

from mcp_gate import inflight
from mcp_gate.approvals import (
    ApprovalRequest,
    Approved,
    Approver,
    Binding,
    Denied,
    Expired,
    Grant,
    HoldOutcome,
    Pending,
    Refusal,
    Released,
    Revoked,
    StillPending,
    TooMany,
    UsedElsewhere,
    Verdict,
    Void,
    decide,
    describe_wait,
    final_outcome,
    format_duration,
    grant_covers,
    grant_refusal,
    new_id,
    quorum_progress,
    release,
    requester_identities,
    revoke,
    void_reason,
)
from mcp_gate.clock import Clock, utc_iso
from mcp_gate.config import ApprovalSettings
from mcp_gate.errors import GateError, NoSuchRequest, StoreError
from mcp_gate.escalation import ESCALATED, escalate_due, escalated_groups
from mcp_gate.events import (
    FINAL_STATES,
    OPEN_STATES,
    RELEASED_STATES,
    SEALED_EVENTS,
    EventType,
    RequestState,
)
from mcp_gate.evidence import EventFactory
from mcp_gate.policy import Escalation
from mcp_gate.seals import derive, grant_forgery, seal
from mcp_gate.storage.base import Inflight, Store, Tx
from mcp_gate.wakeups import HeldCalls

__all__ = [
    "ApprovalEngine",
    "HoldOutcome",
    "StillPending",
    "TooMany",
    "UsedElsewhere",
]

log = logging.getLogger("mcp_gate.holds")

SWEEP_INTERVAL = 1.0  # seconds between sweeps for requests whose time is up
REREAD_INTERVAL = 1.0  # the held calls' watcher reads the log this often woken or not (wakeups.py)

ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]


@dataclass(frozen=True)
class _Joined:
    request: ApprovalRequest


class ApprovalEngine:
    """Approval requests over a `Store`: used by the running gate and by CLI processes alike."""

    def __init__(
        self, store: Store, clock: Clock, settings: ApprovalSettings, events: EventFactory, key: bytes
    ) -> None:
        self.store = store
        self.key = key  # the decision key: seals what the engine decides (mcp_gate/seals.py)
        self.clock = clock
        self.settings = settings
        self.events = events
        # Escalation by manifest rule: whether any rule has steps (the gate says), and the steps
        # read back from each pending request's sealed record, so each is read once.
        self.rule_escalations = False
        self.require_idp = False  # [identity] require_idp: only people with an IdP subject decide
        self.own_escalation: dict[str, tuple[Escalation, ...]] = {}
        self.held = HeldCalls(store, clock, interval=REREAD_INTERVAL)  # the calls held in this process

    def _ev(self, event_type: EventType, correlation_id: str | None, **fields: Any) -> dict[str, Any]:
        body = self.events(event_type, correlation_id, **fields)
        return seal(self.key, body) if event_type in SEALED_EVENTS else body

    # -- held calls ----------------------------------------------------------------------------

    async def hold(
        self,
        binding: Binding,
        *,
        correlation_id: str,
        tier: str,
        required: int,
        groups: tuple[str, ...],
        expires_after: float | None,
        rule: str,
        reason: str,
        args: Any,
        progress: ProgressFn | None,
        justification: str | None = None,
        hold_seconds: float | None = None,
        escalation: tuple[Escalation, ...] = (),
        on_held: Callable[[ApprovalRequest], None] | None = None,
    ) -> HoldOutcome:
        """Create or join the request for this exact call and wait for it to be decided: at most
        `hold_seconds` (the requester's own budget; default `[approvals] hold_seconds`).
        `on_held` is told the request once the call waits on it."""
        now = self.clock.now()
        lifetime = timedelta(seconds=expires_after or self.settings.expires_after)
        ev = self._ev
        limit = self.settings.max_pending

        def admit(tx: Tx) -> HoldOutcome | _Joined:
            latest = tx.find_latest_request(binding)
            if latest is not None and latest.state in FINAL_STATES and not latest.reported:
                # The agent was told to call again after a decision: give it that decision, once.
                tx.mark_reported(latest.id)
                return final_outcome(latest)
            existing = tx.find_open_request(binding)
            if existing is not None and existing.expired_at(now):
                # The request this call would join or use ran out of time: say so (enforced at
                # release time too); calling again asks anew.
                self._expire(tx, existing)
                tx.mark_reported(existing.id)
                return Expired(replace(existing, state="expired"))
            if existing is not None:
                why = void_reason(existing.binding, binding)
                if why is not None:
                    voided = replace(existing, state="void", closed_by=why)
                    tx.save_request(voided)
                    tx.append(
                        [ev("approval.voided", existing.correlation_id, request_id=existing.id, why=why)]
                    )
                    if existing.state == "approved":
                        tx.mark_reported(existing.id)
                        return Void(voided, why)
                    existing = None
            if existing is not None:
                tx.append(
                    [
                        ev(
                            "approval.joined",
                            correlation_id,
                            request_id=existing.id,
                            first_call=existing.correlation_id,
                        )
                    ]
                )
                if existing.state == "approved":
                    return self._release(tx, existing.id, binding, correlation_id)
                return _Joined(existing)
            if tx.count_pending(binding.agent) >= limit:
                return TooMany(limit)
            request = ApprovalRequest(
                id=new_id(),
                binding=binding,
                correlation_id=correlation_id,
                tier=tier,
                required=required,
                groups=groups,
                rule=rule,
                reason=reason,
                args=args,
                created_at=now,
                expires_at=now + lifetime,
                justification=justification,
            )
            tx.insert_request(request)
            tx.append(
                [
                    ev(
                        "approval.requested",
                        correlation_id,
                        request_id=request.id,
                        required=required,
                        groups=list(groups),
                        expires_at=utc_iso(request.expires_at),
                        server=binding.server,
                        tool=binding.tool,
                        pin=binding.pin,
                        args_sha256=binding.args_sha256,
                        requester={"agent": binding.agent, "owner": binding.owner},
                        justification=justification,
                        tier=tier,
                        rule=rule,
                        # A rule's own escalation steps, sealed with the request (none: the tier's).
                        **({"escalation": [asdict(e) for e in escalation]} if escalation else {}),
                    )
                ]
            )
            return _Joined(request)

        admitted = await self.store.transact(admit)
        if not isinstance(admitted, _Joined):
            return admitted
        budget = self.settings.hold_seconds if hold_seconds is None else hold_seconds
        if on_held is not None:
            on_held(admitted.request)
        return await self._wait(admitted.request, binding, correlation_id, progress, budget)

    async def _wait(
        self,
        request: ApprovalRequest,
        binding: Binding,
        correlation_id: str,
        progress: ProgressFn | None,
        hold_seconds: float,
    ) -> HoldOutcome:
        deadline = anyio.current_time() + hold_seconds
        next_progress, steps = anyio.current_time(), 0
        try:
            # Registered before the first read: a record naming its request (or its expiry) wakes it.
            async with self.held.holding(request) as waiter:
                current: ApprovalRequest | None = None
                while True:
                    if current is None or waiter.event.is_set() or anyio.current_time() >= deadline:
                        waiter.reset()  # not on a progress tick: then nothing changed
                        current = await self._reread(request.id)
                        if current is not None:
                            waiter.expires_at = current.expires_at
                            outcome = await self._settle(current, binding, correlation_id)
                            if outcome is not None:
                                return outcome
                    now = anyio.current_time()
                    if now >= deadline:
                        if current is not None:
                            await self._defer(current, correlation_id, "the hold budget ran out")
                        return StillPending(current or request)
                    if progress is not None and now >= next_progress:
                        steps += 1
                        await progress(float(steps), None, describe_wait(current or request))
                        next_progress = now + self.settings.progress_seconds
                    until = deadline if progress is None else min(deadline, next_progress)
                    retry = now + REREAD_INTERVAL if current is None else until  # unread: soon again
                    await self.held.wait(waiter, min(retry, until) - now)
        except BaseException:
            with anyio.CancelScope(shield=True):
                still = await self._reread(request.id)
                if still is not None and still.state in OPEN_STATES:
                    try:
                        await self._defer(still, correlation_id, "the client cancelled or disconnected")
                    except StoreError as exc:
                        log.error("cannot record that %s stopped waiting: %s", correlation_id, exc)
            raise

    async def _reread(self, request_id: str) -> ApprovalRequest | None:
        """The request as the store has it now; None while the store cannot be read (a database
        outage): the call stays held, nothing runs, and it is looked at again at the next re-read."""
        try:
            current = await self.store.read(lambda tx: tx.get_request(request_id))
        except StoreError as exc:
            log.warning("cannot read request %s (the call stays held): %s", request_id, exc)
            return None
        if current is None:  # cannot happen: requests are never deleted
            raise NoSuchRequest(request_id)
        return current

    async def _settle(
        self, request: ApprovalRequest, binding: Binding, correlation_id: str
    ) -> HoldOutcome | None:
        """The outcome for a held call if its request is settled, else None (keep waiting)."""
        match request.state:
            case "pending":
                if request.expired_at(self.clock.now()):
                    expired = await self.store.transact(lambda tx: self._expire_if_open(tx, request.id))
                    if expired is not None:
                        return expired
                return None
            case "approved":
                released = await self.store.transact(
                    lambda tx: self._release(tx, request.id, binding, correlation_id)
                )
                return released
            case "denied" | "expired" | "revoked" | "void":
                await self.store.transact(lambda tx: tx.mark_reported(request.id))
                return final_outcome(request)
            case "executing" | "executed" | "failed" | "outcome_unknown":
                return UsedElsewhere(request)
            case _:
                raise AssertionError(f"unknown request state {request.state!r}")

    def _release(self, tx: Tx, request_id: str, binding: Binding, correlation_id: str) -> HoldOutcome:
        """Inside a transaction: move an approved request to executing, once."""
        request = tx.get_request(request_id)
        assert request is not None
        if request.state in RELEASED_STATES:
            return UsedElsewhere(request)
        if request.state in FINAL_STATES:  # revoked or expired since the caller looked
            tx.mark_reported(request_id)
            return final_outcome(request)
        outcome = release(request, binding, now=self.clock.now())
        broken: dict[str, Any] = {}
        if isinstance(outcome, Released):
            outcome, broken = self._verified(tx, request, outcome)
        match outcome:
            case Released(request=released):
                # The one conditional update that decides who runs the call, on every backend and
                # across replicas: the check above only chooses what to say.
                if not tx.start_executing(request_id):
                    return UsedElsewhere(request)
                tx.save_request(released)
                tx.begin_inflight(
                    correlation_id,
                    request_id,
                    utc_iso(self.clock.now()),
                    {"server": binding.server, "tool": binding.tool, "request_id": request_id},
                )
                tx.append(
                    [
                        self._ev(
                            "call.released",
                            correlation_id,
                            request_id=request_id,
                            approvers=[v.approver for v in request.approvals],
                            server=binding.server,
                            tool=binding.tool,
                            **broken,
                        )
                    ]
                )
                return outcome
            case Expired():
                self._expire(tx, request)
                tx.mark_reported(request_id)
                return outcome
            case Void(request=voided, why=why):
                tx.save_request(replace(voided, reported=True))
                tx.append(
                    [self.events("approval.voided", request.correlation_id, request_id=request_id, why=why)]
                )
                return outcome
            case Refusal(why=why):  # only a pending request gets here, and _release is not called for one
                raise AssertionError(f"release refused: {why}")
            case _:
                assert_never(outcome)

    def _verified(
        self, tx: Tx, request: ApprovalRequest, released: Released
    ) -> tuple[Released | Void, dict[str, Any]]:
        """Inside a transaction: release only what the sealed evidence of the request backs. A row
        approved by anything else (a vote or state written without the decision key) voids it.
        With it, what `call.released` says of a sealed break-glass that stood in for the approvals."""
        derived = derive(self.key, request, tx.bodies_for(request.correlation_id, SEALED_EVENTS))
        why = derived.why_not(request.required)
        if why is None:
            if derived.broken_by is None:
                return released, {}
            return released, {"breakglass": {"by": derived.broken_by, "reason": derived.broken_reason}}
        tx.append(
            [
                self._ev(
                    "approval.forged",
                    request.correlation_id,
                    request_id=request.id,
                    why=why,
                    claimed=[v.approver for v in request.approvals],
                    sealed=list(derived.approvers),
                )
            ]
        )
        log.error("request %s: %s; the call was not run", request.id, why)
        return Void(replace(request, state="void", closed_by=why), why), {}

    def _expire(self, tx: Tx, request: ApprovalRequest) -> None:
        tx.save_request(replace(request, state="expired"))
        tx.append(
            [
                self._ev(
                    "approval.expired",
                    request.correlation_id,
                    request_id=request.id,
                    expires_at=utc_iso(request.expires_at),
                    approvals=quorum_progress(request),
                )
            ]
        )

    def _expire_if_open(self, tx: Tx, request_id: str) -> Expired | None:
        request = tx.get_request(request_id)
        if request is None or request.state not in OPEN_STATES:
            return None
        if not request.expired_at(self.clock.now()):
            return None
        self._expire(tx, request)
        tx.mark_reported(request_id)
        return Expired(replace(request, state="expired", reported=True))

    async def _defer(self, request: ApprovalRequest, correlation_id: str, why: str) -> None:
        await self.store.append(
            [self._ev("call.deferred", correlation_id, request_id=request.id, why=why, state=request.state)]
        )

    async def finish(
        self, correlation_id: str, request_id: str | None, event: dict[str, Any], state: RequestState
    ) -> None:
        """Record a forwarded call's outcome, clear its in-flight marker, and close its request (a
        call taken over meanwhile gets a `call.late_result`: `inflight.finish`)."""
        late = await self.store.transact(
            lambda tx: inflight.finish(tx, self._ev, correlation_id, request_id, event, state)
        )
        if late:
            log.warning("%s: its result came after it was recorded as outcome_unknown", correlation_id)

    # -- decisions -----------------------------------------------------------------------------

    async def decide(
        self,
        request_id: str,
        approver: Approver,
        verdict: Verdict,
        *,
        channel: str,
        note: str | None = None,
        grant_for: timedelta | None = None,
    ) -> Pending | Approved | Denied | Refusal:
        """One approver's decision, checked and recorded in one transaction (which wakes held calls)."""
        ev = self._ev

        def write(tx: Tx) -> Pending | Approved | Denied | Refusal:
            request = tx.get_request(request_id)
            if request is None:
                raise NoSuchRequest(request_id)
            now = self.clock.now()
            # An escalated request may also be decided by the groups its sealed escalation added.
            added = escalated_groups(self.key, request, tx.bodies_for(request.correlation_id, (ESCALATED,)))
            eligible = replace(request, groups=(*request.groups, *added)) if added else request
            made_for = requester_identities(tx.bodies_for(request.correlation_id, ("call.requested",)))
            outcome: Pending | Approved | Denied | Refusal
            outcome = decide(
                eligible, approver, verdict, channel=channel, now=now, note=note, requester=made_for
            )
            if self.require_idp and approver.subject is None and not isinstance(outcome, Refusal):
                outcome = Refusal(
                    "no-identity", f"{approver.name} is known by no subject at the identity provider"
                )
            if grant_for is not None and not isinstance(outcome, Refusal):
                # Checked after who-may-decide, so a self-approval with --for is recorded as one.
                why = grant_refusal(request, grant_for, self.events.policy_sha256)
                if why is not None:
                    outcome = Refusal("no-grant", why)
            match outcome:
                case Refusal(code=code, why=why):
                    if code == "expired":
                        self._expire(tx, request)
                    tx.append(
                        [
                            ev(
                                "approval.refused",
                                request.correlation_id,
                                request_id=request_id,
                                approver=approver.name,
                                approver_email=approver.email,
                                **approver.idp_fields(),
                                channel=channel,
                                verdict=verdict,
                                code=code,
                                why=why,
                            )
                        ]
                    )
                    return outcome
                case Pending(request=decided) | Approved(request=decided) | Denied(request=decided):
                    tx.save_request(decided)
                    events = [
                        ev(
                            "approval.decided",
                            request.correlation_id,
                            request_id=request_id,
                            approver=approver.name,
                            approver_email=approver.email,
                            **approver.idp_fields(),
                            channel=channel,
                            verdict=verdict,
                            note=note,
                            state=decided.state,
                            quorum=quorum_progress(decided),
                            shown={
                                "server": request.binding.server,
                                "tool": request.binding.tool,
                                "pin": request.binding.pin,
                                "args_sha256": request.binding.args_sha256,
                                "policy_sha256": request.binding.policy_sha256,
                            },
                        )
                    ]
                    if grant_for is not None and isinstance(outcome, Approved):
                        grant = Grant(
                            id=new_id("G"),
                            agent=request.binding.agent,
                            owner=request.binding.owner,
                            server=request.binding.server,
                            tool=request.binding.tool,
                            created_by=approver.name,
                            created_at=now,
                            expires_at=now + grant_for,
                            request_id=request_id,
                            note=note,
                            rule=request.rule,
                            policy_sha256=request.binding.policy_sha256,
                            pin=request.binding.pin,
                        )
                        tx.insert_grant(grant)
                        events.append(
                            ev(
                                "grant.created",
                                request.correlation_id,
                                grant_id=grant.id,
                                request_id=request_id,
                                approver=approver.name,
                                server=grant.server,
                                tool=grant.tool,
                                requester={"agent": grant.agent, "owner": grant.owner},
                                duration=format_duration(grant_for),
                                expires_at=utc_iso(grant.expires_at),
                                rule=grant.rule,
                                pin=grant.pin,
                            )
                        )
                    tx.append(events)
                    return outcome
                case _:
                    assert_never(outcome)

        return await self.store.transact(write)

    async def revoke(self, request_id: str, approver: Approver) -> Revoked | Refusal:
        def write(tx: Tx) -> Revoked | Refusal:
            request = tx.get_request(request_id)
            if request is None:
                raise NoSuchRequest(request_id)
            outcome = revoke(request, approver, now=self.clock.now())
            event: EventType
            if isinstance(outcome, Revoked):
                tx.save_request(outcome.request)
                event = "approval.revoked"
            else:
                event = "approval.refused"
            tx.append(
                [
                    self._ev(
                        event,
                        request.correlation_id,
                        request_id=request_id,
                        approver=approver.name,
                        channel="revoke",
                        why=outcome.why if isinstance(outcome, Refusal) else None,
                    )
                ]
            )
            return outcome

        return await self.store.transact(write)

    async def annotate(self, request_id: str, approver: Approver, note: str, *, channel: str) -> None:
        """An approver's note on a request, decided or not: recorded, it changes no state."""
        request = await self.get(request_id)
        await self.store.append(
            [
                self._ev(
                    "approval.annotated",
                    request.correlation_id,
                    request_id=request_id,
                    approver=approver.name,
                    channel=channel,
                    note=note,
                )
            ]
        )

    async def revoke_grant(self, grant_id: str, approver: Approver) -> Grant | Refusal:
        def write(tx: Tx) -> Grant | Refusal:
            grant = tx.get_grant(grant_id)
            if grant is None:
                raise NoSuchRequest(grant_id)
            if grant.revoked_at is not None:
                return Refusal("not-pending", f"grant {grant_id} was already revoked by {grant.revoked_by}")
            revoked = replace(grant, revoked_at=self.clock.now(), revoked_by=approver.name)
            tx.revoke_grant(revoked)
            # Recorded under the correlation of the request it came from, where the grant's use
            # looks for its sealed records.
            origin = tx.get_request(grant.request_id) if grant.request_id else None
            tx.append(
                [
                    self._ev(
                        "grant.revoked",
                        origin.correlation_id if origin else None,
                        grant_id=grant_id,
                        approver=approver.name,
                        request_id=grant.request_id,
                        server=grant.server,
                        tool=grant.tool,
                    )
                ]
            )
            return revoked

        return await self.store.transact(write)

    def live_grant(self, tx: Tx, binding: Binding, tier: str, rule: str) -> Grant | None:
        """Inside a transaction: a live grant that covers this call, if any."""
        now = self.clock.now()
        grants = tx.grants_for(binding.agent, binding.owner, binding.server, binding.tool)
        for grant in grants:
            if not grant_covers(grant, binding, tier, rule, now):
                continue
            origin = tx.get_request(grant.request_id) if grant.request_id else None
            bodies = tx.bodies_for(origin.correlation_id, SEALED_EVENTS) if origin else []
            why = grant_forgery(self.key, grant, bodies)
            if why is None:
                return grant
            tx.append([self._ev("grant.forged", None, grant_id=grant.id, why=why)])
            log.error("%s; it was not used", why)
        return None

    # -- housekeeping --------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Expire every open request whose time is up; return how many (read first: most find none)."""
        now = utc_iso(self.clock.now())

        def write(tx: Tx) -> int:
            due = tx.due_for_expiry(now)
            for request in due:
                self._expire(tx, request)
            return len(due)

        if not await self.store.read(lambda tx: tx.due_for_expiry(now)):
            return 0
        return await self.store.transact(write)

    async def recover(
        self,
        *,
        claim: Callable[[Tx], list[Inflight]] | None = None,
        by: str | None = None,
        sender: Callable[[Tx, str], Mapping[str, Any] | None] | None = None,
    ) -> int:
        """Calls whose execution began but has no recorded outcome become `call.outcome_unknown`;
        they are never re-run automatically. At start-up (alone): all of them; with `claim`, those
        it hands over (a lapsed replica's, `inflight.recover`)."""
        return await self.store.transact(
            lambda tx: inflight.recover(tx, self._ev, claim=claim, by=by, sender=sender)
        )

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Background duty: expire due requests. (Held calls learn of decisions from the store.)"""
        task_status.started()
        while True:
            try:
                await self.sweep()
                await escalate_due(self)
            except GateError as exc:
                log.error("could not expire due approval requests: %s", exc)
            await anyio.sleep(SWEEP_INTERVAL)

    # -- reading -------------------------------------------------------------------------------

    async def get(self, request_id: str) -> ApprovalRequest:
        request = await self.store.read(lambda tx: tx.get_request(request_id))
        if request is None:
            raise NoSuchRequest(request_id)
        return request

    async def pending(self) -> list[ApprovalRequest]:
        now = self.clock.now()
        requests = await self.store.read(lambda tx: tx.requests(states=OPEN_STATES))
        return [r for r in requests if not r.expired_at(now)]

    async def grants(self, *, live_only: bool = True) -> list[Grant]:
        now = utc_iso(self.clock.now())
        return await self.store.read(lambda tx: tx.grants(live_at=now if live_only else None))
