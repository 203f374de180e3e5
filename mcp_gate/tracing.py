"""Optional OpenTelemetry traces: a span per call carrying its correlation id, tier and outcome,
with child spans for its steps (policy, evidence writes, the hold, the downstream call).

Without a tracer provider (the default) every span is a no-op. No argument value is ever put on
a span: only the tool's name, the server, the tier, the outcome and the correlation id."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["Tracing", "traceparent_of"]

_PROPAGATOR = TraceContextTextMapPropagator()
_FAILED = ("denied", "expired", "blocked", "failed", "refused")


class Tracing:
    """The gate's spans, through `provider` (None: none are made)."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self._tracer = None if provider is None else provider.get_tracer("mcp_gate")

    @property
    def on(self) -> bool:
        return self._tracer is not None

    @contextmanager
    def call(
        self, name: str, correlation_id: str, carrier: Mapping[str, str] | None = None
    ) -> Iterator[Span | None]:
        """The span of one call, a child of the W3C `traceparent` in `carrier` when one is sent."""
        if self._tracer is None:
            yield None
            return
        parent = _PROPAGATOR.extract(dict(carrier)) if carrier else None
        with self._tracer.start_as_current_span(
            "mcp_gate.call",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"mcp_gate.tool": name[:200], "mcp_gate.correlation_id": correlation_id},
            record_exception=False,
        ) as span:
            yield span

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """A child span of the current call's span: `mcp_gate.policy`, `mcp_gate.evidence_write`..."""
        if self._tracer is None:
            yield
            return
        with self._tracer.start_as_current_span(name, record_exception=False):
            yield

    @staticmethod
    def finish(span: Span | None, **labels: Any) -> None:
        """Name the call's tier, server and outcome on its span (never an argument)."""
        if span is None:
            return
        for key, value in labels.items():
            span.set_attribute(f"mcp_gate.{key}", value)
        if labels.get("outcome") in _FAILED:
            span.set_status(Status(StatusCode.ERROR, str(labels["outcome"])))


def traceparent_of(headers: Any) -> dict[str, str] | None:
    """The W3C trace context headers of an ASGI request's headers, if it sent any."""
    found = {}
    for key, value in headers or ():
        name = key.decode("latin-1").lower()
        if name in ("traceparent", "tracestate"):
            found[name] = value.decode("latin-1")[:512]
    return found or None
