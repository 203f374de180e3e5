"""The console's evidence pages: one call's story (as `audit show` tells it), tools whose definition
changed (the reviewed and the new side by side, accepted by operators), the audit report of a period."""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from typing import Any

from mcp_gate.evidence import Record, render_story
from mcp_gate.storage.base import PinRecord, Store

__all__ = ["call_story", "drift_rows", "side_by_side"]


async def call_story(store: Store, correlation_id: str) -> tuple[list[Record], str]:
    """The records of one call, with those of the request it joined, and their story as text."""
    records = await store.records(correlation_id=correlation_id)
    linked = {r.body["request_id"] for r in records if isinstance(r.body.get("request_id"), str)}
    for request_id in sorted(linked):
        request = await store.read(lambda tx, rid=request_id: tx.get_request(rid))  # type: ignore[misc]
        if request is not None and request.correlation_id != correlation_id:
            records += await store.records(correlation_id=request.correlation_id)
    ordered = sorted({r.seq: r for r in records}.values(), key=lambda r: r.seq)
    return ordered, render_story(ordered) if ordered else ""


def _lines(definition: Mapping[str, Any] | None) -> list[str]:
    if definition is None:
        return []
    return json.dumps(definition, indent=2, sort_keys=True, ensure_ascii=False).splitlines()


def side_by_side(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The two definitions as aligned rows: each row's left and right line and whether it changed."""
    left, right = _lines(old), _lines(new)
    rows: list[dict[str, Any]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=left, b=right, autojunk=False).get_opcodes():
        if op == "equal":
            rows += [
                {"left": left[i], "right": right[j1 + k], "changed": False}
                for k, i in enumerate(range(i1, i2))
            ]
            continue
        olds, news = left[i1:i2], right[j1:j2]
        for k in range(max(len(olds), len(news))):
            rows.append(
                {
                    "left": olds[k] if k < len(olds) else None,
                    "right": news[k] if k < len(news) else None,
                    "changed": True,
                }
            )
    return rows


def drift_rows(pins: list[PinRecord]) -> list[dict[str, Any]]:
    """Every quarantined tool: a changed definition, or a new tool with none reviewed yet."""
    return [
        {
            "server": p.server,
            "tool": p.tool,
            "new": p.new,
            "pin": p.pin,
            "drifted_pin": p.drifted_pin,
            "updated_at": p.updated_at,
            "rows": side_by_side(None if p.new else p.definition, p.drifted_definition),
        }
        for p in pins
        if p.drifted_pin is not None
    ]
