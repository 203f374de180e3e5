"""Canonical tool definitions, their SHA-256 pins, and what a newly served definition means."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import mcp_types as types

from mcp_gate.evidence import digest

__all__ = [
    "Accepted",
    "Drifted",
    "New",
    "Observation",
    "StillDrifted",
    "canonical_definition",
    "observe",
    "pin_of",
]

# The fields of a tool that change what an agent is told or what the tool does. `_meta`, icons
# and execution hints are presentation and are left out, so a cosmetic change is not a drift.
PINNED_FIELDS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")


def canonical_definition(tool: types.Tool) -> dict[str, Any]:
    wire = tool.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {key: wire[key] for key in PINNED_FIELDS if key in wire}


def pin_of(definition: Mapping[str, Any]) -> str:
    return digest(dict(definition))


@dataclass(frozen=True)
class New:
    """First time this tool is seen: pin it."""


@dataclass(frozen=True)
class Accepted:
    """The served definition is the accepted one."""


@dataclass(frozen=True)
class Drifted:
    """The served definition differs from the accepted one and from any drift already recorded."""


@dataclass(frozen=True)
class StillDrifted:
    """The served definition is the drift already recorded; the tool stays quarantined."""


Observation = New | Accepted | Drifted | StillDrifted


def observe(current: str, accepted: str | None, drifted: str | None) -> Observation:
    """What serving a definition with pin `current` means, given the stored pins."""
    if accepted is None:
        return New()
    if current == accepted:
        return Accepted()
    if current == drifted:
        return StillDrifted()
    return Drifted()
