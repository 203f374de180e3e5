"""The tools the gate offers: namespaced names, pins and quarantine, the listing, admitting a call."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, assert_never

import anyio
import jsonschema
import mcp_types as types

from mcp_gate.config import GateConfig
from mcp_gate.downstream import Downstream, Downstreams
from mcp_gate.errors import (
    CallRefused,
    DownstreamUnavailable,
    InvalidArguments,
    Quarantined,
    StoreError,
    UnknownTool,
)
from mcp_gate.evidence import MakeEvent, canonical_json
from mcp_gate.pins import Accepted, Drifted, New, StillDrifted, canonical_definition, observe, pin_of
from mcp_gate.policy import SEPARATOR, Decision, Manifest, classify, split_name
from mcp_gate.redaction import redact
from mcp_gate.storage.base import PinRecord, Store

__all__ = [
    "MAX_ARGUMENT_BYTES",
    "MAX_ARGUMENT_DEPTH",
    "TIER_META_KEY",
    "OfferedTool",
    "Offering",
    "deeper_than",
]

log = logging.getLogger("mcp_gate.offering")

MAX_ARGUMENT_BYTES = 256 * 1024
# Nesting of tool arguments: far more than any tool's schema uses, far less than the recursion
# limit of the canonical JSON, redaction and jsonschema code that walks them.
MAX_ARGUMENT_DEPTH = 64
NO_TASKS = types.ToolExecution(task_support="forbidden")
TIER_META_KEY = "io.github.mcp-gate/tier"


def deeper_than(value: Any, limit: int) -> bool:
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

    def classify(self, arguments: Any, manifest: Manifest | None) -> Decision:
        """The policy's decision for a call of this tool with these arguments."""
        return classify(self.tool, _annotations(self.served), arguments, manifest)

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


class Offering:
    """What the gate offers agents now: each server's tools reconciled with their pins whenever
    the server lists them, and the checks a call's tool and arguments pass before policy sees it."""

    def __init__(
        self,
        config: GateConfig,
        manifests: Mapping[str, Manifest],
        store: Store,
        downstreams: Downstreams,
        event: MakeEvent,
    ) -> None:
        self.config = config
        self.manifests = manifests
        self.store = store
        self.downstreams = downstreams
        self.event = event
        self.offered: dict[str, OfferedTool] = {}
        self.listeners: list[Callable[[], Awaitable[None]]] = []
        self._pin_lock = anyio.Lock()
        self._listed: set[str] = set()  # servers whose tools this process has reconciled
        self._validators: dict[str, Any] = {}

    # -- listing and pins -----------------------------------------------------------------

    async def tools_changed(self, ds: Downstream) -> None:
        async with self._pin_lock:
            await self._reconcile(ds)
        for listener in list(self.listeners):
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

    async def check_pin_now(self, offered: OfferedTool) -> None:
        """List the tool's server again (bounded, fail closed) and refuse if the definition it
        serves now is not the one this call was admitted under; a drift is quarantined and recorded."""
        ds = self.downstreams[offered.server]
        try:
            if await ds.relist(self.config.pins.recheck_timeout):
                await self.tools_changed(ds)
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

    # -- admitting a call -----------------------------------------------------------------

    async def admit(self, name: str, arguments: Any) -> tuple[OfferedTool, dict[str, Any]]:
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
        if deeper_than(arguments, MAX_ARGUMENT_DEPTH):
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


def _annotations(tool: types.Tool) -> dict[str, Any] | None:
    if tool.annotations is None:
        return None
    return tool.annotations.model_dump(by_alias=True, exclude_none=True)
