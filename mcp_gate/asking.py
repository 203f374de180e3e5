"""The pipeline's asking step: put a call's question to the person at the agent and record the answer."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, assert_never

import anyio
import mcp_types as types

from mcp_gate.approvals import ApprovalRequest, Binding
from mcp_gate.call import CallContext
from mcp_gate.clock import Clock, utc_iso
from mcp_gate.config import GateConfig
from mcp_gate.datadir import ELICITATION_KEY_FILE
from mcp_gate.downstream import ElicitFn
from mcp_gate.errors import EvidenceWriteError, StoreError, not_run_text
from mcp_gate.events import FINAL_STATES
from mcp_gate.evidence import MakeEvent
from mcp_gate.holds import ApprovalEngine
from mcp_gate.policy import Approvals, Confirm, Requirement, describe_requirement
from mcp_gate.questions import (
    ASK_TIMEOUT,
    CONFIRM_KEY,
    CONFIRM_SCHEMA,
    JUSTIFY_KEY,
    JUSTIFY_SCHEMA,
    Answer,
    Asker,
    Cancelled,
    Confirmed,
    Declined,
    Justified,
    Unsupported,
    check_flat_schema,
    confirm_answer,
    describe_answer,
    input_required,
    justification_answer,
)
from mcp_gate.redaction import redact
from mcp_gate.request_state import (
    MAX_STATE_CHARS,
    BadState,
    Claims,
    mismatch,
    new_claims,
    seal,
    unseal,
)
from mcp_gate.seals import load_key
from mcp_gate.storage.base import Store, Tx

__all__ = ["Asking", "AskKind", "Proceed", "Question", "Step", "Stop"]

log = logging.getLogger("mcp_gate.asking")

AskKind = Literal["confirm", "justification"]


@dataclass(frozen=True)
class Proceed:
    """Go on with the call: a confirmed call runs (its execution is already marked begun); a
    justified one goes to approvers with `justification` (None: nothing needed asking)."""

    justification: str | None = None


@dataclass(frozen=True)
class Stop:
    """The call stops here; the refusal is recorded and `text` is for the agent."""

    text: str


@dataclass(frozen=True)
class Question:
    """A 2026-07-28 client is handed the question; its retry carries the answer."""

    result: types.InputRequiredResult


Step = Proceed | Stop | Question


class Asking:
    """Confirmations and justifications through the elicitation channel, recorded as decisions
    (channel `elicitation`, decided by the requester's owner)."""

    def __init__(
        self,
        config: GateConfig,
        store: Store,
        clock: Clock,
        engine: ApprovalEngine,
        event: MakeEvent,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.engine = engine
        self.event = event
        self._key: bytes | None = None

    def key(self) -> bytes:
        if self._key is None:
            self._key = load_key(self.config.data_dir / ELICITATION_KEY_FILE)
        return self._key

    def kind(self, requirement: Requirement, tier: str, asker: Asker | None) -> AskKind | None:
        """What this call asks the person at the agent, if their client can be asked at all."""
        if asker is None or not asker.can_elicit:
            return None
        if isinstance(requirement, Confirm):
            return "confirm"
        if isinstance(requirement, Approvals) and tier in self.config.elicitation.ask_justification:
            return "justification"
        return None

    # -- a link to follow a held call ---------------------------------------------------------------

    @asynccontextmanager
    async def following(
        self, call: CallContext, asker: Asker | None
    ) -> AsyncIterator[Callable[[ApprovalRequest], None] | None]:
        """While a call is held, offer the person at the agent its request's console page, view
        only, by URL-mode elicitation (2025-11-25 clients that declared it, a public console): the
        `on_held` to give the engine, or None. When the hold ends the client is told the link is
        done with, and the offer and its answer are recorded (`elicitation.url_offered`)."""
        console = self.config.console
        if asker is None or asker.era != "legacy" or not asker.can_open_url or console is None:
            yield None
            return
        offered: dict[str, str] = {}  # request id -> the answer, once given
        elicitation_id = call.correlation_id
        async with anyio.create_task_group() as tg:

            async def offer(request: ApprovalRequest, url: str) -> None:
                message = (
                    f"{call.name} waits for approval (request {request.id}). You can follow it here; "
                    "approving it is for someone else."
                )
                answer = await asker.offer_url(message, url, elicitation_id)
                offered[request.id] = answer if isinstance(answer, str) else f"unsupported: {answer.why}"

            def on_held(request: ApprovalRequest) -> None:
                url = console.request_url(request.id) if console.enabled else None
                if url is not None:
                    offered[request.id] = "unanswered"
                    tg.start_soon(offer, request, url)

            try:
                yield on_held
            finally:
                tg.cancel_scope.cancel()
        for request_id, answer in offered.items():
            await asker.url_done(elicitation_id)
            try:
                await self.store.append(
                    [
                        self.event(
                            "elicitation.url_offered",
                            call.correlation_id,
                            request_id=request_id,
                            elicitation_id=elicitation_id,
                            answer=answer[:300],
                        )
                    ]
                )
            except (EvidenceWriteError, StoreError) as exc:
                # What the hold decided stands; only this note of the link is lost.
                log.error("the offer of a link to follow request %s was not recorded: %s", request_id, exc)

    # -- the 2026-07-28 retry ----------------------------------------------------------------------

    def open_state(self, token: str, binding: Binding, kind: AskKind | None) -> Claims | BadState:
        """Unseal a state echoed on a retry and check it fits this call: the answer to this call's
        question (`kind`), or a relayed downstream question of any call."""
        opened = unseal(self.key(), token, now=self.clock.now())
        if isinstance(opened, BadState):
            return opened
        expected = "relay" if opened.kind == "relay" else kind
        if expected is None:
            return BadState(
                "mismatched", "the request_state sent back does not fit this call: it asks nothing"
            )
        why = mismatch(opened, binding, expected)
        if why is not None:
            return BadState("mismatched", f"the request_state sent back does not fit this call: {why}")
        return opened

    async def refuse_state(self, call: CallContext, bad: BadState) -> str:
        """Record a refused request_state under the retry's own correlation id; the agent's text."""
        text = f"{call.name} was not run: {bad.why}"
        correlation_id, base = call.correlation_id, call.fields()
        events = [
            self.event(
                "call.requested", correlation_id, **base, args=redact(call.args, rules=self.config.redaction)
            ),
            self.event("confirm.refused", correlation_id, **base, code=bad.code, why=bad.why),
            self.event("call.refused", correlation_id, **base, error=text),
        ]
        try:
            await self.store.append(events)
        except EvidenceWriteError as exc:
            log.error("evidence write failed for a refused request_state: %s", exc)
        return text

    # -- the two questions -------------------------------------------------------------------------

    def question(self, call: CallContext) -> str:
        shown = json.dumps(
            redact(call.args, max_string=120, rules=self.config.redaction), ensure_ascii=False, sort_keys=True
        )
        if len(shown) > 600:
            shown = shown[:599] + "…"
        return (
            f"{self.config.name}: the agent {call.requester.agent} wants to run {call.name}.\n"
            f"Tier {call.decision.tier}: {call.decision.reason}.\n"
            f"Arguments (secrets hidden): {shown}"
        )

    async def confirm(self, call: CallContext, asker: Asker, resumed: Claims | None) -> Step:
        """Ask yes or no. A yes is recorded with the call's execution marked begun, in one transaction."""
        question = self.question(call) + "\nRun it once, exactly as shown?"
        if asker.era == "modern" and resumed is None:
            return await self._ask_later("confirm", call, question)
        if resumed is None:
            asked = await self._ask_now(call, asker, question, CONFIRM_SCHEMA)
            answer: Answer = confirm_answer(asked)
        else:
            answer = confirm_answer(asker.answer(CONFIRM_KEY))
        confirmed = isinstance(answer, Confirmed)
        text = None if confirmed else _unconfirmed_text(call.name, call.requester.owner, answer, "run")
        stopped = await self._record("confirm", call, asker, resumed, answer, text, runs=confirmed)
        if stopped is not None:
            return stopped
        return Stop(text) if text is not None else Proceed()

    async def justify(
        self, call: CallContext, requirement: Approvals, asker: Asker, resumed: Claims | None
    ) -> Step:
        """Ask why a high or critical call is needed before approvers see it. Never approves it:
        that takes somebody else. Nothing is asked if a request or grant already covers the call."""
        binding, decision = call.binding, call.decision
        if resumed is None:

            def covered(tx: Tx) -> bool:
                if self.engine.live_grant(tx, binding, decision.tier, decision.rule) is not None:
                    return True
                if tx.find_open_request(binding) is not None:
                    return True
                latest = tx.find_latest_request(binding)
                return latest is not None and latest.state in FINAL_STATES and not latest.reported

            if await self.store.read(covered):
                return Proceed()
        question = self.question(call) + (
            f"\nIt needs {describe_requirement(requirement)} by someone other than you. Why is it needed? "
            "Your answer is shown to the approvers; declining cancels the request."
        )
        if asker.era == "modern" and resumed is None:
            return await self._ask_later("justification", call, question)
        if resumed is None:
            asked = await self._ask_now(call, asker, question, JUSTIFY_SCHEMA)
            answer: Answer = justification_answer(asked)
        else:
            answer = justification_answer(asker.answer(JUSTIFY_KEY))
        given = answer.text if isinstance(answer, Justified) else None
        text = None if given else _unconfirmed_text(call.name, call.requester.owner, answer, "justify")
        stopped = await self._record("justification", call, asker, resumed, answer, text, runs=False)
        if stopped is not None:
            return stopped
        return Stop(text) if text is not None else Proceed(given)

    async def _ask_later(self, kind: AskKind, call: CallContext, question: str) -> Step:
        """2026-07-28: hand the client the question and a sealed state; its retry continues the call."""
        claims = new_claims(kind, call.correlation_id, call.binding, self.clock.now())
        try:
            state = seal(self.key(), claims)
            event = self.event(
                "confirm.asked",
                call.correlation_id,
                **call.fields(),
                kind=kind,
                channel="elicitation",
                era="2026-07-28",
                expires_at=claims.expires_at,
            )
            await self.store.append([event])
        except StoreError as exc:
            log.error("could not ask about %s: %s", call.correlation_id, exc)
            return Stop(f"{call.name} was not run: the gate could not record its question ({exc})")
        if kind == "confirm":
            return Question(input_required(CONFIRM_KEY, question, CONFIRM_SCHEMA, state))
        return Question(input_required(JUSTIFY_KEY, question, JUSTIFY_SCHEMA, state))

    async def _ask_now(
        self, call: CallContext, asker: Asker, question: str, schema: Mapping[str, Any]
    ) -> types.ElicitResult | Unsupported | None:
        """2025-11-25: ask in the middle of the call; None if nobody answered in time."""
        result: types.ElicitResult | Unsupported | None = None
        try:
            with anyio.move_on_after(ASK_TIMEOUT):
                result = await asker.ask(question, schema)
        except BaseException:
            # The client cancelled or went away while the person was asked: say so, then let go.
            with anyio.CancelScope(shield=True):
                try:
                    event = self.event(
                        "call.refused",
                        call.correlation_id,
                        **call.fields(),
                        error="the client cancelled while asked",
                    )
                    await self.store.append([event])
                except EvidenceWriteError as exc:
                    log.error("could not record a cancelled question: %s", exc)
            raise
        return result

    async def _record(
        self,
        kind: AskKind,
        call: CallContext,
        asker: Asker,
        resumed: Claims | None,
        answer: Answer,
        refusal: str | None,
        *,
        runs: bool,
    ) -> Stop | None:
        """Record the answer as a decision, with the refusal if it is one and the begun execution
        if the call now `runs`. A 2026-07-28 answer spends its state's nonce in the same transaction,
        so a replay changes nothing. A Stop if the call must end for another reason."""
        now = utc_iso(self.clock.now())
        correlation_id, base = call.correlation_id, call.fields()
        decided = self.event(
            "confirm.decided",
            correlation_id,
            **base,
            kind=kind,
            channel="elicitation",
            decider=call.requester.owner,
            era="2026-07-28" if asker.era == "modern" else "2025-11-25",
            **describe_answer(answer),
        )
        replayed = (
            f"{call.name} was not run: the request_state sent back was already used once; "
            "call the tool again without it"
        )

        def write(tx: Tx) -> bool:
            if resumed is not None and not tx.use_nonce(resumed.nonce, correlation_id, now):
                tx.append(
                    [
                        self.event("confirm.refused", correlation_id, **base, code="replayed", why=replayed),
                        self.event("call.refused", correlation_id, **base, error=replayed),
                    ]
                )
                return False
            events = [decided]
            if refusal is not None:
                events.append(self.event("call.refused", correlation_id, **base, error=refusal))
            tx.append(events)
            if runs:
                tx.begin_inflight(correlation_id, None, now, call.inflight())
            return True

        try:
            fresh = await self.store.transact(write)
        except EvidenceWriteError as exc:
            log.error("evidence write failed for an answer: %s", exc)
            return Stop(not_run_text(call.name, exc))
        return None if fresh else Stop(replayed)

    # -- a downstream's own questions --------------------------------------------------------------

    async def pass_question(
        self, call: CallContext, asked: types.InputRequiredResult
    ) -> types.InputRequiredResult | str:
        """Both sides speak 2026-07-28: hand a downstream's question on to the agent, the downstream's
        own state sealed inside the gate's; the retry continues this call. A str says why not."""
        requests: dict[str, types.InputRequest] = {}
        messages: list[str] = []
        why: str | None = None
        for key, request in (asked.input_requests or {}).items():
            params = request.params if isinstance(request, types.ElicitRequest) else None
            if not isinstance(params, types.ElicitRequestFormParams):
                why = "it asked for something other than a form (sampling, roots or a URL)"
                break
            problem = check_flat_schema(params.requested_schema)
            if problem is not None:
                why = f"its form is not a flat form ({problem})"
                break
            message = " ".join(str(params.message).split())[:1000]
            messages.append(message)
            server = call.offered.server
            marked = f"[{server} asks; relayed by mcp-gate, this is not the gate's own confirmation]\n"
            form = types.ElicitRequestFormParams(
                message=marked + message, requested_schema=params.requested_schema
            )
            requests[key] = types.ElicitRequest(params=form)
        claims = new_claims("relay", call.correlation_id, call.binding, self.clock.now(), asked.request_state)
        state = seal(self.key(), claims)
        if why is None and len(state) > MAX_STATE_CHARS:
            why = "its request_state is too large to carry"
        fields: dict[str, Any] = {"messages": messages, "keys": sorted(requests), "era": "2026-07-28"}
        if why is not None:
            fields["declined"] = why
        try:
            relayed = self.event("elicitation.relayed", call.correlation_id, **call.fields(), **fields)
            await self.store.append([relayed])
        except EvidenceWriteError as exc:
            log.error("could not record a relayed elicitation: %s", exc)
            why = "mcp-gate could not record it"
        if why is not None:
            return f"{call.name} asked a question mcp-gate cannot relay to this client: {why}"
        return types.InputRequiredResult(input_requests=requests or None, request_state=state)

    def relay(self, call: CallContext, asker: Asker | None) -> ElicitFn:
        """Relay a downstream server's own elicitation to the person at the agent when their client
        can carry it mid-call; otherwise the downstream gets a clear refusal. Both are recorded."""
        server, correlation_id, base = call.offered.server, call.correlation_id, call.fields()

        async def relay(params: types.ElicitRequestParams) -> types.ElicitResult | types.ErrorData:
            message = " ".join(str(params.message).split())[:1000]
            why: str | None = None
            result: types.ElicitResult | Unsupported | None = None
            if not isinstance(params, types.ElicitRequestFormParams):
                why = "URL-mode elicitations are not relayed"
            elif (problem := check_flat_schema(params.requested_schema)) is not None:
                why = f"its form is not a flat form ({problem})"
            elif asker is None or not asker.can_elicit:
                why = "the agent's client does not accept elicitations"
            elif asker.era == "modern":
                why = "the agent's client speaks 2026-07-28, which cannot carry a question mid-call"
            else:
                # Marked, so a downstream cannot pass its question off as the gate's confirmation.
                shown = f"[{server} asks; relayed by mcp-gate, this is not the gate's own confirmation]\n"
                shown += message
                result = await asker.ask(shown, params.requested_schema)
                if isinstance(result, Unsupported):
                    why = result.why
            fields: dict[str, Any] = {"message": message}
            if isinstance(result, types.ElicitResult):
                fields |= {
                    "action": result.action,
                    "content": redact(result.content, rules=self.config.redaction),
                }
            else:
                fields["declined"] = why
            try:
                await self.store.append([self.event("elicitation.relayed", correlation_id, **base, **fields)])
            except EvidenceWriteError as exc:
                log.error("could not record a relayed elicitation: %s", exc)
                result, why = None, "mcp-gate could not record it"
            if isinstance(result, types.ElicitResult):
                return result
            return types.ErrorData(
                code=types.INVALID_REQUEST, message=f"mcp-gate declined to relay this elicitation: {why}"
            )

        return relay


def _unconfirmed_text(name: str, owner: str, answer: Answer, asked: Literal["run", "justify"]) -> str:
    """What the agent is told when the person at the agent did not say yes."""
    what = "was not run" if asked == "run" else "was not sent to approvers"
    match answer:
        case Declined(reason=reason):
            because = f": {reason}" if reason else " (no reason given)"
            verb = "declined to confirm it" if asked == "run" else "declined to justify it"
            return (
                f"{name} {what}: {owner} {verb} when asked in their client{because}. "
                "Do not retry unless the user asks"
            )
        case Cancelled():
            return (
                f"{name} {what}: the question was dismissed or not answered in time (cancelled); "
                "ask the user before trying again"
            )
        case Unsupported(why=why):
            return f"{name} {what}: the gate could not ask the person at the agent ({why})"
        case Confirmed() | Justified():
            raise AssertionError("a yes is not a refusal")
        case _:
            assert_never(answer)
