"""Whether and where the gate sends OpenTelemetry traces, from the standard `OTEL_*` variables.

Off by default: traces go out only when `OTEL_TRACES_EXPORTER` names an exporter (`otlp` or
`console`) or `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, and
never with `OTEL_SDK_DISABLED=true`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from mcp_gate.errors import ConfigError

__all__ = ["TracingSettings", "tracing_settings"]


@dataclass(frozen=True)
class TracingSettings:
    """Where spans go: an OTLP/HTTP endpoint (None: the exporter's default) or the console."""

    exporter: Literal["otlp", "console"]
    endpoint: str | None
    service_name: str


def tracing_settings(
    environ: Mapping[str, str], *, default_service: str = "mcp-gate"
) -> TracingSettings | None:
    """The tracing the environment asks for, or None (the default: no traces)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    endpoint = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or ""
    ).strip() or None
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter in ("", "none"):
        if exporter == "none" or endpoint is None:
            return None
        exporter = "otlp"
    if exporter not in ("otlp", "console"):
        raise ConfigError(
            "environment", "OTEL_TRACES_EXPORTER", f"expected otlp, console or none, got {exporter!r}"
        )
    service = environ.get("OTEL_SERVICE_NAME", "").strip() or default_service
    return TracingSettings("otlp" if exporter == "otlp" else "console", endpoint, service)
