"""The pipeline of one call: identify -> look up -> validate -> policy -> record -> forward -> record."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, assert_never

import anyio
import mcp_types as types

from mcp_gate import __version__
from mcp_gate.approvals import (
    Denied,
    Expired,
    Grant,
    Released,
    Revoked,
    Void,
    describe_wait,
    outcome_text,
)
from mcp_gate.asking import Asking, Proceed, Question, Stop
from mcp_gate.call import CallContext, arrival_fields
from mcp_gate.clock import Clock, utc_iso
from mcp_gate.config import GateConfig, Requester
from mcp_gate.downstream import Downstream, Downstreams, ProgressFn
from mcp_gate.errors import (
    CallRefused,
    DownstreamFailed,
    EvidenceWriteError,
    StoreError,
    StoreUnreachable,
    not_run_text,
)
from mcp_gate.events import EventType, RequestState
from mcp_gate.evidence import EventFactory, args_digest, result_digest
from mcp_gate.holds import ApprovalEngine, StillPending, TooMany, UsedElsewhere
from mcp_gate.logs import correlated, set_correlation
from mcp_gate.metrics import GateMetrics
from mcp_gate.offering import MAX_ARGUMENT_DEPTH, Offering, deeper_than
from mcp_gate.policy import (
    Approvals,
    Block,
    Confirm,
    Manifest,
    Requirement,
    Run,
    describe_requirement,
    policy_sha256,
    protected_path,
    shadow_outcome,
)
from mcp_gate.questions import Asker
from mcp_gate.redaction import redact
from mcp_gate.request_state import BadState, Claims
from mcp_gate.storage.base import Store, Tx
from mcp_gate.tracing import Tracing

__all__ = ["CORRELATION_META_KEY", "Gateway"]

log = logging.getLogger("mcp_gate.gateway")
calls_log = logging.getLogger("mcp_gate.calls")  # one INFO line per call

# Calls of these tiers, and every call that waited for a decision, re-list their server first.
RECHECKED_TIERS = ("high", "critical")
CORRELATION_META_KEY = "io.github.mcp-gate/correlation-id"


@dataclass
class _Tally:
    """What one call did, for its metrics: labels, outcome, and where its time went. Labels stay
    "none" until the call is admitted: an unknown tool's name never becomes a label."""

    correlation_id: str | None = None
    server: str = "none"
    tier: str = "none"
    route: str = "run"  # how a call that runs got there: run, held or confirmed
    outcome: str | None = None
    downstream: float = 0.0
    waited: float = 0.0  # for a person: approvers or the one at the agent

    def end(self, outcome: str) -> None:
        if self.outcome is None:
            self.outcome = outcome


_TALLY: ContextVar[_Tally] = ContextVar("mcp_gate_call_tally")


class Gateway:
    """One running gate: its config, policy, store, downstreams and the tools they offer.

    It opens nothing: `runtime.open_gate` opens its parts and hands them in."""

    def __init__(
        self,
        config: GateConfig,
        manifests: Mapping[str, Manifest],
        store: Store,
        downstreams: Downstreams,
        clock: Clock,
        *,
        decision_key: bytes,
        args_key: bytes,
        metrics: GateMetrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or GateMetrics()
        self.tracing = tracing or Tracing()
        self.manifests = manifests
        self.store = store
        self.downstreams = downstreams
        self.clock = clock
        self.policy_sha256 = policy_sha256(config.config_sha256, manifests)
        self.events = EventFactory(config.name, __version__, self.policy_sha256, clock)
        self.engine = ApprovalEngine(store, clock, config.approval_settings, self.events, decision_key)
        self.engine.rule_escalations = any(r.escalation for m in manifests.values() for r in m.rules)
        self.engine.require_idp = config.identity is not None and config.identity.require_idp
        self.offering = Offering(config, manifests, store, downstreams, self.events)
        self.asking = Asking(config, store, clock, self.engine, self.event)
        self._args_key = args_key
        self.holder = uuid.uuid4().hex  # this gate's name on the leases it takes in the store

    def args_key(self) -> bytes:
        """The deployment's key for `args_sha256` (`data_dir/args.key`)."""
        return self._args_key

    # -- evidence -------------------------------------------------------------------------

    def event(self, event_type: EventType, correlation_id: str | None, **fields: Any) -> dict[str, Any]:
        return self.events(event_type, correlation_id, **fields)

    async def record(self, event_type: EventType, correlation_id: str | None, **fields: Any) -> None:
        await self.store.append([self.event(event_type, correlation_id, **fields)])

    # -- calls ----------------------------------------------------------------------------

    async def call(
        self,
        requester: Requester,
        name: str,
        arguments: Any,
        *,
        transport: str,
        progress: ProgressFn | None = None,
        asker: Asker | None = None,
        trace_context: Mapping[str, str] | None = None,
    ) -> types.CallToolResult | types.InputRequiredResult:
        """Run one agent call through the gate. Every outcome is a CallToolResult (refusals are errors),
        except a question for a 2026-07-28 client, which answers it and calls again.

        `asker` is the person at the agent for this call (None: nobody can be asked);
        `trace_context` the W3C trace headers an HTTP agent sent, for the call's span."""
        correlation_id = uuid.uuid4().hex
        tally = _Tally(correlation_id)
        token = _TALLY.set(tally)
        started = time.perf_counter()
        with correlated(correlation_id), self.tracing.call(name, correlation_id, trace_context) as span:
            try:
                return await self._call(
                    correlation_id, requester, name, arguments, transport, progress, asker
                )
            except StoreError as exc:
                # Only reachable before anything was sent downstream (outcome writes are caught where
                # they happen): fail closed, and say why.
                log.error("store failure; refusing %s: %s", name, exc)
                tally.end("refused")
                if isinstance(exc, StoreUnreachable | EvidenceWriteError):
                    return _error_result(not_run_text(name, exc), correlation_id)
                return _error_result(f"{name} was not run: the gate's store failed ({exc})", correlation_id)
            except BaseException:
                tally.end("failed")
                raise
            finally:
                _TALLY.reset(token)
                self._count(tally, time.perf_counter() - started, name)
                outcome = tally.outcome or "refused"
                self.tracing.finish(span, server=tally.server, tier=tally.tier, outcome=outcome)

    def _count(self, tally: _Tally, seconds: float, name: str) -> None:
        outcome = tally.outcome or "refused"
        if not self.metrics.enabled:
            calls_log.info("call %s: %s", name, outcome, extra={"correlation_id": tally.correlation_id})
            return
        self.metrics.call(tally.server, tally.tier, outcome)
        calls_log.info(
            "call %s: %s",
            name,
            outcome,
            extra={
                "correlation_id": tally.correlation_id,
                "server": tally.server,
                "tool": name,
                "tier": tally.tier,
                "outcome": outcome,
                "duration_ms": round(seconds * 1000, 3),
            },
        )
        if tally.server != "none":
            overhead = max(0.0, seconds - tally.downstream - tally.waited)
            self.metrics.overhead.labels(tally.server).observe(overhead)

    async def _call(
        self,
        correlation_id: str,
        requester: Requester,
        name: str,
        arguments: Any,
        transport: str,
        progress: ProgressFn | None,
        asker: Asker | None = None,
    ) -> types.CallToolResult | types.InputRequiredResult:
        try:
            offered, args = await self.offering.admit(name, arguments)
        except CallRefused as refused:
            return await self._refuse(
                correlation_id, arrival_fields(requester, transport, name), refused, arguments
            )
        args_sha256 = args_digest(self.args_key(), args)
        with self.tracing.step("mcp_gate.policy"):
            decision = offered.classify(args, self.manifests.get(offered.server))
        spec = self.config.servers.get(offered.server)
        guarded = protected_path(
            args, self.config.protected_paths, (spec.cwd if spec else None) or Path.cwd()
        )
        if guarded is not None:
            decision = replace(
                decision,
                tier="blocked",
                rule="the gate's own files",
                reason=f"its arguments name {guarded}, which only the gate may touch",
            )
        missing = self._missing_scope(requester, decision.tier)
        if missing is not None:
            # The HTTP front answers such a call 403 before it gets here; this is the second lock.
            fields = arrival_fields(requester, transport, name) | {
                "pin": offered.pin,
                "args_sha256": args_sha256,
            }
            why = (
                f"{name} was not run: its tier is {decision.tier}, and the access token lacks scope {missing}"
            )
            return await self._refuse(correlation_id, fields, CallRefused(why), arguments)
        call = CallContext(
            correlation_id, requester, transport, offered, args, args_sha256, decision, self.policy_sha256
        )
        tally = _TALLY.get(_Tally())
        tally.server, tally.tier = offered.server, decision.tier
        requirement = self.config.requirements[decision.tier]
        # Shadow mode: the call runs, and its record says what enforcing would have done. The
        # blocked tier (and the gate's own files) is enforced in every mode.
        would: Requirement | None = None
        if self.config.rollout.mode_for(offered.server) == "shadow" and decision.tier != "blocked":
            would, requirement = requirement, Run()
        resumed: Claims | None = None
        relayed: Claims | None = None  # the retry answers a downstream's question: it runs on
        kind = self.asking.kind(requirement, decision.tier, asker)
        state = asker.request_state if asker is not None and asker.era == "modern" else None
        if state is not None:
            # A retry carrying the answer to a question this gate asked: it continues that call.
            opened = self.asking.open_state(state, call.binding, kind)
            if isinstance(opened, BadState):
                return _error_result(await self.asking.refuse_state(call, opened), correlation_id)
            if opened.kind == "relay":
                relayed = opened
            else:
                resumed = opened
            call = replace(call, correlation_id=opened.correlation_id)
            tally.correlation_id = opened.correlation_id
            set_correlation(opened.correlation_id)
        correlation_id, fields = call.correlation_id, call.fields()
        answers = asker.responses() if relayed is not None and asker is not None else None
        if relayed is not None:
            shown = {
                k: v.model_dump(mode="json", by_alias=True, exclude_none=True)
                for k, v in (answers or {}).items()
            }
            answered = redact(shown, rules=self.config.redaction)
            first = [self.event("call.resumed", correlation_id, **fields, kind="relay", answers=answered)]
        elif resumed is not None:
            first = [self.event("call.resumed", correlation_id, **fields, kind=resumed.kind)]
        else:
            decided: dict[str, Any] = {
                "tier": decision.tier,
                "rule": decision.rule,
                "reason": decision.reason,
                "requirement": describe_requirement(would or requirement),
            }
            if would is not None:
                groups = decision.approvers or (would.groups if isinstance(would, Approvals) else ())
                can_confirm = self.asking.kind(would, decision.tier, asker) is not None
                fallback = self.config.elicitation.medium_fallback
                outcome = shadow_outcome(would, groups, can_confirm=can_confirm, confirm_fallback=fallback)
                decided |= {"enforced": False, "mode": "shadow", "would": outcome.pop("line")}
                decided["would_need"] = outcome
            first = [
                self.event(
                    "call.requested", correlation_id, **fields, args=redact(args, rules=self.config.redaction)
                ),
                self.event("policy.decided", correlation_id, **fields, **decided),
            ]
        runs_now = isinstance(requirement, Run) or relayed is not None
        replayed = (
            f"{name} was not run: the request_state sent back was already used once; call again without it"
        )

        def write(tx: Tx) -> bool:
            now = utc_iso(self.clock.now())
            if relayed is not None and not tx.use_nonce(relayed.nonce, correlation_id, now):
                tx.append(
                    [
                        self.event(
                            "confirm.refused", correlation_id, **fields, code="replayed", why=replayed
                        ),
                        self.event("call.refused", correlation_id, **fields, error=replayed),
                    ]
                )
                return False
            tx.append(first)
            if runs_now:  # execution begins right after this commits
                tx.begin_inflight(correlation_id, None, now, call.inflight())
            return True

        try:
            with self.tracing.step("mcp_gate.evidence_write"):
                fresh = await self.store.transact(write)
        except EvidenceWriteError as exc:
            log.error("evidence write failed; refusing %s: %s", name, exc)
            return _error_result(not_run_text(name, exc), correlation_id)
        if not fresh:
            return _error_result(replayed, correlation_id)
        if isinstance(requirement, Run) or relayed is not None:
            # A relayed answer goes back to a call that was allowed when it first ran.
            resume = None if relayed is None else (answers, relayed.inner)
            recheck = relayed is None and decision.tier in RECHECKED_TIERS
            return await self._forward(call, progress, asker, resume=resume, recheck=recheck)
        match requirement:
            case Block():
                tally.end("blocked")
                refusal = CallRefused(
                    f"{name} is blocked by policy ({decision.reason}; {decision.rule}) and never runs"
                )
                return await self._refuse(correlation_id, fields, refusal)
            case Confirm():
                if kind is None or asker is None:
                    return await self._unconfirmable(call, progress)
                asked = time.perf_counter()
                step = await self.asking.confirm(call, asker, resumed)
                tally.waited += time.perf_counter() - asked
                if isinstance(step, Proceed):
                    tally.route = "confirmed"
                    return await self._forward(call, progress, asker, recheck=True)
                tally.end("denied" if isinstance(step, Stop) else "pending")
                return _stopped(step, correlation_id)
            case Approvals():
                justification: str | None = None
                if kind is not None and asker is not None:
                    step = await self.asking.justify(call, requirement, asker, resumed)
                    if not isinstance(step, Proceed):
                        return _stopped(step, correlation_id)
                    justification = step.justification
                return await self._hold(call, requirement, progress, asker=asker, justification=justification)
            case _:
                assert_never(requirement)

    def _missing_scope(self, requester: Requester, tier: str) -> str | None:
        """The scope a requester's access token needs for a call of `tier` and lacks (static
        requesters carry no scopes and need none)."""
        identity = self.config.identity
        if identity is None or requester.scopes is None:
            return None
        needed = identity.tier_scopes.get(tier)
        return needed if needed is not None and needed not in requester.scopes else None

    async def _unconfirmable(
        self, call: CallContext, progress: ProgressFn | None
    ) -> types.CallToolResult | types.InputRequiredResult:
        """A confirm tier whose client cannot be asked: `[tiers] medium_fallback` says what then."""
        name, decision = call.name, call.decision
        if self.config.elicitation.medium_fallback == "deny":
            refusal = CallRefused(
                f"{name} was not run: its tier is {decision.tier} ({decision.reason}; {decision.rule}), "
                "which requires a confirmation by the person at the agent, and this client cannot be asked "
                "(it declared no MCP elicitation support); this gate refuses such calls "
                '(medium_fallback = "deny"). '
                "Do not retry; ask the user"
            )
            return await self._refuse(call.correlation_id, call.fields(), refusal)
        note = (
            f"This client cannot be asked to confirm {name} (it declared no MCP elicitation support), "
            "so the call waits for an approver instead"
        )
        return await self._hold(call, Approvals(1), progress, note=note)

    async def _hold(
        self,
        call: CallContext,
        requirement: Approvals,
        progress: ProgressFn | None,
        *,
        asker: Asker | None = None,
        justification: str | None = None,
        note: str | None = None,
    ) -> types.CallToolResult | types.InputRequiredResult:
        """Hold a call until its approval request is decided, then run it once or say why not.

        `note` prefixes what the agent is told (why it waits for an approver at all)."""
        name, decision, correlation_id = call.name, call.decision, call.correlation_id
        said = f"{note}. " if note else ""
        try:

            def use_grant(tx: Tx) -> Grant | None:
                # Checked and used in one transaction, so a revocation cannot slip in between.
                grant = self.engine.live_grant(tx, call.binding, decision.tier, decision.rule)
                if grant is not None:
                    tx.append(
                        [
                            self.event(
                                "call.released",
                                correlation_id,
                                **call.fields(),
                                grant_id=grant.id,
                                grant_by=grant.created_by,
                                grant_request_id=grant.request_id,
                            )
                        ]
                    )
                    tx.begin_inflight(correlation_id, None, utc_iso(self.clock.now()), call.inflight())
                return grant

            if await self.store.transact(use_grant) is not None:
                return await self._forward(call, progress, asker, recheck=True)
            tally = _TALLY.get(_Tally())
            held = time.perf_counter()
            with self.tracing.step("mcp_gate.hold"):
                async with self.asking.following(call, asker) as on_held:
                    outcome = await self.engine.hold(
                        call.binding,
                        correlation_id=correlation_id,
                        tier=decision.tier,
                        required=requirement.count,
                        groups=decision.approvers or requirement.groups,
                        expires_after=requirement.expires_after,
                        rule=decision.rule,
                        reason=decision.reason,
                        args=redact(call.args, rules=self.config.redaction),
                        progress=progress,
                        justification=justification,
                        hold_seconds=call.requester.hold_seconds,
                        escalation=decision.escalation,
                        on_held=on_held,
                    )
            tally.waited += time.perf_counter() - held
            self._decided(outcome, tally)
        except EvidenceWriteError as exc:
            log.error("evidence write failed while holding %s: %s", name, exc)
            return _error_result(not_run_text(name, exc), correlation_id)
        match outcome:
            case Released(request=request):
                return await self._forward(
                    replace(call, request_id=request.id), progress, asker, recheck=True
                )
            case Denied() | Expired() | Revoked() | Void():
                text = said + outcome_text(outcome, name)
            case StillPending(request=request):
                why = f"{decision.reason}; {decision.rule}"
                return _error_result(
                    f"{said}{name} was not run yet: its tier is {decision.tier} ({why}), which requires "
                    f"{describe_requirement(requirement)}, and it is {describe_wait(request)}. "
                    "Call again with the same arguments after approval; an identical call joins the same "
                    f"request instead of making a new one.{self._follow(request.id)}",
                    correlation_id,
                )
            case TooMany(limit=limit):
                text = (
                    f"{name} was not run: this requester already has {limit} approval requests pending; "
                    "wait for them to be decided before asking for more"
                )
            case UsedElsewhere(request=request):
                text = (
                    f"{name} was not run: the approval of request {request.id} was already used by an "
                    "identical call; call again to ask for a new approval"
                )
            case _:
                assert_never(outcome)
        if not isinstance(outcome, TooMany):  # name the request, so `audit show` finds its decisions
            call = replace(call, request_id=outcome.request.id)
        return await self._refuse(correlation_id, call.linked(), CallRefused(text))

    def _follow(self, request_id: str) -> str:
        """Where the person at the agent can follow a held request (view only), if a console is public."""
        console = self.config.console
        url = None if console is None or not console.enabled else console.request_url(request_id)
        return "" if url is None else f" Follow it at {url}"

    def _decided(self, outcome: object, tally: _Tally) -> None:
        """A held call's outcome, for its metrics: the route it runs by, or how it ended; and how
        long the decision took, by the channel of the last vote."""
        match outcome:
            case Released(request=request) | Denied(request=request) if self.metrics.enabled:
                if request.votes:
                    vote = request.votes[-1]
                    took = (vote.at - request.created_at).total_seconds()
                    self.metrics.decision_time.labels(request.tier, vote.channel).observe(max(0.0, took))
        match outcome:
            case Released():
                tally.route = "held"
            case Denied() | Revoked():
                tally.end("denied")
            case Expired():
                tally.end("expired")
            case StillPending():
                tally.end("pending")

    async def _refuse(
        self, correlation_id: str, fields: Mapping[str, Any], refusal: CallRefused, raw_arguments: Any = None
    ) -> types.CallToolResult:
        """Record a refused call (with the arguments as sent, if given) and tell the agent why."""
        _TALLY.get(_Tally()).end("refused")
        events = []
        if deeper_than(raw_arguments, MAX_ARGUMENT_DEPTH):
            # Redaction and canonical JSON recurse: the refusal says why, without the value.
            raw_arguments = None
        if raw_arguments is not None:
            events.append(
                self.event(
                    "call.requested",
                    correlation_id,
                    **fields,
                    args=redact(raw_arguments, rules=self.config.redaction),
                )
            )
        events.append(self.event("call.refused", correlation_id, **fields, error=str(refusal)))
        try:
            await self.store.append(events)
        except EvidenceWriteError as exc:
            log.error("evidence write failed for a refused call: %s", exc)
        return _error_result(str(refusal), correlation_id)

    async def _forward(
        self,
        call: CallContext,
        progress: ProgressFn | None,
        asker: Asker | None,
        *,
        resume: tuple[types.InputResponses | None, str | None] | None = None,
        recheck: bool = False,
    ) -> types.CallToolResult | types.InputRequiredResult:
        """Send the call downstream exactly once and record its outcome.

        With `recheck` (a call that waited for a decision, or of a high or critical tier), the
        server's tools are listed again first and the tool's definition compared with the one the
        call was admitted under: a change, even one no `list_changed` announced, stops the call.
        `resume` carries a relayed question's answers back to the downstream that asked it."""
        ds = self.downstreams[call.offered.server]
        started = time.perf_counter()
        if recheck:
            try:
                await self.offering.check_pin_now(call.offered)
            except CallRefused as refusal:
                await self._finish(call, "call.refused", "failed", error=str(refusal))
                return _error_result(str(refusal), call.correlation_id)
            except BaseException:
                await self._finish(
                    call, "call.refused", "failed", error="cancelled by the client before it was sent"
                )
                raise
        try:
            result = await self._downstream_call(ds, call, progress, asker, resume)
        except CallRefused as refusal:  # not connected: nothing was sent
            await self._finish(call, "call.refused", "failed", error=str(refusal))
            return _error_result(str(refusal), call.correlation_id)
        except DownstreamFailed as exc:
            # Sent, and then the connection broke or timed out: it may or may not have run.
            await self._finish(
                call,
                "call.failed",
                "outcome_unknown",
                error=str(exc),
                outcome="unknown",
                duration_ms=_ms(started),
            )
            return _error_result(str(exc), call.correlation_id)
        except BaseException:
            await self._finish(
                call,
                "call.failed",
                "outcome_unknown",
                error="cancelled by the client",
                outcome="unknown",
                duration_ms=_ms(started),
            )
            raise
        if isinstance(result, types.InputRequiredResult):
            return await self._pass_question(call, result, started)
        wire = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        await self._finish(
            call,
            "call.executed",
            "executed",
            duration_ms=_ms(started),
            is_error=bool(result.is_error),
            result_sha256=result_digest(wire),
            result=redact(wire, rules=self.config.redaction),
        )
        return result

    async def _downstream_call(
        self,
        ds: Downstream,
        call: CallContext,
        progress: ProgressFn | None,
        asker: Asker | None,
        resume: tuple[types.InputResponses | None, str | None] | None,
    ) -> types.CallToolResult | types.InputRequiredResult:
        """The downstream call itself, its time counted apart from the gate's own."""
        sent = time.perf_counter()
        try:
            with self.tracing.step("mcp_gate.downstream_call"):
                return await ds.call(
                    call.offered.tool,
                    call.args,
                    progress=progress,
                    elicit=self.asking.relay(call, asker),
                    pass_input=asker is not None and asker.era == "modern" and asker.can_elicit,
                    resume=resume,
                )
        finally:
            if self.metrics.enabled:
                took = time.perf_counter() - sent
                _TALLY.get(_Tally()).downstream += took
                self.metrics.downstream_time.labels(call.offered.server).observe(took)

    async def _pass_question(
        self, call: CallContext, asked: types.InputRequiredResult, started: float
    ) -> types.CallToolResult | types.InputRequiredResult:
        """The downstream asks before it finishes: this run of the call ends here, and the agent's
        retry (carrying the sealed state) continues it without asking for a decision again."""
        passed = await self.asking.pass_question(call, asked)
        await self._finish(
            call,
            "call.input_required",
            "executed",
            duration_ms=_ms(started),
            relayed=not isinstance(passed, str),
        )
        if isinstance(passed, str):
            return _error_result(passed, call.correlation_id)
        return passed

    async def _finish(
        self, call: CallContext, event_type: EventType, state: RequestState, **fields: Any
    ) -> None:
        tally = _TALLY.get(_Tally())
        tally.end(tally.route if event_type in ("call.executed", "call.input_required") else "failed")
        # Shielded: once a call was sent, a client's cancellation must not stop its outcome being
        # recorded. If the write fails anyway, the call has run and cannot be undone; its
        # in-flight marker stays, so the next start records it as call.outcome_unknown.
        try:
            with anyio.CancelScope(shield=True):
                event = self.event(event_type, call.correlation_id, **call.linked(), **fields)
                with self.tracing.step("mcp_gate.evidence_write"):
                    await self.engine.finish(call.correlation_id, call.request_id, event, state)
        except EvidenceWriteError as exc:
            log.error("could not record %s for %s: %s", event_type, call.correlation_id, exc)


def _stopped(step: Stop | Question, correlation_id: str) -> types.CallToolResult | types.InputRequiredResult:
    match step:
        case Stop(text=text):
            return _error_result(text, correlation_id)
        case Question(result=result):
            return result
        case _:
            assert_never(step)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _error_result(text: str, correlation_id: str) -> types.CallToolResult:
    """A tool error made by the gate; its `_meta` names the evidence for `mcp-gate audit show`."""
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        is_error=True,
        _meta={CORRELATION_META_KEY: correlation_id},
    )
