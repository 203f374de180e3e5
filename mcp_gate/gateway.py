"""The pipeline of one call: identify -> look up -> validate -> policy -> record -> forward -> record."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, assert_never

import anyio
import jsonschema
import mcp_types as types

from mcp_gate import __version__
from mcp_gate.approvals import (
    Binding,
    Denied,
    Expired,
    Grant,
    Released,
    RequestState,
    Revoked,
    Void,
    describe_wait,
    outcome_text,
)
from mcp_gate.asking import Asking, Proceed, Question, Step, Stop
from mcp_gate.clock import Clock, utc_iso
from mcp_gate.config import GateConfig, Requester
from mcp_gate.downstream import Downstream, Downstreams, ProgressFn
from mcp_gate.errors import (
    CallRefused,
    DownstreamFailed,
    DownstreamUnavailable,
    EvidenceWriteError,
    InvalidArguments,
    Quarantined,
    StoreError,
    UnknownTool,
)
from mcp_gate.evidence import EventFactory, args_digest, canonical_json, digest
from mcp_gate.holds import ApprovalEngine, StillPending, TooMany, UsedElsewhere
from mcp_gate.pins import Accepted, Drifted, New, StillDrifted, canonical_definition, observe, pin_of
from mcp_gate.policy import (
    Approvals,
    Block,
    Confirm,
    Decision,
    Manifest,
    Run,
    classify,
    describe_requirement,
    policy_sha256,
    protected_path,
)
from mcp_gate.questions import Asker
from mcp_gate.redaction import redact
from mcp_gate.request_state import BadState, Claims
from mcp_gate.storage.base import PinRecord, Store, Tx

__all__ = ["CORRELATION_META_KEY", "SEPARATOR", "TIER_META_KEY", "Gateway", "OfferedTool", "split_name"]

log = logging.getLogger("mcp_gate.gateway")

SEPARATOR = "__"
MAX_ARGUMENT_BYTES = 256 * 1024
# Nesting of tool arguments: far more than any tool's schema uses, far less than the recursion
# limit of the canonical JSON, redaction and jsonschema code that walks them.
MAX_ARGUMENT_DEPTH = 64
# Calls of these tiers, and every call that waited for a decision, re-list their server first.
RECHECKED_TIERS = ("high", "critical")
NO_TASKS = types.ToolExecution(task_support="forbidden")
TIER_META_KEY = "io.github.mcp-gate/tier"
CORRELATION_META_KEY = "io.github.mcp-gate/correlation-id"


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and dicts nest more than `limit` levels, found without recursion (a value
    nested thousands deep must be refused before any recursive code sees it)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def split_name(name: str) -> tuple[str, str] | None:
    server, sep, tool = name.partition(SEPARATOR)
    if not sep or not server or not tool:
        return None
    return server, tool


@dataclass(frozen=True)
class OfferedTool:
    """A downstream tool as the gate sees it: its pin, quarantine state and listing tier."""

    server: str
    tool: str
    served: types.Tool
    pin: str
    accepted: PinRecord | None
    decision: Decision

    @property
    def name(self) -> str:
        return f"{self.server}{SEPARATOR}{self.tool}"

    @property
    def quarantined(self) -> bool:
        return self.accepted is not None and self.accepted.pin != self.pin

    def listed(self) -> types.Tool:
        """The definition shown to agents. A quarantined tool shows its accepted definition, so a
        changed description (a possible prompt injection) never reaches the agent unreviewed."""
        if self.quarantined and self.accepted is not None and self.accepted.new:
            # Nothing of a new tool was reviewed yet: only its name, and what to do about it.
            base = types.Tool(
                name=self.tool,
                description=(
                    f"New tool of server {self.server}, not reviewed yet: calls are refused until an "
                    f"operator runs `mcp-gate tools accept {self.name}`."
                ),
                input_schema={"type": "object"},
            )
        elif self.quarantined and self.accepted is not None:
            base = types.Tool.model_validate(dict(self.accepted.definition))
        else:
            base = self.served
        meta = dict(base.meta or {})
        meta[TIER_META_KEY] = self.decision.tier
        # The gate runs no MCP tasks (2025-11-25 `tasks/*`; an extension since 2026-07-28, whose Tool
        # has no `execution`): say so, whatever the server declares. The SDK drops the field on
        # 2026-07-28 connections.
        return base.model_copy(update={"name": self.name, "meta": meta, "execution": NO_TASKS})


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
    ) -> None:
        self.config = config
        self.manifests = manifests
        self.store = store
        self.downstreams = downstreams
        self.clock = clock
        self.policy_sha256 = policy_sha256(config.config_sha256, manifests)
        self.events = EventFactory(config.name, __version__, self.policy_sha256, clock)
        self.engine = ApprovalEngine(store, clock, config.approval_settings, self.events, decision_key)
        self.offered: dict[str, OfferedTool] = {}
        self.tool_listeners: list[Callable[[], Awaitable[None]]] = []
        self._pin_lock = anyio.Lock()
        self._listed: set[str] = set()  # servers whose tools this process has reconciled
        self._validators: dict[str, Any] = {}
        self.asking = Asking(config, store, clock, self.engine, self.event, self.policy_sha256)
        self._args_key = args_key

    def args_key(self) -> bytes:
        """The deployment's key for `args_sha256` (`data_dir/args.key`)."""
        return self._args_key

    # -- evidence -------------------------------------------------------------------------

    def event(self, event_type: str, correlation_id: str | None, **fields: Any) -> dict[str, Any]:
        return self.events(event_type, correlation_id, **fields)

    async def record(self, event_type: str, correlation_id: str | None, **fields: Any) -> None:
        await self.store.append([self.event(event_type, correlation_id, **fields)])

    # -- tools ----------------------------------------------------------------------------

    async def _tools_changed(self, ds: Downstream) -> None:
        async with self._pin_lock:
            await self._reconcile(ds)
        for listener in list(self.tool_listeners):
            await listener()

    async def _reconcile(self, ds: Downstream) -> None:
        """Pin new tools, quarantine drifted ones, and rebuild this server's offered tools.

        A tool first seen in the server's first listing is pinned as served: the operator reviews
        those with `mcp-gate tools`. One that appears later (in this run, or after a restart once
        the server has pins) is new at runtime: held in quarantine until accepted, unless
        `[pins] new_tools = "trust"`."""
        manifest = self.manifests.get(ds.name)
        fresh: dict[str, OfferedTool] = {}
        known: bool | None = True if ds.name in self._listed else None
        for tool in ds.tools.values():
            definition = canonical_definition(tool)
            pin = pin_of(definition)
            stored = await self.store.get_pin(ds.name, tool.name)
            observation = observe(pin, stored.pin if stored else None, stored.drifted_pin if stored else None)
            fields = {"server": ds.name, "tool": tool.name, "pin": pin}
            if isinstance(observation, New) and known is None:
                known = any(p.server == ds.name for p in await self.store.list_pins())
            match observation:
                case New() if known and self.config.pins.new_tools == "quarantine":
                    log.warning(
                        "%s__%s: a new tool; quarantined until accepted (mcp-gate tools accept)",
                        ds.name,
                        tool.name,
                    )
                    await self.store.hold_new(
                        ds.name,
                        tool.name,
                        pin=pin,
                        definition=definition,
                        events=[
                            self.event(
                                "tool.new",
                                None,
                                **fields,
                                quarantined=True,
                                definition=redact(definition, rules=self.config.redaction),
                            )
                        ],
                    )
                    stored = await self.store.get_pin(ds.name, tool.name)
                case New():
                    await self.store.set_pin(
                        ds.name,
                        tool.name,
                        pin=pin,
                        definition=definition,
                        events=[
                            self.event(
                                "tool.pinned",
                                None,
                                **fields,
                                definition=redact(definition, rules=self.config.redaction),
                            )
                        ],
                    )
                    stored = await self.store.get_pin(ds.name, tool.name)
                case Drifted():
                    assert stored is not None
                    log.warning("%s__%s: definition changed; quarantined until accepted", ds.name, tool.name)
                    await self.store.mark_drift(
                        ds.name,
                        tool.name,
                        pin=pin,
                        definition=definition,
                        events=[
                            self.event(
                                "tool.drifted",
                                None,
                                **fields,
                                pinned=stored.pin,
                                definition=redact(definition, rules=self.config.redaction),
                            )
                        ],
                    )
                case Accepted() | StillDrifted():
                    pass
                case _:
                    assert_never(observation)
            decision = classify(tool.name, _annotations(tool), None, manifest)
            fresh[f"{ds.name}{SEPARATOR}{tool.name}"] = OfferedTool(
                ds.name, tool.name, tool, pin, stored, decision
            )
        self.offered = {k: v for k, v in self.offered.items() if v.server != ds.name} | fresh
        self._listed.add(ds.name)

    def list_tools(self) -> list[types.Tool]:
        return [t.listed() for t in self.offered.values() if t.decision.tier != "blocked"]

    def input_schema(self, name: str) -> dict[str, Any] | None:
        offered = self.offered.get(name)
        return offered.listed().input_schema if offered is not None else None

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
    ) -> types.CallToolResult | types.InputRequiredResult:
        """Run one agent call through the gate. Every outcome is a CallToolResult (refusals are errors),
        except a question for a 2026-07-28 client, which answers it and calls again.

        `asker` is the person at the agent for this call (None: nobody can be asked)."""
        correlation_id = uuid.uuid4().hex
        try:
            return await self._call(correlation_id, requester, name, arguments, transport, progress, asker)
        except StoreError as exc:
            # Only reachable before anything was sent downstream (outcome writes are caught where
            # they happen): fail closed, and say why.
            log.error("store failure; refusing %s: %s", name, exc)
            return _error_result(f"{name} was not run: the gate's store failed ({exc})", correlation_id)

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
        who = {"agent": requester.agent, "owner": requester.owner}
        split = split_name(name)
        base: dict[str, Any] = {
            "requester": who,
            "transport": transport,
            "server": split[0] if split else None,
            "tool": split[1] if split else name,
        }
        try:
            offered, args = await self._admit(name, arguments)
        except CallRefused as refused:
            return await self._refuse(correlation_id, base, refused, arguments)
        base |= {"pin": offered.pin, "args_sha256": args_digest(self.args_key(), args)}
        decision = classify(
            offered.tool, _annotations(offered.served), args, self.manifests.get(offered.server)
        )
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
        requirement = self.config.requirements[decision.tier]
        decided = {
            "tier": decision.tier,
            "rule": decision.rule,
            "reason": decision.reason,
            "requirement": describe_requirement(requirement),
        }
        binding = _binding(requester, offered, base, self.policy_sha256)
        resumed: Claims | None = None
        relayed: Claims | None = None  # the retry answers a downstream's question: it runs on
        kind = self.asking.kind(requirement, decision.tier, asker)
        state = asker.request_state if asker is not None and asker.era == "modern" else None
        if state is not None:
            # A retry carrying the answer to a question this gate asked: it continues that call.
            opened = self.asking.open_state(state, binding, kind)
            if isinstance(opened, BadState):
                text = await self.asking.refuse_state(correlation_id, base, args, opened)
                return _error_result(text, correlation_id)
            if opened.kind == "relay":
                relayed = opened
            else:
                resumed = opened
            correlation_id = opened.correlation_id
        first = [
            self.event(
                "call.requested", correlation_id, **base, args=redact(args, rules=self.config.redaction)
            ),
            self.event("policy.decided", correlation_id, **base, **decided),
        ]
        if resumed is not None:
            first = [self.event("call.resumed", correlation_id, **base, kind=resumed.kind)]
        answers = asker.responses() if relayed is not None and asker is not None else None
        if relayed is not None:
            shown = {
                k: v.model_dump(mode="json", by_alias=True, exclude_none=True)
                for k, v in (answers or {}).items()
            }
            first = [
                self.event(
                    "call.resumed",
                    correlation_id,
                    **base,
                    kind="relay",
                    answers=redact(shown, rules=self.config.redaction),
                )
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
                        self.event("confirm.refused", correlation_id, **base, code="replayed", why=replayed),
                        self.event("call.refused", correlation_id, **base, error=replayed),
                    ]
                )
                return False
            tx.append(first)
            if runs_now:  # execution begins right after this commits
                tx.begin_inflight(correlation_id, None, now, _inflight_fields(base))
            return True

        try:
            fresh = await self.store.transact(write)
        except EvidenceWriteError as exc:
            log.error("evidence write failed; refusing %s: %s", name, exc)
            return _error_result(
                f"{name} was not run: the gate could not write its evidence record ({exc})", correlation_id
            )
        if not fresh:
            return _error_result(replayed, correlation_id)
        if relayed is not None:
            # The call was allowed when it first ran; this carries the person's answers back to it.
            return await self._forward(
                correlation_id,
                base,
                offered,
                args,
                progress,
                None,
                asker=asker,
                resume=(answers, relayed.inner),
            )
        match requirement:
            case Run():
                return await self._forward(
                    correlation_id,
                    base,
                    offered,
                    args,
                    progress,
                    None,
                    asker=asker,
                    recheck=decision.tier in RECHECKED_TIERS,
                )
            case Block():
                refusal: CallRefused = CallRefused(
                    f"{name} is blocked by policy ({decision.reason}; {decision.rule}) and never runs"
                )
            case Confirm():
                if kind is None or asker is None:
                    return await self._unconfirmable(
                        correlation_id, base, offered, args, decision, requester, progress
                    )
                question = self.asking.question(name, args, decision, requester)
                step: Step = await self.asking.confirm(
                    correlation_id, base, binding, question, requester, asker, resumed, _inflight_fields(base)
                )
                if isinstance(step, Proceed):
                    return await self._forward(
                        correlation_id, base, offered, args, progress, None, asker=asker, recheck=True
                    )
                return _stopped(step, correlation_id)
            case Approvals():
                justification: str | None = None
                if kind is not None and asker is not None:
                    question = self.asking.question(name, args, decision, requester)
                    step = await self.asking.justify(
                        correlation_id,
                        base,
                        binding,
                        question,
                        decision,
                        requirement,
                        requester,
                        asker,
                        resumed,
                    )
                    if not isinstance(step, Proceed):
                        return _stopped(step, correlation_id)
                    justification = step.justification
                return await self._hold(
                    correlation_id,
                    base,
                    offered,
                    args,
                    decision,
                    requirement,
                    requester,
                    progress,
                    asker=asker,
                    justification=justification,
                )
            case _:
                assert_never(requirement)
        return await self._refuse(correlation_id, base, refusal, None)

    async def _unconfirmable(
        self,
        correlation_id: str,
        base: Mapping[str, Any],
        offered: OfferedTool,
        args: dict[str, Any],
        decision: Decision,
        requester: Requester,
        progress: ProgressFn | None,
    ) -> types.CallToolResult | types.InputRequiredResult:
        """A confirm tier whose client cannot be asked: `[tiers] medium_fallback` says what then."""
        name = offered.name
        if self.config.elicitation.medium_fallback == "deny":
            refusal = CallRefused(
                f"{name} was not run: its tier is {decision.tier} ({decision.reason}; {decision.rule}), "
                "which requires a confirmation by the person at the agent, and this client cannot be asked "
                "(it declared no MCP elicitation support); this gate refuses such calls "
                '(medium_fallback = "deny"). '
                "Do not retry; ask the user"
            )
            return await self._refuse(correlation_id, base, refusal, None)
        note = (
            f"This client cannot be asked to confirm {name} (it declared no MCP elicitation support), "
            "so the call waits for an approver instead"
        )
        return await self._hold(
            correlation_id, base, offered, args, decision, Approvals(1), requester, progress, note=note
        )

    async def _hold(
        self,
        correlation_id: str,
        base: Mapping[str, Any],
        offered: OfferedTool,
        args: dict[str, Any],
        decision: Decision,
        requirement: Approvals,
        requester: Requester,
        progress: ProgressFn | None,
        *,
        asker: Asker | None = None,
        justification: str | None = None,
        note: str | None = None,
    ) -> types.CallToolResult | types.InputRequiredResult:
        """Hold a call until its approval request is decided, then run it once or say why not.

        `note` prefixes what the agent is told (why it waits for an approver at all)."""
        name = offered.name
        said = f"{note}. " if note else ""
        binding = Binding(
            agent=requester.agent,
            owner=requester.owner,
            server=offered.server,
            tool=offered.tool,
            pin=offered.pin,
            args_sha256=base["args_sha256"],
            policy_sha256=self.policy_sha256,
        )
        try:

            def use_grant(tx: Tx) -> Grant | None:
                # Checked and used in one transaction, so a revocation cannot slip in between.
                grant = self.engine.live_grant(tx, binding, decision.tier, decision.rule)
                if grant is not None:
                    tx.append(
                        [
                            self.event(
                                "call.released",
                                correlation_id,
                                **base,
                                grant_id=grant.id,
                                grant_by=grant.created_by,
                                grant_request_id=grant.request_id,
                            )
                        ]
                    )
                    tx.begin_inflight(correlation_id, None, utc_iso(self.clock.now()), _inflight_fields(base))
                return grant

            if await self.store.transact(use_grant) is not None:
                return await self._forward(
                    correlation_id, base, offered, args, progress, None, asker=asker, recheck=True
                )
            outcome = await self.engine.hold(
                binding,
                correlation_id=correlation_id,
                tier=decision.tier,
                required=requirement.count,
                groups=decision.approvers or requirement.groups,
                expires_after=requirement.expires_after,
                rule=decision.rule,
                reason=decision.reason,
                args=redact(args, rules=self.config.redaction),
                progress=progress,
                justification=justification,
                hold_seconds=requester.hold_seconds,
            )
        except EvidenceWriteError as exc:
            log.error("evidence write failed while holding %s: %s", name, exc)
            return _error_result(
                f"{name} was not run: the gate could not write its evidence record ({exc})", correlation_id
            )
        match outcome:
            case Released(request=request):
                return await self._forward(
                    correlation_id, base, offered, args, progress, request.id, asker=asker, recheck=True
                )
            case Denied() | Expired() | Revoked() | Void():
                text = said + outcome_text(outcome, name)
            case StillPending(request=request):
                why = f"{decision.reason}; {decision.rule}"
                return _error_result(
                    f"{said}{name} was not run yet: its tier is {decision.tier} ({why}), which requires "
                    f"{describe_requirement(requirement)}, and it is {describe_wait(request)}. "
                    "Call again with the same arguments after approval; an identical call joins the same "
                    "request instead of making a new one.",
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
        linked = dict(base)
        if not isinstance(outcome, TooMany):  # name the request, so `audit show` finds its decisions
            linked["request_id"] = outcome.request.id
        return await self._refuse(correlation_id, linked, CallRefused(text), None)

    async def _admit(self, name: str, arguments: Any) -> tuple[OfferedTool, dict[str, Any]]:
        """Look the tool up and check the arguments; raise CallRefused with the reason."""
        offered = self.offered.get(name)
        if offered is None:
            split = split_name(name)
            if split is not None and split[0] in self.config.servers:
                ds = self.downstreams[split[0]]
                if ds.state != "up":
                    raise DownstreamUnavailable(split[0], ds.last_failure or ds.state)
            raise UnknownTool(name)
        if offered.quarantined:
            offered = await self._recheck_pin(offered)
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise InvalidArguments(name, f"arguments must be a JSON object, not {type(arguments).__name__}")
        if _deeper_than(arguments, MAX_ARGUMENT_DEPTH):
            raise InvalidArguments(
                name,
                f"arguments are nested deeper than {MAX_ARGUMENT_DEPTH} levels; send a flatter value",
            )
        try:
            size = len(canonical_json(arguments))
        except Exception as exc:  # rfc8785 rejects NaN, huge ints, bad surrogates: agent input
            raise InvalidArguments(name, f"arguments are not valid JSON values ({exc})") from exc
        if size > MAX_ARGUMENT_BYTES:
            raise InvalidArguments(name, f"arguments are {size} bytes; the limit is {MAX_ARGUMENT_BYTES}")
        self._validate(offered, arguments)
        return offered, arguments

    async def _recheck_pin(self, offered: OfferedTool) -> OfferedTool:
        """A quarantined tool may have been accepted from another process since we looked."""
        stored = await self.store.get_pin(offered.server, offered.tool)
        if stored is not None and stored.pin == offered.pin:
            fresh = OfferedTool(
                offered.server, offered.tool, offered.served, offered.pin, stored, offered.decision
            )
            self.offered[offered.name] = fresh
            return fresh
        pinned = stored.pin if stored is not None else "?"
        raise Quarantined(offered.name, pinned, offered.pin)

    def _validate(self, offered: OfferedTool, arguments: dict[str, Any]) -> None:
        validator = self._validators.get(offered.pin)
        if validator is None:
            schema = offered.served.input_schema
            cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
            try:
                cls.check_schema(schema)
            except jsonschema.SchemaError as exc:
                raise InvalidArguments(
                    offered.name, f"the server's input schema is itself invalid ({exc.message}); not run"
                ) from exc
            validator = cls(schema)
            self._validators[offered.pin] = validator
        error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
        if error is not None:
            where = "/" + "/".join(str(p) for p in error.absolute_path)
            # The message goes to evidence too, where arguments are only stored redacted: never
            # quote the value itself (it may be or hold a secret).
            message = error.message.replace(repr(error.instance), "the value")
            raise InvalidArguments(offered.name, f"at {where}: {message[:300]}")

    async def _refuse(
        self, correlation_id: str, base: Mapping[str, Any], refusal: CallRefused, raw_arguments: Any
    ) -> types.CallToolResult:
        events = []
        if _deeper_than(raw_arguments, MAX_ARGUMENT_DEPTH):
            # Redaction and canonical JSON recurse: the refusal says why, without the value.
            raw_arguments = None
        if raw_arguments is not None:
            events.append(
                self.event(
                    "call.requested",
                    correlation_id,
                    **base,
                    args=redact(raw_arguments, rules=self.config.redaction),
                )
            )
        events.append(self.event("call.refused", correlation_id, **base, error=str(refusal)))
        try:
            await self.store.append(events)
        except EvidenceWriteError as exc:
            log.error("evidence write failed for a refused call: %s", exc)
        return _error_result(str(refusal), correlation_id)

    async def _forward(
        self,
        correlation_id: str,
        base: Mapping[str, Any],
        offered: OfferedTool,
        args: dict[str, Any],
        progress: ProgressFn | None,
        request_id: str | None,
        *,
        asker: Asker | None = None,
        resume: tuple[types.InputResponses | None, str | None] | None = None,
        recheck: bool = False,
    ) -> types.CallToolResult | types.InputRequiredResult:
        """Send the call downstream exactly once and record its outcome.

        With `recheck` (a call that waited for a decision, or of a high or critical tier), the
        server's tools are listed again first and the tool's definition compared with the one the
        call was admitted under: a change, even one no `list_changed` announced, stops the call."""
        ds = self.downstreams[offered.server]
        started = time.perf_counter()
        linked = {**base, "request_id": request_id} if request_id else dict(base)
        if recheck:
            try:
                await self._check_pin_now(offered)
            except CallRefused as refusal:
                await self._finish(
                    correlation_id, request_id, "call.refused", "failed", linked, error=str(refusal)
                )
                return _error_result(str(refusal), correlation_id)
            except BaseException:
                await self._finish(
                    correlation_id,
                    request_id,
                    "call.refused",
                    "failed",
                    linked,
                    error="cancelled by the client before it was sent",
                )
                raise
        try:
            result = await ds.call(
                offered.tool,
                args,
                progress=progress,
                elicit=self.asking.relay(correlation_id, base, asker),
                pass_input=asker is not None and asker.era == "modern" and asker.can_elicit,
                resume=resume,
            )
        except CallRefused as refusal:  # not connected: nothing was sent
            await self._finish(
                correlation_id, request_id, "call.refused", "failed", linked, error=str(refusal)
            )
            return _error_result(str(refusal), correlation_id)
        except DownstreamFailed as exc:
            # Sent, and then the connection broke or timed out: it may or may not have run.
            await self._finish(
                correlation_id,
                request_id,
                "call.failed",
                "outcome_unknown",
                linked,
                error=str(exc),
                outcome="unknown",
                duration_ms=_ms(started),
            )
            return _error_result(str(exc), correlation_id)
        except BaseException:
            await self._finish(
                correlation_id,
                request_id,
                "call.failed",
                "outcome_unknown",
                linked,
                error="cancelled by the client",
                outcome="unknown",
                duration_ms=_ms(started),
            )
            raise
        if isinstance(result, types.InputRequiredResult):
            return await self._pass_question(
                correlation_id, request_id, base, linked, offered, result, started
            )
        wire = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        await self._finish(
            correlation_id,
            request_id,
            "call.executed",
            "executed",
            linked,
            duration_ms=_ms(started),
            is_error=bool(result.is_error),
            result_sha256=_result_digest(wire),
            result=redact(wire, rules=self.config.redaction),
        )
        return result

    async def _check_pin_now(self, offered: OfferedTool) -> None:
        """List the tool's server again (bounded, fail closed) and refuse if the definition it
        serves now is not the one this call was admitted under; a drift is quarantined and recorded."""
        ds = self.downstreams[offered.server]
        try:
            if await ds.relist(self.config.pins.recheck_timeout):
                await self._tools_changed(ds)
        except StoreError as exc:
            raise CallRefused(
                f"{offered.name} was not run: the gate could not record its check of the tool's "
                f"definition ({exc})"
            ) from exc
        served = ds.tools.get(offered.tool)
        if served is None:
            raise CallRefused(
                f"{offered.name} was not run: its server no longer offers it (found when the gate listed "
                "the server's tools again just before running it)"
            )
        current = pin_of(canonical_definition(served))
        if current != offered.pin:
            log.warning("%s: definition changed before a held or high call ran; refused", offered.name)
            raise Quarantined(offered.name, offered.pin, current, before_run=True)

    async def _pass_question(
        self,
        correlation_id: str,
        request_id: str | None,
        base: Mapping[str, Any],
        linked: Mapping[str, Any],
        offered: OfferedTool,
        asked: types.InputRequiredResult,
        started: float,
    ) -> types.CallToolResult | types.InputRequiredResult:
        """The downstream asks before it finishes: this run of the call ends here, and the agent's
        retry (carrying the sealed state) continues it without asking for a decision again."""
        requester = base["requester"]
        binding = Binding(
            requester["agent"], requester["owner"], offered.server, offered.tool, offered.pin,
            base["args_sha256"], self.policy_sha256,
        )  # fmt: skip
        passed = await self.asking.pass_question(correlation_id, base, binding, asked)
        await self._finish(
            correlation_id,
            request_id,
            "call.input_required",
            "executed",
            linked,
            duration_ms=_ms(started),
            relayed=not isinstance(passed, str),
        )
        if isinstance(passed, str):
            return _error_result(passed, correlation_id)
        return passed

    async def _finish(
        self,
        correlation_id: str,
        request_id: str | None,
        event_type: str,
        state: RequestState,
        base: Mapping[str, Any],
        **fields: Any,
    ) -> None:
        # Shielded: once a call was sent, a client's cancellation must not stop its outcome being
        # recorded. If the write fails anyway, the call has run and cannot be undone; its
        # in-flight marker stays, so the next start records it as call.outcome_unknown.
        try:
            with anyio.CancelScope(shield=True):
                await self.engine.finish(
                    correlation_id,
                    request_id,
                    self.event(event_type, correlation_id, **base, **fields),
                    state,
                )
        except EvidenceWriteError as exc:
            log.error("could not record %s for %s: %s", event_type, correlation_id, exc)


def _binding(requester: Requester, offered: OfferedTool, base: Mapping[str, Any], policy: str) -> Binding:
    return Binding(
        agent=requester.agent,
        owner=requester.owner,
        server=offered.server,
        tool=offered.tool,
        pin=offered.pin,
        args_sha256=base["args_sha256"],
        policy_sha256=policy,
    )


def _stopped(step: Stop | Question, correlation_id: str) -> types.CallToolResult | types.InputRequiredResult:
    match step:
        case Stop(text=text):
            return _error_result(text, correlation_id)
        case Question(result=result):
            return result
        case _:
            assert_never(step)


def _inflight_fields(base: Mapping[str, Any]) -> dict[str, Any]:
    return {key: base[key] for key in ("requester", "server", "tool", "pin", "args_sha256") if key in base}


def _annotations(tool: types.Tool) -> dict[str, Any] | None:
    if tool.annotations is None:
        return None
    return tool.annotations.model_dump(by_alias=True, exclude_none=True)


def _result_digest(wire: Any) -> str:
    """RFC 8785 digest of a result; results outside I-JSON (integers beyond 2**53, say) come from
    the downstream, not the agent, so they are hashed as sorted-key JSON rather than refused."""
    try:
        return digest(wire)
    except ValueError:
        fallback = json.dumps(wire, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
        return "json:" + hashlib.sha256(fallback.encode("utf-8", "surrogatepass")).hexdigest()


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _error_result(text: str, correlation_id: str) -> types.CallToolResult:
    """A tool error made by the gate; its `_meta` names the evidence for `mcp-gate audit show`."""
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        is_error=True,
        _meta={CORRELATION_META_KEY: correlation_id},
    )
