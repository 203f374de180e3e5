"""mcp-gate: an MCP server that guards what AI agents do.

The public surface for embedding the gate is named in `__all__`: the `Gateway`, `open_gate` (the
one way to open a running gate from a config), the `Store` Protocol and the `MemoryStore`, and the
error tree. Each is imported on first use, so `import mcp_gate` (and the CLI's start-up) stays
light; `mcp_gate.testing` has what a user's own tests need."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from mcp_gate.errors import (
        ApiUnreachable,
        CallRefused,
        CheckpointError,
        ConfigError,
        DecisionRefused,
        DownstreamFailed,
        DownstreamUnavailable,
        EvidenceWriteError,
        GateError,
        InvalidArguments,
        NoSuchRequest,
        Quarantined,
        SlackFailure,
        StoreError,
        StoreUnreachable,
        TeamsFailure,
        UnknownTool,
    )
    from mcp_gate.gateway import Gateway
    from mcp_gate.runtime import open_gate
    from mcp_gate.storage.base import Store
    from mcp_gate.storage.memory import MemoryStore

_ERRORS = (
    "ApiUnreachable",
    "CallRefused",
    "CheckpointError",
    "ConfigError",
    "DecisionRefused",
    "DownstreamFailed",
    "DownstreamUnavailable",
    "EvidenceWriteError",
    "GateError",
    "InvalidArguments",
    "NoSuchRequest",
    "Quarantined",
    "SlackFailure",
    "StoreError",
    "StoreUnreachable",
    "TeamsFailure",
    "UnknownTool",
)
_HOMES = {
    "Gateway": "mcp_gate.gateway",
    "open_gate": "mcp_gate.runtime",
    "Store": "mcp_gate.storage.base",
    "MemoryStore": "mcp_gate.storage.memory",
    **dict.fromkeys(_ERRORS, "mcp_gate.errors"),
}

__all__ = [
    "ApiUnreachable",
    "CallRefused",
    "CheckpointError",
    "ConfigError",
    "DecisionRefused",
    "DownstreamFailed",
    "DownstreamUnavailable",
    "EvidenceWriteError",
    "GateError",
    "Gateway",
    "InvalidArguments",
    "MemoryStore",
    "NoSuchRequest",
    "Quarantined",
    "SlackFailure",
    "Store",
    "StoreError",
    "StoreUnreachable",
    "TeamsFailure",
    "UnknownTool",
    "__version__",
    "open_gate",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'mcp_gate' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
