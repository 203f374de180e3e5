"""Load and validate gate.toml and client mcpServers JSON (the only reader of files and env for settings).

`files` reads bytes and TOML within stated limits, `servers` builds server tables (gate.toml's
[servers.*] and client JSON), `gate_toml` validates the rest and `load_config` ties them together;
`model` holds the frozen values every other module reads."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from mcp_gate.config.files import (
    MAX_CLIENT_CONFIG_BYTES,
    MAX_NESTING,
    MAX_TOML_BYTES,
    check_private,
    read_private_text,
)
from mcp_gate.config.gate_toml import load_config
from mcp_gate.config.identity import introspection_secret
from mcp_gate.config.model import (
    AdminSettings,
    Agent,
    ApprovalSettings,
    BreakGlassSettings,
    ConsoleSettings,
    ElicitationSettings,
    EmailSettings,
    Escalation,
    EvidenceSettings,
    GateConfig,
    HttpSettings,
    IdentitySettings,
    Mode,
    PinSettings,
    ProtocolEra,
    Requester,
    RolloutSettings,
    ServerSpec,
    SlackSecret,
    SlackSettings,
    StoreSettings,
    TeamsSettings,
    WebhookSettings,
)
from mcp_gate.config.servers import read_client_config, serve_in_process, servers_to_toml
from mcp_gate.config.telemetry import TracingSettings, tracing_settings
from mcp_gate.config.user_token import read_user_token, remove_user_token, user_token_path, write_user_token

__all__ = [
    "AdminSettings",
    "Agent",
    "ApprovalSettings",
    "BreakGlassSettings",
    "ConsoleSettings",
    "EmailSettings",
    "ElicitationSettings",
    "Escalation",
    "EvidenceSettings",
    "GateConfig",
    "MAX_CLIENT_CONFIG_BYTES",
    "MAX_NESTING",
    "MAX_TOML_BYTES",
    "HttpSettings",
    "IdentitySettings",
    "Mode",
    "PinSettings",
    "ProtocolEra",
    "Requester",
    "RolloutSettings",
    "ServerSpec",
    "SlackSecret",
    "SlackSettings",
    "StoreSettings",
    "TracingSettings",
    "TeamsSettings",
    "WebhookSettings",
    "introspection_secret",
    "invoking_user",
    "load_config",
    "read_client_config",
    "check_private",
    "read_private_text",
    "resolve_config_path",
    "serve_in_process",
    "tracing_settings",
    "servers_to_toml",
    "read_user_token",
    "remove_user_token",
    "user_token_path",
    "write_user_token",
]


def resolve_config_path(arg: str | None, environ: Mapping[str, str], cwd: Path) -> Path:
    """Which gate.toml to read: the --config argument, else $MCP_GATE_CONFIG, else ./gate.toml."""
    chosen = arg or environ.get("MCP_GATE_CONFIG") or "gate.toml"
    return cwd / chosen


def invoking_user() -> str:
    """Who runs this command, as evidence records it: $USER, else "unknown"."""
    return os.environ.get("USER", "unknown")
