"""The gate's log lines: human text by default or JSON lines, each about a call carrying its
correlation id, every one scrubbed by the same redaction as the evidence and the channels."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any, Literal

from mcp_gate.redaction import DEFAULT_RULES, RedactionRules, scrub_text

__all__ = ["CALL_FIELDS", "LogFormat", "configure_logging", "correlated", "set_correlation"]

LogFormat = Literal["text", "json"]

# The call the running task serves: every line logged meanwhile names it.
_CORRELATION: ContextVar[str | None] = ContextVar("mcp_gate_correlation_id", default=None)

# What a line about a call may carry besides its message (`extra=` of a logging call).
CALL_FIELDS = ("server", "tool", "tier", "outcome", "duration_ms")
_MAX_FIELD = 300


@contextmanager
def correlated(correlation_id: str) -> Iterator[None]:
    """Name `correlation_id` on every line logged in this context."""
    token = _CORRELATION.set(correlation_id)
    try:
        yield
    finally:
        _CORRELATION.reset(token)


def set_correlation(correlation_id: str) -> None:
    """Within `correlated`, switch to another id (a retry that continues an earlier call)."""
    _CORRELATION.set(correlation_id)


class _Correlate(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "correlation_id", None) is None:
            record.correlation_id = _CORRELATION.get()
        return True


class _Scrubbed(logging.Formatter):
    def __init__(self, rules: RedactionRules) -> None:
        super().__init__()
        self.rules = rules

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return scrub_text(value[: _MAX_FIELD * 10], self.rules)
        return value

    def text(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return str(self.scrub(message))


class TextFormat(_Scrubbed):
    """`mcp-gate WARNING mcp_gate.gateway: message [correlation id]`, as the CLI always wrote."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"mcp-gate {record.levelname} {record.name}: {self.text(record)}"
        correlation_id = getattr(record, "correlation_id", None)
        return f"{line} [{correlation_id}]" if correlation_id else line


class JsonFormat(_Scrubbed):
    """One JSON object per line: ts, level, logger, message, correlation_id and a call's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self.text(record),
        }
        correlation_id = getattr(record, "correlation_id", None)
        if correlation_id:
            entry["correlation_id"] = correlation_id
        for key in CALL_FIELDS:
            if hasattr(record, key):
                value = self.scrub(getattr(record, key))
                entry[key] = value[:_MAX_FIELD] if isinstance(value, str) else value
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(
    log_format: LogFormat = "text",
    *,
    verbose: bool = False,
    rules: RedactionRules = DEFAULT_RULES,
    stream: IO[str] | None = None,
) -> None:
    """Send the process's log lines to `stream` (stderr: stdout is the MCP wire over stdio).

    JSON lines are for a log collector, so they include the INFO lines (one per call) without -v."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormat(rules) if log_format == "json" else TextFormat(rules))
    handler.addFilter(_Correlate())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    ours = logging.INFO if verbose or log_format == "json" else logging.NOTSET
    logging.getLogger("mcp_gate").setLevel(ours)
